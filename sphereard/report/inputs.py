"""Everything the report reads from the stage outputs, located by `sphereard.layout` (`load_inputs`).

Read for every run of `seeds` (`Params.for_run`); the metrics are combined into Estimates over the
runs (`over_seeds`: mean, 95% t-interval half-width, n). Required, per posterior in
`tokenizer.posteriors` and run (a missing one is a UserError naming it, unless `required=False`, as in
the notebook, which then lists it with the absent ones): the metrics files of tokenizer, generator
and evaluation; for imported models (the pretrained DAG: the tokenizer export's `model.json` has a
`source`) only evaluation's, since nothing was trained. Optional (listed in `Inputs.absent` when
missing): every info file (counts and settings), the sampling and classifier metrics (no classifier
for imported models), `data.out/manifest.json` (classes, images per class), the latent cache meta
(images cached), the tokenizer export meta (R), the sample overview grid, the reconstructions grid,
evaluate's norm_trajectory / error_split CSV + PNG, and the sweep's results.csv (else summary.csv).
Paths in params are relative to `root`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from sphereard.config import Params
from sphereard.data.shards import load_manifest, manifest_path
from sphereard.errors import UserError
from sphereard.export import META_FILE as EXPORT_META
from sphereard.latents import meta_path as latent_meta_path
from sphereard.layout import (
    SWEEP_RESULTS_FILE,
    TRAINED_BLOCKS,
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
from sphereard.report.sweep import load_sweep
from sphereard.utils.io import read_json_object
from sphereard.utils.stats import estimate

log = logging.getLogger(__name__)

REQUIRED = {"tokenizer": "train_vae", "generator": "train_ar", "evaluation": "evaluate"}  # block -> stage
OPTIONAL = {"sampling": "sample"}  # metrics blocks whose file may be absent
INFO_BLOCKS = {"tokenizer": "train_vae", "generator": "train_ar", "sampling": "sample", "evaluation": "evaluate"}
CSV_COLUMNS = {"norm_csv": ("series", "projection", "cfg_scale", "position", "norm_mean"),
               "split_csv": ("position", "series", "error"), "history": ("step", "kl", "recon")}
SWEEP_RESULT_COLUMNS = ("posterior", "projection", "cfg_scale", "seed")  # the verdicts' keys into results.csv
SPLITS = ("train", "test")
SWEEP_DISABLED = "**Sweep disabled** (`sweep.enabled: false`): no metric-vs-CFG curves."


def read_json(path: Path, stage: str | None = None) -> dict | None:
    """A stage's JSON object; None if absent and optional (`stage` None), UserError if absent and required."""
    if not path.is_file():
        if stage is None:
            return None
        raise UserError(f"{path}: required metrics file missing (run `dvc repro {stage}`)")
    return read_json_object(path, "metrics file" if stage else "stage output")


def read_optional(path: Path, absent: list[str]) -> dict | None:
    """An optional JSON object; None (its path noted in `absent`) when the file is missing."""
    found = read_json(path)
    if found is None:
        absent.append(str(path))
    return found


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


def read_data(data_out: Path, absent: list[str]) -> tuple[dict | None, pd.DataFrame | None]:
    """The prepared data's manifest (unverified: the report only counts) and its images per class."""
    try:
        manifest = load_manifest(data_out, verify=False)
        return manifest, class_counts(data_out, manifest)
    except (UserError, OSError, ValueError) as err:
        log.warning("data manifest unreadable: %s", err)
        path = manifest_path(data_out)
        absent.append(f"{path} ({err})" if path.is_file() else str(path))
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
    latents: dict[str, dict | None]  # posterior -> latent cache.json
    exports: dict[str, dict | None]  # posterior -> tokenizer export meta (radius)
    sweep: pd.DataFrame | None  # sweep summary (`sphereard.report.sweep`)
    sweep_note: str
    absent: list[str] = field(default_factory=list)
    imported: dict[str, bool] = field(default_factory=dict)  # posterior -> weights imported, not trained
    seeds: list[int] = field(default_factory=lambda: [0])  # the runs every metric averages (params.seeds)
    sweep_results: pd.DataFrame | None = None  # the sweep's results.csv: one row per trial (the verdicts)
    per_run: dict[str, dict[str, list[dict | None]]] = field(default_factory=dict)  # block -> p -> one per seed

    def run_values(self, block: str, p: str, key: str) -> list[float | None]:
        """`key` of each run of `seeds` (None where a run lacks it): the paired values the verdicts test."""
        return [(r or {}).get(key) for r in self.per_run.get(block, {}).get(p, [])]

    def any_imported(self) -> bool:
        return any(self.imported.values())

    def get(self, kind: str, block: str, p: str, key: str, default=None):
        """inp.metrics / inp.info [block][p][key], None-safe."""
        return (getattr(self, kind)[block].get(p) or {}).get(key, default)

    def radius(self, p: str) -> float | None:
        """R of posterior p: the sampling info's resolved radius, else the tokenizer export's."""
        settings = self.get("info", "sampling", p, "settings") or {}
        return settings.get("radius", (self.exports.get(p) or {}).get("radius"))

    def radii(self) -> dict[str, float | None]:
        return {p: self.radius(p) for p in self.posteriors}


