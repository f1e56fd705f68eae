"""The report's "What the numbers show": every statement computed from the numbers in the report.

Every comparison here (rankings, "grows / shrinks with CFG", beyond / within the drift threshold,
degradation along the CFG sweep) is decided by `sphereard.report.compare`: differences within the
tolerance (REL_TOL of the larger value; for sweep means over n > 1 seeds also the 95% t-intervals) are
printed as ties, never as a ranking. "What they do not show" is `sphereard.report.caveats`. Metric
names stay the stages' keys; the word for the Inception metric appears only when a `fid_inception`
value exists.
"""

from __future__ import annotations

from sphereard.config import Params
from sphereard.eval.diagnostics import DRIFT_TOL
from sphereard.report.caveats import caveats
from sphereard.report.compare import (
    CONFIDENCE,
    REL_TOL,
    TIE,
    against_threshold,
    best_of,
    compare,
    finite,
    half_width,
    tie_groups,
    trend,
)
from sphereard.report.keys import (
    DECODES,
    HIGHER_BETTER_GEN,
    LOWER_BETTER,
    RANKING_DECODE,
    SPREAD_PREFIXES,
    TF_PARTS,
    decode_key,
    generation_keys,
    norm_devs,
    recon_fd_keys,
    recon_value,
)
from sphereard.report.sweep import sweep_metrics
from sphereard.report.tables import IMBALANCE_RATIO, fmt, pct
from sphereard.sweep.results import sweep_lines

# a norm deviation must also move by more than this (0.5 percentage points) to count as a change with CFG:
# the diagnostics average a few dozen samples, which cannot resolve finer differences
NORM_ABS_FLOOR = 0.005


def rank(key: str, values: dict[str, float], lower_better: bool, halves: dict[str, float] | None = None,
         show=fmt) -> str | None:
    """'**p** has the lowest `key` (v); then q w; then ...' with ties as ties; None with < 2 finite values."""
    groups = tie_groups(values, lower_better, halves)
    if sum(len(g) for g in groups) < 2:
        return None
    listed = ", ".join(f"{p} {show(v)}" for g in groups for p, v in g)
    if len(groups) == 1:
        return f"`{key}`: {TIE} between {', '.join(p for p, _ in groups[0])} ({listed})."
    word = "lowest" if lower_better else "highest"
    head, rest = groups[0], groups[1:]
    lead = (f"**{head[0][0]}** has the {word} `{key}` ({show(head[0][1])})" if len(head) == 1 else
            f"**{', '.join(p for p, _ in head)}** tie for the {word} `{key}` "
            f"({', '.join(f'{p} {show(v)}' for p, v in head)}: {TIE})")
    then = "; ".join("then " + (" and ".join(f"{p} {show(v)}" for p, v in g) + (" (tied)" if len(g) > 1 else ""))
                     for g in rest)
    return f"{lead}; {then}."


def per_posterior(inp, block: str, key: str) -> dict[str, float]:
    return {p: (inp.metrics[block][p] or {}).get(key) for p in inp.posteriors}


def spread_halves(inp, key: str) -> dict[str, float]:
    """Half-widths for ranking `key`: the std the evaluate stage reports with it (`kid_std_*` over the KID
    subsets, `is_std_*` over the IS splits), so KID, which sits near 0 and may be negative, and the IS
    analogue rank only when their values differ by more than the two stds together; {} otherwise."""
    std_key = next((f"{prefix}std_{key[len(prefix):]}" for prefix in SPREAD_PREFIXES if key.startswith(prefix)), None)
    if std_key is None:
        return {}
    return {p: float(v) for p, v in per_posterior(inp, "evaluation", std_key).items() if finite(v)}


def recon_values(inp, key: str) -> dict[str, float]:
    """{posterior: reconstruction metric `key`} (train_vae's value, else evaluate's `recon_<key>`)."""
    return {p: recon_value(inp.metrics["tokenizer"][p], inp.metrics["evaluation"][p], key) for p in inp.posteriors}


