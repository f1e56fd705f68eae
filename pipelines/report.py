"""DVC stage `report`: `reports/report.md` + `reports/figures/`, regenerated from the stage outputs.

    python -m pipelines.report [--params FILE] [--out reports]

The folder is built in a temporary sibling and renamed onto `--out` only when complete.
Required, per posterior in `tokenizer.posteriors` (a missing one is a UserError naming it):
  tokenizer.out/<p>/metrics.json, generator.out/<p>/metrics.json, evaluation.out/<p>/metrics.json
Optional (the report says which are absent): classifier.out/metrics.json, sampling.out/<p>/
sample_stats.json and grids/overview.png, tokenizer.out/<p>/reconstructions.png, evaluation.out/<p>/
norm_trajectory.{csv,png} and error_split.{csv,png}, sweep.out/results.csv (else summary.csv).
Metrics keep the stages' keys, which carry their feature extractor (`fd_classifier`, `kid_effnet`;
`fid_inception` only with the verified Inception weights); no metric is renamed.
Params read: profile, seed, data.{source,image_size,channels,max_per_class}, tokenizer.{preset,posteriors,
out,train.steps,train.batch_size}, generator.{preset,out,train.steps,train.batch_size}, sampling,
classifier.{out,steps}, evaluation.{extractors,out,num_real,diagnostic_samples,diagnostic_steps}, sweep.out.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from pipelines import _report_parts as parts
from pipelines._cli import stage_main
from pipelines._report_findings import section_findings
from pipelines._report_parts import fmt, md_table
from sphereard.config import Params
from sphereard.errors import UserError
from sphereard.eval.diagnostics import DRIFT_TOL
from sphereard.tracking import git_commit
from sphereard.utils.device import default_device
from sphereard.utils.io import atomic_path, read_json_object

log = logging.getLogger("pipelines.report")

REPORT_FILE, FIGURES_DIR = "report.md", "figures"
REQUIRED = {"tokenizer": "train_vae", "generator": "train_ar", "evaluation": "evaluate"}  # block -> stage
RECON_COLUMNS = ("psnr", "ssim")
LPIPS_KEY = "lpips_vgg"
CSV_COLUMNS = {"norm_csv": ("series", "projection", "cfg_scale", "position", "norm_mean"),
               "split_csv": ("position", "series", "error")}
TIMING_COLUMNS = (("sampling device", "stats", "device"), ("images/s (sample)", "stats", "images_per_s"),
                  ("tokens/s (sample, AR only)", "stats", "tokens_per_s"), ("generate s", "stats", "generate_s"),
                  ("decode s", "stats", "decode_s"), ("train tokens/s (train_ar)", "gen", "train_tokens_per_s"),
                  ("recon images/s (train_vae)", "tok", "recon_images_per_s"), ("generator params", "gen", "params"))


def read_json(path: Path, stage: str | None = None) -> dict | None:
    """A stage's JSON object; None if absent and optional (`stage` None), UserError if absent and required."""
    if not path.is_file():
        if stage is None:
            return None
        raise UserError(f"{path}: required metrics file missing (run `dvc repro {stage}`)")
    return read_json_object(path, "metrics file")


def read_csv(path: Path, columns: tuple[str, ...], absent: list[str]) -> pd.DataFrame | None:
    """An optional CSV with the columns the stage writes; None (noted in `absent`) if unreadable."""
    try:
        frame = pd.read_csv(path)
    except (ValueError, pd.errors.ParserError) as err:
        frame, missing = None, str(err)
    else:
        missing = ", ".join(c for c in columns if c not in frame)
    if missing:
        log.warning("%s: unreadable (%s); left out of the report", path, missing)
        absent.append(f"{path} (unreadable: {missing})")
        return None
    return frame


