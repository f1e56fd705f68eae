"""The sweep grid: SphereAR's ablation axes (CFG scale w, radius R, posterior, projection after CFG,
sampler steps; SphereAR Sec. 3.3, 4.3 and App. B) expanded into named, deduplicated trials.

A trial either reuses the DAG's exported tokenizer + generator of its posterior (`train=False`:
sample and evaluate only) or trains both inside the trial (`train=True`): always when `sweep.train`
is set, and for a radius ablation, i.e. an on-sphere posterior whose R differs from the trained
tokenizer's. The plain gaussian posterior never uses R in training, so R only sets its projection
radius at sampling (and the reference of the norm deviation): no retraining.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

from sphereard.ar.projection import SPHERE_POSTERIORS, default_projection
from sphereard.config import SweepConfig
from sphereard.errors import UserError

log = logging.getLogger(__name__)

RADIUS_DIGITS = 4  # significant digits of R in a trial name (R4, R5.657)
DEFAULT_RADIUS_LABEL = "sqrt(d)"  # a radius left null: sqrt(latent_dim)
RADIUS_REL_TOL = 1e-6  # an R this close to the trained one is the trained one
SETTING_COLUMNS = ("posterior", "radius", "projection", "sampler_steps", "cfg_scale", "train")


@dataclass(frozen=True)
class TrialSettings:
    """One point of the grid; `radius` and `projection` are resolved (never null / auto)."""

    posterior: str
    radius: float
    cfg_scale: float
    projection: str  # sphere | none
    sampler_steps: int
    seed: int
    train: bool = False  # train tokenizer + generator inside the trial

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
    """`ar-spherical-R4-cfg3.0-proj_sphere-s25-seed0` (+ `-train` when the trial trains its models).

    Also the MLflow child run's name and the trial's directory under `sweep.out/trials/`."""
    name = (f"ar-{t.posterior}-R{radius_label(t.radius)}-cfg{format_cfg(t.cfg_scale)}-proj_{t.projection}"
            f"-s{t.sampler_steps}-seed{t.seed}")
    return f"{name}-train" if t.train else name


def training_run_name(t: TrialSettings, stage: str) -> str:
    """`train_vae-spherical-R2-seed0`: a training trial's inner MLflow runs (nested under the trial's)."""
    return f"{stage}-{t.posterior}-R{radius_label(t.radius)}-seed{t.seed}"


def on_sphere(posterior: str) -> bool:
    return posterior in SPHERE_POSTERIORS


def resolve_radius(sweep: SweepConfig, posterior: str, radius: float | None, trained: float | None,
                   default_r: float) -> tuple[float, bool]:
    """(R, train) for one posterior and `sweep.radii` entry.

    `trained`: R of the DAG's exported tokenizer of this posterior (None: not exported).
    `default_r`: the R a trial trains with when the entry is null (tokenizer.radius or sqrt(d))."""
    if radius is None:
        r = trained if (trained is not None and not sweep.train) else default_r
    else:
        r = float(radius)
    ablation = on_sphere(posterior) and radius is not None and (
        trained is None or not math.isclose(r, trained, rel_tol=RADIUS_REL_TOL))
    if sweep.train or ablation:
        return r, True
    if trained is None:
        raise UserError(f"sweep.posteriors: no exported {posterior} tokenizer/generator to sample from "
                        f"(run train_vae@{posterior}-<seed> and train_ar@{posterior}-<seed> for every sweep "
                        "seed first, or set sweep.train: true)")
    return r, False


def expand_grid(sweep: SweepConfig, trained_radii: dict[str, float | None], default_r: float) -> list[TrialSettings]:
    """All trials of the sweep block in a fixed order, duplicates (e.g. `auto` == `sphere` for the
    spherical posterior, null R == the trained R) removed. Names must be unique."""
    trials: dict[TrialSettings, None] = {}
    for posterior in sweep.posteriors:
        for radius in sweep.radii:
            r, train = resolve_radius(sweep, posterior, radius, trained_radii.get(posterior), default_r)
            for projection in sweep.projections:
                proj = default_projection(posterior) if projection == "auto" else projection
                for steps in sweep.sampler_steps:
                    for w in sweep.cfg_scales:
                        for seed in sweep.seeds:
                            t = TrialSettings(posterior, r, float(w), proj, int(steps), int(seed), train)
                            if t in trials:
                                log.info("sweep: %s listed twice (e.g. auto projection / null radius); run once",
                                         t.name)
                            trials.setdefault(t, None)
    out = list(trials)
    names = [t.name for t in out]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise UserError(f"sweep.radii / sweep.cfg_scales: values too close to tell apart in trial names: {clashes}")
    return out


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
