"""The report's "Beyond the paper" section: arms matched to their baselines by setting and seed, paired
intervals, and the outcome words (sphereard/report/beyond.py)."""

import pandas as pd
import pytest

from sphereard.report.beyond import (
    BETTER,
    INCONCLUSIVE,
    MIXED,
    NO_DIFF,
    SOME_BETTER,
    SOME_WORSE,
    WORSE,
    outcome,
    section_beyond,
)
from sphereard.utils.stats import Estimate

HEADS = {"flow": "euclidean", "magnitude": "none", "sampler": "euler_maruyama"}
SEEDS = (0, 1, 2)


def trial(posterior, w, seed, fd, *, radius=4.0, flow="euclidean", magnitude="none", sampler="euler_maruyama",
          projection=None, psnr=20.0):
    return {"status": "done", "posterior": posterior, "radius": radius, "flow": flow, "magnitude": magnitude,
            "sampler": sampler, "projection": projection or ("none" if posterior == "gaussian" else "sphere"),
            "sampler_steps": 25, "cfg_scale": w, "seed": seed, "train": flow != "euclidean", "fd_classifier": fd,
            "recon_psnr_sample": psnr}


def results() -> pd.DataFrame:
    rows = []
    for s in SEEDS:
        jitter = 0.1 * s
        for w in (1.0, 3.0):
            rows.append(trial("spherical", w, s, 10 + jitter))  # main grid (euler_maruyama): not a baseline here
            rows.append(trial("spherical", w, s, 12 + jitter, sampler="euler"))  # the flow arm's baseline
            rows.append(trial("spherical", w, s, 9 + jitter + 0.01 * s, flow="riemannian", sampler="euler"))
            rows.append(trial("gaussian", w, s, 11 + jitter))
            rows.append(trial("gaussian", w, s, 11 + jitter + (0.5 if w == 1.0 else -0.5) + 0.01 * s,
                              magnitude="predict"))
        rows.append(trial("spherical", 3.0, s, 10 + jitter + [0.3, -0.2, 0.1][s], radius=2.0, psnr=18.0 + s))
    return pd.DataFrame(rows)


def test_outcome_words():
    below, above, straddle = Estimate(-1.0, 0.5, 3), Estimate(1.0, 0.5, 3), Estimate(0.1, 0.5, 3)
    assert outcome([below, below]) == BETTER and outcome([above]) == WORSE
    assert outcome([below, above]) == MIXED and outcome([straddle, straddle]) == NO_DIFF
    assert outcome([below, straddle]) == SOME_BETTER and outcome([straddle, above]) == SOME_WORSE
    assert outcome([]) == INCONCLUSIVE and outcome([below, None]) == INCONCLUSIVE
    assert outcome([Estimate(-1.0, 0.0, 1)]) == INCONCLUSIVE  # one run: no interval


def test_section_matches_baselines_by_setting_and_seed():
    text = "\n".join(section_beyond(results(), HEADS, {"spherical": 4.0, "gaussian": 4.0}))
    lines = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    context = "projection sphere, sampler_steps 25"
    flow = lines[f"head flow: spherical: flow riemannian vs euclidean (sampler euler, {context})"]
    # baseline = the euler trials (12 + jitter), not the main grid's euler_maruyama ones: -3 + 0.01 s per seed
    assert f"**{BETTER}**" in flow and "w=1 -2.99 ± 0.02484 (n=3)" in flow
    mag = lines["magnitude head: gaussian: magnitude predict vs none (sampler euler_maruyama, projection none, "
                "sampler_steps 25)"]
    assert f"**{MIXED}**" in mag  # +0.5 at w=1, -0.5 at w=3, each with a tight interval
    radius = lines[f"radius R: spherical: radius 2 vs 4 (the DAG's) (sampler euler_maruyama, {context})"]
    assert f"**{NO_DIFF}**" in radius and "R=2 19 ± 2.484, R=4 20" in radius
    assert "w=3 0.06667 ±" in radius  # mean of (0.3, -0.2, 0.1), only w=3 was swept for R=2


def test_baseline_needs_the_same_training_length():
    """A radius trial trained at fewer generator steps (sweep.train_steps_fraction < 1) has no baseline:
    the DAG's full-length model differs in more than R."""
    frame = results().assign(generator_step=500)
    frame.loc[frame["radius"] == 2.0, "generator_step"] = 250
    text = "\n".join(section_beyond(frame, HEADS, {"spherical": 4.0, "gaussian": 4.0}))
    (line,) = [x for x in text.splitlines() if x.startswith("| radius R: spherical: radius 2")]
    assert f"**{INCONCLUSIVE}**" in line and "no common scale" in line


def test_no_arms_no_section():
    main = results()
    main = main[(main["flow"] == "euclidean") & (main["magnitude"] == "none") & (main["sampler"] == "euler_maruyama")
                & (main["radius"] == 4.0)]
    assert section_beyond(main, HEADS, {"spherical": 4.0}) == []
    assert section_beyond(None, HEADS, {}) == []


@pytest.mark.parametrize("heads_sampler", ["euler"])
def test_verdicts_read_only_the_dag_head_trials(heads_sampler):
    """(b) reads the sweep's main grid: with the DAG on euler the euler trials are its rows, never both."""
    from sphereard.report.verdicts import default_rows

    rows = default_rows(results(), "spherical", 4.0, {**HEADS, "sampler": heads_sampler})
    assert set(rows["sampler"]) == {"euler"} and set(rows["flow"]) == {"euclidean"}
    assert len(rows) == len(SEEDS) * 2