def recon_findings(inp) -> list[str]:
    """Tokenizers ranked on decode(posterior sample) (psnr, then each rFD), the latents the generator learns; the
    decode(posterior mode) ranking beside it, and which tokenizer each decode would pick where they differ."""
    out = []
    keys = [("psnr", False), *[(k, True) for k in recon_fd_keys(inp.metrics["evaluation"])]]
    for metric, lower_better in keys:
        ranked = {d: recon_values(inp, decode_key(metric, d)) for d in DECODES}
        sample = rank(decode_key(metric, RANKING_DECODE), ranked[RANKING_DECODE], lower_better)
        if sample is None:
            continue
        mode = rank(decode_key(metric, "mode"), ranked["mode"], lower_better)
        out.append("Reconstruction ranked on decode(posterior sample), the latents the generator learns: " + sample)
        if mode is not None:
            best = {d: best_of(values, lower_better) for d, values in ranked.items()}
            differs = (f" The two decodes pick different tokenizers: **{best['sample']}** on the sample, "
                       f"**{best['mode']}** on the mode." if None not in best.values() and len(set(best.values())) > 1
                       else "")
            out.append("For comparison, decode(posterior mode): " + mode + differs)
    return out


def generation_findings(inp) -> list[str]:
    ev = inp.metrics["evaluation"]
    out = []
    for key in generation_keys(ev):
        if key.startswith(LOWER_BETTER + HIGHER_BETTER_GEN):
            out.append(rank(key, per_posterior(inp, "evaluation", key), key.startswith(LOWER_BETTER),
                            spread_halves(inp, key)))
    out += recon_findings(inp)
    psnr_key = decode_key("psnr", RANKING_DECODE)
    psnr = recon_values(inp, psnr_key)
    fd_keys = [k for k in generation_keys(ev) if k.startswith(("fd_", "fid_"))]
    if fd_keys and len(inp.posteriors) > 1:
        fd = fd_keys[0]
        by_fd, by_psnr = best_of(per_posterior(inp, "evaluation", fd), True), best_of(psnr, False)
        if by_fd is None or by_psnr is None:
            out.append(f"`{psnr_key}` and `{fd}` do not both single out one tokenizer beyond the tolerance: nothing "
                       "is claimed about reconstruction vs generation.")
        elif by_fd == by_psnr:
            out.append(f"The best reconstruction (`{psnr_key}`) and the best generation (`{fd}`) come from the same "
                       f"tokenizer, **{by_fd}**.")
        else:
            out.append(f"Better reconstruction did not give better generation: **{by_psnr}** has the highest "
                       f"`{psnr_key}`, **{by_fd}** the lowest `{fd}` (reconstruction / generation trade-off).")
    return [s for s in out if s]


def norm_findings(inp) -> list[str]:
    out, verdicts = [], {}
    w_top = None
    for p in inp.posteriors:
        devs = norm_devs(inp.metrics["evaluation"][p])
        none = sorted((w, v) for (proj, w), v in devs.items() if proj == "none" and finite(v))
        if not none:
            continue
        (w_lo, v_lo), (w_hi, v_hi) = none[0], none[-1]
        w_top = w_hi
        verdicts[p] = verdict = against_threshold(v_hi)
        change = "" if w_hi == w_lo else "; " + {
            1: f"it grows with CFG (from {pct(v_lo)} at w={w_lo:g})",
            -1: f"it shrinks with CFG (from {pct(v_lo)} at w={w_lo:g})",
            None: f"not monotone in CFG ({', '.join(f'{pct(v)} at w={w:g}' for w, v in none)})",
            0: f"{TIE} from w={w_lo:g} ({pct(v_lo)})"}[trend(none, NORM_ABS_FLOOR)]
        sphere = devs.get(("sphere", w_hi))
        with_proj = f"; sampled with projection to the sphere: {pct(sphere)}" if finite(sphere) else ""
        out.append(f"{p}: sampled without projection, `norm_rel_dev_none_cfg{w_hi:g}` = {pct(v_hi)} ({verdict} the "
                   f"{DRIFT_TOL:.0%} drift threshold){change}{with_proj}.")
    if w_top is not None:
        groups = {word: [p for p, v in verdicts.items() if v == word] for word in ("beyond", "at", "within")}
        text = "; ".join(f"{word} the threshold: {', '.join(ps)}" for word, ps in groups.items() if ps)
        out.append(f"Norm drift without projection at the highest diagnostic CFG scale (w={w_top:g}, threshold "
                   f"{DRIFT_TOL:.0%}): {text}.")
    return out + teacher_forced_findings(inp)


