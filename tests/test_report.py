"""The `report` stage and notebooks/analysis.ipynb on constructed stage outputs.

A tmp repo root gets `params.yaml` (default profile) and fake outputs in the exact layout the
stages write (metrics.json per posterior, sample_stats.json, grids/overview.png, norm_trajectory /
error_split CSV + PNG, sweep results.csv + summary.csv through `sphereard.sweep.results`) with
numbers chosen so every derived statement is known; the notebook also gets a tmp MLflow sqlite store.
"""

import argparse
import json
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
from pipelines._report_findings import section_findings
from pipelines._report_parts import fmt, load_sweep
from sphereard.config import load_params
from sphereard.errors import UserError
from sphereard.profiles import render

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "analysis.ipynb"
POSTERIORS = ("spherical", "gaussian_norm", "gaussian")
L, CFGS, SEEDS = 8, (1.0, 2.0, 3.0, 4.5), (0, 1)
# per posterior: (psnr, ssim, rfd_classifier, fd_classifier, class_consistency, none-projection drift at w=6)
NUMBERS = {"spherical": (24.5, 0.81, 1.5, 3.25, 0.875, 0.03),
           "gaussian_norm": (25.25, 0.83, 1.25, 4.5, 0.8, 0.04),
           "gaussian": (26.0, 0.85, 1.0, 6.75, 0.625, 0.35)}
FD_SLOPE = {"spherical": 0.1, "gaussian_norm": 0.5, "gaussian": 2.0}  # sweep: fd growth per unit of CFG
NOTEBOOK_TIMEOUT_S = 120


def png(path: Path, size=(16, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size[::-1], 3), 128, np.uint8)).save(path)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def fake_outputs(root: Path, numbers=NUMBERS, sweep=True, optional=True, extra_eval=None) -> None:
    """Stage outputs under `root` (the default profile's relative paths)."""
    (root / "params.yaml").write_text(render("default"))
    out = root / "outputs"
    write_json(out / "classifier" / "metrics.json", {"test_accuracy": 0.9125, "steps": 600})
    for p, (psnr, ssim, rfd, fd, cc, drift) in numbers.items():
        write_json(out / "tokenizer" / p / "metrics.json", {"posterior": p, "psnr": psnr, "ssim": ssim,
                                                             "eval_images": 100, "recon_images_per_s": 512.0})
        write_json(out / "generator" / p / "metrics.json", {
            "posterior": p, "preset": "fmnist-s", "params": 1234567, "steps": 1500, "tokens_seen": 96000,
            "world_size": 1, "ema_loss": 0.42, "train_loss_window": 0.45, "train_tokens_per_s": 12345.0})
        write_json(out / "metrics" / p / "metrics.json", {
            "posterior": p, "fd_classifier": fd, "kid_classifier": fd / 100, "kid_std_classifier": 0.001,
            "precision_classifier": 0.7, "recall_classifier": 0.6, "is_classifier": 8.5, "is_std_classifier": 0.1,
            "class_consistency_classifier": cc, "recon_psnr": psnr, "recon_ssim": ssim, "recon_rfd_classifier": rfd,
            "norm_rel_dev_sphere_cfg1": 0.01, "norm_rel_dev_sphere_cfg6": 0.02, "norm_rel_dev_none_cfg1": 0.02,
            "norm_rel_dev_none_cfg6": drift, "tf_radial_error": 0.1, "tf_tangential_error": 0.9,
            "tf_radial_fraction": 0.01 if p != "gaussian" else 0.2, "num_samples": 1000, **(extra_eval or {})})
        if not optional:
            continue
        write_json(out / "samples" / p / "sample_stats.json", {
            "posterior": p, "device": "cpu", "num_images": 1000, "num_tokens": L, "images_per_s": 7.5,
            "tokens_per_s": 480.0, "generate_s": 100.0, "decode_s": 2.0, "norm_mean": 2.8,
            "settings": {"cfg_scale": 3.0, "projection": "none" if p == "gaussian" else "sphere"}})
        png(out / "samples" / p / "grids" / "overview.png")
        png(out / "tokenizer" / p / "reconstructions.png")
        rows = [{"series": f"{proj} cfg={w:g}", "projection": proj, "cfg_scale": w, "position": k,
                 "norm_mean": 2.83 * (1 + (drift if proj == "none" and w == 6 else 0.01) * k / (L - 1)),
                 "norm_q05": 2.7, "norm_q95": 3.0} for proj in ("sphere", "none") for w in (1.0, 6.0) for k in range(L)]
        pd.DataFrame(rows).to_csv(out / "metrics" / p / "norm_trajectory.csv", index=False)
        pd.DataFrame([{"position": k, "series": part, "error": err} for part, err in (("radial", 0.1), ("tangential", 0.9))
                      for k in range(L)]).to_csv(out / "metrics" / p / "error_split.csv", index=False)
        png(out / "metrics" / p / "norm_trajectory.png")
        png(out / "metrics" / p / "error_split.png")
    if sweep:
        write_sweep_outputs(out / "sweep", numbers)


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
    report.run(load_params("params.yaml"), argparse.Namespace(out="reports"))
    return (root / "reports" / "report.md").read_text()


