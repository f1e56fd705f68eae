"""The report's "What the numbers show / what they do not" sections.

Every statement in "show" is computed from the numbers in the report (rankings, drift against
`DRIFT_TOL`, degradation along the CFG sweep); "do not show" is fixed caveats filled in with this
run's budget, extractor, sample count and seeds. Metric names stay the stages' keys; the word for
the Inception metric appears only when a `fid_inception` value exists.
"""

from __future__ import annotations

from pipelines._report_parts import (LOWER_BETTER, finite, fmt, generation_keys, norm_devs, recon_fd_keys, sweep_lines,
                                     sweep_metrics)
from sphereard.config import Params
from sphereard.eval.diagnostics import DRIFT_TOL

HIGHER_BETTER_GEN = ("class_consistency_", "precision_", "recall_", "is_")
PAPER_BEST = "1.34 for SphereAR-H on ImageNet 256x256"
MISSING_SAMPLES = "an unrecorded number of"
IMAGENET = "imagenet_tar"


def ranked(values: dict[str, float], lower_better: bool) -> list[tuple[str, float]]:
    items = [(p, float(v)) for p, v in values.items() if finite(v)]
    return sorted(items, key=lambda item: item[1] if lower_better else -item[1])


def compare(key: str, values: dict[str, float], lower_better: bool) -> str | None:
    """'**p** has the lowest `key` (v; then q w, ...).' or None with fewer than two finite values."""
    order = ranked(values, lower_better)
    if len(order) < 2:
        return None
    (best, v), rest = order[0], order[1:]
    values_text = ", ".join(f"{p} {fmt(x)}" for p, x in order)
    if fmt(v) == fmt(rest[0][1]):
        return f"`{key}` does not separate the tokenizers ({values_text})."
    word = "lowest" if lower_better else "highest"
    return f"**{best}** has the {word} `{key}` ({fmt(v)}; then " + ", ".join(f"{p} {fmt(x)}" for p, x in rest) + ")."


def per_posterior(inp, block: str, key: str) -> dict[str, float]:
    return {p: inp.metrics[block][p].get(key) for p in inp.posteriors}


def generation_findings(inp) -> list[str]:
    ev = inp.metrics["evaluation"]
    out = []
    for key in generation_keys(ev):
        if key.startswith(LOWER_BETTER + HIGHER_BETTER_GEN):
            out.append(compare(key, per_posterior(inp, "evaluation", key), key.startswith(LOWER_BETTER)))
    psnr = {p: inp.metrics["tokenizer"][p].get("psnr", ev[p].get("recon_psnr")) for p in inp.posteriors}
    out.append(compare("psnr", psnr, lower_better=False))
    out += [compare(k, {p: ev[p].get(f"recon_{k}") for p in inp.posteriors}, True) for k in recon_fd_keys(ev)]
    fd_keys = [k for k in generation_keys(ev) if k.startswith(("fd_", "fid_"))]
    if fd_keys and (by_fd := ranked(per_posterior(inp, "evaluation", fd_keys[0]), True)) and \
            (by_psnr := ranked(psnr, False)) and len(by_fd) > 1:
        if by_fd[0][0] == by_psnr[0][0]:
            out.append(f"The best reconstruction (psnr) and the best generation (`{fd_keys[0]}`) come from the "
                       f"same tokenizer, **{by_fd[0][0]}**.")
        else:
            out.append(f"Better reconstruction did not give better generation: **{by_psnr[0][0]}** has the highest "
                       f"psnr, **{by_fd[0][0]}** the lowest `{fd_keys[0]}` (reconstruction / generation trade-off).")
    return [s for s in out if s]


