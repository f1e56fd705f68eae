"""The `report` stage and notebooks/analysis.ipynb on constructed stage outputs.

A tmp repo root gets `params.yaml` (default profile) and fake outputs in the exact layout the
stages write (`sphereard.layout`: a metrics file and an info file per stage run; the data manifest,
the latent caches' cache.json, the tokenizer export meta, grids/overview.png, norm_trajectory /
error_split CSV + PNG, sweep results.csv + summary.csv through `sphereard.sweep.results`) with
numbers chosen so every derived statement is known; the notebook also gets a tmp MLflow sqlite store.
"""

import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines import report
from pipelines._cli import stage_main
from sphereard.config import load_params
from sphereard.data.sources import FASHION_MNIST_CLASSES
from sphereard.errors import UserError
from sphereard.latents import meta_path as latent_meta_path
from sphereard.layout import (
    evaluation_file,
    export_dir,
    history_file,
    info_file,
    latent_cache_dir,
    metrics_file,
    overview_file,
    reconstructions_file,
    sweep_dir,
)
from sphereard.profiles import render
from sphereard.report.build import write_report
from sphereard.report.compare import REL_TOL, compare, half_width
from sphereard.report.findings import rank, section_findings
from sphereard.report.inputs import class_counts, load_inputs
from sphereard.report.sweep import load_sweep
from sphereard.report.tables import fmt

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "analysis.ipynb"
POSTERIORS = ("spherical", "gaussian_norm", "gaussian")
L, CFGS, SEEDS = 8, (1.0, 2.0, 3.0, 4.5), (0, 1)
# per posterior: (psnr, ssim, rfd_classifier, fd_classifier, class_consistency, none-projection drift at w=6);
# the reconstruction numbers are decode(sample)'s; decode(mode)'s rank the other way round (`mode_decode`)
NUMBERS = {"spherical": (24.5, 0.81, 1.5, 3.25, 0.875, 0.03),
           "gaussian_norm": (25.25, 0.83, 1.25, 4.5, 0.8, 0.04),
           "gaussian": (26.0, 0.85, 1.0, 6.75, 0.625, 0.35)}
TF_SUMMARY = {p: {"tf_radial_error": radial, "tf_radial_floor": 0.5, "tf_radial_excess": radial - 0.5,
                  "tf_tangential_error": 1.5, "tf_tangential_floor": 1.0, "tf_tangential_excess": 0.5,
                  "tf_radial_fraction": fraction}  # evaluate's teacher-forced summary per posterior
              for p, radial, fraction in (("spherical", 0.6, 0.14), ("gaussian_norm", 0.5, 0.1),
                                          ("gaussian", 0.9, 0.26))}
SPLIT_KEYS = {"radial": "tf_radial_error", "tangential": "tf_tangential_error",  # error_split.csv series
              "radial floor": "tf_radial_floor", "tangential floor": "tf_tangential_floor"}
FD_SLOPE = {"spherical": 0.1, "gaussian_norm": 0.5, "gaussian": 2.0}  # sweep: fd growth per unit of CFG
CACHED, TRAIN_IMAGES = 3303, 3303  # latent cache meta: fewer images than `encode.max_images` (20,000)
CLASS_TRAIN = [500 + 10 * c for c in range(10)]  # images per class in the fake manifest
NOTEBOOK_TIMEOUT_S = 120


