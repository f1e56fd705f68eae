"""The report's "Beyond the paper" section: the sweep's head and radius arms (issue 16), each a paired test.

Three questions the paper leaves open, read from the sweep's results.csv (`sweep.arms`):
  flow       the riemannian head (geodesic flow on the sphere) vs the euclidean one, on an on-sphere
             tokenizer, both sampled with the riemannian trials' sampler (euler);
  magnitude  `predict` (a direction head + a log-norm head) vs `none`, on the gaussian tokenizer;
  radius     each swept R vs the DAG's R of an on-sphere tokenizer, with its own tokenizer
             (reconstruction `recon_psnr_sample` next to generation).
A treatment trial's baseline has the same settings but the compared one (MATCHED: same posterior, R,
head, sampler, projection, steps, generator training steps, CFG scale) and the same seed, so each
comparison is the mean over the common seeds of the per-seed difference FD(treatment) - FD(baseline)
with its 95% Student t-interval (`verdicts.paired`), at every CFG scale both were sampled at; the
level columns average the same seeds. The FD is the verdicts' (`verdicts.main_fd`).

Outcome per comparison, from the sides of those intervals (`verdicts.side`): **better** (lower FD)
when every scale's interval lies below 0, **worse** when every one lies above 0, **mixed** when some
lie below and some above, **better at some scales** / **worse at some scales** when the others
straddle 0, **no detectable difference** when every interval straddles 0, **inconclusive** with fewer
than MIN_SEEDS runs or no common scale. "No detectable difference" is not equivalence: the interval
half-widths say how large a difference could hide. A riemannian head's `norm_rel_dev_*` are 0 by
construction (every iterate lies on the sphere), not a measured absence of drift.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sphereard.config import SPHERE_POSTERIORS
from sphereard.report.tables import fmt, md_table
from sphereard.report.verdicts import MIN_SEEDS, main_fd, paired, show, side
from sphereard.sweep.results import DONE
from sphereard.utils.stats import estimate

# what a baseline shares with its treatment (generator_step: the same training length, e.g. not a radius
# trial trained at sweep.train_steps_fraction < 1 against the DAG's full-length model)
MATCHED = ("posterior", "radius", "flow", "magnitude", "sampler", "projection", "sampler_steps", "generator_step")
BETTER, WORSE, MIXED, NO_DIFF, INCONCLUSIVE = "better", "worse", "mixed", "no detectable difference", "inconclusive"
SOME_BETTER, SOME_WORSE = "better at some scales", "worse at some scales"
QUESTIONS = {"flow": "head flow", "magnitude": "magnitude head", "radius": "radius R"}


def _done(results: pd.DataFrame) -> pd.DataFrame:
    return results[results["status"] == DONE] if "status" in results else results


def _same(rows: pd.DataFrame, column: str, value) -> pd.Series:
    if column == "radius":
        return np.isclose(rows[column].astype(float), float(value))
    return rows[column] == value


def baseline_of(results: pd.DataFrame, setting: dict, axis: str, base) -> pd.DataFrame:
    """The trials equal to `setting` in every MATCHED column but `axis`, which is `base`."""
    rows = results
    for column in MATCHED:
        if column in rows:
            rows = rows[_same(rows, column, base if column == axis else setting[column])]
    return rows


def by_scale_seed(rows: pd.DataFrame, metric: str) -> dict[float, dict[int, float]]:
    """{cfg scale: {seed: metric}} (mean over duplicate trials)."""
    table = rows.pivot_table(index="seed", columns="cfg_scale", values=metric, aggfunc="mean")
    return {float(w): {int(s): float(v) for s, v in table[w].dropna().items()} for w in table.columns}


def outcome(diffs: list) -> str:
    """The comparison's word from its per-scale paired differences (module docstring)."""
    if not diffs or any(d is None or d.n < MIN_SEEDS for d in diffs):
        return INCONCLUSIVE
    sides = {side(d) for d in diffs}
    if {-1, 1} <= sides:
        return MIXED
    if sides == {0}:
        return NO_DIFF
    if -1 in sides:
        return BETTER if sides == {-1} else SOME_BETTER
    return WORSE if sides == {1} else SOME_WORSE