def norm_findings(inp) -> list[str]:
    out, drifting, stable = [], [], []
    w_top = None
    for p in inp.posteriors:
        devs = norm_devs(inp.metrics["evaluation"][p])
        none = sorted((w, v) for (proj, w), v in devs.items() if proj == "none" and finite(v))
        if not none:
            continue
        (w_lo, v_lo), (w_hi, v_hi) = none[0], none[-1]
        w_top = w_hi
        (drifting if v_hi > DRIFT_TOL else stable).append(p)
        trend = "" if w_hi == w_lo else \
            f"; it {'grows' if v_hi > v_lo else 'does not grow'} with CFG ({v_lo:.1%} at w={w_lo:g})"
        sphere = devs.get(("sphere", w_hi))
        with_proj = f"; with projection to the sphere: {sphere:.1%}" if finite(sphere) else ""
        out.append(f"{p}: without projection the mean pre-projection token norm deviates up to {v_hi:.1%} from R "
                   f"at w={w_hi:g} ({'beyond' if v_hi > DRIFT_TOL else 'within'} the {DRIFT_TOL:.0%} threshold)"
                   f"{trend}{with_proj}.")
    if w_top is not None:
        drift_text = f"**{', '.join(drifting)}** drift" if drifting else "no tokenizer drifts"
        stable_text = f"{', '.join(stable)} stay within {DRIFT_TOL:.0%}" if stable else "none stays within"
        out.append(f"Norm drift without projection at the highest diagnostic CFG scale (w={w_top:g}): "
                   f"{drift_text}; {stable_text}.")
    radial = {p: inp.metrics["evaluation"][p].get("tf_radial_fraction") for p in inp.posteriors}
    if order := ranked(radial, lower_better=False):
        out.append(f"The radial share of teacher-forced squared error is largest for **{order[0][0]}** "
                   f"({order[0][1]:.1%}); " + ", ".join(f"{p} {v:.1%}" for p, v in order[1:]) + ".")
    return out


def sweep_findings(inp) -> list[str]:
    if inp.sweep is None:
        return ["No sweep outputs: nothing is claimed about metric vs CFG scale."]
    out, summary = [], inp.sweep
    w_max = float(summary["cfg_scale"].max())
    for metric in [m for m in sweep_metrics(summary) if m.startswith(("fd_", "fid_"))]:
        change = {}
        for label, line in sweep_lines(summary).items():
            pts = line[["cfg_scale", f"{metric}_mean"]].dropna()
            if len(pts) < 2 or float(pts["cfg_scale"].max()) != w_max:
                continue
            best = pts.loc[pts[f"{metric}_mean"].idxmin()]
            high = float(pts[f"{metric}_mean"].iloc[-1])
            change[label] = (high - best[f"{metric}_mean"]) / best[f"{metric}_mean"]
            out.append(f"`{metric}` for {label}: best {fmt(best[f'{metric}_mean'])} at w={best['cfg_scale']:g}, "
                       f"{fmt(high)} at w={w_max:g} ({change[label]:+.0%} from its best).")
        if len(order := ranked(change, lower_better=True)) > 1:
            out.append(f"Most stable `{metric}` up to w={w_max:g}: **{order[0][0]}** ({order[0][1]:+.0%} from its "
                       f"best); least stable: {order[-1][0]} ({order[-1][1]:+.0%}) (paper Fig. 4: spherical most "
                       "stable).")
        out += seed_separation(summary, metric, w_max)
    return out + sweep_norm_findings(summary, w_max)


def sweep_norm_findings(summary, w: float, metric: str = "norm_rel_dev_max") -> list[str]:
    """Which sweep settings' pre-projection token norms leave R by more than DRIFT_TOL at CFG scale w."""
    if f"{metric}_mean" not in summary:
        return []
    at_w = {label: float(line.loc[line["cfg_scale"] == w, f"{metric}_mean"].iloc[0])
            for label, line in sweep_lines(summary).items() if (line["cfg_scale"] == w).any()}
    beyond = [f"{label} ({v:.1%})" for label, v in at_w.items() if finite(v) and v > DRIFT_TOL]
    within = [f"{label} ({v:.1%})" for label, v in at_w.items() if finite(v) and v <= DRIFT_TOL]
    return [f"Sweep `{metric}` at w={w:g} (pre-projection token norm vs R, threshold {DRIFT_TOL:.0%}): beyond for "
            f"{', '.join(beyond) or 'none'}; within for {', '.join(within) or 'none'}."]