@dataclass
class Inputs:
    """Everything the report reads; optional pieces are None and listed in `absent`."""

    posteriors: list[str]
    metrics: dict[str, dict[str, dict]]  # block ("tokenizer" / "generator" / "evaluation") -> posterior -> json
    stats: dict[str, dict | None]  # sample_stats.json per posterior
    files: dict[str, dict[str, Path]]  # posterior -> optional figure / csv paths that exist
    frames: dict[str, dict[str, pd.DataFrame]]  # "norm_csv" / "split_csv" -> posterior -> evaluate's CSV
    classifier: dict | None
    sweep: pd.DataFrame | None
    sweep_note: str
    absent: list[str] = field(default_factory=list)


def optional_paths(params: Params, p: str) -> dict[str, Path]:
    ev = Path(params.evaluation.out) / p
    return {"reconstructions": Path(params.tokenizer.out) / p / "reconstructions.png",
            "overview": Path(params.sampling.out) / p / "grids" / "overview.png",
            "norm_csv": ev / "norm_trajectory.csv", "norm_png": ev / "norm_trajectory.png",
            "split_csv": ev / "error_split.csv", "split_png": ev / "error_split.png"}


def load_inputs(params: Params) -> Inputs:
    posteriors = list(params.tokenizer.posteriors)
    metrics = {block: {p: read_json(Path(getattr(params, block).out) / p / "metrics.json", f"{stage}@{p}")
                       for p in posteriors} for block, stage in REQUIRED.items()}
    absent, files, stats = [], {}, {}
    for p in posteriors:
        stats_path = Path(params.sampling.out) / p / "sample_stats.json"
        stats[p] = read_json(stats_path)
        absent += [] if stats[p] is not None else [str(stats_path)]
        found = optional_paths(params, p)
        absent += [str(path) for path in found.values() if not path.is_file()]
        files[p] = {k: path for k, path in found.items() if path.is_file()}
    frames = {key: {} for key in CSV_COLUMNS}
    for p, found in files.items():
        for key, columns in CSV_COLUMNS.items():
            if key in found and (frame := read_csv(found[key], columns, absent)) is not None:
                frames[key][p] = frame
    classifier_path = Path(params.classifier.out) / "metrics.json"
    classifier = read_json(classifier_path)
    absent += [] if classifier is not None else [str(classifier_path)]
    if params.sweep.enabled:
        sweep, note = parts.load_sweep(Path(params.sweep.out))
    else:
        sweep, note = None, "**Sweep disabled** (`sweep.enabled: false`): no metric-vs-CFG curves."
    return Inputs(posteriors, metrics, stats, files, frames, classifier, sweep, note, absent)


def machine() -> str:
    return (f"{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__} (report device: {default_device()})")


def section_run(params: Params, inp: Inputs) -> list[str]:
    d, tok, enc, gen, sp = params.data, params.tokenizer, params.encode, params.generator, params.sampling
    cached = "every train image" if enc.max_images is None else f"a seeded subset of {enc.max_images:,} train images"
    devices = sorted({s["device"] for s in inp.stats.values() if s and "device" in s}) or ["unknown"]
    rows = [("profile", params.profile), ("seed", params.seed),
            ("data", f"{d.source}, {d.image_size}x{d.image_size}x{d.channels}, max_per_class={d.max_per_class}"),
            ("tokenizers", f"preset {tok.preset}, posteriors {', '.join(inp.posteriors)}, "
                           f"{tok.train.steps} steps x batch {tok.train.batch_size}"),
            ("latent cache", f"{cached}, horizontal flips {'cached' if enc.hflip else 'not cached'}"),
            ("generators", f"preset {gen.preset}, {gen.train.steps} steps x batch {gen.train.batch_size}"),
            ("sampling", f"{sp.num_per_class}/class, cfg_scale {sp.cfg_scale:g} ({sp.cfg_schedule}), "
                         f"{sp.sampler} {sp.steps} steps, projection {sp.projection}"),
            ("classifier", f"{params.classifier.steps} steps"),
            ("extractors", ", ".join(params.evaluation.extractors)),
            ("sampling device", ", ".join(devices)),
            ("report machine", machine()),
            ("git commit", git_commit(".") or "unknown"),
            ("generated", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))]
    return ["## What was run", "", md_table(["item", "value"], rows)]


