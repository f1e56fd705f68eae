"""DVC stage `report`: `reports/report.md` + `reports/figures/`, regenerated from the stage outputs.

    python -m pipelines.report [--params FILE] [--out reports]

The folder is built in a temporary sibling and renamed onto `--out` only when complete.
Required, per posterior in `tokenizer.posteriors` (a missing one is a UserError naming it): the metrics
files of tokenizer, generator and evaluation (`sphereard.layout.metrics_file`).
Optional (the report lists which are absent): every info file (`sphereard.layout.info_file`: counts and
settings), the sampling and classifier metrics, `data.out/manifest.json` (classes, images per class),
`encode.out/<p>/meta.json` (images cached), the tokenizer export meta (R), sampling.out/<p>/grids/overview.png,
tokenizer.out/<p>/reconstructions.png, evaluation.out/<p>/norm_trajectory.{csv,png} and
error_split.{csv,png}, sweep.out/results.csv (else summary.csv).
Every count the report prints is read from these outputs; a value taken from params instead is labelled
as a setting. Metrics keep the stages' keys, which carry their feature extractor (`fd_classifier`,
`kid_effnet`; `fid_inception` only with the verified Inception weights); no metric is renamed.
Params read (the report stage's `params` in dvc.yaml): profile, seed, metrics_dir, data.{source,image_size,out},
tokenizer.{preset,posteriors,out,train.batch_size}, encode.{out,max_images}, generator.{out,train.batch_size},
sampling.{num_per_class,cfg_scale,cfg_schedule,sampler,steps,projection,seed,out}, classifier.{out,steps},
evaluation.{out,extractors,kid_subset_size,pr_neighbours,diagnostic_samples,diagnostic_steps}, sweep.{enabled,out}.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from pipelines import _report_parts as parts
from pipelines._cli import stage_main
from pipelines._report_findings import section_findings
from pipelines._report_parts import collapse, fmt, md_table
from sphereard.config import Params
from sphereard.data.shards import MANIFEST_NAME, load_manifest
from sphereard.errors import UserError
from sphereard.eval.diagnostics import DRIFT_TOL
from sphereard.export import META_FILE as EXPORT_META
from sphereard.latents import META_FILE as LATENT_META
from sphereard.layout import info_file, metrics_file
from sphereard.tracking import git_commit
from sphereard.utils.device import default_device
from sphereard.utils.io import atomic_path, read_json_object

log = logging.getLogger("pipelines.report")

REPORT_FILE, FIGURES_DIR, CLASS_COUNTS_FILE = "report.md", "figures", "class_counts.csv"
REQUIRED = {"tokenizer": "train_vae", "generator": "train_ar", "evaluation": "evaluate"}  # block -> stage
OPTIONAL = {"sampling": "sample"}  # metrics blocks whose file may be absent
INFO_BLOCKS = {"tokenizer": "train_vae", "generator": "train_ar", "sampling": "sample", "evaluation": "evaluate"}
RECON_COLUMNS = ("psnr", "ssim")
LPIPS_KEY = "lpips_vgg"
CSV_COLUMNS = {"norm_csv": ("series", "projection", "cfg_scale", "position", "norm_mean"),
               "split_csv": ("position", "series", "error")}
TIMING_COLUMNS = (("sampling device", "info", "sampling", "device"),
                  ("images/s (sample)", "metrics", "sampling", "images_per_s"),
                  ("tokens/s (sample, AR only)", "metrics", "sampling", "tokens_per_s"),
                  ("generate s", "metrics", "sampling", "generate_s"), ("decode s", "metrics", "sampling", "decode_s"),
                  ("train tokens/s (train_ar)", "metrics", "generator", "train_tokens_per_s"),
                  ("recon images/s (train_vae)", "metrics", "tokenizer", "recon_images_per_s"),
                  ("generator params", "info", "generator", "params"))
SPLITS = ("train", "test")
CLASS_TABLE_MAX = 30  # classes listed in the report; more: the largest and smallest CLASS_TABLE_MAX // 2


def read_json(path: Path, stage: str | None = None) -> dict | None:
    """A stage's JSON object; None if absent and optional (`stage` None), UserError if absent and required."""
    if not path.is_file():
        if stage is None:
            return None
        raise UserError(f"{path}: required metrics file missing (run `dvc repro {stage}`)")
    return read_json_object(path, "metrics file" if stage else "stage output")


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


