"""Has a training curve settled? The plateau criterion of issue 15, as small pure functions.

A curve is the `train/<metric>` history the loop logs (window means every `log_every` steps;
`sphereard.train.loop.HISTORY_KEY`). It is smoothed by a trailing moving average over
SMOOTH_FRACTION of its points; its **second-half change** is the largest |s(t) - s(T)| over the
points t in the second half of training, relative to |s(T)|, the smoothed final value. A curve
has plateaued when that change is below PLATEAU_TOL (5%). The criterion says nothing about why
it is flat: a learning rate decayed to ~0 also flattens a curve, so profiles that must show
convergence train with a constant learning rate after warm-up (the report states the schedule).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

PLATEAU_TOL = 0.05  # the largest second-half change, relative to the final value, that counts as flat
SMOOTH_FRACTION = 0.1  # moving-average window, as a fraction of the logged points (at least 1 point)
PLATEAU_CURVES = ("kl", "recon")  # the tokenizer curves the criterion is applied to


def smoothed(values: np.ndarray) -> np.ndarray:
    """Trailing moving average of a 1-D curve (N,) over max(1, round(SMOOTH_FRACTION * N)) points."""
    values = np.asarray(values, np.float64)
    window = max(1, round(SMOOTH_FRACTION * len(values)))
    return pd.Series(values).rolling(window, min_periods=1).mean().to_numpy()


def second_half_change(steps: np.ndarray, values: np.ndarray) -> float:
    """max over the second half's points of |s(t) - s(T)| / |s(T)| for the smoothed curve s; NaN with
    fewer than 4 points or a zero final value (nothing to judge)."""
    steps, s = np.asarray(steps), smoothed(values)
    if len(s) < 4 or s[-1] == 0 or not np.isfinite(s).all():
        return float("nan")
    half = steps >= steps[-1] / 2  # the second half of training: steps T/2 .. T
    return float(np.abs(s[half] - s[-1]).max() / abs(s[-1]))


def convergence_summary(history: list[dict], curves=PLATEAU_CURVES, prefix: str = "train/") -> dict[str, float]:
    """{`<curve>_final`: smoothed final value, `<curve>_second_half_change`: as above} for each curve
    in the logged `history` rows ({"step", "<prefix><curve>": value}), plus the smoothed final value
    of every other logged metric as `<metric>_final`. Curves absent from the history are left out."""
    frame = pd.DataFrame(history)
    out = {}
    if frame.empty:
        return out
    steps = frame["step"].to_numpy()
    for column in [c for c in frame.columns if c.startswith(prefix)]:
        name, values = column[len(prefix):], frame[column].to_numpy(np.float64)
        out[f"{name}_final"] = float(smoothed(values)[-1])
        if name in curves:
            out[f"{name}_second_half_change"] = second_half_change(steps, values)
    return out


def plateaued(summary: dict[str, float], curves=PLATEAU_CURVES, tol: float = PLATEAU_TOL) -> bool:
    """Every curve's second-half change is below `tol` (a NaN change is not a plateau)."""
    return all(summary.get(f"{c}_second_half_change", float("nan")) < tol for c in curves)
