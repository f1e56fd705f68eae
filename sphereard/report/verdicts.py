"""The report's "Verdicts": each claim of SphereAR judged at this scale by paired intervals over the runs.

Run k of every tokenizer uses seed k (its data subset, initialisation, posterior draws and sampling
noise), so the tests pair the runs: a comparison is the mean over seeds of a per-seed difference with
its 95% Student t-interval (`paired`, n - 1 degrees of freedom), and a quantity is "above x" when its
whole interval is (`side`).

(a) Generation quality S-VAE > Gaussian+norm > Gaussian (paper Sec. 4.2, Table 2): evaluate's main
    Frechet distance (`fid_inception` where it exists, else the first `fd_<extractor>`); for each
    neighbouring pair the per-seed difference FD(better) - FD(worse) must be below 0.
(b) Quality stays stable at high CFG for the sphere-projected generators while the plain Gaussian
    degrades (paper Sec. 4.3, Fig. 4): from the sweep's trials, the per-seed relative rise
    r = FD(w_max) / FD(w_ref) - 1 from the reference scale w_ref (the swept scale nearest the DAG's
    `sampling.cfg_scale`, fixed in advance, not picked from the data) to the highest scale every
    tokenizer swept. The Gaussian degrades when r > STABLE_TOL; a sphere tokenizer is stable when
    r < STABLE_TOL and its r is below the Gaussian's (paired); it fails the claim when its r is above
    STABLE_TOL or above the Gaussian's.
(c) Token norms do not drift with projection while they do without (paper Sec. 3.3): evaluate's
    `norm_rel_dev_<projection>_cfg<w>` of each on-sphere tokenizer at the highest diagnostic scale.
    Emitted tokens with projection lie on the sphere by construction, so the claim's content is:
    without projection the deviation is above the drift tolerance DRIFT_TOL and above the same
    model's pre-projection deviation when projected (paired), and that pre-projection deviation is
    itself below DRIFT_TOL (an undecided one blocks "holds" but is no failure).

A claim **holds** when every part goes its way, **fails** when one goes the opposite way, and is
**inconclusive** otherwise (an interval straddling the boundary, missing numbers, or fewer than
MIN_SEEDS runs: one run has no interval). No paper number enters a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sphereard.ar.projection import SPHERE_POSTERIORS, default_projection
from sphereard.eval.diagnostics import DRIFT_TOL
from sphereard.report.compare import CONFIDENCE
from sphereard.report.keys import generation_keys, norm_devs, norm_key
from sphereard.report.tables import fmt, md_table, pct
from sphereard.sweep.results import DONE
from sphereard.utils.stats import Estimate, estimate, finite, half_of

HOLDS, FAILS, INCONCLUSIVE = "holds", "fails", "inconclusive"
MIN_SEEDS = 2  # runs needed for an interval
STABLE_TOL = 0.10  # (b): a relative FD rise below 10% from w_ref to w_max is "stable", above it "degrades"
ORDER = ("spherical", "gaussian_norm", "gaussian")  # the paper's claimed order, best first
NAMES = {"spherical": "S-VAE", "gaussian_norm": "Gaussian+norm", "gaussian": "Gaussian"}
CLAIMS = {"a": "generation quality S-VAE > Gaussian+norm > Gaussian",
          "b": "quality stable at high CFG with projection to the sphere; the plain Gaussian degrades",
          "c": "token norms do not drift with projection; they do without"}
SIDE_WORDS = {1: "above", -1: "below", 0: "undecided around"}


@dataclass(frozen=True)
class Verdict:
    claim: str  # a key of CLAIMS
    verdict: str  # HOLDS / FAILS / INCONCLUSIVE
    evidence: str


def combine(parts: list[int]) -> str:
    """+1 (goes the claim's way) / -1 (the opposite way) / 0 (undecided) per part -> the verdict."""
    if any(p < 0 for p in parts):
        return FAILS
    return HOLDS if parts and all(p > 0 for p in parts) else INCONCLUSIVE


def paired(a: list, b: list) -> Estimate | None:
    """Mean of the per-seed differences a_k - b_k over the seeds where both are finite, with its t-interval."""
    return estimate([x - y for x, y in zip(a, b, strict=True) if finite(x) and finite(y)])


def side(v: Estimate | None, bound: float = 0.0) -> int:
    """+1 when v's whole interval lies above `bound`, -1 when below, 0 when it straddles it (or v is None)."""
    if v is None:
        return 0
    lo, hi = float(v) - half_of(v), float(v) + half_of(v)
    return 1 if lo > bound else -1 if hi < bound else 0


def main_fd(columns) -> str | None:
    """The Frechet distance a verdict uses: `fid_inception` when present, else the first `fd_<extractor>`."""
    keys = [c for c in columns if c == "fid_inception" or (c.startswith("fd_") and not c.endswith(("_std", "_half")))]
    return "fid_inception" if "fid_inception" in keys else (keys[0] if keys else None)


def show(v, percent: bool = False) -> str:
    """`mean ± half (n=k)` of an Estimate (`pct` for fractions); n/a for None."""
    if v is None:
        return "n/a"
    text = pct if percent else fmt
    n = getattr(v, "n", 1)
    return text(float(v)) + (f" ± {text(half_of(v))}" if n > 1 else "") + f" (n={n})"


def claim_quality(inp) -> Verdict:
    """(a): each neighbouring pair of ORDER, the per-seed FD difference below 0."""
    ev = {p: inp.metrics["evaluation"].get(p) or {} for p in ORDER if p in inp.posteriors}
    key = main_fd(generation_keys(ev)) if len(ev) == len(ORDER) else None
    if key is None or any(key not in ev[p] for p in ORDER):
        return Verdict("a", INCONCLUSIVE, "needs the main FD of all three tokenizers (evaluate's metrics)")
    head = f"`{key}` (evaluate): " + ", ".join(f"{NAMES[p]} {show(ev[p][key])}" for p in ORDER)
    parts, texts = [], []
    for better, worse in zip(ORDER, ORDER[1:], strict=False):
        diff = paired(inp.run_values("evaluation", better, key), inp.run_values("evaluation", worse, key))
        where = side(diff)
        parts.append(-where if diff is not None and diff.n >= MIN_SEEDS else 0)
        texts.append(f"{NAMES[better]} - {NAMES[worse]} per seed {show(diff)}: {SIDE_WORDS[where]} 0")
    if min(ev[p][key].n for p in ORDER) < MIN_SEEDS:
        return Verdict("a", INCONCLUSIVE, f"{head}; one run has no interval")
    return Verdict("a", combine(parts), f"{head}. Paired differences: {'; '.join(texts)}.")


def default_rows(results: pd.DataFrame, p: str, radius: float | None,
                 heads: dict[str, str] | None = None) -> pd.DataFrame:
    """The finished sampling trials of tokenizer p at its default projection (sphere for on-sphere
    tokenizers, none for the plain Gaussian), with the DAG's head settings `heads` (flow, magnitude,
    sampler; the sweep's arms vary them) and, when several were swept, the DAG's radius."""
    rows = results[(results["posterior"] == p) & (results["projection"] == default_projection(p))]
    for column, keep in (("status", DONE), ("train", False), *(heads or {}).items()):
        if column in rows:
            rows = rows[rows[column] == keep]
    if "radius" in rows and rows["radius"].nunique() > 1 and finite(radius):
        rows = rows[np.isclose(rows["radius"].astype(float), float(radius))]
    return rows


def relative_rises(rows: pd.DataFrame, metric: str, w_ref: float, w_max: float) -> dict[int, float]:
    """{seed: FD(w_max) / FD(w_ref) - 1} of one tokenizer's trials (mean over duplicate settings)."""
    table = rows.pivot_table(index="seed", columns="cfg_scale", values=metric, aggfunc="mean")
    if w_ref not in table or w_max not in table:
        return {}
    rise = (table[w_max] / table[w_ref] - 1).dropna()
    return {int(s): float(v) for s, v in rise.items()}


def reference_scale(scales: list[float], cfg_scale: float) -> float:
    """The swept scale nearest the DAG's sampling.cfg_scale (the lower one on a tie)."""
    return min(scales, key=lambda w: (abs(w - cfg_scale), w))


def claim_cfg(inp, cfg_scale: float, heads: dict[str, str] | None = None) -> Verdict:
    """(b): per-seed relative FD rise from w_ref (nearest `cfg_scale`) to the highest common swept scale."""
    results = inp.sweep_results
    key = main_fd(results.columns) if results is not None else None
    rows = {p: default_rows(results, p, inp.radius(p), heads) for p in ORDER
            if key and p in set(results["posterior"])}
    rows = {p: r for p, r in rows.items() if len(r)}
    common = sorted(set.intersection(*(set(r["cfg_scale"].astype(float)) for r in rows.values()))) if rows else []
    if "gaussian" not in rows or not any(p in rows for p in SPHERE_POSTERIORS) or len(common) < 2:
        return Verdict("b", INCONCLUSIVE, "needs sweep trials of the plain Gaussian and an on-sphere tokenizer at two "
                                          "or more common CFG scales")
    w_ref, w_max = reference_scale(common, cfg_scale), common[-1]
    if w_ref == w_max:
        w_ref = common[-2]
    rises = {p: relative_rises(r, key, w_ref, w_max) for p, r in rows.items()}
    seeds = sorted(set.intersection(*(set(r) for r in rises.values())))
    per = {p: [rises[p][s] for s in seeds] for p in rises}
    est = {p: estimate(v) for p, v in per.items()}
    head = (f"`{key}` relative rise FD(w={w_max:g}) / FD(w={w_ref:g}) - 1 (sweep, per seed; w_ref nearest "
            f"sampling.cfg_scale {cfg_scale:g}; stable below {STABLE_TOL:.0%}): "
            + ", ".join(f"{NAMES[p]} {show(e, True)}" for p, e in est.items()))
    if len(seeds) < MIN_SEEDS:
        return Verdict("b", INCONCLUSIVE, f"{head}; one run has no interval")
    g_side = side(est["gaussian"], STABLE_TOL)
    parts = [g_side]
    texts = [f"Gaussian {SIDE_WORDS[g_side]} {STABLE_TOL:.0%}"]
    for p in (q for q in SPHERE_POSTERIORS if q in est):
        minus_gaussian = paired(per[p], per["gaussian"])
        own, vs = side(est[p], STABLE_TOL), side(minus_gaussian)
        parts.append(-1 if own > 0 or vs > 0 else 1 if own < 0 and vs < 0 else 0)
        texts.append(f"{NAMES[p]} {SIDE_WORDS[own]} {STABLE_TOL:.0%}, minus the Gaussian's per seed "
                     f"{show(minus_gaussian, True)} ({SIDE_WORDS[vs]} 0)")
    return Verdict("b", combine(parts), f"{head}. {'; '.join(texts)}.")


def claim_norms(inp) -> Verdict:
    """(c): per on-sphere tokenizer at its highest diagnostic scale with both projections: unprojected
    deviation above DRIFT_TOL and above the projected pre-projection one (paired), the latter below DRIFT_TOL."""
    parts, texts, runs = [], [], []
    for p in (q for q in ORDER if q in SPHERE_POSTERIORS and q in inp.posteriors):
        devs = norm_devs(inp.metrics["evaluation"].get(p) or {})
        both = sorted(w for (proj, w) in devs if proj == "none" and ("sphere", w) in devs)
        if not both:
            continue
        w = both[-1]
        none, sphere = devs[("none", w)], devs[("sphere", w)]
        diff = paired(inp.run_values("evaluation", p, norm_key("none", w)),
                      inp.run_values("evaluation", p, norm_key("sphere", w)))
        runs.append(min(getattr(none, "n", 1), getattr(sphere, "n", 1)))
        drift, contrast, own = side(none, DRIFT_TOL), side(diff), side(sphere, DRIFT_TOL)
        parts += [drift, contrast, 1 if own < 0 else 0]
        texts.append(f"{NAMES[p]} at w={w:g}: without projection {show(none, True)} ({SIDE_WORDS[drift]} the "
                     f"threshold), with projection (pre-projection) {show(sphere, True)} ({SIDE_WORDS[own]} it); "
                     f"without minus with, per seed, {show(diff, True)} ({SIDE_WORDS[contrast]} 0)")
    if not parts:
        return Verdict("c", INCONCLUSIVE, "needs evaluate's norm diagnostics with and without projection")
    head = (f"`norm_rel_dev_<projection>_cfg<w>` (evaluate: max over positions of |mean norm - R| / R; drift "
            f"threshold {DRIFT_TOL:.0%}; emitted tokens with projection lie on the sphere by construction): "
            + "; ".join(texts))
    if min(runs) < MIN_SEEDS:
        return Verdict("c", INCONCLUSIVE, f"{head}; one run has no interval")
    return Verdict("c", combine(parts), head + ".")


def verdicts(inp, cfg_scale: float, heads: dict[str, str] | None = None) -> list[Verdict]:
    """The three claims' verdicts; `cfg_scale`: the DAG's sampling.cfg_scale, (b)'s reference scale;
    `heads`: the DAG's flow / magnitude / sampler, the sweep trials (b) reads."""
    return [claim_quality(inp), claim_cfg(inp, cfg_scale, heads), claim_norms(inp)]


def section_verdicts(inp, cfg_scale: float, heads: dict[str, str] | None = None) -> list[str]:
    """The report's "Verdicts on the paper's claims" section (markdown lines)."""
    rows = [[f"({v.claim}) {CLAIMS[v.claim]}", f"**{v.verdict}**", v.evidence]
            for v in verdicts(inp, cfg_scale, heads)]
    return ["## Verdicts on the paper's claims", "",
            f"Each claim of SphereAR judged at this scale over the runs of `seeds` ({', '.join(map(str, inp.seeds))})"
            f". Runs are paired by seed; a difference or level counts when its whole {CONFIDENCE:.0%} Student "
            "t-interval over the seeds lies on one side (mean ± half-width, n = seeds). **holds**: every part goes "
            "the claim's way; **fails**: one goes the opposite way; **inconclusive**: otherwise (an interval "
            f"straddling the boundary, fewer than {MIN_SEEDS} runs, missing numbers). The rules and thresholds "
            "are in `sphereard/report/verdicts.py`; curves with interval bands: the sweep figures and "
            "`figures/norm_trajectories.png`.", "",
            md_table(["claim", "verdict", "evidence"], rows)]