def class_counts(root: Path, manifest: dict) -> pd.DataFrame:
    """Images per class and split: columns class (id), name, train, test. From the manifest's
    `class_counts`, else counted from the shards' `label` column."""
    out = pd.DataFrame({"class": range(manifest["num_classes"]), "name": manifest["classes"]})
    for split in SPLITS:
        info = manifest["splits"].get(split, {})
        counts = info.get("class_counts")
        if counts is None and info.get("shards"):
            labels = np.concatenate([pq.read_table(root / sh["file"], columns=["label"])["label"].to_numpy()
                                     for sh in info["shards"]])
            counts = np.bincount(labels, minlength=manifest["num_classes"])
        out[split] = list(counts) if counts is not None else [None] * len(out)
    return out


def read_data(params: Params, absent: list[str]) -> tuple[dict | None, pd.DataFrame | None]:
    """The prepared data's manifest (unverified: the report only counts) and its images per class."""
    root = Path(params.data.out)
    try:
        manifest = load_manifest(root, verify=False)
        return manifest, class_counts(root, manifest)
    except (UserError, OSError, ValueError) as err:
        log.warning("data manifest unreadable: %s", err)
        absent.append(f"{root / MANIFEST_NAME} ({err})" if (root / MANIFEST_NAME).is_file() else
                      str(root / MANIFEST_NAME))
        return None, None


@dataclass
class Inputs:
    """Everything the report reads; optional pieces are None and listed in `absent`."""

    posteriors: list[str]
    metrics: dict[str, dict[str, dict | None]]  # block -> posterior -> metrics (None: optional and absent)
    info: dict[str, dict[str, dict | None]]  # block -> posterior -> info (settings and counts) or None
    files: dict[str, dict[str, Path]]  # posterior -> optional figure / csv paths that exist
    frames: dict[str, dict[str, pd.DataFrame]]  # "norm_csv" / "split_csv" -> posterior -> evaluate's CSV
    classifier: dict | None  # classifier metrics
    classifier_info: dict | None
    manifest: dict | None  # data.out/manifest.json
    classes: pd.DataFrame | None  # images per class: class, name, train, test
    latents: dict[str, dict | None]  # posterior -> latent cache meta.json
    exports: dict[str, dict | None]  # posterior -> tokenizer export meta (radius)
    sweep: pd.DataFrame | None
    sweep_note: str
    absent: list[str] = field(default_factory=list)

    def get(self, kind: str, block: str, p: str, key: str, default=None):
        """inp.metrics / inp.info [block][p][key], None-safe."""
        return (getattr(self, kind)[block].get(p) or {}).get(key, default)

    def radius(self, p: str) -> float | None:
        """R of posterior p: the sampling info's resolved radius, else the tokenizer export's."""
        settings = self.get("info", "sampling", p, "settings") or {}
        return settings.get("radius", (self.exports.get(p) or {}).get("radius"))


def optional_paths(params: Params, p: str) -> dict[str, Path]:
    ev = Path(params.evaluation.out) / p
    return {"reconstructions": Path(params.tokenizer.out) / p / "reconstructions.png",
            "overview": Path(params.sampling.out) / p / "grids" / "overview.png",
            "norm_csv": ev / "norm_trajectory.csv", "norm_png": ev / "norm_trajectory.png",
            "split_csv": ev / "error_split.csv", "split_png": ev / "error_split.png"}


def read_optional(path: Path, absent: list[str]) -> dict | None:
    """An optional JSON object; None (its path noted in `absent`) when the file is missing."""
    found = read_json(path)
    if found is None:
        absent.append(str(path))
    return found


