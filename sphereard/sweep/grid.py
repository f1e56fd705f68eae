"""The sweep grid: SphereAR's ablation axes (CFG scale w, radius R, posterior, projection after CFG,
sampler steps; SphereAR Sec. 3.3, 4.3 and App. B) expanded into named, deduplicated trials.

A trial either reuses the DAG's exported tokenizer + generator of its posterior (`train=False`:
sample and evaluate only) or trains both inside the trial (`train=True`): always when `sweep.train`
is set, and for a radius ablation, i.e. an on-sphere posterior whose R differs from the trained
tokenizer's. The plain gaussian posterior never uses R in training, so R only sets its projection
radius at sampling (and the reference of the norm deviation): no retraining.

The head axes (`flows`, `magnitudes`, `samplers`; null = the DAG's `generator.flow` / `.magnitude` /
`sampling.sampler`) add the paper's open questions (issue 16). A trial whose flow or magnitude differs
from the DAG's trains a generator of its own on the DAG's tokenizer and latents of its seed
(`reuse_tokenizer`); combinations a head cannot model (`config.head_conflict`: riemannian on gaussian
latents or with euler_maruyama, predict on sphere latents) are left out with one log line. `sweep.arms`
are extra grids, each replacing some axes of the main one (seeds are shared): e.g. a radius arm at
one CFG scale next to the main CFG grid. A training trial's models depend only on `model_name` (not
on CFG, projection or sampler), so trials that differ only in those share one training.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from dataclasses import dataclass

from sphereard.ar.projection import SPHERE_POSTERIORS, default_projection
from sphereard.config import SweepConfig, head_conflict
from sphereard.errors import UserError

log = logging.getLogger(__name__)

RADIUS_DIGITS = 4  # significant digits of R in a trial name (R4, R5.657)
DEFAULT_RADIUS_LABEL = "sqrt(d)"  # a radius left null: sqrt(latent_dim)
RADIUS_REL_TOL = 1e-6  # an R this close to the trained one is the trained one
SETTING_COLUMNS = ("posterior", "radius", "flow", "magnitude", "sampler", "projection", "sampler_steps", "cfg_scale",
                   "train", "reuse_tokenizer")
HEAD_DEFAULTS = {"flow": "euclidean", "magnitude": "none", "sampler": "euler_maruyama"}  # left out of trial names
HEAD_AXES = {"flow": "flows", "magnitude": "magnitudes", "sampler": "samplers"}  # setting -> sweep key


@dataclass(frozen=True)
class TrialSettings:
    """One point of the grid; `radius` and `projection` are resolved (never null / auto)."""

    posterior: str
    radius: float
    cfg_scale: float
    projection: str  # sphere | none
    sampler_steps: int
    seed: int
    train: bool = False  # train the generator (and, unless reuse_tokenizer, the tokenizer) inside the trial
    flow: str = "euclidean"
    magnitude: str = "none"
    sampler: str = "euler_maruyama"
    reuse_tokenizer: bool = False  # a training trial on the DAG's tokenizer + latents of its seed

    @property
    def name(self) -> str:
        return trial_name(self)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def format_cfg(w: float) -> str:
    """3 -> '3.0', 4.5 -> '4.5', 1.25 -> '1.25' (at least one decimal, like the paper's tables)."""
    return f"{w:.1f}" if round(w, 1) == w else f"{w:g}"


def radius_label(r) -> str:
    """4.0 -> '4', 5.656854 -> '5.657'; no radius (None, NaN, '', 'none', 'null': sqrt(latent_dim)) -> 'sqrt(d)'."""
    missing = ("", "none", "null", "nan", DEFAULT_RADIUS_LABEL)  # the label itself: labelling is idempotent
    if r is None or (isinstance(r, float) and math.isnan(r)) or str(r).strip().lower() in missing:
        return DEFAULT_RADIUS_LABEL
    return f"{float(r):.{RADIUS_DIGITS}g}"


def trial_name(t: TrialSettings) -> str:
    """`ar-spherical-R4-cfg3.0-proj_sphere-s25-seed0` (+ `-train` when the trial trains its models), with
    `-flow_riemannian`, `-mag_predict`, `-euler` before the seed when a head setting is not the paper's.

    Also the MLflow child run's name and the trial's directory under `sweep.out/trials/`."""
    name = (f"ar-{t.posterior}-R{radius_label(t.radius)}-cfg{format_cfg(t.cfg_scale)}-proj_{t.projection}"
            f"-s{t.sampler_steps}{_head_suffix(t, ('flow', 'magnitude', 'sampler'))}-seed{t.seed}")
    return f"{name}-train" if t.train else name


def _head_suffix(t: TrialSettings, keys: tuple[str, ...]) -> str:
    labels = {"flow": "flow_{}", "magnitude": "mag_{}", "sampler": "{}"}
    return "".join(f"-{labels[k].format(getattr(t, k))}" for k in keys if getattr(t, k) != HEAD_DEFAULTS[k])


def model_name(t: TrialSettings) -> str:
    """`spherical-R2-flow_riemannian-seed0`: what a training trial trains (its folder under
    `sweep.out/models/`); trials that differ only in CFG, projection, sampler or steps share it."""
    return f"{t.posterior}-R{radius_label(t.radius)}{_head_suffix(t, ('flow', 'magnitude'))}-seed{t.seed}"


def training_run_name(t: TrialSettings, stage: str) -> str:
    """`train_vae-spherical-R2-seed0`: a training trial's inner MLflow runs (nested under the trial's)."""
    return f"{stage}-{model_name(t)}"


def on_sphere(posterior: str) -> bool:
    return posterior in SPHERE_POSTERIORS


def resolve_radius(sweep: SweepConfig, posterior: str, radius: float | None, trained: float | None,
                   default_r: float, new_head: bool = False, key: str = "sweep") -> tuple[float, bool]:
    """(R, train the tokenizer) for one posterior and `sweep.radii` entry.

    `trained`: R of the DAG's exported tokenizer of this posterior (None: not exported).
    `default_r`: the R a trial trains with when the entry is null (tokenizer.radius or sqrt(d)).
    `new_head`: the trial trains its own generator (on the DAG's tokenizer, which must then exist).
    `key`: the grid's key (`sweep`, `sweep.arms[i]`) the error names."""
    if radius is None:
        r = trained if (trained is not None and not sweep.train) else default_r
    else:
        r = float(radius)
    ablation = on_sphere(posterior) and radius is not None and (
        trained is None or not math.isclose(r, trained, rel_tol=RADIUS_REL_TOL))
    if sweep.train or ablation:
        return r, True
    if trained is None:
        raise UserError(f"{key}.posteriors: no exported {posterior} tokenizer/generator to "
                        f"{'train a generator on' if new_head else 'sample from'} "
                        f"(run train_vae@{posterior}-<seed> and train_ar@{posterior}-<seed> for every sweep "
                        "seed first, or set sweep.train: true)")
    return r, False


def grids(sweep: SweepConfig) -> list[tuple[str, SweepConfig]]:
    """(key prefix, grid) of the main grid and of each arm (its axes replacing the main grid's)."""
    out = [("sweep", sweep)]
    for i, arm in enumerate(sweep.arms):
        update = {k: v for k, v in arm.model_dump().items() if v is not None}
        if not update:
            raise UserError(f"sweep.arms[{i}]: sets no axis (it would only repeat the main grid)")
        out.append((f"sweep.arms[{i}]", sweep.model_copy(update=update)))
    return out


def expand_grid(sweep: SweepConfig, trained_radii: dict[str, float | None], default_r: float,
                heads: dict[str, str] | None = None) -> list[TrialSettings]:
    """All trials of the main grid and its arms in a fixed order, duplicates (e.g. `auto` == `sphere` for
    the spherical posterior, null R == the trained R, an arm repeating the main grid) removed.

    heads: the DAG's flow / magnitude / sampler (HEAD_DEFAULTS when None), what a null head axis means.
    Raises UserError naming the key when a swept head value fits no swept posterior / sampler, or when
    trial names clash."""
    heads = {**HEAD_DEFAULTS, **(heads or {})}
    trials: dict[TrialSettings, str] = {}  # -> the key of the grid that listed it first
    for key, grid in grids(sweep):
        for t in _expand_one(key, grid, trained_radii, default_r, heads):
            if t in trials:
                log.info("sweep: %s listed twice (e.g. auto projection / null radius / an arm); run once", t.name)
            trials.setdefault(t, key)
    out = list(trials)
    if sweep.scheduler == "asha" and any(t.flow != heads["flow"] or t.magnitude != heads["magnitude"] for t in out):
        raise UserError("sweep.scheduler='asha': ranks trials by their AR training loss, which another flow or "
                        "magnitude head measures differently (tangent MSE, + log-norm NLL); use grid")
    seen: dict[str, TrialSettings] = {}
    for t in out:
        if t.name in seen:
            raise UserError(f"{trials[t]}.radii / .cfg_scales: values too close to tell apart in trial names "
                            f"(R {seen[t.name].radius!r} and {t.radius!r}, w {seen[t.name].cfg_scale!r} and "
                            f"{t.cfg_scale!r} are both {t.name})")
        seen[t.name] = t
    return out


def _head_choices(grid: SweepConfig, heads: dict[str, str]) -> list[dict[str, str]]:
    axes = [[v if v is not None else heads[k] for v in getattr(grid, HEAD_AXES[k])] for k in HEAD_AXES]
    return [dict(zip(HEAD_AXES, combo, strict=True)) for combo in itertools.product(*axes)]


def _expand_one(key: str, grid: SweepConfig, trained_radii: dict[str, float | None], default_r: float,
                heads: dict[str, str]) -> list[TrialSettings]:
    trials, used = [], {k: set() for k in HEAD_AXES}
    for posterior in grid.posteriors:
        for head in _head_choices(grid, heads):
            conflict = head_conflict(head["flow"], head["magnitude"], posterior, head["sampler"])
            if conflict is not None:
                log.info("%s: leaving out %s with %s (%s: %s)", key, posterior, head, *conflict)
                continue
            for k in HEAD_AXES:
                used[k].add(head[k])
            new_head = head["flow"] != heads["flow"] or head["magnitude"] != heads["magnitude"]
            for radius in grid.radii:
                r, train_tok = resolve_radius(grid, posterior, radius, trained_radii.get(posterior), default_r,
                                              new_head, key)
                for projection in grid.projections:
                    proj = default_projection(posterior) if projection == "auto" else projection
                    for steps in grid.sampler_steps:
                        for w in grid.cfg_scales:
                            for seed in grid.seeds:
                                trials.append(TrialSettings(
                                    posterior, r, float(w), proj, int(steps), int(seed), train_tok or new_head,
                                    head["flow"], head["magnitude"], head["sampler"], new_head and not train_tok))
    unused = {k: [v for v in getattr(grid, axis) if (v if v is not None else heads[k]) not in used[k]]
              for k, axis in HEAD_AXES.items()}
    named = [k for k, values in unused.items() if any(v is not None for v in values)]  # set, not inherited
    for k in named or [k for k, values in unused.items() if values]:
        other = "flow" if k == "sampler" else "sampler"
        raise UserError(f"{key}.{HEAD_AXES[k]}={unused[k]}: fits no swept posterior / {other} (riemannian needs "
                        "spherical or gaussian_norm and sampler euler; predict needs gaussian)")
    return trials


def search_space(trials: list[TrialSettings]) -> dict:
    """Tune param space: one grid axis over the expanded trials (every trial runs once)."""
    from ray import tune

    return {"trial": tune.grid_search([t.as_dict() for t in trials])}


def settings_of(config: dict) -> TrialSettings:
    """The trial's settings from a Tune config (`search_space`)."""
    return TrialSettings(**config["trial"])


def tune_trial_name(trial) -> str:
    """Tune `trial_name_creator` / `trial_dirname_creator`: our trial name."""
    return settings_of(trial.config).name


def segment_ends(total_steps: int, segments: int) -> list[int]:
    """Step at the end of each of `segments` near-equal training segments: (10, 4) -> [2, 5, 8, 10]."""
    assert total_steps > 0 and segments > 0, "steps and segments must be positive"
    return sorted({max(1, round(total_steps * (i + 1) / segments)) for i in range(segments)})


def scaled_steps(steps: int, fraction: float) -> int:
    """`sweep.train_steps_fraction` applied to a step count (at least one step)."""
    return max(1, round(steps * fraction))
