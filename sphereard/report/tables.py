"""Cells and markdown tables: how every number the report prints is written, and the tables that are
not per-section prose (images per class; norm drift measured from evaluate's trajectories)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from sphereard.eval.diagnostics import DRIFT_TOL
from sphereard.report.keys import norm_key
from sphereard.utils.stats import Estimate, estimate

MISSING = "n/a"
MISSING_COUNT = "an unrecorded number of"
IMBALANCE_RATIO = 2.0  # largest / smallest class (train images) above this is reported as imbalance
CLASS_TABLE_MAX = 30  # classes listed in the report; more: the largest and smallest CLASS_TABLE_MAX // 2


def fmt(v) -> str:
    """Table cell: strings as is, ints exact, floats to 4 significant digits, None / NaN as n/a; a mean over
    n > 1 seeds (an Estimate) as `mean ± half-width` of its 95% t-interval."""
    if isinstance(v, Estimate) and v.n > 1:
        return f"{fmt(float(v))} ± {fmt(v.half)}"
    if v is None:
        return MISSING
    if isinstance(v, (str, bool)):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    v = float(v)
    if math.isnan(v):
        return MISSING
    return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"


def pct(v: float) -> str:
    return f"{v:.1%}"


def cell(v) -> str:
    """`fmt(v)` with `|` escaped, so a cell's text never splits the markdown row."""
    return fmt(v).replace("|", "\\|")


def md_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows])


def collapse(values: dict[str, object], show=fmt) -> str:
    """One value when every posterior has the same (absent ones left out), else `p v, q w`; n/a if none."""
    known = {p: v for p, v in values.items() if v is not None}
    if not known:
        return fmt(None)
    if len({show(v) for v in known.values()}) == 1:
        return show(next(iter(known.values())))
    return ", ".join(f"{p} {show(v)}" for p, v in known.items())


def counted(infos: dict, key: str) -> str:
    """A count the evaluate stage recorded (its info files, one per posterior): the value if every posterior
    agrees, the distinct values joined by " / " if not, "an unrecorded number of" if none has it. A mapping
    (reference images per extractor) counts as its distinct values."""
    values = []
    for info in infos.values():
        value = (info or {}).get(key)
        for v in (value.values() if isinstance(value, dict) else [value]):
            if v is not None and v not in values:
                values.append(v)
    return " / ".join(fmt(v) for v in values) if values else MISSING_COUNT


def class_table(classes: pd.DataFrame) -> pd.DataFrame:
    """The rows the report lists: every class, or the largest and smallest CLASS_TABLE_MAX // 2 by train count."""
    if len(classes) <= CLASS_TABLE_MAX:
        return classes
    by_size = classes.sort_values("train", ascending=False, kind="stable")
    return pd.concat([by_size.head(CLASS_TABLE_MAX // 2), by_size.tail(CLASS_TABLE_MAX // 2)])


def drift_table(frames: dict[str, pd.DataFrame], radii: dict[str, float | None],
                evaluation: dict[str, dict | None]) -> pd.DataFrame:
    """Per posterior and norm series of evaluate's `norm_trajectory.csv`: the relative deviation of the mean
    norm from R with the definition of `norm_rel_dev_<projection>_cfg<w>` (max over positions k of
    |mean_n ||z_nk|| - R| / R; NaN without R), computed per run (`seed` column) and averaged over the runs
    (an Estimate, as evaluate's value is in the report), whether it is beyond DRIFT_TOL, and evaluate's value."""
    rows = []
    for p, frame in frames.items():
        radius = radii.get(p)
        runs = frame.groupby("seed", sort=False) if "seed" in frame else [(None, frame)]
        devs: dict[tuple[str, float], list[float]] = {}
        for _, run in runs:
            for _, series in run.groupby("series", sort=False):
                key = (str(series["projection"].iloc[0]), float(series["cfg_scale"].iloc[0]))
                dev = float((series["norm_mean"] - radius).abs().max() / radius) if radius else float("nan")
                devs.setdefault(key, []).append(dev)
        for (projection, cfg), values in devs.items():
            dev = estimate(values)
            rows.append({"posterior": p, "projection": projection, "cfg_scale": cfg, "R": radius,
                         "norm_rel_dev": float("nan") if dev is None else dev,
                         f"drift (> {DRIFT_TOL:.0%})": dev is not None and dev > DRIFT_TOL,
                         "evaluate's value": (evaluation.get(p) or {}).get(norm_key(projection, cfg), float("nan"))})
    return pd.DataFrame(rows).set_index(["posterior", "projection", "cfg_scale"]) if rows else pd.DataFrame()