def load_inputs(params: Params) -> Inputs:
    posteriors = list(params.tokenizer.posteriors)
    metrics = {block: {p: read_json(metrics_file(params, block, p), f"{stage}@{p}") for p in posteriors}
               for block, stage in REQUIRED.items()}
    absent, files = [], {}
    metrics.update({block: {p: read_optional(metrics_file(params, block, p), absent) for p in posteriors}
                    for block in OPTIONAL})
    info = {block: {p: read_optional(info_file(params, block, p), absent) for p in posteriors} for block in INFO_BLOCKS}
    latents = {p: read_optional(Path(params.encode.out) / p / LATENT_META, absent) for p in posteriors}
    exports = {p: read_optional(Path(params.tokenizer.out) / p / "model" / EXPORT_META, absent) for p in posteriors}
    for p in posteriors:
        found = optional_paths(params, p)
        absent += [str(path) for path in found.values() if not path.is_file()]
        files[p] = {k: path for k, path in found.items() if path.is_file()}
    frames = {key: {} for key in CSV_COLUMNS}
    for p, found in files.items():
        for key, columns in CSV_COLUMNS.items():
            if key in found and (frame := read_csv(found[key], columns, absent)) is not None:
                frames[key][p] = frame
    classifier = read_optional(metrics_file(params, "classifier"), absent)
    classifier_info = read_optional(info_file(params, "classifier"), absent)
    manifest, classes = read_data(params, absent)
    if params.sweep.enabled:
        sweep, note = parts.load_sweep(Path(params.sweep.out))
    else:
        sweep, note = None, "**Sweep disabled** (`sweep.enabled: false`): no metric-vs-CFG curves."
    return Inputs(posteriors, metrics, info, files, frames, classifier, classifier_info, manifest, classes, latents,
                  exports, sweep, note, absent)


def machine() -> str:
    return (f"{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__} (report device: {default_device()})")


def data_text(params: Params, inp: Inputs) -> str:
    """The data row: from the manifest (classes, images per split), else the params' source, marked."""
    m = inp.manifest
    if m is None:
        return f"{params.data.source} (setting; data manifest absent: no counts)"
    splits = " / ".join(f"{fmt(info['rows'])} {split}" for split, info in m["splits"].items())
    return (f"{m.get('source', params.data.source)}, {m['image_size']}x{m['image_size']}x{m['channels']}, "
            f"{fmt(m['num_classes'])} classes, {splits} images (data manifest)")


def cache_text(params: Params, inp: Inputs) -> str:
    """The latent-cache row: images cached of the train images and views, from each cache's meta.json."""
    def one(meta: dict) -> str:
        rows, total = meta.get("rows"), meta.get("train_images")
        of = "" if total is None else (" (every train image)" if rows == total else f" of {fmt(total)} train images")
        flips = {1: "horizontal flips not cached", 2: "horizontal flips cached"}.get(meta.get("views"), "views n/a")
        return f"{fmt(rows)} images{of}, {flips}"

    if not any(inp.latents.values()):
        return (f"cache meta absent (`{params.encode.out}/<posterior>/{LATENT_META}`): no count; setting "
                f"`encode.max_images` = {fmt(params.encode.max_images)}")
    return collapse({p: m for p, m in inp.latents.items()}, show=lambda m: one(m)) + " (latent cache meta)"


def sampling_text(params: Params, inp: Inputs) -> str:
    """The sampling row: images, classes and settings from each sampling info file (per tokenizer where they differ)."""
    infos = inp.info["sampling"]
    if not any(infos.values()):
        sp = params.sampling
        return (f"settings {sp.num_per_class}/class, cfg_scale {sp.cfg_scale:g} ({sp.cfg_schedule}), {sp.sampler} "
                f"{sp.steps} steps, projection {sp.projection} (sampling info absent: no counts)")

    def field_(key: str, setting: bool = True) -> str:
        found = {p: (i or {}).get("settings", {}) if setting else (i or {}) for p, i in infos.items()}
        return collapse({p: values.get(key) for p, values in found.items()})

    return (f"{field_('num_images', False)} images = {field_('num_classes', False)} classes x "
            f"{field_('num_per_class')}, cfg_scale {field_('cfg_scale')} ({field_('cfg_schedule')}), "
            f"{field_('sampler')} {field_('steps')} steps, projection {field_('projection')}, seed {field_('seed')} "
            "(sampling info)")