def optional_paths(params: Params, p: str, root: Path = Path(".")) -> dict[str, Path]:
    """The optional figures and CSVs of posterior p, by the names the report uses for them."""
    return {"reconstructions": root / reconstructions_file(params, p), "history": root / history_file(params, p),
            "overview": root / overview_file(params, p),
            **{key: root / evaluation_file(params, p, name) for key, name in (
                ("norm_csv", "norm_trajectory.csv"), ("norm_png", "norm_trajectory.png"),
                ("split_csv", "error_split.csv"), ("split_png", "error_split.png"))}}


def _load_run(params: Params, root: Path, required: bool, absent: list[str]) -> dict:
    """One run's (`Params.for_run`) metrics, info, optional files, CSV frames, latent and export metas."""
    posteriors, files = list(params.tokenizer.posteriors), {}
    exports = {p: read_optional(root / export_dir(params, "tokenizer", p) / EXPORT_META, absent) for p in posteriors}
    imported = {p: bool((exports[p] or {}).get("source")) for p in posteriors}

    def required_metrics(block: str, stage: str, p: str) -> dict | None:
        path = root / metrics_file(params, block, p)
        if required and not (imported[p] and block in TRAINED_BLOCKS):  # imported: the pretrained DAG's stage
            return read_json(path, f"pretrained/dvc.yaml:{stage}" if imported[p] else f"{stage}@{p}-{params.seed}")
        return read_optional(path, absent) if not imported[p] else (read_json(path) or {})  # {}: nothing trained

    metrics = {block: {p: required_metrics(block, stage, p) for p in posteriors} for block, stage in REQUIRED.items()}
    metrics.update({block: {p: read_optional(root / metrics_file(params, block, p), absent) for p in posteriors}
                    for block in OPTIONAL})
    info = {block: {p: read_optional(root / info_file(params, block, p), absent) for p in posteriors}
            for block in INFO_BLOCKS}
    latents = {p: None if imported[p] else read_optional(latent_meta_path(root / latent_cache_dir(params, p)), absent)
               for p in posteriors}
    for p in posteriors:
        found = optional_paths(params, p, root)
        if imported[p]:  # no train_vae: no reconstructions grid, no training history
            found.pop("reconstructions")
            found.pop("history")
        absent += [str(path) for path in found.values() if not path.is_file()]
        files[p] = {k: path for k, path in found.items() if path.is_file()}
    frames = {key: {} for key in CSV_COLUMNS}
    for p, found in files.items():
        for key, columns in CSV_COLUMNS.items():
            if key in found and (frame := read_csv(found[key], columns, absent)) is not None:
                frames[key][p] = frame.assign(seed=params.seed)
    return {"metrics": metrics, "info": info, "files": files, "frames": frames, "latents": latents,
            "exports": exports, "imported": imported}


def over_seeds(records: list[dict | None]) -> dict | None:
    """One metrics record per run -> {name: Estimate (mean, t-interval half-width, n)} over the runs that
    have the name; None when no run has a record."""
    known = [r for r in records if r is not None]
    if not known:
        return None
    names = list(dict.fromkeys(k for r in known for k in r))
    out = {k: estimate([r[k] for r in known if k in r]) for k in names}
    return {k: v for k, v in out.items() if v is not None}


def load_inputs(params: Params, root: Path = Path("."), required: bool = True) -> Inputs:
    """Read every stage output the report uses (paths in params relative to `root`), for every run of
    `seeds`: metrics become Estimates over the runs (mean, 95% t-interval, n), CSV frames are stacked with
    a `seed` column, and info, figures and metas come from the first run. `required=False`: a missing
    required metrics file is listed in `absent` (its entry None) instead of a UserError."""
    root, posteriors, absent = Path(root), list(params.tokenizer.posteriors), []
    runs = [_load_run(run, root, required, absent) for run in params.runs()]
    first = runs[0]
    per_run = {block: {p: [r["metrics"][block][p] for r in runs] for p in posteriors} for block in first["metrics"]}
    metrics = {block: {p: over_seeds(records) for p, records in by_p.items()} for block, by_p in per_run.items()}
    frames = {key: {p: pd.concat([r["frames"][key][p] for r in runs if p in r["frames"][key]], ignore_index=True)
                    for p in posteriors if any(p in r["frames"][key] for r in runs)} for key in CSV_COLUMNS}
    classifier = classifier_info = None
    if not any(first["imported"].values()):  # the pretrained DAG trains no classifier
        classifier = read_optional(root / metrics_file(params, "classifier"), absent)
        classifier_info = read_optional(root / info_file(params, "classifier"), absent)
    manifest, classes = read_data(root / params.data.out, absent)
    sweep, note = load_sweep(root / sweep_dir(params)) if params.sweep.enabled else (None, SWEEP_DISABLED)
    results = root / sweep_dir(params) / SWEEP_RESULTS_FILE
    sweep_results = read_csv(results, SWEEP_RESULT_COLUMNS, absent) if sweep is not None and results.is_file() else None
    return Inputs(posteriors, metrics, first["info"], first["files"], frames, classifier, classifier_info, manifest,
                  classes, first["latents"], first["exports"], sweep, note, absent, first["imported"],
                  seeds=list(params.seeds), sweep_results=sweep_results, per_run=per_run)


def records_frame(records: dict[str, dict | None]) -> pd.DataFrame:
    """One row per posterior from {posterior: metrics or info record} (absent records left out), scalar
    columns only (info files nest settings, e.g. sampling's `settings`)."""
    frame = pd.DataFrame.from_dict({p: r for p, r in records.items() if r is not None}, orient="index")
    return frame[[c for c in frame if not frame[c].map(lambda v: isinstance(v, (dict, list))).any()]].infer_objects()
