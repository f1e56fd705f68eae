"""The sweep's outputs summarised over seeds: one row per setting, the lines the report draws, its tables.

Input (`sweep.out`, written by `sphereard.sweep.results`): `results.csv`, one row per trial (`trial`,
`status` done | stopped, the settings `posterior`, `radius`, `projection`, `sampler_steps`,
`cfg_scale`, `train`, then `seed`, metric columns, `mlflow_run_id`), is summarised here as
mean / std / n over the seeds of the finished trials (`summarise_results`); without it `summary.csv`
is read (`<metric>_mean`, `<metric>_std`, `num_seeds`; plain metric columns are taken as means).
Any frame with `posterior`, `cfg_scale`, optional settings and metric columns can be summarised
(the notebook summarises the sweep's MLflow child runs the same way).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from sphereard.config import POSTERIORS
from sphereard.report.compare import finite
from sphereard.report.keys import is_metric
from sphereard.report.tables import MISSING, fmt, md_table

log = logging.getLogger(__name__)

SWEEP_KEYS = ("posterior", "radius", "projection", "sampler_steps", "train", "cfg_scale")  # cfg_scale last
COUNT_COLUMNS = ("num_seeds", "n", "n_seeds", "count")
DONE = "done"  # results.csv status of a finished trial (ASHA-stopped ones are left out)
SWEEP_SHOWN = ("fd_", "fid_", "class_consistency_", "norm_rel_dev_max", "norm_rel_dev_mean")  # report's curves
DEFAULT_RADIUS = "sqrt(d)"
RESULTS_FILE, SUMMARY_FILE, PLOTS_DIR = "results.csv", "summary.csv", "plots"


def radius_label(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or str(v).strip().lower() in ("", "none", "null"):
        return DEFAULT_RADIUS
    return fmt(float(v))


def _check_sweep(frame: pd.DataFrame) -> pd.DataFrame:
    missing = [k for k in ("posterior", "cfg_scale") if k not in frame]
    if missing:
        raise ValueError(f"no {', '.join(missing)} column")
    return frame.assign(radius=frame["radius"].map(radius_label)) if "radius" in frame else frame


def summarise_results(results: pd.DataFrame) -> pd.DataFrame:
    """One row per trial -> one row per setting: <metric>_mean, <metric>_std (over seeds) and n."""
    frame = _check_sweep(results)
    if "status" in frame:
        frame = frame[frame["status"] == DONE]
    keys = [k for k in SWEEP_KEYS if k in frame]
    metrics = [c for c in frame if is_metric(c) and pd.api.types.is_numeric_dtype(frame[c])]
    if not metrics:
        raise ValueError("no metric columns")
    grouped = frame.groupby(keys, dropna=False)
    out = grouped[metrics].mean().add_suffix("_mean").join(grouped[metrics].std().add_suffix("_std"))
    return out.assign(n=grouped.size()).reset_index()


def parse_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """summary.csv with <metric>_mean / <metric>_std columns, or plain metric columns (taken as means)."""
    frame = _check_sweep(summary)
    rename = {c: f"{c}_mean" for c in frame if is_metric(c) and not c.endswith(("_mean", "_std", "_count"))
              and f"{c}_mean" not in frame}
    frame = frame.rename(columns=rename)
    count = next((c for c in COUNT_COLUMNS if c in frame), None)
    frame["n"] = frame[count] if count else np.nan
    if not any(c.endswith("_mean") and is_metric(c) for c in frame):
        raise ValueError("no metric columns")
    return frame


def load_sweep(out: Path) -> tuple[pd.DataFrame | None, str]:
    """(summary frame or None, one sentence for the report saying where it came from / why it is absent)."""
    results, summary = out / RESULTS_FILE, out / SUMMARY_FILE
    source = results if results.is_file() else summary if summary.is_file() else None
    if source is None:
        return None, (f"**No sweep outputs** (`{results}` and `{summary}` are absent): run the `sweep` stage "
                      "for metric-vs-CFG curves. Nothing in this section is measured.")
    try:
        raw = pd.read_csv(source)
        frame = summarise_results(raw) if source == results else parse_summary(raw)
    except (ValueError, KeyError, pd.errors.ParserError) as err:
        log.warning("%s: cannot summarise the sweep (%s)", source, err)
        return None, f"**Sweep outputs unreadable**: `{source}`: {err}. No CFG curves."
    n = frame["n"].dropna()
    seeds = f"{int(n.min())}-{int(n.max())}" if len(n) and n.min() != n.max() else fmt(n.iloc[0]) if len(n) else "?"
    stopped = int((raw["status"] != DONE).sum()) if "status" in raw else 0
    what = (f"{len(raw)} trials" + (f", {stopped} stopped early and left out" if stopped else "") +
            "; mean (± std when n > 1) over seeds" if source == results else "read as summarised")
    return frame, (f"From `{source}` ({what}); trials per point n = {seeds}. The sweep stage's own plots are in "
                   f"`{out / PLOTS_DIR}`.")


def sweep_metrics(summary: pd.DataFrame) -> list[str]:
    """The summarised metrics the report shows as curves (FD per extractor, class consistency, norm drift)."""
    names = [c[:-len("_mean")] for c in summary if c.endswith("_mean")]
    shown = [m for m in names if is_metric(m) and m.startswith(SWEEP_SHOWN)]
    return sorted(shown, key=lambda m: next(i for i, prefix in enumerate(SWEEP_SHOWN) if m.startswith(prefix)))


def posterior_rank(item: tuple) -> int:
    """Sort key of (posterior, ...) items: the paper's order spherical, gaussian_norm, gaussian."""
    return POSTERIORS.index(item[0]) if item[0] in POSTERIORS else len(POSTERIORS)


