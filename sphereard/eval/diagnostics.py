"""Latent-geometry diagnostics (SphereAR, arXiv 2509.24335, Sec. 3 and Fig. 4).

The paper's argument: with unconstrained (Gaussian) latents, CFG inflates the norm of sampled
tokens and the error compounds along the AR sequence; fixing every token to radius R removes the
radial degree of freedom. These pure functions measure that (norm trajectories over positions,
radial vs tangential teacher-forced error next to its floor, the same split between two independent
posterior samples of one token) and plot it with matplotlib's object API (no pyplot
state, no display backend). Plots are written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from matplotlib.figure import Figure

from sphereard.eval.figures import (
    NORM_SERIES,
    SPLIT_SERIES,
    norm_series_style,
    reference_line,
    series_styles,
    split_series_style,
)
from sphereard.geometry import radial_tangential_split
from sphereard.utils.io import atomic_path

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
BAND = (0.05, 0.95)  # shaded quantile band in the norm plot
DRIFT_TOL = 0.05  # relative deviation of the mean norm from the radius that counts as drift
FIG_SIZE = (6.0, 3.5)
FIG_DPI = 120


def _np(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)


def norm_trajectory(norms, quantiles=QUANTILES) -> dict[str, np.ndarray]:
    """Token norms (N, L) -> {'mean': (L,), 'q05': (L,), ...}: per-position statistics over samples."""
    n = _np(norms)
    assert n.ndim == 2, "norms must be (N samples, L positions)"
    out = {"mean": n.mean(0)}
    for q in quantiles:
        out[f"q{round(100 * q):02d}"] = np.quantile(n, q, axis=0)
    return out


class NormDrift(NamedTuple):
    drifted: bool
    max_rel_deviation: float  # max over positions of |mean norm - reference| / reference
    rel_slope: float  # least-squares slope of mean norm per position, relative to the reference


def detect_norm_drift(norms, radius: float | None = None, tol: float = DRIFT_TOL) -> NormDrift:
    """Whether the per-position mean token norm leaves `radius` (default: the first position's mean)
    by more than `tol` relative; norms (N, L)."""
    mean = norm_trajectory(norms, quantiles=())["mean"]  # (L,)
    ref = float(radius) if radius is not None else float(mean[0])
    assert ref > 0, "reference radius must be positive"
    dev = float(np.abs(mean - ref).max() / ref)
    slope = float(np.polyfit(np.arange(len(mean)), mean, 1)[0] / ref) if len(mean) > 1 else 0.0
    return NormDrift(dev > tol, dev, slope)


def radial_tangential_error(pred, target) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced error split: pred, target (N, L, d) -> radial, tangential magnitudes (N, L).

    radial = |<pred - target, target / ||target||>|, tangential = norm of the rest
    (`sphereard.geometry.radial_tangential_split`); latent units."""
    pred, target = torch.as_tensor(pred), torch.as_tensor(target)
    assert pred.shape == target.shape and pred.dim() == 3, "pred and target must both be (N, L, d)"
    radial, tangential = radial_tangential_split(target, pred - target)
    return radial.norm(dim=-1), tangential.norm(dim=-1)


def radial_tangential_floor(z_a, z_b) -> tuple[torch.Tensor, torch.Tensor]:
    """Floor of the teacher-forced split: two independent posterior samples z_a, z_b (N, L, d) of the same
    tokens -> radial, tangential magnitudes (N, L) of z_a - z_b w.r.t. z_b (latent units).

    A generator that predicts an exact posterior sample of every token, independent of the target sample,
    scores this split on average: the error the posterior's own spread sets, with no model at all."""
    return radial_tangential_error(z_a, z_b)


def radial_fraction(radial, tangential) -> float:
    """sum radial^2 / sum (radial^2 + tangential^2) of magnitudes (N, L): the share of squared error along
    the target token's direction."""
    radial, tangential = torch.as_tensor(radial).double(), torch.as_tensor(tangential).double()
    return float((radial ** 2).sum() / (radial ** 2 + tangential ** 2).sum())


def _save(fig: Figure, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, dpi=FIG_DPI, format=path.suffix.lstrip(".") or "png")
    return path


def plot_norm_trajectories(norms_by_label: dict, radius: float | None, path: str | Path,
                           title: str = "token norm along the sequence", posterior: str | None = None) -> Path:
    """Mean and 5-95% band of token norm per position for each {label: norms (N, L)}; dotted line at R.

    With `posterior` (one tokenizer's diagnostics, labels `<projection> cfg=<w>`), every line has that
    tokenizer's colour, dashed without projection, more opaque at higher w (`norm_series_style`);
    otherwise each label is coloured as the tokenizer it names (sphereard/eval/figures.py)."""
    fig = Figure(figsize=FIG_SIZE)
    ax = fig.add_subplot()
    parsed = {label: NORM_SERIES.match(str(label)) for label in norms_by_label}
    scales = sorted({float(m["cfg"]) for m in parsed.values() if m})
    styles = series_styles(list(norms_by_label))
    for label, norms in norms_by_label.items():
        tr = norm_trajectory(norms, quantiles=BAND)
        pos = np.arange(len(tr["mean"]))
        m = parsed[label]
        style = (norm_series_style(posterior, m["projection"], scales.index(float(m["cfg"])), len(scales))
                 if posterior is not None and m else {k: styles[label][k] for k in ("color", "ls")})
        ax.plot(pos, tr["mean"], label=label, **style)
        ax.fill_between(pos, tr["q05"], tr["q95"], color=style["color"], alpha=0.1)
    if radius is not None:
        reference_line(ax, radius, f"R = {radius:.3g}")
    ax.set(xlabel="token position", ylabel="||z||", title=title)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_error_split(series_by_label: dict, path: str | Path,
                     title: str = "teacher-forced error (solid) and its floor (dashed)") -> Path:
    """{label: {series: magnitudes (N, L)}} with series among SPLIT_SERIES (radial, tangential and optionally
    their floors) -> mean magnitude per position in the colour of the tokenizer the label names; solid =
    error, dashed = floor, faint = radial (`split_series_style`)."""
    fig = Figure(figsize=FIG_SIZE)
    ax = fig.add_subplot()
    for label, series in series_by_label.items():
        for name in SPLIT_SERIES:
            if name in series:
                mean = _np(series[name]).mean(0)  # (L,)
                ax.plot(np.arange(len(mean)), mean, label=f"{label} {name}", **split_series_style(label, name))
    ax.set(xlabel="token position", ylabel="mean |error|", title=title)
    ax.legend(fontsize="small")
    return _save(fig, path)
