"""Sweep tables: one row per trial, summarised over seeds per setting, and the lines drawn per setting.

  results.csv   trial, status (done | stopped: ASHA ended it early), settings (SETTING_COLUMNS),
                seed, metrics, mlflow_run_id
  summary.csv   per setting: num_seeds, seeds, and <metric>_mean / <metric>_std over the finished
                trials' seeds (sample std, ddof 1: empty with one seed)
  fd_vs_cfg.csv long format for DVC plots (`series` template): cfg_scale, series, extractor, fd_mean,
                fd_std, num_seeds; one line per (setting, extractor), whatever the extractors are
The files are written by `sphereard.sweep.outputs` and read by the report (`sphereard.report.sweep`);
`summarise_results` is the one summary over seeds, also of any frame with `posterior`, `cfg_scale`,
optional settings and metric columns (the notebook's MLflow child runs).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from sphereard.config import POSTERIORS
from sphereard.eval.names import is_metric
from sphereard.sweep.grid import SETTING_COLUMNS, radius_label

log = logging.getLogger(__name__)

FD_PREFIX = "fd_"  # fd_<extractor>: Frechet distance in that extractor's feature space
ID_COLUMNS = ("trial", "status", *SETTING_COLUMNS, "seed")
TEXT_COLUMNS = ("mlflow_run_id",)
NORM_METRICS = ("norm_rel_dev_mean", "norm_rel_dev_max")
MAIN_METRIC_PREFIXES = ("fd_", "fid_", "class_consistency_")
STD_DDOF = 1  # sample standard deviation across seeds
SERIES_COLUMN = "series"
DONE = "done"  # status of a finished trial (ASHA-stopped ones are left out of summaries)
COUNT_COLUMNS = ("num_seeds", "n", "n_seeds", "count")  # a summary's seed count, as others may name it
LINE_SETTINGS = tuple(k for k in SETTING_COLUMNS if k not in ("posterior", "cfg_scale"))  # tell lines apart


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
    """Mean and std of every metric over the seeds of each setting (finished trials only): the
    summary.csv table. Settings missing from `results` are left out of the grouping."""
    done = results[results["status"] == DONE] if "status" in results.columns else results
    settings = [c for c in SETTING_COLUMNS if c in done.columns]
    metrics = metric_columns(done)
    rows = []
    for key, group in done.groupby(settings, sort=True, dropna=False):
        row = dict(zip(settings, key, strict=True))
        row["num_seeds"] = len(group)
        row["seeds"] = ";".join(str(s) for s in sorted(group["seed"])) if "seed" in group else ""
        for m in metrics:
            row[f"{m}_mean"] = group[m].mean()
            row[f"{m}_std"] = group[m].std(ddof=STD_DDOF)
        rows.append(row)
    return pd.DataFrame(rows, columns=[*settings, "num_seeds", "seeds",
                                       *(f"{m}_{s}" for m in metrics for s in ("mean", "std"))])


def _labelled(frame: pd.DataFrame) -> pd.DataFrame:
    """ValueError without `posterior` / `cfg_scale`; radii as labels (`radius_label`: null is sqrt(d))."""
    missing = [k for k in ("posterior", "cfg_scale") if k not in frame]
    if missing:
        raise ValueError(f"no {', '.join(missing)} column")
    return frame.assign(radius=frame["radius"].map(radius_label)) if "radius" in frame else frame


def parse_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """A summary (summary.csv: <metric>_mean / <metric>_std columns, or plain metric columns taken as
    means) with labelled radii and the seed count as `n`. ValueError without a metric column."""
    frame = _labelled(summary)
    rename = {c: f"{c}_mean" for c in frame if is_metric(c) and not c.endswith(("_mean", "_std", "_count"))
              and f"{c}_mean" not in frame}
    frame = frame.rename(columns=rename)
    count = next((c for c in COUNT_COLUMNS if c in frame), None)
    frame["n"] = frame[count] if count else np.nan
    if not any(c.endswith("_mean") and is_metric(c) for c in frame):
        raise ValueError("no metric columns")
    return frame


def summarise_results(results: pd.DataFrame) -> pd.DataFrame:
    """One row per trial -> one row per setting (`aggregate_over_seeds`), as `parse_summary` reads it."""
    return parse_summary(aggregate_over_seeds(_labelled(results)))


def posterior_rank(item: tuple) -> int:
    """Sort key of (posterior, ...) items: the paper's order spherical, gaussian_norm, gaussian."""
    return POSTERIORS.index(item[0]) if item[0] in POSTERIORS else len(POSTERIORS)


def sweep_lines(summary: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{label: rows sorted by cfg_scale}, one line per posterior x each other setting that varies within
    a posterior (`auto` projection, sphere for one posterior and none for another, stays out of the label)."""
    varying = [k for k in LINE_SETTINGS if k in summary
               and summary.groupby("posterior")[k].nunique(dropna=False).max() > 1]
    lines = {}
    for values, rows in summary.groupby(["posterior", *varying], sort=False, dropna=False):
        label = ", ".join([str(values[0])] + [f"{k}={v}" for k, v in zip(varying, values[1:], strict=True)])
        lines[label] = rows.sort_values("cfg_scale")
    return dict(sorted(lines.items(), key=lambda item: posterior_rank((item[1]["posterior"].iloc[0],))))


def main_metrics(frame: pd.DataFrame) -> list[str]:
    """Metrics worth a plot: FD per extractor, class consistency, the norm deviations."""
    return [m for m in metric_columns(frame) if m.startswith(MAIN_METRIC_PREFIXES) and not m.endswith("_std")
            ] + [m for m in NORM_METRICS if m in frame.columns]


def series_labels(summary: pd.DataFrame) -> pd.Series:
    """`spherical` or, when those vary in the sweep, `spherical R4 flow_riemannian euler proj_none s25 trained`."""
    parts = {"posterior": lambda v: str(v), "radius": lambda v: f"R{radius_label(v)}",
             "flow": lambda v: f"flow_{v}", "magnitude": lambda v: f"mag_{v}", "sampler": lambda v: str(v),
             "projection": lambda v: f"proj_{v}", "sampler_steps": lambda v: f"s{v}",
             "train": lambda v: "trained" if v else "dag"}
    varying = [c for c in parts if c == "posterior" or (c in summary and summary[c].nunique() > 1)]
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