def floor_text(metrics: dict, part: str) -> str | None:
    """'radial 2.2 vs floor 1.8 (`tf_radial_excess` 0.4)', or 'at its floor' when error and floor tie; None
    without both numbers."""
    error, floor = metrics.get(f"tf_{part}_error"), metrics.get(f"tf_{part}_floor")
    if not (finite(error) and finite(floor)):
        return None
    excess = "at its floor" if compare(error, floor) == 0 else f"`tf_{part}_excess` {fmt(error - floor)}"
    return f"{part} {fmt(error)} vs floor {fmt(floor)} ({excess})"


def teacher_forced_findings(inp) -> list[str]:
    """The teacher-forced error read against its floor: each tokenizer's radial and tangential error, floor and
    excess, then the excesses ranked (lower: closer to a model that predicts exact posterior samples)."""
    said = {p: [t for part in TF_PARTS if (t := floor_text(inp.metrics["evaluation"][p] or {}, part))]
            for p in inp.posteriors}
    said = {p: texts for p, texts in said.items() if texts}
    if not said:
        return []
    out = ["Teacher-forced error over its floor (the same split between two independent posterior samples of a "
           "token, what a model predicting exact posterior samples scores; the excess is what the model adds): "
           + "; ".join(f"{p} {', '.join(texts)}" for p, texts in said.items()) + "."]
    for part in TF_PARTS:
        key = f"tf_{part}_excess"
        if statement := rank(key, per_posterior(inp, "evaluation", key), lower_better=True):
            out.append(statement)
    return out


def _point(row, metric: str) -> tuple[float, float]:
    """(mean, CONFIDENCE half-width) of one sweep point."""
    return float(row[f"{metric}_mean"]), half_width(row.get(f"{metric}_std"), row.get("n"))


def sweep_findings(inp) -> list[str]:
    if inp.sweep is None:
        return ["No sweep outputs: nothing is claimed about metric vs CFG scale."]
    out, summary = [], inp.sweep
    w_max = float(summary["cfg_scale"].max())
    lines = sweep_lines(summary)
    for metric in [m for m in sweep_metrics(summary) if m.startswith(("fd_", "fid_"))]:
        kept, degraded, at_top = [], [], {}
        for label, line in lines.items():
            line = line.dropna(subset=[f"{metric}_mean"])
            if len(line) < 2 or float(line["cfg_scale"].max()) != w_max:
                continue
            points = {float(r["cfg_scale"]): _point(r, metric) for _, r in line.iterrows()}
            best_w = min(points, key=lambda w: points[w][0])
            (best, h_best), (high, h_high) = points[best_w], points[w_max]
            at_top[label] = (high, h_high)
            tied = [w for w in points if w != best_w and compare(points[w][0], best, points[w][1], h_best) == 0]
            also = f" ({TIE} at w={', '.join(f'{w:g}' for w in tied)})" if tied else ""
            if best_w == w_max:
                tail = f"w={w_max:g} is the highest scale swept"
                kept.append(label)
            elif compare(high, best, h_high, h_best) > 0:
                tail = f"at w={w_max:g} {fmt(high)}, {(high - best) / best:+.0%} from its best (beyond the tolerance)"
                degraded.append(f"{label} ({(high - best) / best:+.0%})")
            else:
                tail = f"at w={w_max:g} {fmt(high)}: {TIE} from its best"
                kept.append(label)
            out.append(f"`{metric}` for {label}: lowest {fmt(best)} at w={best_w:g}{also}; {tail}.")
        if kept or degraded:
            out.append(f"Up to w={w_max:g}, `{metric}` stays within the tolerance of its best for "
                       f"{', '.join(kept) or 'none'}; rises beyond it for {', '.join(degraded) or 'none'} (paper "
                       "Fig. 4: the spherical tokenizer degrades least).")
        if statement := rank(metric, {k: v for k, (v, _) in at_top.items()}, lower_better=True,
                             halves={k: h for k, (_, h) in at_top.items()}):
            out.append(f"At w={w_max:g}: {statement}")
    return out + sweep_norm_findings(summary, w_max)


