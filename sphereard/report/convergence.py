"""The report's "Tokenizer convergence" section: did every tokenizer's KL and reconstruction loss
plateau (`sphereard.train.convergence`), under which learning-rate schedule, and how noisy are the
posterior samples the generator will learn (kappa / std, cosine of a sample to its mode)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from sphereard.config import Params
from sphereard.eval.diagnostics import FIG_DPI
from sphereard.eval.figures import posterior_colour
from sphereard.report.inputs import Inputs
from sphereard.report.tables import fmt, md_table
from sphereard.train.convergence import PLATEAU_CURVES, PLATEAU_TOL

FIGURE = "tokenizer_training.png"
COLUMNS = ("plateaued", "kl_final", "kl_second_half_change", "recon_final", "recon_second_half_change",
           "kappa_mean_final", "std_mean_final", "cos_sample_mode_final")
PANEL = (4.5, 3.2)


def plot_training_curves(frames: dict[str, pd.DataFrame], path: Path) -> None:
    """KL and reconstruction loss vs step (history.csv), one colour per tokenizer; the shaded span is
    the second half the plateau criterion judges."""
    fig = Figure(figsize=(PANEL[0] * len(PLATEAU_CURVES), PANEL[1]))
    for i, curve in enumerate(PLATEAU_CURVES):
        ax = fig.add_subplot(1, len(PLATEAU_CURVES), i + 1)
        for p, frame in frames.items():
            if curve in frame:
                ax.plot(frame["step"], frame[curve], color=posterior_colour(p), label=p)
        last = max(f["step"].max() for f in frames.values())
        ax.axvspan(last / 2, last, color="0.9", zorder=0)
        ax.set(xlabel="step", ylabel=curve, title=f"train_vae: {curve} (shaded: judged half)")
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=FIG_DPI)


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
    rows = []
    for p in trained:
        m = tok[p] or {}
        verdict = {1.0: "yes", 0.0: "no"}.get(m.get("plateaued"), "n/a")
        rows.append([p, verdict, *[m.get(c) for c in COLUMNS[1:]]])
    out = ["## Tokenizer convergence", "", md_table(["tokenizer", *COLUMNS], rows), "",
           f"`plateaued`: the smoothed KL and reconstruction loss each changed by less than {PLATEAU_TOL:.0%} of "
           "the final value over the second half of training (train_vae's metrics; curves in each tokenizer's "
           "`history.csv`). " + schedule_text(params)]
    frames = {p: frame for p, frame in inp.frames["history"].items() if p in trained}  # columns checked
    if frames:
        plot_training_curves(frames, fig_dir / FIGURE)
        out += ["", f"![tokenizer training curves](figures/{FIGURE})"]
    return out