def section_run(params: Params, inp: Inputs) -> list[str]:
    tok, gen = params.tokenizer, params.generator
    steps = collapse({p: (m or {}).get("step") for p, m in inp.exports.items()})
    gen_steps = collapse({p: (i or {}).get("steps") for p, i in inp.info["generator"].items()})
    tokens = collapse({p: (i or {}).get("tokens_seen") for p, i in inp.info["generator"].items()})
    classifier_steps = (inp.classifier_info or {}).get("steps")
    rows = [("profile", params.profile), ("seed", params.seed),
            ("data", data_text(params, inp)),
            ("tokenizers", f"preset {tok.preset}, posteriors {', '.join(inp.posteriors)}, trained {steps} steps "
                           f"(export meta) at batch {tok.train.batch_size}"),
            ("latent cache", cache_text(params, inp)),
            ("generators", f"preset {collapse({p: (i or {}).get('preset') for p, i in inp.info['generator'].items()})}"
                           f", trained {gen_steps} steps, {tokens} tokens seen (generator info) at batch "
                           f"{gen.train.batch_size}"),
            ("sampling", sampling_text(params, inp)),
            ("classifier", f"trained {fmt(classifier_steps)} steps (classifier info)" if classifier_steps is not None
             else f"setting {params.classifier.steps} steps (classifier info absent)"),
            ("extractors", ", ".join(params.evaluation.extractors)),
            ("sampling device", collapse({p: (i or {}).get("device") for p, i in inp.info["sampling"].items()})),
            ("report machine", machine()),
            ("git commit", git_commit(".") or "unknown"),
            ("generated", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))]
    return ["## What was run", "", md_table(["item", "value"], rows)]


