"""Ray Tune over CFG scale, radius R, posterior, head flow / magnitude, sampler (steps), projection and seeds
(+ `sweep.arms`): DVC stage `sweep`
(`run_sweep`).

Grid search by default (every trial runs); `sweep.scheduler: asha` stops training trials early on
their AR training loss (needs `sweep.train: true`). A trial samples from the DAG's exported models,
or trains its own (radius ablations, `sweep.train`) under `sweep.out/trials/<trial name>/`; see
`sphereard/sweep/trial.py`. Local Ray by default; RAY_ADDRESS joins a cluster. Each trial holds one
CPU (+ `sweep.gpus_per_trial`), `sweep.max_concurrent` at once.

MLflow: one parent run per sweep, one child run per trial (its `mlflow.parentRunId` tag), each tagged
with the git commit, the data manifest as its dataset input (context `evaluation`). Outputs under
`sweep.out/`: results.csv, summary.csv and plots/<metric>_vs_cfg.png (`sphereard/sweep/results.py`),
also the parent's artifacts.
`list_only` logs the expanded trials and returns (no Ray).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import pandas as pd
import ray
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT
from ray import tune
from ray.tune.result import AUTO_RESULT_KEYS, TIME_TOTAL_S
from ray.tune.schedulers import ASHAScheduler

from sphereard.config import Params, absolute_paths
from sphereard.data import manifest_path
from sphereard.errors import UserError, first_lines
from sphereard.export import META_FILE, read_export
from sphereard.layout import classifier_model_dir, export_dir, reference_file, sweep_dir, sweep_models_dir, trials_dir
from sphereard.sweep.grid import (
    SETTING_COLUMNS,
    TrialSettings,
    expand_grid,
    grids,
    search_space,
    settings_of,
    tune_trial_name,
)
from sphereard.sweep.outputs import write_outputs
from sphereard.sweep.results import ID_COLUMNS, aggregate_over_seeds, results_frame
from sphereard.sweep.trial import ASHA_METRIC, DONE_KEY, SweepContext, run_trial
from sphereard.tokenizer.presets import tokenizer_arch
from sphereard.tracking import git_commit, mlflow_client, start_run, tracking_uri
from sphereard.train.launch import TrainingError, init_ray, unique_run_name
from sphereard.utils.io import sha256_file

log = logging.getLogger(__name__)

ASHA_REDUCTION_FACTOR = 2
TUNE_KEYS = set(AUTO_RESULT_KEYS) | {"done", "trial_id", "experiment_tag", "should_checkpoint", "ar_step"}


def trained_radii(params: Params) -> dict[str, float | None]:
    """R of the DAG's exported tokenizer per swept posterior (its first run's); None unless tokenizer and
    generator exist in the run of every `sweep.seeds` entry (a sampling trial of seed k reads run k)."""
    runs = [params.for_run(seed) for seed in params.sweep.seeds if seed in params.seeds]
    out = {}
    for p in dict.fromkeys(p for _, grid in grids(params.sweep) for p in grid.posteriors):  # main grid + arms
        dirs = [(export_dir(run, "tokenizer", p), export_dir(run, "generator", p)) for run in runs]
        have = bool(dirs) and all((tok / META_FILE).is_file() and (gen / META_FILE).is_file() for tok, gen in dirs)
        out[p] = float(read_export(dirs[0][0])[1]["radius"]) if have else None
    return out


def default_train_radius(params: Params) -> float:
    """The R a training trial uses for a null radius: tokenizer.radius, else sqrt(latent_dim)."""
    tok = params.tokenizer
    return tok.radius if tok.radius is not None else math.sqrt(tokenizer_arch(tok.preset, **tok.overrides).latent_dim)


def preflight(params: Params) -> str:
    """Fail before Ray starts when an input is missing; returns the data manifest's sha256."""
    manifest = manifest_path(params.data.out)
    if not manifest.is_file():
        raise UserError(f"{manifest}: data manifest missing (run the prepare stage)")
    for name in params.evaluation.extractors:
        if not reference_file(params, name).is_file():
            raise UserError(f"{reference_file(params, name)}: reference statistics missing (run the reference stage)")
    if "classifier" in params.evaluation.extractors and not (classifier_model_dir(params)).is_dir():
        raise UserError(f"{classifier_model_dir(params)}: classifier missing (run the train_classifier stage)")
    return sha256_file(manifest)


