"""Metric vs CFG scale from a sweep summary: one line per setting in its tokenizer's colour, error bars
the t-interval over seeds. Drawn by the sweep stage (plots/<metric>_vs_cfg.png), the report and the
notebook (`sphereard.report.figures.plot_sweep_panels`); conventions from `sphereard.eval.figures`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sphereard.eval.diagnostics import DRIFT_TOL, FIG_DPI, FIG_SIZE
from sphereard.eval.figures import reference_line, series_styles
from sphereard.sweep.results import sweep_lines
from sphereard.utils.stats import half_width

BAND_ALPHA = 0.15  # the t-interval band around each line


def draw_sweep(ax, summary: pd.DataFrame, metric: str, title: str | None = None, threshold: bool = False) -> None:
    """Mean of `metric` vs CFG scale in `ax`, one line per sweep setting in its tokenizer's colour; error
    bars and a shaded band = the CONFIDENCE t-interval of the mean where n > 1 seeds; `threshold`: norm
    deviations get the drift tolerance DRIFT_TOL as a reference line."""
    lines = sweep_lines(summary)
    styles = series_styles(list(lines))
    for label, line in lines.items():
        std = line.get(f"{metric}_std", pd.Series(np.nan, index=line.index))
        yerr = [half_width(sd, n) for sd, n in zip(std, line["n"], strict=True)]
        mean = line[f"{metric}_mean"].to_numpy(dtype=float)
        ax.errorbar(line["cfg_scale"], mean, yerr=yerr, capsize=3, label=label, **styles[label])
        if any(h > 0 for h in yerr):  # the interval as a band too
            ax.fill_between(line["cfg_scale"], mean - np.array(yerr), mean + np.array(yerr), alpha=BAND_ALPHA,
                            color=styles[label].get("color"), linewidth=0)
    if threshold and metric.startswith("norm_rel_dev_"):
        reference_line(ax, DRIFT_TOL, f"drift threshold {DRIFT_TOL:.0%}")
    ax.set(xlabel="CFG scale w", ylabel=metric, title=title or f"{metric} vs CFG scale")
    ax.legend(fontsize="small")


def plot_sweep(summary: pd.DataFrame, metric: str, path: Path) -> None:
    """One metric vs CFG scale (`draw_sweep`), the report's per-metric figure."""
    fig = Figure(figsize=FIG_SIZE)
    draw_sweep(fig.add_subplot(), summary, metric)
    fig.tight_layout()
    fig.savefig(path, dpi=FIG_DPI)