def tables(md: str) -> list[list[dict]]:
    """Every markdown table as a list of {header: cell} rows."""
    out, block = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip("|").split("|")])
        elif block:
            out.append([dict(zip(block[0], row)) for row in block[2:]])
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
    recon, gen = table_with(md, "rfd_classifier"), table_with(md, "fd_classifier")
    for p, (psnr, ssim, rfd, fd, cc, _) in NUMBERS.items():
        assert (recon[p]["psnr"], recon[p]["ssim"], recon[p]["rfd_classifier"]) == (fmt(psnr), fmt(ssim), fmt(rfd))
        assert (gen[p]["fd_classifier"], gen[p]["class_consistency_classifier"]) == (fmt(fd), fmt(cc))
    assert recon["gaussian_norm"]["psnr"] == "25.25" and gen["gaussian"]["fd_classifier"] == "6.75"
    assert (gen["gaussian"]["projection"], gen["spherical"]["projection"], gen["spherical"]["samples"]) == (
        "none", "sphere", "1,000")
    assert {"kid_classifier", "precision_classifier", "recall_classifier", "is_classifier"} <= set(
        gen["spherical"])
    assert "lpips_vgg` absent" in md and "test accuracy: 0.9125" in md
    timing = table_with(md, "tokens/s (sample, AR only)")
    assert timing["spherical"]["tokens/s (sample, AR only)"] == "480"
    assert timing["gaussian"]["train tokens/s (train_ar)"] == "12,345"
    sweep = table_with(md, "w=4.5")  # first sweep table: fd_classifier, mean ± std over the 2 seeds
    assert sweep["gaussian"]["w=4.5"] == f"{fmt(6.75 + 2.0 * 3.5 + 0.05)} ± {fmt(np.std([0, 0.1], ddof=1))}"
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


def test_fid_only_with_fid_inception(tmp_path, monkeypatch):
    fake_outputs(tmp_path, sweep=False, optional=False,
                 extra_eval={"fid_inception": 55.5, "recon_rfid_inception": 9.25})
    md = make_report(tmp_path, monkeypatch)
    assert table_with(md, "fid_inception")["spherical"]["fid_inception"] == "55.5"
    assert table_with(md, "rfid_inception")["spherical"]["rfid_inception"] == "9.25"
    assert "FID" in md


