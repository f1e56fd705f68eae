"""Intervals over seeds: the Student t confidence interval every figure and comparison uses."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

CONFIDENCE = 0.95  # two-sided t-interval of a mean over seeds


def finite(v) -> bool:
    """A real, finite number (not a bool, not None / NaN / inf)."""
    return isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(v)


def half_width(std, n) -> float:
    """Half-width of the CONFIDENCE t-interval of a mean over n seeds with sample std `std`:
    t(0.5 + CONFIDENCE / 2, n - 1) * std / sqrt(n); 0 for n <= 1 or an unknown std (a single value has
    no interval)."""
    if not (finite(n) and n > 1 and finite(std)):
        return 0.0
    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, int(n) - 1) * std / math.sqrt(n))


class Estimate(float):
    """A mean over seeds that carries its interval: a float (arithmetic drops the interval) with `half`
    (the CONFIDENCE t-interval half-width, 0 for n <= 1) and `n` (seeds it averages)."""

    half: float
    n: int

    def __new__(cls, mean: float, half: float = 0.0, n: int = 1) -> Estimate:
        obj = super().__new__(cls, mean)
        obj.half, obj.n = float(half), int(n)
        return obj

    def __repr__(self) -> str:
        return f"Estimate({float(self)!r}, half={self.half!r}, n={self.n})"


def estimate(values) -> Estimate | None:
    """Mean of the finite values (one per seed) with its t-interval; None when none is finite."""
    vals = [float(v) for v in values if finite(v)]
    if not vals:
        return None
    n = len(vals)
    std = float(np.std(vals, ddof=1)) if n > 1 else float("nan")
    return Estimate(float(np.mean(vals)), half_width(std, n), n)


def half_of(v) -> float:
    """The interval half-width `v` carries (an Estimate), else 0."""
    return getattr(v, "half", 0.0)


def mean_over_seeds(frame, keys: list[str], values: list[str], seed: str = "seed"):
    """A long frame with one row per seed and `keys` (e.g. series, position) -> one row per `keys`: each
    value column's mean over seeds, `<value>_half` its t-interval half-width over the seeds with a value
    there, and `n` the seeds with a first-column value (pandas)."""
    if seed not in frame:
        return frame.assign(n=1, **{f"{v}_half": 0.0 for v in values})
    grouped = frame.groupby(keys, sort=False, dropna=False)
    out = grouped[values].mean()
    for v in values:  # n per column: the seeds with a finite value there
        std, count = grouped[v].std(ddof=1), grouped[v].count()
        out[f"{v}_half"] = [half_width(s, n) for s, n in zip(std, count, strict=True)]
    out["n"] = grouped[values[0]].count() if values else grouped[seed].nunique()
    return out.reset_index()
