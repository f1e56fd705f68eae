"""The report's view of the sweep: which summary it reads, the curves it shows, its tables.

Input (`sweep.out`, written by `sphereard.sweep.outputs`): `results.csv`, one row per trial, is
summarised as mean / std / n over the seeds of the finished trials (`sphereard.sweep.results.
summarise_results`, the same summary the sweep stage writes); without it `summary.csv` is read
(`parse_summary`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from sphereard.eval.names import is_metric
from sphereard.layout import SWEEP_PLOTS_DIR, SWEEP_RESULTS_FILE, SWEEP_SUMMARY_FILE
from sphereard.report.compare import finite, half_width
from sphereard.report.tables import MISSING, fmt, md_table
from sphereard.sweep.results import DONE, LINE_SETTINGS, parse_summary, posterior_rank, summarise_results, sweep_lines

log = logging.getLogger(__name__)

SWEEP_SHOWN = ("fd_", "fid_", "class_consistency_", "norm_rel_dev_max", "norm_rel_dev_mean")  # report's curves


def load_sweep(out: Path) -> tuple[pd.DataFrame | None, str]:
    """(summary frame or None, one sentence for the report saying where it came from / why it is absent)."""
    results, summary = out / SWEEP_RESULTS_FILE, out / SWEEP_SUMMARY_FILE
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
            "; mean (± 95% t-interval half-width when n > 1) over seeds" if source == results else "read as summarised")
    return frame, (f"From `{source}` ({what}); trials per point n = {seeds}. The sweep stage's own plots are in "
                   f"`{out / SWEEP_PLOTS_DIR}`.")


def sweep_metrics(summary: pd.DataFrame) -> list[str]:
    """The summarised metrics the report shows as curves (FD per extractor, class consistency, norm drift)."""
    names = [c[:-len("_mean")] for c in summary if c.endswith("_mean")]
    shown = [m for m in names if is_metric(m) and m.startswith(SWEEP_SHOWN)]
    return sorted(shown, key=lambda m: next(i for i, prefix in enumerate(SWEEP_SHOWN) if m.startswith(prefix)))


def fixed_settings(summary: pd.DataFrame) -> str:
    """Settings constant within each posterior: 'projection: spherical sphere, gaussian none; train False'."""
    out = []
    for key in LINE_SETTINGS:
        if key not in summary or summary.groupby("posterior")[key].nunique(dropna=False).max() > 1:
            continue
        per = summary.groupby("posterior")[key].first()
        out.append(f"{key} {per.iloc[0]}" if per.nunique(dropna=False) == 1 else
                   f"{key}: " + ", ".join(f"{p} {v}" for p, v in sorted(per.items(), key=posterior_rank)))
    return "; ".join(out)


def _cell(row, metric: str) -> str:
    """`mean ± h` with h the 95% t-interval half-width over the point's n seeds; the mean alone for n = 1."""
    mean, std = row[f"{metric}_mean"], row.get(f"{metric}_std", np.nan)
    return f"{fmt(mean)} ± {fmt(half_width(std, row['n']))}" if row["n"] > 1 and finite(std) else fmt(mean)


def sweep_table(summary: pd.DataFrame, metric: str) -> str:
    """Markdown table of `metric` per sweep line (rows) and CFG scale (columns): mean ± 95% t-interval
    half-width over seeds."""
    cfgs = sorted(summary["cfg_scale"].unique())
    rows = []
    for label, line in sweep_lines(summary).items():
        by_cfg = {r["cfg_scale"]: _cell(r, metric) for _, r in line.iterrows()}
        rows.append([label, *[by_cfg.get(w, MISSING) for w in cfgs]])
    return md_table(["tokenizer / setting", *[f"w={w:g}" for w in cfgs]], rows)