def cpus_needed(params: Params, trials: list[TrialSettings]) -> int:
    """Logical CPUs for `max_concurrent` trials (1 each) plus their Ray Train workers when they train."""
    per_trial = 1
    if any(t.train for t in trials):
        per_trial += max(max(1, c.ray.num_workers) * c.ray.cpus_per_worker
                         for c in (params.tokenizer.train, params.generator.train))
    return params.sweep.max_concurrent * per_trial


def start_ray(num_cpus: int) -> None:
    """init_ray, but first drop a local instance this process started earlier with fewer CPUs than
    the trials (and their Ray Train workers) need: they would wait for the CPUs forever."""
    if ray.is_initialized() and not os.environ.get("RAY_ADDRESS") and ray.cluster_resources().get("CPU", 0) < num_cpus:
        log.info("restarting local Ray: the sweep needs %d CPUs", num_cpus)
        ray.shutdown()
    init_ray(num_cpus)


def make_tuner(params: Params, trials: list[TrialSettings], context: SweepContext) -> tune.Tuner:
    sweep = params.sweep
    resources = {"cpu": 1, "gpu": sweep.gpus_per_trial}
    scheduler = None
    if sweep.scheduler == "asha":  # time = Tune reports: train_reports segments + the final one
        scheduler = ASHAScheduler(metric=ASHA_METRIC, mode="min", max_t=sweep.train_reports + 1, grace_period=1,
                                  reduction_factor=ASHA_REDUCTION_FACTOR)
    storage = Path(params.generator.train.ray.storage).resolve() / "tune"
    return tune.Tuner(
        tune.with_resources(tune.with_parameters(run_trial, context=context), resources),
        param_space=search_space(trials),
        tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=sweep.max_concurrent,
                                    reuse_actors=True,  # many short trials: skip a process start-up each
                                    trial_name_creator=tune_trial_name, trial_dirname_creator=tune_trial_name),
        run_config=tune.RunConfig(name=unique_run_name("sweep"), storage_path=str(storage), verbose=1,
                                  failure_config=tune.FailureConfig(fail_fast=True)))


def _cause(err: BaseException) -> BaseException:
    while (inner := getattr(err, "cause", None)) is not None and inner is not err:  # RayTaskError chains
        err = inner
    return err


def collect(grid) -> list[dict]:
    """One row per trial from Tune's ResultGrid; a failed trial fails the stage (UserError stays one line)."""
    failed = [(settings_of(r.config).name, _cause(r.error)) for r in grid if r.error is not None]
    if failed:
        name, err = failed[0]
        if isinstance(err, UserError):
            raise UserError(first_lines(err))
        raise TrainingError(f"sweep: {len(failed)} trial(s) failed, first {name}: {type(err).__name__}: "
                            f"{first_lines(err)}") from err
    rows = []
    for r in grid:
        t, metrics = settings_of(r.config), dict(r.metrics or {})
        row = {"trial": t.name, "status": "done" if DONE_KEY in metrics else "stopped",
               **t.as_dict(), "trial_s": metrics.get(TIME_TOTAL_S)}
        row.update({k: v for k, v in metrics.items() if k not in TUNE_KEYS})
        rows.append(row)
    return rows


def close_stopped_runs(rows: list[dict], uri: str | None) -> None:
    """ASHA ends a trial's process: mark its MLflow child run KILLED and tag it."""
    if uri is None:
        return
    client = mlflow_client(uri)
    for row in rows:
        if row["status"] == "stopped" and row.get("mlflow_run_id"):
            client.set_tag(row["mlflow_run_id"], "sphereard.stopped_early", "asha")
            client.set_terminated(row["mlflow_run_id"], "KILLED")