def class_table(classes: pd.DataFrame) -> pd.DataFrame:
    """The rows the report lists: every class, or the largest and smallest CLASS_TABLE_MAX // 2 by train count."""
    if len(classes) <= CLASS_TABLE_MAX:
        return classes
    by_size = classes.sort_values("train", ascending=False, kind="stable")
    return pd.concat([by_size.head(CLASS_TABLE_MAX // 2), by_size.tail(CLASS_TABLE_MAX // 2)])


def section_data(inp: Inputs, out_dir: Path) -> list[str]:
    out = ["## Data", ""]
    if inp.classes is None:
        return out + ["Data manifest absent: images per class unknown."]
    classes = inp.classes.assign(share=inp.classes["train"] / inp.classes["train"].sum())
    classes.rename(columns={"share": "train share"}).to_csv(out_dir / CLASS_COUNTS_FILE, index=False)
    shown = class_table(classes)
    rows = [[int(r["class"]), r["name"], int(r["train"]), r["test"], f"{r['share']:.1%}"] for _, r in shown.iterrows()]
    note = ("" if len(shown) == len(classes) else
            f" ({len(classes)} classes: the {CLASS_TABLE_MAX // 2} largest and smallest by train count are listed)")
    return out + [f"Images per class in the prepared data (data manifest `class_counts`){note}; all classes in "
                  f"[{CLASS_COUNTS_FILE}]({CLASS_COUNTS_FILE}).", "",
                  md_table(["class", "name", "train", "test", "train share"], rows)]


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
        rows.append(row + [inp.get("info", "tokenizer", p, "eval_images")])
    notes = ["", "PSNR / SSIM from `train_vae` on held-out images; `rfd_*` from `evaluate` in that extractor's "
                 "feature space; `eval images` from the tokenizer info."]
    if not lpips:
        notes.append(f"`{LPIPS_KEY}` absent: LPIPS weights were not configured (`evaluation.lpips_weights_path`).")
    return ["## Reconstruction (tokenizers)", "", md_table(header, rows), *notes]


def section_generation(inp: Inputs) -> list[str]:
    ev = inp.metrics["evaluation"]
    keys = parts.generation_keys(ev)
    rows = [[p, *[ev[p].get(k) for k in keys], inp.get("info", "evaluation", p, "num_samples"),
             (inp.get("info", "sampling", p, "settings") or {}).get("projection")] for p in inp.posteriors]
    acc = (f"in-project classifier `test_accuracy`: {fmt(inp.classifier['test_accuracy'])}"
           if inp.classifier and "test_accuracy" in inp.classifier else "classifier metrics absent")
    table = md_table(["tokenizer", *keys, "samples", "projection"], rows)
    return ["## Generation (one generator per tokenizer)", "", table, "",
            f"`samples` from the evaluation info, `projection` from the sampling info (settings in \"What was run\"); "
            f"{acc}. `is_classifier` is an Inception-Score analogue computed from the in-project classifier's "
            "logits, not the Inception Score."]


def section_sweep(inp: Inputs, fig_dir: Path) -> list[str]:
    out = ["## Metric vs CFG scale (sweep)", ""]
    if inp.sweep is None:
        return out + [inp.sweep_note]
    fixed = parts.fixed_settings(inp.sweep)
    out += [inp.sweep_note + (f" Settings per tokenizer: {fixed}." if fixed else "") +
            f" Table cells: mean ± sample std over the n seeds; figure error bars: the {parts.CONFIDENCE:.0%} "
            "t-interval of the mean (none for n = 1).", ""]
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
    radii = {p: inp.radius(p) for p in inp.posteriors}
    if cols:
        out += [f"`norm_rel_dev_<projection>_cfg<w>` per tokenizer (column: projection and CFG scale w), radius `R` "
                f"{collapse(radii)}; drift threshold {DRIFT_TOL:.0%}:", "",
                md_table(["tokenizer", *[f"{proj} w={w:g}" for proj, w in cols]],
                         [[p, *[devs[p].get(c) for c in cols]] for p in inp.posteriors]), ""]
    if inp.frames["norm_csv"]:
        parts.plot_norm_overview(inp.frames["norm_csv"], radii, fig_dir / "norm_trajectories.png")
        out += [f"![token norm along the sequence]({FIGURES_DIR}/norm_trajectories.png)", "",
                "Mean pre-projection token norm per position; dotted line: `R`; dashed: sampled without projection; "
                "more opaque: higher CFG scale.", ""]
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
            out += [f"**{p}, {kind}** (" + ("one row per class, class name left of the row" if kind == "samples"
                                            else "top: inputs, bottom: reconstructions") + f"): {shown}", ""]
    return out


def section_timing(inp: Inputs) -> list[str]:
    rows = [[p, *[inp.get(kind, block, p, key) for _, kind, block, key in TIMING_COLUMNS]] for p in inp.posteriors]
    return ["## Timing", "", md_table(["tokenizer", *[c[0] for c in TIMING_COLUMNS]], rows), "",
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
    head = [f"# SphereAR reproduction report ({params.profile} profile)", "",
            "Generated by `python -m pipelines.report` (DVC stage `report`); every number below is read "
            "from the stage outputs named in the text (a value from `params.yaml` is called a setting).", ""]
    first = section_run(params, inp) + [""] + section_data(inp, fig_dir.parent) + [""]
    body = []
    for section in (section_recon(inp), section_generation(inp), section_sweep(inp, fig_dir),
                    section_norms(inp, fig_dir), section_grids(inp), section_timing(inp),
                    section_findings(params, inp)):
        body += section + [""]
    if inp.absent:
        body += ["## Absent optional inputs", "", *[f"- `{a}`" for a in inp.absent], ""]
    context = parts.definition_context(params, inp.info["evaluation"])
    definitions = parts.section_definitions("\n".join(first + body), context)
    return "\n".join(head + first + definitions + [""] + body)


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