def png(path: Path, size=(16, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size[::-1], 3), 128, np.uint8)).save(path)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def write_manifest(root: Path, train=CLASS_TRAIN, names=FASHION_MNIST_CLASSES) -> None:
    """data.out/manifest.json as `prepare` writes it (shards listed, not written: the report only counts)."""
    splits = {split: {"rows": sum(counts), "class_counts": list(counts),
                      "shards": [{"file": f"{split}-00000.parquet", "rows": sum(counts), "sha256": "0" * 64}]}
              for split, counts in (("train", train), ("test", [max(1, c // 10) for c in train]))}
    write_json(root / "data" / "shards" / "manifest.json", {
        "format_version": 1, "source": "fashion_mnist", "image_size": 32, "channels": 1, "classes": list(names),
        "num_classes": len(names), "splits": splits})


CONVERGENCE = {"spherical": (0.0, 0.23), "gaussian_norm": (1.0, 0.01), "gaussian": (1.0, 0.02)}  # plateaued, kl change


def fake_convergence(root: Path, params, p: str) -> None:
    """train_vae's convergence metrics (added to its metrics file) and its history.csv."""
    done, kl_change = CONVERGENCE[p]
    path = root / metrics_file(params, "tokenizer", p)
    metrics = json.loads(path.read_text())
    metrics.update(plateaued=done, kl_final=3.0, kl_second_half_change=kl_change, recon_final=0.12,
                   recon_second_half_change=0.03, cos_sample_mode_final=0.56,
                   **({"kappa_mean_final": 19.1} if p == "spherical" else {"std_mean_final": 0.4}))
    write_json(path, metrics)
    steps = np.arange(10, 510, 10)
    frame = pd.DataFrame({"step": steps, "kl": np.linspace(0.1, 3.0, 50), "recon": np.linspace(0.5, 0.12, 50)})
    frame.to_csv(root / history_file(params, p), index=False)


def mode_decode(psnr: float, ssim: float, rfd: float) -> tuple[float, float, float]:
    """decode(mode)'s psnr, ssim, rfd_classifier in the fake outputs: the sample decode's ranking reversed."""
    return 50.0 - psnr, 1.64 - ssim, 2.5 - rfd


def default_params_text(seeds=(0,)) -> str:
    """The default profile's params.yaml, with the seed axis `seeds` (the profile's is [0])."""
    text = render("default")
    assert text.count("\nseeds:\n- 0\n") == 1, "the default profile's seed axis is [0]"
    return text.replace("\nseeds:\n- 0\n", "\nseeds:\n" + "".join(f"- {k}\n" for k in seeds), 1)


def fake_outputs(root: Path, numbers=NUMBERS, sweep=True, optional=True, extra_eval=None, seeds=(0,),
                 seed_step=0.0) -> None:
    """Stage outputs under `root` (the default profile's relative paths, `sphereard.layout` files), one set
    per run of `seeds` (`Params.for_run`); run k's metrics are the numbers plus `seed_step * k`."""
    (root / "params.yaml").write_text(default_params_text(seeds))
    shared = load_params(root / "params.yaml")
    write_json(root / metrics_file(shared, "classifier"), {"test_accuracy": 0.9125})
    write_json(root / info_file(shared, "classifier"), {"steps": 600})
    for params in shared.runs():
        fake_run_outputs(root, params, numbers, optional, extra_eval, seed_step * params.seed)
    if optional:
        write_manifest(root)
    if sweep:
        write_sweep_outputs(root / sweep_dir(shared), numbers)


def fake_run_outputs(root: Path, params, numbers, optional, extra_eval, shift) -> None:
    """One run's (`params` from `Params.for_run`) per-posterior outputs; every metric + `shift`."""

    def results(block, p, metrics, info):
        write_json(root / metrics_file(params, block, p), {k: v + shift for k, v in metrics.items()})
        write_json(root / info_file(params, block, p), info)

    for p, (psnr, ssim, rfd, fd, cc, drift) in numbers.items():
        psnr_mode, ssim_mode, rfd_mode = mode_decode(psnr, ssim, rfd)
        results("tokenizer", p, {"psnr_mode": psnr_mode, "psnr_sample": psnr, "ssim_mode": ssim_mode,
                                 "ssim_sample": ssim, "recon_images_per_s": 512.0},
                {"posterior": p, "eval_images": 100})
        results("generator", p, {"ema_loss": 0.42, "train_loss_window": 0.45, "train_tokens_per_s": 12345.0},
                {"posterior": p, "preset": "fmnist-s", "params": 1234567, "steps": 1500, "tokens_seen": 96000,
                 "world_size": 1})
        results("evaluation", p, {
            "fd_classifier": fd, "kid_classifier": fd / 100, "kid_std_classifier": 0.001,
            "precision_classifier": 0.7, "recall_classifier": 0.6, "is_classifier": 8.5, "is_std_classifier": 0.1,
            "class_consistency_classifier": cc, "recon_psnr_mode": psnr_mode, "recon_psnr_sample": psnr,
            "recon_ssim_mode": ssim_mode, "recon_ssim_sample": ssim, "recon_rfd_classifier_mode": rfd_mode,
            "recon_rfd_classifier_sample": rfd,
            "norm_rel_dev_sphere_cfg1": 0.01, "norm_rel_dev_sphere_cfg6": 0.02, "norm_rel_dev_none_cfg1": 0.02,
            "norm_rel_dev_none_cfg6": drift, **TF_SUMMARY[p], **(extra_eval or {})},
            {"posterior": p, "num_samples": 1000, "reference_images": {"classifier": 10000},
             "recon_images": 2000, "teacher_forced_images": 500})
        if not optional:
            continue
        fake_convergence(root, params, p)
        results("sampling", p, {"images_per_s": 7.5, "tokens_per_s": 480.0, "generate_s": 100.0, "decode_s": 2.0,
                                "norm_mean": 2.8, "norm_std": 0.1, "norm_min": 2.5, "norm_max": 3.1},
                {"posterior": p, "device": "cpu", "precision": "fp32", "num_images": 1000, "num_classes": 10,
                 "num_tokens": L, "generator_step": 1500,
                 "settings": {"cfg_scale": 3.0, "cfg_schedule": "linear", "sampler": "euler_maruyama", "steps": 50,
                              "final_step": 0.04, "projection": "none" if p == "gaussian" else "sphere",
                              "radius": RADIUS, "seed": 0, "batch_size": 250, "num_per_class": 100,
                              "use_ema": True}})
        write_json(latent_meta_path(root / latent_cache_dir(params, p)), {
            "posterior": p, "radius": RADIUS, "num_classes": 10, "train_images": TRAIN_IMAGES, "rows": CACHED,
            "views": 1, "num_tokens": L, "moments_dim": 5, "sha256": "0" * 64})
        write_json(root / export_dir(params, "tokenizer", p) / "model.json", {"kind": "tokenizer", "posterior": p,
                                                                              "radius": RADIUS, "step": 800})
        png(root / overview_file(params, p))
        png(root / reconstructions_file(params, p))
        rows = [{"series": f"{proj} cfg={w:g}", "projection": proj, "cfg_scale": w, "position": k,
                 "norm_mean": 2.83 * (1 + (drift if proj == "none" and w == 6 else 0.01) * k / (L - 1)),
                 "norm_q05": 2.7, "norm_q95": 3.0} for proj in ("sphere", "none") for w in (1.0, 6.0) for k in range(L)]
        pd.DataFrame(rows).to_csv(root / evaluation_file(params, p, "norm_trajectory.csv"), index=False)
        error_split = pd.DataFrame([{"position": k, "series": series, "error": TF_SUMMARY[p][key]}
                                    for series, key in SPLIT_KEYS.items() for k in range(L)])
        error_split.to_csv(root / evaluation_file(params, p, "error_split.csv"), index=False)
        png(root / evaluation_file(params, p, "norm_trajectory.png"))
        png(root / evaluation_file(params, p, "error_split.png"))


RADIUS = 2.8284  # sqrt(8)
STOPPED_FD = 999.0  # an ASHA-stopped trial: must not enter any mean


def sweep_rows(numbers=NUMBERS, stopped=True):
    """Trial rows as `pipelines.sweep` collects them (projection `auto` resolved per posterior)."""
    for p in numbers:
        for w in CFGS:
            for s in SEEDS:
                projection = "none" if p == "gaussian" else "sphere"
                drift = 0.02 * w if projection == "none" else 0.01
                yield {"trial": f"{p}-w{w}-s{s}", "status": "done", "posterior": p, "radius": RADIUS,
                       "projection": projection, "sampler_steps": 50, "cfg_scale": w, "train": False, "seed": s,
                       "fd_classifier": numbers[p][3] + FD_SLOPE[p] * (w - 1) + 0.1 * s, "kid_classifier": 0.01,
                       "class_consistency_classifier": 0.5 + 0.1 * w, "norm_mean": RADIUS * (1 + drift),
                       "norm_rel_dev_mean": drift / 2, "norm_rel_dev_max": drift, "norm_rel_slope": 0.0,
                       "mlflow_run_id": f"run{s}"}
    if stopped:
        yield {"trial": "spherical-w4.5-s9", "status": "stopped", "posterior": "spherical", "radius": RADIUS,
               "projection": "sphere", "sampler_steps": 50, "cfg_scale": 4.5, "train": False, "seed": 9,
               "fd_classifier": STOPPED_FD, "mlflow_run_id": "run9"}


def write_sweep_outputs(out: Path, numbers=NUMBERS) -> None:
    """results.csv and summary.csv through the sweep stage's own table code."""
    from sphereard.sweep.results import aggregate_over_seeds, results_frame

    out.mkdir(parents=True, exist_ok=True)
    results = results_frame(list(sweep_rows(numbers)))
    results.to_csv(out / "results.csv", index=False)
    aggregate_over_seeds(results).to_csv(out / "summary.csv", index=False)


def make_report(root: Path, monkeypatch) -> str:
    monkeypatch.chdir(root)
    write_report(load_params("params.yaml"), Path("reports"))
    return (root / "reports" / "report.md").read_text()


CELL_SEPARATOR = re.compile(r"(?<!\\)\|")  # a pipe, unless escaped (`\|` is a literal | inside a cell)


def table_cells(line: str) -> list[str]:
    """The cells of one markdown table row (GitHub rules: a cell's own | must be escaped as \\|)."""
    inner = line.strip().removeprefix("|")
    inner = inner[:-1] if inner.endswith("|") and not inner.endswith("\\|") else inner
    return [c.strip().replace("\\|", "|") for c in CELL_SEPARATOR.split(inner)]


def tables(md: str) -> list[list[dict]]:
    """Every markdown table as a list of {header: cell} rows (a row with more cells than its header fails)."""
    out, block = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            block.append(table_cells(line))
        elif block:
            out.append([dict(zip(block[0], row, strict=True)) for row in block[2:]])
            block = []
    return out


def table_with(md: str, column: str) -> dict[str, dict]:
    found = [t for t in tables(md) if t and column in t[0]]
    assert found, f"no table with a {column!r} column"
    return {row[next(iter(row))]: row for row in found[0]}


@pytest.fixture
def root(tmp_path):
    fake_outputs(tmp_path)
    return tmp_path


def test_report_tables_numbers_and_figures(root, monkeypatch):
    md = make_report(root, monkeypatch)
    recon, gen = table_with(md, "rfd_classifier_sample"), table_with(md, "fd_classifier")
    for p, (psnr, ssim, rfd, fd, cc, _) in NUMBERS.items():
        sample = (recon[p]["psnr_sample"], recon[p]["ssim_sample"], recon[p]["rfd_classifier_sample"])
        mode = (recon[p]["psnr_mode"], recon[p]["ssim_mode"], recon[p]["rfd_classifier_mode"])
        assert sample == (fmt(psnr), fmt(ssim), fmt(rfd)) and mode == tuple(map(fmt, mode_decode(psnr, ssim, rfd)))
        assert (gen[p]["fd_classifier"], gen[p]["class_consistency_classifier"]) == (fmt(fd), fmt(cc))
    assert list(recon["spherical"]) == ["tokenizer", "psnr_mode", "psnr_sample", "ssim_mode", "ssim_sample",
                                        "rfd_classifier_mode", "rfd_classifier_sample", "eval images"]
    assert recon["gaussian_norm"]["psnr_sample"] == "25.25" and gen["gaussian"]["fd_classifier"] == "6.75"
    teacher = table_with(md, "tf_radial_floor")
    assert list(teacher["spherical"])[1:] == ["tf_radial_error", "tf_radial_floor", "tf_radial_excess",
                                              "tf_tangential_error", "tf_tangential_floor", "tf_tangential_excess",
                                              "tf_radial_fraction"]
    assert (teacher["gaussian"]["tf_radial_error"], teacher["gaussian"]["tf_radial_floor"],
            teacher["gaussian"]["tf_radial_excess"]) == ("0.9", "0.5", "0.4")
    assert (gen["gaussian"]["projection"], gen["spherical"]["projection"], gen["spherical"]["samples"]) == (
        "none", "sphere", "1,000")
    assert {"kid_classifier", "precision_classifier", "recall_classifier", "is_classifier"} <= set(
        gen["spherical"])
    assert "lpips_vgg` absent" in md and "`test_accuracy`: 0.9125" in md
    timing = table_with(md, "tokens/s (sample, AR only)")
    assert timing["spherical"]["tokens/s (sample, AR only)"] == "480"
    assert timing["gaussian"]["train tokens/s (train_ar)"] == "12,345"
    sweep = table_with(md, "w=4.5")  # first sweep table: fd_classifier, mean ± 95% t half-width over the 2 seeds
    assert sweep["gaussian"]["w=4.5"] == (f"{fmt(6.75 + 2.0 * 3.5 + 0.05)} ± "
                                          f"{fmt(half_width(np.std([0, 0.1], ddof=1), 2))}")
    assert sweep["spherical"]["w=4.5"].startswith(fmt(3.25 + 0.1 * 3.5 + 0.05)), "stopped trial averaged in"
    assert list(sweep) == list(POSTERIORS) and "1 stopped early and left out" in md
    assert ("Settings per tokenizer: radius 2.828; projection: spherical sphere, gaussian_norm sphere, gaussian none; "
            "sampler_steps 50; train False.") in md
    figures = {f.name for f in (root / "reports" / "figures").iterdir()}
    assert {"sweep_fd_classifier_vs_cfg.png", "norm_trajectories.png", "error_split.png",
            "samples_gaussian.png", "reconstructions_spherical.png", "norm_trajectory_gaussian_norm.png"} <= figures
    for name in re.findall(r"\]\((figures/[^)]+)\)", md):
        assert (root / "reports" / name).is_file(), f"{name} linked but not written"
    assert "Absent optional inputs" not in md
    assert "FID" not in md and not re.search(r"fid", md, re.I), "no fid_inception value: the word must not appear"
    for table in tables(md):  # every metric column names its extractor
        for column in table[0] if table else ():
            assert not re.fullmatch(r"(fd|rfd|kid|precision|recall|is|class_consistency)", column)
    assert not [p for p in root.iterdir() if p.name.startswith(".reports.tmp")], "temporary folder left behind"


def test_every_table_row_has_as_many_cells_as_its_header(root, monkeypatch):
    """A | inside a cell (a formula such as |mean - R|) must be escaped, or Markdown splits the cell."""
    md = make_report(root, monkeypatch)
    header = None
    for line in md.splitlines():
        if not line.startswith("|"):
            header = None
        elif header is None:
            header = table_cells(line)
        else:
            assert len(table_cells(line)) == len(header), f"{len(header)} columns {header}, row: {line}"


def test_fid_only_with_fid_inception(tmp_path, monkeypatch):
    fake_outputs(tmp_path, sweep=False, optional=False,
                 extra_eval={"fid_inception": 55.5, "recon_rfid_inception_mode": 9.5,
                             "recon_rfid_inception_sample": 9.25})
    md = make_report(tmp_path, monkeypatch)
    assert table_with(md, "fid_inception")["spherical"]["fid_inception"] == "55.5"
    recon = table_with(md, "rfid_inception_sample")["spherical"]
    assert (recon["rfid_inception_mode"], recon["rfid_inception_sample"]) == ("9.5", "9.25")
    assert "FID" in md


AT_TOP = {  # sweep fd_classifier at w=4.5 per swap; 2 seeds, 95% t half-width 0.635 each: gaps < 1.27 tie
    "spherical": "**spherical** has the lowest `fd_classifier` (3.65); then gaussian_norm 6.3; then gaussian 13.8.",
    "gaussian_norm": ("**spherical, gaussian_norm** tie for the lowest `fd_classifier` (spherical 4.9, gaussian_norm "
                      "5.05: no difference beyond the tolerance); then gaussian 13.8."),
    "gaussian": ("**gaussian_norm, spherical** tie for the lowest `fd_classifier` (gaussian_norm 6.3, spherical 7.15: "
                 "no difference beyond the tolerance); then gaussian 10.3.")}


@pytest.mark.parametrize("best", POSTERIORS)
def test_derived_statements_follow_the_numbers(tmp_path, monkeypatch, best):
    """Swap which posterior has the lowest fd_classifier: the statements must follow the numbers."""
    numbers = dict(NUMBERS)
    numbers[best], numbers["spherical"] = NUMBERS["spherical"], NUMBERS[best]
    fake_outputs(tmp_path, numbers, optional=False)
    monkeypatch.chdir(tmp_path)
    params = load_params("params.yaml")
    md = "\n".join(section_findings(params, load_inputs(params)))
    shows = md.split("## What the numbers show")[1].split("## What they do not show")[0]
    assert f"**{best}** has the lowest `fd_classifier` (3.25);" in shows
    assert f"**{best}** has the highest `class_consistency_classifier`" in shows
    top_psnr = max(numbers, key=lambda p: numbers[p][0])  # on decode(sample); decode(mode) ranks the other way
    bottom_psnr = min(numbers, key=lambda p: numbers[p][0])
    assert ("Reconstruction ranked on decode(posterior sample), the latents the generator learns: "
            f"**{top_psnr}** has the highest `psnr_sample` ({fmt(numbers[top_psnr][0])});") in shows
    assert (f"For comparison, decode(posterior mode): **{bottom_psnr}** has the highest `psnr_mode` "
            f"({fmt(50.0 - numbers[bottom_psnr][0])});") in shows
    assert (f"The two decodes pick different tokenizers: **{top_psnr}** on the sample, **{bottom_psnr}** on the "
            "mode.") in shows
    assert f"**{top_psnr}** has the lowest `rfd_classifier_sample`" in shows
    if top_psnr != best:
        assert f"**{top_psnr}** has the highest `psnr_sample`, **{best}** the lowest `fd_classifier`" in shows
    drifting = [p for p in POSTERIORS if numbers[p][5] > 0.05]
    assert (f"at the highest diagnostic CFG scale (w=6, threshold 5%): beyond the threshold: {', '.join(drifting)};"
            in shows)
    assert "`precision_classifier`: no difference beyond the tolerance between spherical, gaussian_norm, gaussian" \
        in shows
    assert ("Up to w=4.5, `fd_classifier` stays within the tolerance of its best for spherical; rises beyond it for "
            "gaussian_norm (") in shows
    assert f"At w=4.5: {AT_TOP[best]}" in shows
    assert ("Sweep `norm_rel_dev_max` at w=4.5 (pre-projection token norm vs R, threshold 5%): beyond for "
            "gaussian (9.0%); within for ") in shows
    assert ("Teacher-forced error over its floor (the same split between two independent posterior samples of a "
            "token, what a model predicting exact posterior samples scores; the excess is what the model adds): "
            "spherical radial 0.6 vs floor 0.5 (`tf_radial_excess` 0.1), tangential 1.5 vs floor 1 "
            "(`tf_tangential_excess` 0.5); gaussian_norm radial 0.5 vs floor 0.5 (at its floor), ") in shows
    assert ("**gaussian_norm** has the lowest `tf_radial_excess` (0); then spherical 0.1; then gaussian 0.4."
            in shows)
    assert "`tf_tangential_excess`: no difference beyond the tolerance between spherical, gaussian_norm" in shows
    assert "tf_radial_fraction" not in shows, "the findings read the excess over the floor"
    assert "most stable" not in shows.lower() and "+0%" not in shows
    caveats = md.split("## What they do not show")[1]
    assert "Small budget: tokenizers trained n/a steps" in caveats, "no export meta written: the count is unknown"
    assert "generators 1,500 steps" in caveats and "test accuracy 0.9125" in caveats
    assert "The sweep has 2 trial(s) per point: sweep differences count only beyond the 95% t-intervals" in caveats
    assert "against 10,000 real images" in caveats and "from 1,000 samples" in caveats


def test_missing_sweep_and_optional_pieces_are_reported(tmp_path, monkeypatch):
    fake_outputs(tmp_path, sweep=False, optional=False)
    md = make_report(tmp_path, monkeypatch)
    assert "**No sweep outputs**" in md and "nothing is claimed about metric vs CFG scale" in md
    assert ("Single seed (run seed 0, sampling.seed 0) and one training run per tokenizer for the main tables" in md
            and "The sweep has" not in md)
    absent = md.split("## Absent optional inputs")[1]
    for name in ("outputs/samples/gaussian/seed0/info.json", "metrics/sampling/gaussian/seed0.json",
                 "data/shards/manifest.json", "data/latents/spherical/seed0/cache.json",
                 "outputs/metrics/spherical/seed0/error_split.csv"):
        assert f"- `{name}`" in absent
    assert "Data manifest absent: images per class unknown." in md
    assert ("cache meta absent (`data/latents/<posterior>/seed<k>/cache.json`): no count; setting "
            "`encode.max_images`") in md
    assert "(sampling info absent: no counts)" in md
    assert table_with(md, "images/s (sample)")["spherical"]["images/s (sample)"] == "n/a"
    assert "(absent)" in md and not (tmp_path / "reports" / "figures" / "norm_trajectories.png").exists()


def test_malformed_optional_csv_is_left_out_and_named(tmp_path, monkeypatch):
    fake_outputs(tmp_path, sweep=False)
    root = tmp_path
    (root / "outputs/metrics/gaussian/seed0/norm_trajectory.csv").write_text("position,norm\n0,1.0\n")
    md = make_report(root, monkeypatch)
    absent = md.split("## Absent optional inputs")[1]
    assert ("outputs/metrics/gaussian/seed0/norm_trajectory.csv (unreadable: series, projection, cfg_scale, norm_mean)"
            in absent)
    assert (root / "reports" / "figures" / "norm_trajectories.png").is_file()  # the other two tokenizers


@pytest.mark.parametrize("missing", ["metrics/tokenizer/gaussian_norm/seed0.json",
                                     "metrics/generator/spherical/seed0.json",
                                     "metrics/evaluation/gaussian/seed0.json"])
def test_missing_required_metrics_is_a_user_error_naming_it(root, monkeypatch, missing):
    old = root / "reports" / "report.md"
    old.parent.mkdir()
    old.write_text("previous report")
    (root / missing).unlink()
    with pytest.raises(UserError, match=f"^{re.escape(missing)}: required metrics file missing"):
        make_report(root, monkeypatch)
    assert old.read_text() == "previous report", "a failed run must leave the old report"


def test_stage_entry_point_exits_2_naming_the_file(root, monkeypatch, capsys):
    (root / "metrics/evaluation/gaussian/seed0.json").write_text("{not json")
    monkeypatch.chdir(root)
    monkeypatch.setattr(sys, "argv", ["pipelines.report", "--params", "params.yaml"])
    with pytest.raises(SystemExit) as exit_info:
        stage_main(report.__doc__, report.run, report.add_args)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: metrics/evaluation/gaussian/seed0.json: not valid JSON")


def test_sweep_summary_csv_fallback(tmp_path):
    write_sweep_outputs(tmp_path)
    from_results, _ = load_sweep(tmp_path)
    (tmp_path / "results.csv").unlink()
    summary, note = load_sweep(tmp_path)
    assert f"From `{tmp_path / 'summary.csv'}`" in note
    for frame in (summary, from_results):  # same numbers either way; the stopped trial is left out
        row = frame[(frame.posterior == "spherical") & (frame.cfg_scale == 4.5)].iloc[0]
        assert row["fd_classifier_mean"] == pytest.approx(3.25 + 0.1 * 3.5 + 0.05) and row["n"] == 2
    (tmp_path / "results.csv").write_text("a,b\n1,2\n")  # results.csv wins, and is unreadable: said, no crash
    summary, note = load_sweep(tmp_path)
    assert summary is None and "unreadable" in note and "posterior" in note


def _mlflow_store(root: Path) -> str:
    """A sqlite MLflow store as the stages log it: a VAE run, a sweep parent with one child run per trial."""
    from sphereard.config import TrackingConfig
    from sphereard.tracking import start_run

    cfg = TrackingConfig(store="mlflow.db", artifacts="mlartifacts")
    with start_run(cfg, root, "vae-spherical", params={"posterior": "spherical"}, tags={"stage": "train_vae"}) as r:
        r.log_metrics({"recon/psnr": 24.5}, step=1000)
    with start_run(cfg, root, "sweep-default-16trials", tags={"stage": "sweep"}) as parent:
        for row in sweep_rows({p: NUMBERS[p] for p in ("spherical", "gaussian")}, stopped=False):
            logged = {k: row[k] for k in ("posterior", "radius", "cfg_scale", "projection", "sampler_steps", "seed",
                                          "train")}
            with start_run(cfg, root, row["trial"], params={**logged, "kind": "sample"},
                           tags={"stage": "sweep_trial"}, parent_run_id=parent.run_id) as child:
                child.log_metrics({k: row[k] for k in ("fd_classifier", "norm_rel_dev_max")}, step=0)
    return f"sqlite:///{root / 'mlflow.db'}"


def test_notebook_runs_headless_on_constructed_outputs(root, monkeypatch):
    import nbclient
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    assert "SPHEREARD_ROOT" in nb.cells[0].source or "SPHEREARD_ROOT" in nb.cells[1].source
    uri = _mlflow_store(root)
    figures = root / "nb_figures"
    monkeypatch.setenv("SPHEREARD_ROOT", str(root))
    monkeypatch.setenv("SPHEREARD_FIGURES", str(figures))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # the kernel imports this checkout's sphereard (a worktree's, not the one installed in the environment)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    shutil.copy(NOTEBOOK, root / "analysis.ipynb")
    nbclient.NotebookClient(nb, timeout=NOTEBOOK_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(root)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert {"metric_vs_cfg.png", "metric_vs_cfg_mlflow.png", "recon_vs_generation.png",
            "norm_trajectories.png"} <= {f.name for f in figures.iterdir()}
    assert "sweep child runs in MLflow: 16" in text
    assert "max |results.csv - MLflow| fd_classifier mean: 0" in text


# ---- issue 12: the report says only what the numbers support ----

ROW_KEYS = {"tokenizer", "item", "value", "tokenizer / setting", "class", "name"}  # row labels, not quantities
TEXT_COLUMNS = {"claim", "verdict", "evidence"}  # the Verdicts table's words (sphereard/report/verdicts.py)
SWEEP_OR_NORM_COLUMN = re.compile(r"^((none|sphere) )?w=[0-9.]+$")


def definitions_of(md: str) -> str:
    return md.split("## Definitions")[1].split("\n## ")[0]


def test_comparison_rule_ties_within_tolerance_and_intervals():
    assert compare(36.71, 36.71) == 0 and compare(13.88, 13.86) == 0, "within 2%: a tie"
    assert compare(1.0, 1.0 + 3 * REL_TOL) == -1 and compare(15.29, 13.9) == 1
    hw = half_width(np.std([0, 0.1], ddof=1), 2)  # t(0.975, 1) = 12.706: a wide interval for two seeds
    assert hw == pytest.approx(12.706 * 0.070711 / np.sqrt(2), rel=1e-3)
    assert compare(4.9, 5.05) == -1 and compare(4.9, 5.05, hw, hw) == 0, "overlapping 95% intervals: a tie"
    assert half_width(0.5, 1) == 0.0 and half_width(float("nan"), 3) == 0.0


def test_ties_are_not_ranked():
    tied = rank("fd_classifier", {"spherical": 36.71, "gaussian_norm": 36.71, "gaussian": 36.72}, lower_better=True)
    assert tied.startswith("`fd_classifier`: no difference beyond the tolerance between")
    assert "**" not in tied and "lowest" not in tied
    partly = rank("recall_classifier", {"spherical": 0.1349, "gaussian_norm": 0.2443, "gaussian": 0.2444}, False)
    assert partly.startswith("**gaussian, gaussian_norm** tie for the highest `recall_classifier`")
    assert partly.endswith("then spherical 0.1349.")
    # single linkage: A-B and B-C each within 2%, so all three tie even though A-C is 3% apart
    chained = rank("fd_classifier", {"a": 10.0, "b": 10.15, "c": 10.3}, lower_better=True)
    assert chained.startswith("`fd_classifier`: no difference beyond the tolerance between"), chained


def test_flat_sweep_and_unchanged_norm_are_not_called_trends(tmp_path, monkeypatch):
    """The old report: `best 18.36 at w=6, 18.36 at w=6 (+0% from its best)`, 'most stable ... (+0%)',
    and 13.86 -> 13.88 'grows with CFG'."""
    flat = {p: (*NUMBERS[p][:3], 18.36, NUMBERS[p][4], NUMBERS[p][5]) for p in NUMBERS}
    fake_outputs(tmp_path, flat, sweep=False, extra_eval={"norm_rel_dev_none_cfg1": 0.1386,
                                                          "norm_rel_dev_none_cfg6": 0.1388})
    rows = [dict(r, fd_classifier=18.36 + 0.001 * r["cfg_scale"]) for r in sweep_rows(flat, stopped=False)
            if r["seed"] == 0]
    from sphereard.sweep.results import results_frame
    (tmp_path / "outputs" / "sweep").mkdir(parents=True)
    results_frame(rows).to_csv(tmp_path / "outputs" / "sweep" / "results.csv", index=False)
    md = make_report(tmp_path, monkeypatch)
    shows = md.split("## What the numbers show")[1].split("## What they do not show")[0]
    assert "grows with CFG" not in shows and "+0%" not in shows and "most stable" not in shows.lower()
    assert "no difference beyond the tolerance from w=1 (13.9%)" in shows
    assert "`fd_classifier`: no difference beyond the tolerance between spherical, gaussian_norm, gaussian" in shows
    assert "At w=4.5: `fd_classifier`: no difference beyond the tolerance between" in shows
    assert "stays within the tolerance of its best for spherical, gaussian_norm, gaussian; rises beyond it for none" \
        in shows
    assert "**Comparison rule.**" in md and "2% of max(|a|, |b|)" in md, "the tolerance is stated"


def test_counts_are_read_from_the_outputs_not_params(root, monkeypatch):
    md = make_report(root, monkeypatch)
    run = table_with(md, "value")
    assert load_params(root / "params.yaml").encode.max_images == 20_000
    assert run["latent cache"]["value"] == ("3,303 images (every train image), horizontal flips not cached "
                                            "(latent cache meta)")
    assert "20,000" not in md
    assert run["sampling"]["value"].startswith("1,000 images = 10 classes x 100, cfg_scale 3 (linear)")
    assert "projection spherical sphere, gaussian_norm sphere, gaussian none" in run["sampling"]["value"]
    assert run["data"]["value"] == "fashion_mnist, 32x32x1, 10 classes, 5,450 train / 545 test images (data manifest)"
    assert run["tokenizers"]["value"].endswith("trained 800 steps (export meta) at batch 32")
    assert run["classifier"]["value"] == "trained 600 steps (classifier info)"


def test_every_quantity_in_the_tables_is_defined(root, monkeypatch):
    md = make_report(root, monkeypatch)
    defined = definitions_of(md)
    names = {h for t in tables(md) if t for h in t[0]} | set(re.findall(r"^### (\S+)$", md, re.M))
    assert TEXT_COLUMNS <= names, "the Verdicts table is in the report"
    quantities = {h for h in names if h not in ROW_KEYS | TEXT_COLUMNS and not SWEEP_OR_NORM_COLUMN.match(h)}
    assert {"fd_classifier", "kid_classifier", "precision_classifier", "recall_classifier", "is_classifier",
            "class_consistency_classifier", "rfd_classifier_mode", "rfd_classifier_sample", "psnr_mode",
            "psnr_sample", "ssim_sample", "tf_radial_error", "tf_radial_floor", "tf_radial_excess",
            "tf_tangential_floor", "tf_tangential_excess", "tf_radial_fraction", "norm_rel_dev_max",
            "norm_rel_dev_mean", "samples", "train share"} <= quantities
    for name in sorted(quantities):
        assert f"- `{name}`: " in defined, f"{name} is in a table but not defined"
    assert "- `norm_rel_dev_<projection>_cfg<w>`: " in defined and "- `R`: " in defined
    assert "`norm_rel_dev_max` can be smaller than `norm_rel_dev_mean`" in defined
    assert "max over token positions k of |mean_n ||z_nk|| - R| / R" in defined


def test_class_counts_table_and_imbalance(tmp_path, monkeypatch):
    """Per-class counts with names; one class over 2x the smallest is flagged (emoji: one group is 58%)."""
    names = ["Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink"]
    fake_outputs(tmp_path, sweep=False)
    write_manifest(tmp_path, train=[1916, 800, 400, 187], names=names)
    md = make_report(tmp_path, monkeypatch)
    counts = table_with(md, "train share")
    assert (counts["0"]["name"], counts["0"]["train"], counts["0"]["test"], counts["0"]["train share"]) == (
        "Smileys & Emotion", "1,916", "191", "58.0%")
    assert counts["3"]["name"] == "Food & Drink"
    assert ("Class imbalance: the largest class **Smileys & Emotion** holds 58.0% of the train images (1,916), "
            "10.2x the smallest, **Food & Drink** (187)") in md
    assert "class-mix mismatch" in md
    csv = pd.read_csv(tmp_path / "reports" / "class_counts.csv")
    assert list(csv["train"]) == [1916, 800, 400, 187]


def test_class_counts_from_the_shards_without_manifest_counts(tmp_path):
    """A manifest without `class_counts`: counted from the shards' label column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    labels = {"train": [0, 0, 0, 1], "test": [1, 1]}
    manifest = {"num_classes": 2, "classes": ["a", "b"], "splits": {}}
    for split, ys in labels.items():
        pq.write_table(pa.table({"label": pa.array(ys, pa.int32())}), tmp_path / f"{split}-00000.parquet")
        manifest["splits"][split] = {"rows": len(ys), "shards": [{"file": f"{split}-00000.parquet", "rows": len(ys)}]}
    counts = class_counts(tmp_path, manifest)
    assert counts[["name", "train", "test"]].values.tolist() == [["a", 3, 0], ["b", 1, 2]]


def test_grids_label_every_row_with_its_class_name(tmp_path, monkeypatch):
    from sphereard.ar.sample_set import write_grids
    from sphereard.eval import figures
    from sphereard.sweep import trial

    images = np.random.default_rng(0).integers(0, 255, (12, 8, 8, 1), dtype=np.uint8)
    labels = np.repeat(np.arange(3), 4)
    names = ["T-shirt/top", "Trouser", "Pullover"]
    rows = [images[labels == c] for c in range(3)]
    named, other = figures.class_grid(rows, names), figures.class_grid(rows, ["Bag", "Coat", "Dress"])
    bare = figures.class_grid(rows, ["", "", ""])
    assert named.width > bare.width, "a label column left of the tiles"
    assert np.asarray(named).tobytes() != np.asarray(other).tobytes(), "the names are drawn"
    label_area = np.asarray(named)[:, : named.width - bare.width]
    assert (label_area < 100).any(), "dark text in the label column"

    seen = []
    real = figures.class_grid
    monkeypatch.setattr(figures, "class_grid", lambda r, lab, **kw: seen.append(list(lab)) or real(r, lab, **kw))
    write_grids(tmp_path / "grids", np.repeat(images, 3, axis=3), labels, 3, names)
    trial.overview_grid(images, labels, tmp_path / "trial.png", names)
    trial.overview_grid(images, labels, tmp_path / "trial_ids.png")
    assert [["T-shirt/top", ""], ["Trouser", ""], ["Pullover", ""], names, names,  # class files: 2 x 2 tiles
            ["class 0", "class 1", "class 2"]] == seen
    assert {p.name for p in (tmp_path / "grids").iterdir()} == {"class_00.png", "class_01.png", "class_02.png",
                                                                 "overview.png"}
    write_manifest(tmp_path, train=[5, 5, 5], names=names)
    assert figures.read_class_names(tmp_path / "data" / "shards", 3) == names
    assert figures.read_class_names(tmp_path / "data" / "shards", 4) is None  # another class count: ids instead


def test_one_colour_per_tokenizer_in_every_figure_and_R_lines(tmp_path, monkeypatch):
    """Every plot function takes its colours from the one POSTERIOR_COLOURS mapping (patched here);
    the norm plots draw R."""
    import torch
    from matplotlib.axes import Axes
    from matplotlib.colors import to_hex

    from sphereard.eval import diagnostics, figures
    from sphereard.report import figures as report_figures
    from sphereard.sweep.outputs import write_outputs
    from sphereard.sweep.plots import plot_sweep
    from sphereard.sweep.results import aggregate_over_seeds, results_frame

    monkeypatch.setitem(figures.POSTERIOR_COLOURS, "spherical", "#123456")
    lines, refs = [], []
    real_plot, real_errorbar, real_axhline = Axes.plot, Axes.errorbar, Axes.axhline

    def record(real):
        def wrapper(self, *args, **kw):
            if kw.get("label") is not None:
                lines.append((str(kw["label"]), to_hex(kw["color"]) if "color" in kw else None))
            return real(self, *args, **kw)
        return wrapper

    monkeypatch.setattr(Axes, "plot", record(real_plot))
    monkeypatch.setattr(Axes, "errorbar", record(real_errorbar))
    monkeypatch.setattr(Axes, "axhline", lambda self, y, **kw: refs.append(y) or real_axhline(self, y, **kw))
    norms = {f"{proj} cfg={w:g}": torch.full((4, L), RADIUS) for proj in ("sphere", "none") for w in (1, 6)}
    diagnostics.plot_norm_trajectories(norms, RADIUS, tmp_path / "a.png", posterior="spherical")
    diagnostics.plot_error_split({"spherical": {series: torch.rand(4, L) for series in SPLIT_KEYS}}, tmp_path / "b.png")
    results = results_frame(list(sweep_rows(stopped=False)))
    write_outputs(tmp_path / "sweep", results, aggregate_over_seeds(results))  # plot_sweep per metric
    summary, _ = load_sweep(tmp_path / "sweep")
    plot_sweep(summary, "fd_classifier", tmp_path / "c.png")
    (tmp_path / "root").mkdir()
    fake_outputs(tmp_path / "root", sweep=False)
    run = load_params(tmp_path / "root" / "params.yaml").for_run(0)
    frame = pd.read_csv(tmp_path / "root" / evaluation_file(run, "spherical", "norm_trajectory.csv"))
    report_figures.plot_norm_overview({"spherical": frame}, {"spherical": RADIUS}, tmp_path / "d.png")
    split = pd.read_csv(tmp_path / "root" / evaluation_file(run, "spherical", "error_split.csv"))
    report_figures.plot_split_overview({"spherical": split}, tmp_path / "e.png")
    spherical = [colour for label, colour in lines if label.startswith(("spherical", "sphere cfg", "none cfg"))]
    assert len(spherical) == 4 + 4 + 4 + 1 + 4 + 4  # every plot function drew its spherical lines (+ floors)
    assert set(spherical) == {"#123456"}
    others = {label.split()[0]: colour for label, colour in lines if label.startswith(("gaussian", "gaussian_norm"))}
    assert others == {"gaussian": to_hex(figures.POSTERIOR_COLOURS["gaussian"]),
                      "gaussian_norm": to_hex(figures.POSTERIOR_COLOURS["gaussian_norm"])}
    assert refs == [RADIUS, RADIUS], "R drawn in both norm plots"


def test_norm_rel_dev_max_below_mean_is_spread_not_a_bug():
    """The relation the Definitions state: per position |mean_n ||z|| - R| <= mean_n | ||z|| - R |, so norms
    scattering on both sides of R give norm_rel_dev_max (drift of the mean) < norm_rel_dev_mean (spread)."""
    from sphereard.sweep.trial import norm_deviation

    spread = RADIUS * (1 + 0.1 * np.array([[1.0] * L, [-1.0] * L]))  # (2 samples, L): +-10% around R
    dev = norm_deviation(spread, RADIUS)
    assert dev["norm_rel_dev_max"] == pytest.approx(0.0, abs=1e-12) and dev["norm_rel_dev_mean"] == pytest.approx(0.1)
    drift = RADIUS * np.full((2, L), 1.1)  # every token 10% long: both are 10%
    assert norm_deviation(drift, RADIUS)["norm_rel_dev_max"] == pytest.approx(0.1)
    assert norm_deviation(drift, RADIUS)["norm_rel_dev_mean"] == pytest.approx(0.1)


def test_a_change_with_cfg_must_hold_at_every_step_and_beyond_the_floor():
    from sphereard.report.compare import trend

    assert trend([(1, 0.05), (3, 0.20), (6, 0.10)]) is None, "up then down is not monotone"
    assert trend([(1, 0.05), (3, 0.10), (6, 0.20)]) == 1 and trend([(1, 0.2), (3, 0.1), (6, 0.05)]) == -1
    assert trend([(1, 0.010), (6, 0.0104)], abs_floor=0.005) == 0, "0.04 points is below the floor"
    assert trend([(1, 0.010), (6, 0.0104)]) == 1, "without the floor 4% relative counts"
    assert trend([(1, 13.86), (6, 13.88)]) == 0


def test_kid_ranks_only_beyond_its_reported_std(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from sphereard.report.findings import generation_findings

    ev = {"a": {"fd_classifier": 10.0, "kid_classifier": 0.010, "kid_std_classifier": 0.004},
          "b": {"fd_classifier": 10.0, "kid_classifier": 0.015, "kid_std_classifier": 0.004}}
    inp = SimpleNamespace(posteriors=["a", "b"], metrics={"evaluation": ev, "tokenizer": {"a": {}, "b": {}}})
    kid = next(line for line in generation_findings(inp) if line and "kid_classifier" in line)
    assert kid.startswith("`kid_classifier`: no difference beyond the tolerance"), kid
    ev["b"]["kid_classifier"] = 0.030
    kid = next(line for line in generation_findings(inp) if line and "kid_classifier" in line)
    assert "**a**" in kid, kid


def test_convergence_section_states_the_plateau_schedule_and_noise(root, monkeypatch):
    md = make_report(root, monkeypatch)
    table = table_with(md, "kl_second_half_change")
    assert [table[p]["plateaued"] for p in POSTERIORS] == ["no", "yes", "yes"]
    assert table["spherical"]["kl_second_half_change"] == "0.23" and table["spherical"]["kappa_mean_final"] == "19.1"
    assert table["gaussian"]["kappa_mean_final"] == "n/a" and table["gaussian"]["std_mean_final"] == "0.4"
    assert "Learning rate `cosine`" in md and "may partly be a small step size" in md
    assert (root / "reports" / "figures" / "tokenizer_training.png").is_file()
    for name in ("plateaued", "kl_second_half_change", "cos_sample_mode_final", "kappa_mean_final"):
        assert f"- `{name}`: " in md, f"{name} has no definition"


def test_fd_against_an_adm_batch_names_its_own_statistics(root, monkeypatch):
    """With the verified Inception and an ADM batch, FD's reals are the file's whole-dataset mu / sigma,
    not the 10,000 images the reference stage counts: the definition and the caveat say so."""
    params = load_params(root / "params.yaml")
    for p in POSTERIORS:
        path = root / info_file(params, "evaluation", p)
        info = json.loads(path.read_text())
        info["reference_sources"] = {"classifier": "images", "inception": "adm_file"}
        write_json(path, info)
    md = make_report(root, monkeypatch)
    assert "real reference images, the `reference` stage's count" in md  # fd_classifier: fitted on images
    assert "against the ADM reference batch's whole-dataset statistics (FD)" in md


# ---- issue 15: the seed axis; every metric is a mean over the runs of `seeds` with its t-interval ----

def t_half(values) -> float:
    """The 95% Student t-interval half-width of the mean of `values`, straight from scipy."""
    from scipy import stats

    n = len(values)
    return float(stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / np.sqrt(n))


def test_estimate_is_the_mean_with_its_t_interval():
    from sphereard.utils.stats import Estimate, estimate

    e = estimate([1.0, 2.0, 4.0])
    assert isinstance(e, Estimate) and isinstance(e, float)
    assert float(e) == pytest.approx(7 / 3) and e.n == 3
    assert e.half == pytest.approx(4.303 * np.std([1.0, 2.0, 4.0], ddof=1) / np.sqrt(3), rel=1e-3)  # t(0.975, 2)
    assert e.half == pytest.approx(t_half([1.0, 2.0, 4.0]), rel=1e-12)
    assert e + 1 == pytest.approx(10 / 3) and not hasattr(e + 1, "half"), "arithmetic gives a plain float"
    one = estimate([5.5])
    assert (float(one), one.half, one.n) == (5.5, 0.0, 1)
    mixed = estimate([1.0, float("nan"), 2.0, float("inf"), None, 4.0, float("-inf")])  # only finite values count
    assert (float(mixed), mixed.half, mixed.n) == (float(e), e.half, 3)
    assert estimate([float("nan"), None]) is None and estimate([]) is None
    assert np.int64(3) == estimate([np.int64(3), np.float32(3.0)]) and estimate([np.int64(3), 3.0]).n == 2


def test_mean_over_seeds_averages_each_key_over_the_seeds():
    from sphereard.utils.stats import mean_over_seeds

    frame = pd.DataFrame({"series": ["a", "a", "b", "b"] * 2 + ["a", "a"],
                          "position": [0, 1, 0, 1] * 2 + [0, 1],
                          "seed": [0] * 4 + [1] * 4 + [2] * 2,
                          "norm_mean": [1.0, 2.0, 5.0, 6.0, 3.0, 2.0, 7.0, 6.0, 8.0, 2.0]})
    out = mean_over_seeds(frame, ["series", "position"], ["norm_mean"]).set_index(["series", "position"])
    expected = {("a", 0): [1.0, 3.0, 8.0], ("a", 1): [2.0, 2.0, 2.0], ("b", 0): [5.0, 7.0], ("b", 1): [6.0, 6.0]}
    assert sorted(out.index) == sorted(expected) and list(out.index) == list(expected), "first-appearance order"
    for key, values in expected.items():
        assert out.loc[key, "norm_mean"] == pytest.approx(np.mean(values))
        assert out.loc[key, "norm_mean_half"] == pytest.approx(t_half(values), abs=1e-12)
        assert out.loc[key, "n"] == len(values)
    single = mean_over_seeds(frame.drop(columns="seed"), ["series", "position"], ["norm_mean"])
    assert (single["n"] == 1).all() and (single["norm_mean_half"] == 0.0).all()
    assert single["norm_mean"].tolist() == frame["norm_mean"].tolist(), "no seed column: the rows as they are"


SEED_STEP = 0.5  # run k's metrics are the single-run numbers + SEED_STEP * k


def test_load_inputs_averages_every_metric_over_the_runs(tmp_path):
    """Two runs (seeds 0 and 1) written by hand: each metric is an Estimate over both, the CSV frames
    are stacked with their seed, and a metric only one run has averages that one."""
    from sphereard.utils.stats import Estimate

    fake_outputs(tmp_path, sweep=False, seeds=(0, 1), seed_step=SEED_STEP)
    params = load_params(tmp_path / "params.yaml")
    assert params.seeds == [0, 1]
    run1 = params.for_run(1)
    path = tmp_path / metrics_file(run1, "evaluation", "gaussian")
    assert path == tmp_path / "metrics/evaluation/gaussian/seed1.json"
    metrics = json.loads(path.read_text())
    del metrics["kid_classifier"]  # run 1 lacks one metric
    write_json(path, metrics)
    inp = load_inputs(params, tmp_path)
    assert inp.seeds == [0, 1] and inp.absent == []
    for p, (psnr, _, _, fd, _, _) in NUMBERS.items():
        for block, name, value in (("evaluation", "fd_classifier", fd), ("tokenizer", "psnr_sample", psnr),
                                   ("generator", "ema_loss", 0.42), ("sampling", "images_per_s", 7.5)):
            got = inp.metrics[block][p][name]
            runs = [value, value + SEED_STEP]
            assert isinstance(got, Estimate) and got.n == 2, (block, p, name)
            assert float(got) == pytest.approx(np.mean(runs)) and got.half == pytest.approx(t_half(runs))
    kid = inp.metrics["evaluation"]["gaussian"]["kid_classifier"]
    assert (float(kid), kid.half, kid.n) == (pytest.approx(6.75 / 100), 0.0, 1), "only run 0 has it"
    assert inp.metrics["evaluation"]["spherical"]["kid_classifier"].n == 2
    norms = inp.frames["norm_csv"]["spherical"]
    assert sorted(norms["seed"].unique()) == [0, 1] and len(norms) == 2 * 2 * 2 * L
    assert inp.classifier == {"test_accuracy": 0.9125}, "the shared classifier: one file, not per run"


def test_load_inputs_requires_every_run_and_names_the_missing_one(tmp_path):
    fake_outputs(tmp_path, sweep=False, optional=False, seeds=(0, 1))
    params = load_params(tmp_path / "params.yaml")
    (tmp_path / metrics_file(params.for_run(1), "tokenizer", "gaussian_norm")).unlink()
    missing = tmp_path / "metrics/tokenizer/gaussian_norm/seed1.json"
    with pytest.raises(UserError, match=f"^{re.escape(str(missing))}: required metrics file missing .*"
                                         r"train_vae@gaussian_norm-1"):
        load_inputs(params, tmp_path)
    inp = load_inputs(params, tmp_path, required=False)
    assert str(missing) in inp.absent
    psnr = inp.metrics["tokenizer"]["gaussian_norm"]["psnr_sample"]
    assert (float(psnr), psnr.n) == (25.25, 1), "the run that has it"


def test_fmt_shows_the_interval_of_a_mean_over_runs():
    from sphereard.utils.stats import Estimate, estimate

    assert fmt(Estimate(3.25, half=0.5, n=2)) == "3.25 ± 0.5"
    assert fmt(Estimate(12345.678, half=0.01234, n=3)) == f"{fmt(12345.678)} ± {fmt(0.01234)}"
    assert fmt(Estimate(3.25, half=0.0, n=1)) == fmt(3.25) == "3.25", "one run: the number alone"
    e = estimate([1.0, 2.0, 4.0])
    assert fmt(e) == f"{fmt(7 / 3)} ± {fmt(t_half([1.0, 2.0, 4.0]))}" and " ± " in fmt(e)


def test_compare_ties_estimates_whose_intervals_overlap():
    from sphereard.utils.stats import Estimate, estimate

    a, b = Estimate(10.0, half=0.3, n=3), Estimate(10.5, half=0.3, n=3)  # 5% apart, intervals overlap
    assert abs(10.5 - 10.0) > REL_TOL * 10.5
    assert compare(10.0, 10.5) == -1 and compare(10.5, 10.0) == 1, "plain floats: beyond the tolerance"
    assert compare(a, b) == 0 and compare(b, a) == 0, "means over runs: the intervals decide"
    assert compare(a, 10.5) == -1 and compare(10.0, b) == -1, "one interval alone (0.3) does not cover the gap"
    assert compare(Estimate(10.0, half=0.6, n=3), 10.5) == 0, "but a wider one does"
    narrow = Estimate(10.0, half=0.1, n=3), Estimate(10.5, half=0.1, n=3)  # 0.2 < 0.5: a difference
    assert compare(*narrow) == -1 and compare(*narrow[::-1]) == 1
    wide = estimate([9.0, 10.0, 11.0]), estimate([9.5, 10.5, 11.5])
    assert compare(*wide) == 0 and compare(float(wide[0]), float(wide[1])) == -1


def test_report_tables_show_means_over_runs_with_their_intervals(tmp_path, monkeypatch):
    fake_outputs(tmp_path, sweep=False, seeds=(0, 1), seed_step=SEED_STEP)
    md = make_report(tmp_path, monkeypatch)
    gen, recon = table_with(md, "fd_classifier"), table_with(md, "rfd_classifier_sample")
    for p, (psnr, _, _, fd, _, _) in NUMBERS.items():
        for cell, value in ((gen[p]["fd_classifier"], fd), (recon[p]["psnr_sample"], psnr)):
            runs = [value, value + SEED_STEP]
            assert cell == f"{fmt(np.mean(runs))} ± {fmt(t_half(runs))}", (p, cell)
    assert "The main tables average 2 runs per tokenizer (seeds 0, 1;" in md and "Single seed" not in md
