"""The sweep stage's outputs under `sweep.out`: the tables of `sphereard.sweep.results` and one
metric-vs-CFG plot per main metric (`plots/<metric>_vs_cfg.png`, `sphereard.sweep.plots.plot_sweep`:
one line per setting in its tokenizer's colour, t-interval error bars over seeds). Each file is
written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sphereard.layout import SWEEP_FD_PLOT_FILE, SWEEP_PLOTS_DIR, SWEEP_RESULTS_FILE, SWEEP_SUMMARY_FILE
from sphereard.sweep.plots import plot_sweep
from sphereard.sweep.results import fd_plot_frame, main_metrics, parse_summary, series_labels
from sphereard.utils.io import atomic_path


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


def write_outputs(out: str | Path, results: pd.DataFrame, summary: pd.DataFrame) -> dict[str, Path]:
    """results.csv, summary.csv, fd_vs_cfg.csv and plots/<metric>_vs_cfg.png under `out`; returns their paths
    (keys results, summary, fd_plot, plots)."""
    out = Path(out)
    paths = {"results": _write_csv(results, out / SWEEP_RESULTS_FILE),
             "summary": _write_csv(summary, out / SWEEP_SUMMARY_FILE)}
    series = series_labels(summary) if len(summary) else pd.Series(dtype=str)
    paths["fd_plot"] = _write_csv(fd_plot_frame(summary, series), out / SWEEP_FD_PLOT_FILE)
    with atomic_path(out / SWEEP_PLOTS_DIR) as tmp:
        tmp.mkdir()
        parsed = parse_summary(summary) if len(summary) else None
        for metric in main_metrics(results) if parsed is not None else ():
            column = f"{metric}_mean"
            rows = parsed[np.isfinite(parsed[column].astype(float))] if column in parsed else parsed.iloc[:0]
            if len(rows):
                plot_sweep(rows, metric, tmp / f"{metric}_vs_cfg.png")
    paths["plots"] = out / SWEEP_PLOTS_DIR
    return paths
