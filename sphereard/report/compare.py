"""The comparison rule: the only place the report (and the notebook) decides that two numbers differ.

a and b differ when |a - b| > REL_TOL * max(|a|, |b|) and, for means over n > 1 seeds, also when
|a - b| exceeds the sum of their CONFIDENCE t-interval half-widths t(0.975, n - 1) * std / sqrt(n)
(`half_width`), i.e. the two intervals do not overlap. Otherwise they tie. Rankings (`tie_groups`),
"grows / falls with CFG" (`trend`) and "beyond / within a threshold" (`against_threshold`) are all
decided by `compare`.
"""

from __future__ import annotations

from sphereard.eval.diagnostics import DRIFT_TOL
from sphereard.utils.stats import CONFIDENCE, finite, half_of, half_width  # noqa: F401 (the report's interval)

REL_TOL = 0.02  # two numbers closer than 2% of the larger magnitude are a tie
TIE = "no difference beyond the tolerance"
COMPARISON_RULE = (
    f"**Comparison rule.** Two numbers a, b are called different (ranked, \"grows\", \"beyond a threshold\") "
    f"only when |a - b| > {REL_TOL:.0%} of max(|a|, |b|) (`REL_TOL`) and, for sweep points that average n > 1 "
    f"seeds, also when |a - b| exceeds the sum of their {CONFIDENCE:.0%} t-interval half-widths "
    "t(0.975, n - 1) * std / sqrt(n) (the intervals do not overlap). Otherwise they are a tie, printed as "
    "\"no difference beyond the tolerance\". `kid_*` and `is_*` must also differ by more than the sum of the "
    "stds the evaluate stage reports with them (`kid_std_*` over KID subsets, `is_std_*` over IS splits). A "
    "change with CFG must hold at every consecutive diagnostic scale (else \"not monotone\"), and for norm "
    "deviations exceed 0.5 percentage points. Main-table cells that average n > 1 runs "
    f"(`seeds`) carry their intervals the same way; with one run only the {REL_TOL:.0%} tolerance applies, and a "
    "difference beyond it is not yet evidence beyond run-to-run noise.")


def compare(a: float, b: float, a_half: float = 0.0, b_half: float = 0.0, rel_tol: float = REL_TOL) -> int:
    """+1 if a > b, -1 if a < b, 0 (a tie) unless |a - b| exceeds both rel_tol * max(|a|, |b|) and the
    summed interval half-widths a_half + b_half (module docstring); a mean over seeds (`Estimate`) brings
    its own half-width."""
    a_half, b_half = max(a_half, half_of(a)), max(b_half, half_of(b))  # means over seeds carry their own
    gap = float(a) - float(b)
    if abs(gap) <= rel_tol * max(abs(a), abs(b)) or abs(gap) <= a_half + b_half:
        return 0
    return 1 if gap > 0 else -1


def trend(series: list[tuple[float, float]], abs_floor: float = 0.0) -> int | None:
    """+1 (grows) / -1 (shrinks) / 0 (no change beyond the tolerance) / None (not monotone) for values
    [(x, v)] sorted by x: every consecutive step must move one way or tie (`compare`, and more than
    `abs_floor` in absolute terms, e.g. percentage points for fractions), and the ends must differ."""
    def step(a: float, b: float) -> int:
        return 0 if abs(float(b) - float(a)) <= abs_floor else compare(b, a)

    steps = {step(a, b) for (_, a), (_, b) in zip(series, series[1:], strict=False)} - {0}
    if len(steps) > 1:
        return None
    return step(series[0][1], series[-1][1]) if steps else 0


def against_threshold(v: float, half: float = 0.0, threshold: float = DRIFT_TOL) -> str:
    """'beyond' / 'within' the threshold (default: the norm drift tolerance), or 'at' it when it is a tie."""
    return {1: "beyond", -1: "within", 0: "at"}[compare(v, threshold, half)]


def tie_groups(values: dict[str, float], lower_better: bool, halves: dict[str, float] | None = None,
               ) -> list[list[tuple[str, float]]]:
    """Finite values best first, grouped by single linkage: a value joins the current group when it ties
    (`compare` == 0) with the group's last (nearest) member, so no tie is ever split across two groups; any
    two consecutive groups differ beyond the tolerance at every pair of neighbours."""
    halves = halves or {}
    order = sorted(((p, v) for p, v in values.items() if finite(v)),  # v kept: an Estimate brings its interval
                   key=lambda item: float(item[1]) if lower_better else -float(item[1]))
    groups: list[list[tuple[str, float]]] = []
    for p, v in order:
        if groups and compare(v, groups[-1][-1][1], halves.get(p, 0.0), halves.get(groups[-1][-1][0], 0.0)) == 0:
            groups[-1].append((p, v))
        else:
            groups.append([(p, v)])
    return groups


def best_of(values: dict[str, float], lower_better: bool, halves: dict[str, float] | None = None) -> str | None:
    """The one best name, or None when the best is tied (or fewer than two finite values)."""
    groups = tie_groups(values, lower_better, halves)
    return groups[0][0][0] if len(groups) > 1 and len(groups[0]) == 1 else None