def comparison(results: pd.DataFrame, metric: str, treated: pd.DataFrame, axis: str, base,
               label: str) -> tuple[list[list], str, str]:
    """(table rows, outcome, one-line evidence) of the trials `treated` (one setting) against their
    baseline with `axis` = `base`."""
    setting = treated.iloc[0].to_dict()
    baseline = baseline_of(results, setting, axis, base)
    t, b = by_scale_seed(treated, metric), by_scale_seed(baseline, metric)
    rows, diffs, texts = [], [], []
    for w in sorted(set(t) & set(b)):
        seeds = sorted(set(t[w]) & set(b[w]))
        diff = paired([t[w][s] for s in seeds], [b[w][s] for s in seeds])
        diffs.append(diff)
        rows.append([label, f"{w:g}", estimate([b[w][s] for s in seeds]), estimate([t[w][s] for s in seeds]), diff,
                     {1: "above 0", -1: "below 0", 0: "straddles 0"}[side(diff)]])
        texts.append(f"w={w:g} {show(diff)}")
    word = outcome(diffs)
    evidence = f"{label} minus baseline, per seed: " + ("; ".join(texts) if texts else "no common scale")
    return rows, word, evidence


def _recon(rows: pd.DataFrame) -> str:
    key = "recon_psnr_sample"
    if key not in rows:
        return "n/a"
    per_seed = rows.groupby("seed")[key].mean()
    return fmt(estimate(per_seed.tolist()))


def section_beyond(results: pd.DataFrame | None, heads: dict[str, str],
                   dag_radius: dict[str, float | None]) -> list[str]:
    """Markdown lines of the section; [] when the sweep ran no arm (no trial off the DAG's head / radius).

    heads: the DAG's flow / magnitude / sampler; dag_radius: R per posterior of the DAG's tokenizers."""
    if results is None or not len(results):
        return []
    done = _done(results)
    metric = main_fd(done.columns)
    arms = []  # (question, axis, treatment value, baseline value, treated trials)
    if metric is not None and "flow" in done:
        for axis in ("flow", "magnitude"):
            for value in sorted(set(done[axis]) - {heads[axis]}):
                arms.append((axis, axis, value, heads[axis], done[done[axis] == value]))
        for p, r in dag_radius.items():
            if p not in SPHERE_POSTERIORS or r is None:  # R enters training only on the sphere
                continue
            own = done[(done["posterior"] == p) & (done["flow"] == heads["flow"])
                       & (done["magnitude"] == heads["magnitude"])]
            for other in sorted({float(x) for x in own["radius"]}):
                if not np.isclose(other, r):
                    arms.append(("radius", "radius", other, float(r), own[_same(own, "radius", other)]))
    if not arms:
        return []
    table, verdict_rows = [], []
    for question, axis, value, base, treated in arms:
        for _, setting_rows in treated.groupby([c for c in MATCHED if c in treated]):
            setting = setting_rows.iloc[0]
            label = (f"{setting['posterior']}: {axis} {value:g}" if question == "radius"
                     else f"{setting['posterior']}: {axis} {value}")
            rows, word, evidence = comparison(done, metric, setting_rows, axis, base, label)
            table += rows
            if question == "radius":
                base_rows = baseline_of(done, setting.to_dict(), axis, base)
                evidence += (f". Reconstruction `recon_psnr_sample` (dB): R={value:g} {_recon(setting_rows)}, "
                             f"R={base:g} {_recon(base_rows)}")
            against = f"{base:g} (the DAG's)" if question == "radius" else str(base)
            context = ", ".join(f"{k} {setting[k]}" for k in ("sampler", "projection", "sampler_steps")
                                if k in setting)
            verdict_rows.append([f"{QUESTIONS[question]}: {label} vs {against} ({context})", f"**{word}**",
                                 evidence + "."])
    return ["## Beyond the paper: head flow, magnitude, radius", "",
            f"The sweep's arms (`sweep.arms`; `sphereard/report/beyond.py`): each treatment against the trials that "
            f"differ only in the compared setting, paired by seed; `{metric}` per CFG scale w, mean ± 95% "
            "t-interval half-width over seeds. **better** / **worse**: lower / higher FD at every compared scale "
            "(whole interval); **mixed**: better at some, worse at others; **better / worse at some scales**: "
            "the other scales' intervals straddle 0; **no detectable difference**: every "
            "interval straddles 0 (not equivalence: the half-widths bound what could hide); "
            f"**inconclusive**: fewer than {MIN_SEEDS} runs or no common scale. Generators of the flow and magnitude "
            "arms train on the DAG's tokenizer and latents of their seed with the DAG's steps; each radius trains "
            "its own tokenizer and generator. A riemannian head's norm deviations are 0 by construction (its "
            "iterates never leave the sphere); magnitude-predict's describe its direction head.", "",
            md_table(["question", "outcome", "evidence"], verdict_rows), "",
            md_table(["treatment", "w", "baseline FD", "treatment FD", "difference (paired)", "interval"], table)]