def sweep_lines(summary: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{label: rows sorted by cfg_scale}, one line per posterior x each other setting that varies within
    a posterior (`auto` projection, sphere for one posterior and none for another, stays out of the label)."""
    varying = [k for k in SWEEP_KEYS[1:-1] if k in summary
               and summary.groupby("posterior")[k].nunique(dropna=False).max() > 1]
    lines = {}
    for values, rows in summary.groupby(["posterior", *varying], sort=False, dropna=False):
        label = ", ".join([str(values[0])] + [f"{k}={v}" for k, v in zip(varying, values[1:], strict=True)])
        lines[label] = rows.sort_values("cfg_scale")
    return dict(sorted(lines.items(), key=lambda item: posterior_rank((item[1]["posterior"].iloc[0],))))


def fixed_settings(summary: pd.DataFrame) -> str:
    """Settings constant within each posterior: 'projection: spherical sphere, gaussian none; train False'."""
    out = []
    for key in SWEEP_KEYS[1:-1]:
        if key not in summary or summary.groupby("posterior")[key].nunique(dropna=False).max() > 1:
            continue
        per = summary.groupby("posterior")[key].first()
        out.append(f"{key} {per.iloc[0]}" if per.nunique(dropna=False) == 1 else
                   f"{key}: " + ", ".join(f"{p} {v}" for p, v in sorted(per.items(), key=posterior_rank)))
    return "; ".join(out)


def _cell(row, metric: str) -> str:
    mean, std = row[f"{metric}_mean"], row.get(f"{metric}_std", np.nan)
    return f"{fmt(mean)} ± {fmt(std)}" if row["n"] > 1 and finite(std) else fmt(mean)


def sweep_table(summary: pd.DataFrame, metric: str) -> str:
    """Markdown table of `metric` per sweep line (rows) and CFG scale (columns): mean ± std over seeds."""
    cfgs = sorted(summary["cfg_scale"].unique())
    rows = []
    for label, line in sweep_lines(summary).items():
        by_cfg = {r["cfg_scale"]: _cell(r, metric) for _, r in line.iterrows()}
        rows.append([label, *[by_cfg.get(w, MISSING) for w in cfgs]])
    return md_table(["tokenizer / setting", *[f"w={w:g}" for w in cfgs]], rows)