def section_recon(inp: Inputs) -> list[str]:
    tok, ev = inp.metrics["tokenizer"], inp.metrics["evaluation"]
    rfd = parts.recon_fd_keys(ev)
    lpips = any(LPIPS_KEY in tok[p] or f"recon_{LPIPS_KEY}" in ev[p] for p in inp.posteriors)
    header = ["tokenizer", *RECON_COLUMNS, *rfd] + ([LPIPS_KEY] if lpips else []) + ["eval images"]
    rows = []
    for p in inp.posteriors:
        row = [p, *[tok[p].get(k, ev[p].get(f"recon_{k}")) for k in RECON_COLUMNS],
               *[ev[p].get(f"recon_{k}") for k in rfd]]
        row += [tok[p].get(LPIPS_KEY, ev[p].get(f"recon_{LPIPS_KEY}"))] if lpips else []
        rows.append(row + [tok[p].get("eval_images")])
    notes = ["", "PSNR / SSIM from `train_vae` on held-out images (uint8, data range 1); "
                 "`rfd_*` from `evaluate` in that extractor's feature space."]
    if not lpips:
        notes.append(f"`{LPIPS_KEY}` absent: LPIPS weights were not configured (`evaluation.lpips_weights_path`).")
    return ["## Reconstruction (tokenizers)", "", md_table(header, rows), *notes]


def section_generation(inp: Inputs) -> list[str]:
    ev = inp.metrics["evaluation"]
    keys = parts.generation_keys(ev)
    projection = {p: (inp.stats[p] or {}).get("settings", {}).get("projection") for p in inp.posteriors}
    rows = [[p, *[ev[p].get(k) for k in keys], ev[p].get("num_samples"), projection[p]] for p in inp.posteriors]
    acc = (f"in-project classifier test accuracy: {fmt(inp.classifier['test_accuracy'])}"
           if inp.classifier and "test_accuracy" in inp.classifier else "classifier metrics.json absent")
    table = md_table(["tokenizer", *keys, "samples", "projection"], rows)
    return ["## Generation (one generator per tokenizer)", "", table, "",
            f"Sampling settings of `params.yaml` (`sampling` block); {acc}. `is_classifier` is an Inception-Score "
            "analogue computed from the in-project classifier's logits, not the Inception Score."]


def section_sweep(inp: Inputs, fig_dir: Path) -> list[str]:
    out = ["## Metric vs CFG scale (sweep)", ""]
    if inp.sweep is None:
        return out + [inp.sweep_note]
    fixed = parts.fixed_settings(inp.sweep)
    out += [inp.sweep_note + (f" Settings per tokenizer: {fixed}." if fixed else ""), ""]
    for metric in parts.sweep_metrics(inp.sweep):
        name = f"sweep_{metric}_vs_cfg.png"
        parts.plot_sweep(inp.sweep, metric, fig_dir / name)
        out += [f"### {metric}", "", f"![{metric} vs CFG scale]({FIGURES_DIR}/{name})", "",
                parts.sweep_table(inp.sweep, metric), ""]
    return out