def sweep_norm_findings(summary, w: float, metric: str = "norm_rel_dev_max") -> list[str]:
    """Which sweep settings' pre-projection token norms leave R by more than DRIFT_TOL at CFG scale w."""
    if f"{metric}_mean" not in summary:
        return []
    groups: dict[str, list[str]] = {"beyond": [], "at": [], "within": []}
    for label, line in sweep_lines(summary).items():
        rows = line[line["cfg_scale"] == w]
        if len(rows) and finite(float(rows[f"{metric}_mean"].iloc[0])):
            v, h = _point(rows.iloc[0], metric)
            groups[against_threshold(v, h)].append(f"{label} ({pct(v)})")
    text = "; ".join(f"{word} for {', '.join(items)}" for word, items in groups.items() if items)
    return [f"Sweep `{metric}` at w={w:g} (pre-projection token norm vs R, threshold {DRIFT_TOL:.0%}): {text}."]


def data_findings(inp) -> list[str]:
    """Class imbalance of the train split (largest / smallest class above IMBALANCE_RATIO)."""
    classes = inp.classes
    if classes is None or not len(classes):
        return []
    big, small = classes.loc[classes["train"].idxmax()], classes.loc[classes["train"].idxmin()]
    total = classes["train"].sum()
    if small["train"] == 0:
        return [f"Class imbalance: class **{small['name']}** has no train images."]
    ratio = big["train"] / small["train"]
    if big["train"] == small["train"]:
        return [f"Classes are balanced: every class has {fmt(int(big['train']))} train images."]
    if ratio <= IMBALANCE_RATIO:
        return [f"Classes are balanced within {IMBALANCE_RATIO:g}x: largest {big['name']} ({fmt(int(big['train']))}"
                f" train images), smallest {small['name']} ({fmt(int(small['train']))})."]
    return [f"Class imbalance: the largest class **{big['name']}** holds {pct(big['train'] / total)} of the train "
            f"images ({fmt(int(big['train']))}), {ratio:.1f}x the smallest, **{small['name']}** "
            f"({fmt(int(small['train']))}); see the Data table."]


def section_findings(params: Params, inp) -> list[str]:
    shows = data_findings(inp) + generation_findings(inp) + norm_findings(inp) + sweep_findings(inp)
    if inp.classifier and finite(inp.classifier.get("test_accuracy")):
        shows.append(f"The in-project classifier behind `*_classifier` reaches {inp.classifier['test_accuracy']:.1%} "
                     "test accuracy.")
    return ["## What the numbers show", "",
            f"Comparisons follow the rule in Definitions ({REL_TOL:.0%} tolerance; {CONFIDENCE:.0%} t-intervals "
            "where seeds exist); ties are stated as ties.", "",
            *[f"- {s}" for s in shows], "",
            "## What they do not show", "", *[f"- {c}" for c in caveats(params, inp)]]