def dag_posteriors_only(params: Params) -> Params:
    """Without `sweep.train`, trials sample from (or train a generator on) the DAG's models: drop the
    posteriors it does not train from the main grid and from each arm, with one log line each. UserError
    naming the key when a grid is left without any."""
    sweep = params.sweep
    if sweep.train:
        return params

    def kept(key: str, posteriors: list[str]) -> list[str]:
        out = [p for p in posteriors if p in params.tokenizer.posteriors]
        if not out:
            raise UserError(f"{key}.posteriors={posteriors}: none is in tokenizer.posteriors="
                            f"{params.tokenizer.posteriors} (or set sweep.train: true)")
        if out != posteriors:
            log.info("%s.posteriors: leaving out %s (not in tokenizer.posteriors; sweep.train is false)", key,
                     ", ".join(p for p in posteriors if p not in out))
        return out

    arms = [arm if arm.posteriors is None else arm.model_copy(update={"posteriors": kept(f"sweep.arms[{i}]",
                                                                                          arm.posteriors)})
            for i, arm in enumerate(sweep.arms)]
    update = {"posteriors": kept("sweep", sweep.posteriors), "arms": arms}
    return params.model_copy(update={"sweep": sweep.model_copy(update=update)})


def write_disabled(params: Params) -> None:
    """`sweep.enabled: false`: the stage's outputs exist (DVC needs them) and hold no trial."""
    trials_dir(params).mkdir(parents=True, exist_ok=True)
    sweep_models_dir(params).mkdir(parents=True, exist_ok=True)
    write_outputs(sweep_dir(params), pd.DataFrame(columns=list(ID_COLUMNS)),
                  pd.DataFrame(columns=[*SETTING_COLUMNS, "num_seeds", "seeds"]))


def run_sweep(params: Params, list_only: bool = False) -> None:
    """Expand the grid and run every trial under Ray Tune, then write the tables and plots.

    Raises UserError before Ray starts when an input is missing (`preflight`), and the first failed
    trial's UserError (one line) or a TrainingError naming it."""
    params = absolute_paths(params)
    if not params.sweep.enabled:
        if list_only:
            log.info("sweep.enabled=false: no trials")
            return
        log.info("sweep.enabled=false: no trials; writing empty tables to %s", params.sweep.out)
        write_disabled(params)
        return
    params = dag_posteriors_only(params)
    sweep, repo_root = params.sweep, str(Path(".").resolve())
    heads = {"flow": params.generator.flow, "magnitude": params.generator.magnitude,
             "sampler": params.sampling.sampler}
    trials = expand_grid(sweep, trained_radii(params), default_train_radius(params), heads)
    log.info("sweep: %d trials (%s): %s", len(trials), sweep.scheduler, ", ".join(t.name for t in trials))
    if list_only:
        return
    manifest_sha = preflight(params)
    sweep_models_dir(params).mkdir(parents=True, exist_ok=True)  # a DVC out, also when no trial trains
    tags = {"stage": "sweep", "profile": params.profile}
    name = f"sweep-{params.profile}-{len(trials)}trials"
    logged = {"sweep": sweep.model_dump(), "num_trials": len(trials)}
    with start_run(params.tracking, repo_root, name, params=logged, tags=tags,
                   data_manifest=manifest_path(params.data.out), data_context="evaluation") as parent:
        uri = tracking_uri(params.tracking, repo_root) if parent.enabled else None
        commit = git_commit(repo_root)  # start_run tags the parent; children may run where there is no checkout
        child_tags = {**tags, "sphereard.sweep": name, **({MLFLOW_GIT_COMMIT: commit} if commit else {})}
        context = SweepContext(params=params, repo_root=repo_root, tracking_uri=uri, parent_run_id=parent.run_id,
                               tags=child_tags, report_segments=sweep.scheduler == "asha",
                               manifest_sha256=manifest_sha)
        start_ray(cpus_needed(params, trials))
        grid = make_tuner(params, trials, context).fit()
        rows = collect(grid)
        close_stopped_runs(rows, uri)
        results = results_frame(rows)
        summary = aggregate_over_seeds(results)
        paths = write_outputs(sweep_dir(params), results, summary)
        parent.log_artifact(paths["results"])
        parent.log_artifact(paths["summary"])
        for plot in sorted(paths["plots"].glob("*.png")):
            parent.log_artifact(plot, "plots")
        done = int((results["status"] == "done").sum())
        parent.log_metrics({"trials_done": done, "trials_stopped": len(results) - done}, step=0)
    log.info("sweep: %d trials (%d finished) -> %s", len(results), done, sweep.out)