@pytest.mark.parametrize("best", POSTERIORS)
def test_derived_statements_follow_the_numbers(tmp_path, monkeypatch, best):
    """Swap which posterior has the lowest fd_classifier: the statements must follow the numbers."""
    numbers = dict(NUMBERS)
    numbers[best], numbers["spherical"] = NUMBERS["spherical"], NUMBERS[best]
    fake_outputs(tmp_path, numbers, optional=False)
    monkeypatch.chdir(tmp_path)
    params = load_params("params.yaml")
    md = "\n".join(section_findings(params, report.load_inputs(params)))
    shows = md.split("## What the numbers show")[1].split("## What they do not show")[0]
    assert f"**{best}** has the lowest `fd_classifier` (3.25;" in shows
    assert f"**{best}** has the highest `class_consistency_classifier`" in shows
    top_psnr = max(numbers, key=lambda p: numbers[p][0])
    if top_psnr != best:
        assert f"**{top_psnr}** has the highest psnr, **{best}** the lowest `fd_classifier`" in shows
    drifting = [p for p in POSTERIORS if numbers[p][5] > 0.05]
    assert f"at the highest diagnostic CFG scale (w=6): **{', '.join(drifting)}** drift;" in shows
    assert "`precision_classifier` does not separate the tokenizers (" in shows
    stable = min(numbers, key=lambda p: FD_SLOPE[p] / (numbers[p][3] + 0.05))
    assert f"Most stable `fd_classifier` up to w=4.5: **{stable}**" in shows
    assert ("Sweep `norm_rel_dev_max` at w=4.5 (pre-projection token norm vs R, threshold 5%): beyond for "
            "gaussian (9.0%); within for ") in shows
    assert "radial share of teacher-forced squared error is largest for **gaussian** (20.0%)" in shows
    caveats = md.split("## What they do not show")[1]
    steps = params.tokenizer.train.steps
    assert f"Small budget: tokenizers trained {steps} steps" in caveats and "test accuracy 0.9125" in caveats
    assert "The sweep has 2 trial(s) per point (mean ± std)" in caveats
    assert "is larger than their summed seed std (0.1414)" in shows
    assert "against 10,000 real images" in caveats and "from 1,000 samples" in caveats


def test_missing_sweep_and_optional_pieces_are_reported(tmp_path, monkeypatch):
    fake_outputs(tmp_path, sweep=False, optional=False)
    md = make_report(tmp_path, monkeypatch)
    assert "**No sweep outputs**" in md and "nothing is claimed about metric vs CFG scale" in md
    assert "Single seed (seed=0" in md and "The sweep has" not in md
    absent = md.split("## Absent optional inputs")[1]
    assert "outputs/samples/gaussian/sample_stats.json" in absent
    assert "outputs/metrics/spherical/error_split.csv" in absent
    assert table_with(md, "images/s (sample)")["spherical"]["images/s (sample)"] == "n/a"
    assert "(absent)" in md and not (tmp_path / "reports" / "figures" / "norm_trajectories.png").exists()


def test_malformed_optional_csv_is_left_out_and_named(tmp_path, monkeypatch):
    fake_outputs(tmp_path, sweep=False)
    root = tmp_path
    (root / "outputs/metrics/gaussian/norm_trajectory.csv").write_text("position,norm\n0,1.0\n")
    md = make_report(root, monkeypatch)
    absent = md.split("## Absent optional inputs")[1]
    assert ("outputs/metrics/gaussian/norm_trajectory.csv (unreadable: series, projection, cfg_scale, norm_mean)"
            in absent)
    assert (root / "reports" / "figures" / "norm_trajectories.png").is_file()  # the other two tokenizers


@pytest.mark.parametrize("missing", ["outputs/tokenizer/gaussian_norm/metrics.json",
                                     "outputs/generator/spherical/metrics.json",
                                     "outputs/metrics/gaussian/metrics.json"])
def test_missing_required_metrics_is_a_user_error_naming_it(root, monkeypatch, missing):
    old = root / "reports" / "report.md"
    old.parent.mkdir()
    old.write_text("previous report")
    (root / missing).unlink()
    with pytest.raises(UserError, match=f"^{re.escape(missing)}: required metrics file missing"):
        make_report(root, monkeypatch)
    assert old.read_text() == "previous report", "a failed run must leave the old report"


def test_stage_entry_point_exits_2_naming_the_file(root, monkeypatch, capsys):
    (root / "outputs/metrics/gaussian/metrics.json").write_text("{not json")
    monkeypatch.chdir(root)
    monkeypatch.setattr(sys, "argv", ["pipelines.report", "--params", "params.yaml"])
    with pytest.raises(SystemExit) as exit_info:
        stage_main(report.__doc__, report.run, report.add_args)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: outputs/metrics/gaussian/metrics.json: not valid JSON")


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
    shutil.copy(NOTEBOOK, root / "analysis.ipynb")
    nbclient.NotebookClient(nb, timeout=NOTEBOOK_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(root)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert {"metric_vs_cfg.png", "metric_vs_cfg_mlflow.png", "recon_vs_generation.png",
            "norm_trajectories.png"} <= {f.name for f in figures.iterdir()}
    assert "sweep child runs in MLflow: 16" in text
    assert "max |results.csv - MLflow| fd_classifier mean: 0" in text
