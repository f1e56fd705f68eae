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
