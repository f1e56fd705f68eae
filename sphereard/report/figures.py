"""The report's overview plots (also drawn by the notebook): metric vs CFG scale from the sweep summary,
token norms and the teacher-forced error split from evaluate's CSVs.

Conventions come from `sphereard.eval.figures`: one colour per tokenizer, several lines of one tokenizer
apart by line style / marker / opacity, a target drawn as a dotted black `reference_line`. Plots are
built on `matplotlib.figure.Figure` (no pyplot state) and written to the given path.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from sphereard.eval.diagnostics import FIG_DPI, FIG_SIZE
from sphereard.eval.figures import SPLIT_SERIES, norm_series_style, reference_line, split_series_style
from sphereard.report.compare import finite
from sphereard.sweep.plots import draw_sweep
from sphereard.utils.stats import mean_over_seeds

BAND_COLUMNS = ("norm_q05", "norm_q95")  # evaluate's per-position norm quantiles
BAND_ALPHA = 0.1
SEED_BAND_ALPHA = 0.12  # the 95% t-interval over runs (bands of several series overlap)
PANEL_SIZE = (4.5, 3.5)  # one panel of a multi-panel figure, inches


def interval_band(ax, x, mean, half, color, alpha: float = SEED_BAND_ALPHA) -> None:
    """Shade mean ± half (the 95% t-interval over runs) around a line, when any half-width is > 0."""
    if (half > 0).any():
        ax.fill_between(x, mean - half, mean + half, color=color, alpha=alpha, linewidth=0)


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=FIG_DPI)


def plot_sweep_panels(summary: pd.DataFrame, metrics: list[str], path: Path, source: str) -> None:
    """Several metrics vs CFG scale side by side (`draw_sweep`, drift threshold on norm panels); `source`
    names where the summary came from in each title."""
    fig = Figure(figsize=(PANEL_SIZE[0] * len(metrics), PANEL_SIZE[1]))
    for i, metric in enumerate(metrics):
        draw_sweep(fig.add_subplot(1, len(metrics), i + 1), summary, metric, f"{metric} vs w ({source})",
                   threshold=True)
    _save(fig, path)


NORM_KEYS = ["series", "projection", "cfg_scale", "position"]  # norm_trajectory.csv's row key within a run


def norm_over_seeds(frame: pd.DataFrame) -> pd.DataFrame:
    """norm_trajectory.csv rows of one or more runs (`seed` column) -> one row per series and position:
    norm_mean (and the quantile bands) averaged over the runs, `norm_mean_half` its t-interval, `n`."""
    values = ["norm_mean", *[c for c in BAND_COLUMNS if c in frame]]
    return mean_over_seeds(frame, NORM_KEYS, values)


def plot_norm_overview(frames: dict[str, pd.DataFrame], radii: dict[str, float | None], path: Path,
                       bands: bool = False) -> None:
    """Mean pre-projection token norm per position, one panel per tokenizer in its colour (dashed = no
    projection, more opaque = higher CFG scale), the radius R it is compared with as a dotted line.
    Several runs (a `seed` column): their mean with the 95% t-interval over runs as a band; `bands`: also
    the 5-95% quantile band where the CSV has it."""
    fig = Figure(figsize=(FIG_SIZE[0] * len(frames) * 0.7, FIG_SIZE[1]))
    for i, (p, frame) in enumerate(frames.items()):
        ax = fig.add_subplot(1, len(frames), i + 1)
        frame = norm_over_seeds(frame)
        scales = sorted(frame["cfg_scale"].unique())
        for series, rows in frame.groupby("series", sort=False):
            style = norm_series_style(p, str(rows["projection"].iloc[0]), scales.index(rows["cfg_scale"].iloc[0]),
                                      len(scales))
            ax.plot(rows["position"], rows["norm_mean"], label=series, **style)
            interval_band(ax, rows["position"], rows["norm_mean"], rows["norm_mean_half"], style["color"])
            if bands and all(c in rows for c in BAND_COLUMNS):
                ax.fill_between(rows["position"], rows[BAND_COLUMNS[0]], rows[BAND_COLUMNS[1]], color=style["color"],
                                alpha=BAND_ALPHA)
        if finite(radii.get(p)):
            reference_line(ax, radii[p], f"R = {radii[p]:.3g}")
        ax.set(xlabel="token position", ylabel="mean ||z|| (pre-projection)", title=p)
        ax.legend(fontsize="x-small")
    _save(fig, path)


def plot_split_overview(frames: dict[str, pd.DataFrame], path: Path) -> None:
    """Teacher-forced error per position, one colour per tokenizer: solid = error, dashed = its floor (two
    independent posterior samples of one token), faint = radial (`split_series_style`); several runs: the
    mean over runs with its 95% t-interval as a band."""
    fig = Figure(figsize=FIG_SIZE)
    ax = fig.add_subplot()
    for p, frame in frames.items():  # long format: position, series (SPLIT_SERIES), error [, seed]
        frame = mean_over_seeds(frame, ["series", "position"], ["error"])
        part = {name: rows.sort_values("position") for name, rows in frame.groupby("series")}
        for name in SPLIT_SERIES:
            if name in part:
                rows, style = part[name], split_series_style(p, name)
                ax.plot(rows["position"], rows["error"], label=f"{p} {name}", **style)
                interval_band(ax, rows["position"], rows["error"], rows["error_half"], style.get("color"))
    ax.set(xlabel="token position", ylabel="mean |error|", title="teacher-forced error (solid) and its floor (dashed)")
    ax.legend(fontsize="small")
    _save(fig, path)