def seed_separation(summary, metric: str, w: float) -> list[str]:
    """Whether the two best settings at CFG scale w differ by more than their summed seed std."""
    rows = {label: line[line["cfg_scale"] == w].iloc[0] for label, line in sweep_lines(summary).items()
            if (line["cfg_scale"] == w).any()}
    order = ranked({label: r[f"{metric}_mean"] for label, r in rows.items()}, lower_better=True)
    if len(order) < 2 or not all(rows[label]["n"] > 1 for label, _ in order[:2]):
        return []
    (a, va), (b, vb) = order[:2]
    spread = rows[a][f"{metric}_std"] + rows[b][f"{metric}_std"]
    verdict = "larger" if vb - va > spread else "not larger"
    return [f"At w={w:g}, the gap between {a} and {b} in `{metric}` ({fmt(vb - va)}) is {verdict} than their "
            f"summed seed std ({fmt(spread)})."]


def caveats(params: Params, inp) -> list[str]:
    tok, gen, ev = params.tokenizer.train, params.generator.train, inp.metrics["evaluation"]
    has_fid = any(finite(m.get("fid_inception")) for m in ev.values())
    acc = inp.classifier.get("test_accuracy") if inp.classifier else None
    samples = sorted({m["num_samples"] for m in ev.values() if "num_samples" in m})
    devices = ", ".join(sorted({s["device"] for s in inp.stats.values() if s and "device" in s})) or "unknown"
    budget = (f"tokenizers trained {tok.steps} steps (batch {tok.batch_size}), generators {gen.steps} steps (batch "
              f"{gen.batch_size}) on {params.data.source} {params.data.image_size}x{params.data.image_size}, "
              f"sampled on {devices}")
    out = [f"Small budget: {budget}. The paper trains for hundreds of epochs on ImageNet 256x256; these numbers "
           "test the pipeline and the relative behaviour at this budget, not the paper's results."
           if params.data.source != IMAGENET else f"Budget: {budget}; check it against the paper's training length "
           "before comparing."]
    if any("fd_classifier" in m for m in ev.values()):
        out.append("`fd_classifier` is a Frechet distance in the feature space of the small in-project classifier "
                   f"(test accuracy {fmt(acc)}): it is only as meaningful as that classifier and is not the "
                   f"Inception-feature metric the paper reports (best {PAPER_BEST}); it is not comparable with the "
                   "paper's numbers.")
    out += [f"Sample sizes: generation metrics from {', '.join(map(fmt, samples)) or MISSING_SAMPLES} samples per "
           f"tokenizer against {fmt(params.evaluation.num_real)} real images; Frechet distances are biased upward at "
           "small N, so compare only numbers computed with the same N.",
           f"Single seed (seed={params.seed}, sampling.seed={params.sampling.seed}) and one training run per "
           "tokenizer for the main tables: no error bars; small differences between tokenizers may be noise.",
           "`is_classifier` is an Inception-Score analogue on the in-project classifier's logits, not the IS."]
    if has_fid:
        out.append("`fid_inception` uses the standard FID Inception weights, but on this dataset and sample "
                   "count; it is still not the paper's 50k-sample ImageNet FID.")
    if inp.sweep is not None:
        n = inp.sweep["n"].dropna()
        if not len(n):
            out.append("The sweep summary does not record how many seeds each point averages.")
        elif int(n.min()) <= 1:
            out.append("The sweep has 1 trial per point: a single seed, so the CFG curves have no error bars and "
                       "crossing curves may be noise.")
        else:
            out.append(f"The sweep has {int(n.min())} trial(s) per point (mean ± std); differences smaller than "
                       "the std are not resolved.")
    out.append(f"Norm diagnostics use {params.evaluation.diagnostic_samples} samples and "
               f"{params.evaluation.diagnostic_steps} sampler steps per setting.")
    return out


def section_findings(params: Params, inp) -> list[str]:
    shows = generation_findings(inp) + norm_findings(inp) + sweep_findings(inp)
    if inp.classifier and finite(inp.classifier.get("test_accuracy")):
        shows.append(f"The in-project classifier behind `*_classifier` reaches {inp.classifier['test_accuracy']:.1%} "
                     "test accuracy.")
    return ["## What the numbers show", "", *[f"- {s}" for s in shows], "",
            "## What they do not show", "", *[f"- {c}" for c in caveats(params, inp)]]

