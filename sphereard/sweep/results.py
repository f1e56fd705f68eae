"""Sweep tables and plots: one row per trial, mean/std over seeds per setting, metric-vs-CFG PNGs.

  results.csv   trial, status (done | stopped: ASHA ended it early), settings, seed, metrics,
                mlflow_run_id
  summary.csv   per setting (SETTING_COLUMNS): num_seeds, seeds, and <metric>_mean / <metric>_std
                over the finished trials' seeds (sample std, ddof 1: empty with one seed)
  fd_vs_cfg.csv long format for DVC plots (`series` template): cfg_scale, series, extractor, fd_mean,
                fd_std, num_seeds; one line per (setting, extractor), whatever the extractors are
  plots/<metric>_vs_cfg.png   summary means vs CFG scale, one line per series (the settings that vary)
All written atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from sphereard.eval.diagnostics import plot_metric_vs_cfg
from sphereard.sweep.grid import SETTING_COLUMNS, format_radius
from sphereard.utils.io import atomic_path

log = logging.getLogger(__name__)

RESULTS_FILE, SUMMARY_FILE, PLOTS_DIR = "results.csv", "summary.csv", "plots"
FD_PLOT_FILE = "fd_vs_cfg.csv"
FD_PREFIX = "fd_"  # fd_<extractor>: Frechet distance in that extractor's feature space
ID_COLUMNS = ("trial", "status", *SETTING_COLUMNS, "seed")
TEXT_COLUMNS = ("mlflow_run_id",)
NORM_METRICS = ("norm_rel_dev_mean", "norm_rel_dev_max")
MAIN_METRIC_PREFIXES = ("fd_", "fid_", "class_consistency_")
STD_DDOF = 1  # sample standard deviation across seeds
SERIES_COLUMN = "series"


def results_frame(rows: list[dict]) -> pd.DataFrame:
    """Trial rows (settings + seed + status + metrics) -> a table, id columns first, sorted by setting."""
    frame = pd.DataFrame(rows)
    ids = [c for c in ID_COLUMNS if c in frame.columns]
    rest = sorted(c for c in frame.columns if c not in ids and c not in TEXT_COLUMNS)
    tail = [c for c in TEXT_COLUMNS if c in frame.columns]
    frame = frame[ids + rest + tail]
    return frame.sort_values([c for c in (*SETTING_COLUMNS, "seed") if c in frame.columns]).reset_index(drop=True)


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """Numeric columns other than settings and seed."""
    return [c for c in frame.columns if c not in ID_COLUMNS and c not in TEXT_COLUMNS
            and pd.api.types.is_numeric_dtype(frame[c])]


def aggregate_over_seeds(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of every metric over the seeds of each setting (finished trials only)."""
    done = results[results["status"] == "done"] if "status" in results.columns else results
    metrics = metric_columns(done)
    rows = []
    for key, group in done.groupby(list(SETTING_COLUMNS), sort=True, dropna=False):
        row = dict(zip(SETTING_COLUMNS, key, strict=True))
        row["num_seeds"] = len(group)
        row["seeds"] = ";".join(str(s) for s in sorted(group["seed"]))
        for m in metrics:
            row[f"{m}_mean"] = group[m].mean()
            row[f"{m}_std"] = group[m].std(ddof=STD_DDOF)
        rows.append(row)
    return pd.DataFrame(rows, columns=[*SETTING_COLUMNS, "num_seeds", "seeds",
                                       *(f"{m}_{s}" for m in metrics for s in ("mean", "std"))])


def main_metrics(frame: pd.DataFrame) -> list[str]:
    """Metrics worth a plot: FD per extractor, class consistency, the norm deviations."""
    return [m for m in metric_columns(frame) if m.startswith(MAIN_METRIC_PREFIXES) and not m.endswith("_std")
            ] + [m for m in NORM_METRICS if m in frame.columns]


def series_labels(summary: pd.DataFrame) -> pd.Series:
    """`spherical` or, when those vary in the sweep, `spherical R4 proj_none s25 trained`."""
    parts = {"posterior": lambda v: str(v), "radius": lambda v: f"R{format_radius(v)}",
             "projection": lambda v: f"proj_{v}", "sampler_steps": lambda v: f"s{v}",
             "train": lambda v: "trained" if v else "dag"}
    varying = [c for c in parts if c == "posterior" or summary[c].nunique() > 1]
    return summary.apply(lambda r: " ".join(parts[c](r[c]) for c in varying), axis=1)


def fd_plot_frame(summary: pd.DataFrame, series: pd.Series) -> pd.DataFrame:
    """Long format of every `fd_<extractor>_mean` column: (cfg_scale, series, extractor, fd_mean, fd_std,
    num_seeds), `series` = "<setting label> <extractor>" so each setting and extractor is one line."""
    columns = ["cfg_scale", SERIES_COLUMN, "extractor", "fd_mean", "fd_std", "num_seeds"]
    parts = []
    for col in (c for c in summary.columns if c.startswith(FD_PREFIX) and c.endswith("_mean")):
        extractor = col[len(FD_PREFIX):-len("_mean")]
        parts.append(pd.DataFrame({
            "cfg_scale": summary["cfg_scale"], SERIES_COLUMN: series + " " + extractor, "extractor": extractor,
            "fd_mean": summary[col], "fd_std": summary.get(f"{FD_PREFIX}{extractor}_std", np.nan),
            "num_seeds": summary["num_seeds"]}))
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    return frame[columns].sort_values([SERIES_COLUMN, "cfg_scale"]).reset_index(drop=True)


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


def write_outputs(out: str | Path, results: pd.DataFrame, summary: pd.DataFrame) -> dict[str, Path]:
    """results.csv, summary.csv, fd_vs_cfg.csv and plots/<metric>_vs_cfg.png under `out` (each atomic)."""
    out = Path(out)
    paths = {"results": _write_csv(results, out / RESULTS_FILE), "summary": _write_csv(summary, out / SUMMARY_FILE)}
    means = summary.copy()
    means[SERIES_COLUMN] = series_labels(summary) if len(summary) else pd.Series(dtype=str)
    paths["fd_plot"] = _write_csv(fd_plot_frame(summary, means[SERIES_COLUMN]), out / FD_PLOT_FILE)
    with atomic_path(out / PLOTS_DIR) as tmp:
        tmp.mkdir()
        for metric in main_metrics(results):
            frame = means.rename(columns={f"{metric}_mean": metric})
            frame = frame[np.isfinite(frame[metric].astype(float))]
            if len(frame):
                plot_metric_vs_cfg(frame[[SERIES_COLUMN, "cfg_scale", metric]], metric,
                                   tmp / f"{metric}_vs_cfg.png", group=SERIES_COLUMN)
    paths["plots"] = out / PLOTS_DIR
    return paths
