"""The report's "Tokenizer convergence" section: did every tokenizer's KL and reconstruction loss
plateau (`sphereard.train.convergence`), under which learning-rate schedule, and how noisy are the
posterior samples the generator will learn (kappa / std, cosine of a sample to its mode)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from sphereard.config import Params
from sphereard.eval.diagnostics import FIG_DPI
from sphereard.eval.figures import posterior_colour
from sphereard.report.figures import interval_band
from sphereard.report.inputs import Inputs
from sphereard.report.tables import fmt, md_table
from sphereard.train.convergence import PLATEAU_CURVES, PLATEAU_TOL
from sphereard.utils.stats import estimate, mean_over_seeds

FIGURE = "tokenizer_training.png"
COLUMNS = ("plateaued", "kl_final", "kl_second_half_change", "recon_final", "recon_second_half_change",
           "kappa_mean_final", "std_mean_final", "cos_sample_mode_final")
PANEL = (4.5, 3.2)
SLOPE = "recon_loglog_slope"  # the report's own column, from each run's history.csv


def loglog_slope(steps, values) -> float:
    """Least-squares slope of log(value) on log(step) over the second half of training (steps >= T/2),
    NaN with fewer than 3 positive points. A power law value ~ step^-a has slope -a, and its second-half
    change 2^a - 1 is the same at every horizon: more steps alone do not flatten it."""
    frame = pd.DataFrame({"step": steps, "value": values}).dropna()
    frame = frame[(frame["step"] >= frame["step"].max() / 2) & (frame["value"] > 0) & (frame["step"] > 0)]
    if len(frame) < 3:
        return float("nan")
    return float(np.polyfit(np.log(frame["step"]), np.log(frame["value"]), 1)[0])


def slopes_over_runs(frame: pd.DataFrame):
    """One tokenizer's history rows (one or more runs, `seed` column) -> the Estimate of `loglog_slope`
    of its reconstruction loss over the runs."""
    runs = frame.groupby("seed") if "seed" in frame else [(None, frame)]
    return estimate([loglog_slope(rows["step"], rows["recon"]) for _, rows in runs])


def plot_training_curves(frames: dict[str, pd.DataFrame], path: Path) -> None:
    """KL and reconstruction loss vs step (history.csv), log-log axes (a power law is a straight line),
    one colour per tokenizer, the mean over runs with its 95% t-interval as a band; the shaded span is
    the second half the plateau criterion judges."""
    fig = Figure(figsize=(PANEL[0] * len(PLATEAU_CURVES), PANEL[1]))
    for i, curve in enumerate(PLATEAU_CURVES):
        ax = fig.add_subplot(1, len(PLATEAU_CURVES), i + 1)
        for p, frame in frames.items():
            if curve in frame:
                avg = mean_over_seeds(frame, ["step"], [curve]).sort_values("step")
                ax.plot(avg["step"], avg[curve], color=posterior_colour(p), label=p)
                interval_band(ax, avg["step"], avg[curve], avg[f"{curve}_half"], posterior_colour(p))
        last = max(f["step"].max() for f in frames.values())
        ax.axvspan(last / 2, last, color="0.9", zorder=0)
        ax.set(xlabel="step", ylabel=curve, title=f"train_vae: {curve} (shaded: judged half)", xscale="log",
               yscale="log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # 20, 50, 100, 200, 500
        ax.xaxis.set_major_formatter(ScalarFormatter())  # 100, not 10^2
        ax.xaxis.set_minor_formatter(NullFormatter())  # no crowded minor labels
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=FIG_DPI)


def plateau_verdict(value) -> str:
    """`plateaued` (1/0 per run; over runs their mean, an Estimate) -> yes / no / `k of n runs`."""
    if value is None:
        return "n/a"
    n = getattr(value, "n", 1)
    if float(value) in (0.0, 1.0):
        return ("yes" if float(value) == 1.0 else "no") + (f" (all {n} runs)" if n > 1 else "")
    return f"{round(float(value) * n)} of {n} runs"


def schedule_text(params: Params) -> str:
    """What flattens the curves besides convergence: the learning-rate schedule, stated."""
    train = params.tokenizer.train
    opt = train.optim
    text = (f"Learning rate `{opt.schedule}` at {opt.lr:g} after {opt.warmup_steps} warm-up steps, {train.steps} "
            f"steps at batch {train.batch_size}; `kappa_init` {fmt(train.kappa_init)} (spherical head's starting "
            f"concentration; n/a = the official default-initialised layer); export: {train.export} weights.")
    if opt.schedule != "constant":
        text += (f" The rate decays to {opt.min_lr:g}, so a flat second half may partly be a small step size, "
                 "not convergence.")
    return text


def section_convergence(params: Params, inp: Inputs, fig_dir: Path) -> list[str]:
    trained = [p for p in inp.posteriors if not inp.imported.get(p)]
    tok = inp.metrics["tokenizer"]
    if not trained or not any("plateaued" in (tok[p] or {}) for p in trained):
        return []
    frames = {p: frame for p, frame in inp.frames["history"].items() if p in trained}  # columns checked
    rows = []
    for p in trained:
        m = tok[p] or {}
        verdict = plateau_verdict(m.get("plateaued"))
        slope = slopes_over_runs(frames[p]) if p in frames else None
        rows.append([p, verdict, *[m.get(c) for c in COLUMNS[1:]], slope])
    out = ["## Tokenizer convergence", "", md_table(["tokenizer", *COLUMNS, SLOPE], rows), "",
           f"`plateaued`: the smoothed KL and reconstruction loss each changed by less than {PLATEAU_TOL:.0%} of "
           "the final value over the second half of training (train_vae's metrics; curves in each tokenizer's "
           f"`history.csv`). `{SLOPE}`: the slope of log(recon) on log(step) over the second half; a power law "
           "step^-a (slope -a) changes by 2^a - 1 over the second half at every horizon, so a longer budget "
           "alone does not make it plateau (docs/tokenizer-convergence.md compares constant-rate runs of 500 and "
           "1500 steps). " + schedule_text(params)]
    if frames:
        plot_training_curves(frames, fig_dir / FIGURE)
        out += ["", f"![tokenizer training curves](figures/{FIGURE})"]
    return out