def section_norms(inp: Inputs, fig_dir: Path) -> list[str]:
    ev = inp.metrics["evaluation"]
    out = ["## Token norms and teacher-forced error split", ""]
    devs = {p: parts.norm_devs(ev[p]) for p in inp.posteriors}
    cols = sorted({k for d in devs.values() for k in d}, key=lambda k: (k[0], k[1]))
    if cols:
        out += ["Max relative deviation of the mean pre-projection token norm from R over positions "
                f"(`norm_rel_dev_<projection>_cfg<w>`; drift threshold {DRIFT_TOL:.0%}):", "",
                md_table(["tokenizer", *[f"{proj} w={w:g}" for proj, w in cols]],
                         [[p, *[devs[p].get(c) for c in cols]] for p in inp.posteriors]), ""]
    if inp.frames["norm_csv"]:
        parts.plot_norm_overview(inp.frames["norm_csv"], fig_dir / "norm_trajectories.png")
        out += [f"![token norm along the sequence]({FIGURES_DIR}/norm_trajectories.png)", ""]
    tf_keys = [k for k in ("tf_radial_error", "tf_tangential_error", "tf_radial_fraction")
               if any(k in ev[p] for p in inp.posteriors)]
    if tf_keys:
        out += ["Teacher-forced prediction error on held-out images, split into radial and tangential parts:", "",
                md_table(["tokenizer", *tf_keys], [[p, *[ev[p].get(k) for k in tf_keys]] for p in inp.posteriors]),
                ""]
    if inp.frames["split_csv"]:
        parts.plot_split_overview(inp.frames["split_csv"], fig_dir / "error_split.png")
        out += [f"![teacher-forced error split]({FIGURES_DIR}/error_split.png)", ""]
    links = [f"[{p} {kind}]({FIGURES_DIR}/{kind}_{p}.png)" for p, f in inp.files.items()
             for kind, key in (("norm_trajectory", "norm_png"), ("error_split", "split_png")) if key in f]
    return out + (["Per-tokenizer figures from `evaluate`: " + ", ".join(links)] if links else [])


def section_grids(inp: Inputs) -> list[str]:
    out = ["## Samples and reconstructions", ""]
    for p in inp.posteriors:
        for kind, key in (("samples", "overview"), ("reconstructions", "reconstructions")):
            shown = f"![{p} {kind}]({FIGURES_DIR}/{kind}_{p}.png)" if key in inp.files[p] else "(absent)"
            out += [f"**{p}, {kind}** (" + ("one row per class" if kind == "samples" else
                                            "top: inputs, bottom: reconstructions") + f"): {shown}", ""]
    return out


def section_timing(inp: Inputs) -> list[str]:
    src = {"stats": inp.stats, "gen": inp.metrics["generator"], "tok": inp.metrics["tokenizer"]}
    rows = [[p, *[(src[s][p] or {}).get(k) for _, s, k in TIMING_COLUMNS]] for p in inp.posteriors]
    return ["## Timing", "", md_table(["tokenizer", *[c for c, _, _ in TIMING_COLUMNS]], rows), "",
            "Sampling throughput includes CFG (2 forward passes per token when w != 1); images/s includes decoding."]


def copy_figures(inp: Inputs, fig_dir: Path) -> None:
    names = {"reconstructions": "reconstructions", "overview": "samples", "norm_png": "norm_trajectory",
             "split_png": "error_split"}
    for p, found in inp.files.items():
        for key, prefix in names.items():
            if key in found:
                shutil.copyfile(found[key], fig_dir / f"{prefix}_{p}.png")


def build_report(params: Params, inp: Inputs, fig_dir: Path) -> str:
    copy_figures(inp, fig_dir)
    lines = [f"# SphereAR reproduction report ({params.profile} profile)", "",
             "Generated by `python -m pipelines.report` (DVC stage `report`); every number below is read "
             "from the stage outputs named in the text.", ""]
    for section in (section_run(params, inp), section_recon(inp), section_generation(inp),
                    section_sweep(inp, fig_dir), section_norms(inp, fig_dir), section_grids(inp),
                    section_timing(inp), section_findings(params, inp)):
        lines += section + [""]
    if inp.absent:
        lines += ["## Absent optional inputs", "", *[f"- `{a}`" for a in inp.absent], ""]
    return "\n".join(lines)


def run(params: Params, args) -> None:
    inputs = load_inputs(params)
    out = Path(args.out)
    with atomic_path(out) as tmp:
        (tmp / FIGURES_DIR).mkdir(parents=True)
        (tmp / REPORT_FILE).write_text(build_report(params, inputs, tmp / FIGURES_DIR))
    log.info("report -> %s (%d optional inputs absent)", out / REPORT_FILE, len(inputs.absent))


def add_args(parser) -> None:
    parser.add_argument("--out", default="reports", help="report folder (default: %(default)s)")


if __name__ == "__main__":
    stage_main(__doc__, run, add_args)
