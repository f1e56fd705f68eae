"""Launch a per-worker training function with Ray Train's TorchTrainer (Train V2, Ray 2.60's default).

Local Ray by default (a fresh instance, never someone else's cluster); with RAY_ADDRESS set the
driver joins that cluster. Each call gets a unique Ray run name under `ray_cfg.storage`, so
Ray-side state never carries over between invocations: resuming is our checkpoint dir's job.
`num_workers: 0` is Ray Train's local mode: the function runs in this process (no Ray instance,
no worker start-up; errors propagate as raised), for debugging and seconds-scale CPU runs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import ray
import ray.train
from ray.train.torch import TorchTrainer

from sphereard.config import RayConfig
from sphereard.errors import UserError
from sphereard.train.checkpoint import discard_checkpoints, latest_meta
from sphereard.train.fingerprint import run_fingerprint
from sphereard.train.guard import NON_FINITE_KEY, NonFiniteError
from sphereard.train.loop import LoopSpec, train_loop_per_worker
from sphereard.utils.ray_local import (  # noqa: F401  (re-exported: the launcher's Ray start-up)
    LOCAL_OBJECT_STORE_BYTES,
    LOOPBACK_ONLY_ENV,
    RAY_ENV_DEFAULTS,
    _unwrap,
    init_ray,
    loopback_only,
    unwrap_task_error,
)

log = logging.getLogger(__name__)

RAY_CHECKPOINTS_TO_KEEP = 2  # Ray-side checkpoints are tiny pointers into our checkpoint dir
# Ray's documented switch between Train V1 and V2 (V2 is the default in 2.60: unset means on).
TRAIN_V2_ENV = "RAY_TRAIN_V2_ENABLED"


def train_v2_enabled() -> bool:
    """Whether Ray Train V2 is on, read from the environment variable the way Ray reads it
    (unset: on; "1" or "true", any case: on; anything else: off)."""
    value = os.environ.get(TRAIN_V2_ENV)
    return value is None or value.lower() in ("1", "true")


class TrainingError(RuntimeError):
    """Training failed on the workers after Ray's retries (FailureConfig.max_failures)."""


def check_local_capacity(ray_cfg: RayConfig) -> None:
    """Fail fast when a local instance (no RAY_ADDRESS; an autoscaling cluster may still grow) can
    never hold the worker group: Ray would otherwise wait for the CPUs forever."""
    needed = ray_cfg.num_workers * ray_cfg.cpus_per_worker
    have = ray.cluster_resources().get("CPU", 0)
    if not os.environ.get("RAY_ADDRESS") and have < needed:
        raise UserError(f"ray.num_workers={ray_cfg.num_workers} x ray.cpus_per_worker={ray_cfg.cpus_per_worker} "
                        f"needs {needed} CPUs, but the running local Ray instance has {have:g}")


def unique_run_name(run_name: str) -> str:
    """`vae-spherical-seed0` -> `vae-spherical-seed0-20250101-120000-1a2b3c` (Ray needs one per run)."""
    return f"{run_name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def _root_cause(err: BaseException) -> BaseException:
    """The workers' own exception inside Ray's WorkerGroupError: a UserError if any rank raised one."""
    failures = {rank: _unwrap(e) for rank, e in (getattr(err, "worker_failures", None) or {}).items()}
    if not failures:
        return _unwrap(err)
    return next((e for e in failures.values() if isinstance(e, UserError)), failures[min(failures)])


def run_training(train_fn: Callable[[dict], None], fn_config: dict, ray_cfg: RayConfig,
                 run_name: str) -> ray.train.Result:
    """Run `train_fn(fn_config)` on `ray_cfg.num_workers` workers; returns Ray's Result.

    Raises UserError when a worker raised one (bad input stays a one-line error), else TrainingError
    (local mode, num_workers 0: the function's own exception)."""
    if not train_v2_enabled():  # ray.train read it once, when first imported
        raise UserError(f"{TRAIN_V2_ENV}={os.environ[TRAIN_V2_ENV]}: sphereard needs Ray Train V2 (unset it)")
    if ray_cfg.num_workers > 0:
        init_ray(ray_cfg.num_workers * ray_cfg.cpus_per_worker)
        check_local_capacity(ray_cfg)
    name = unique_run_name(run_name)
    trainer = TorchTrainer(
        train_fn,
        train_loop_config=fn_config,
        scaling_config=ray.train.ScalingConfig(num_workers=ray_cfg.num_workers, use_gpu=ray_cfg.use_gpu,
                                               resources_per_worker={"CPU": ray_cfg.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=str(Path(ray_cfg.storage).resolve()),
            failure_config=ray.train.FailureConfig(max_failures=ray_cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=RAY_CHECKPOINTS_TO_KEEP)),
    )
    log.info("Ray Train run %s: %d worker(s), gpu=%s", name, ray_cfg.num_workers, ray_cfg.use_gpu)
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as err:
        cause = _root_cause(err)
        if isinstance(cause, UserError):
            raise UserError(str(cause)) from None
        raise TrainingError(f"{run_name}: training failed ({type(cause).__name__}: {cause}); "
                            "the workers' tracebacks are in the log above") from err
    if result.error is not None:
        raise TrainingError(f"{run_name}: training failed ({result.error})") from result.error
    return result


def discard_stale_checkpoints(ckpt_dir: str, fingerprint: str) -> None:
    """Resume only a run of the same settings, seed and code: remove the checkpoints of another
    (one warning naming them), so a stage DVC reruns after a change trains from step 0."""
    meta = latest_meta(ckpt_dir)
    if meta is not None and meta.get("fingerprint") != fingerprint:
        removed = discard_checkpoints(ckpt_dir)
        log.warning("%s: checkpoints %s were written by other settings or code (fingerprint %s, now %s): "
                    "removed; training starts from step 0", ckpt_dir, ", ".join(removed),
                    str(meta.get("fingerprint"))[:12], fingerprint[:12])


def fit(spec: LoopSpec, run_name: str) -> ray.train.Result:
    """Run the generic loop (`loop.train_loop_per_worker`) for `spec` on Ray Train.

    Resumes from `spec.ckpt_dir` only when its checkpoints carry this run's fingerprint (settings,
    seed, code: `fingerprint.py`); others are removed first (`discard_stale_checkpoints`).
    Raises NonFiniteError (a UserError: one line) when training diverged, UserError for bad input
    on the workers, TrainingError when they failed otherwise (after Ray's retries)."""
    spec = dataclasses.replace(spec, ckpt_dir=str(Path(spec.ckpt_dir).resolve()),
                               fingerprint=spec.fingerprint or run_fingerprint(spec.config_snapshot, spec.seed,
                                                                                spec.task_factory))
    discard_stale_checkpoints(spec.ckpt_dir, spec.fingerprint)
    spec.task_factory().check_data()  # checksums once here; the workers' datasets skip them
    result = run_training(train_loop_per_worker, {"spec": spec}, spec.loop.ray, run_name)
    if NON_FINITE_KEY in (result.metrics or {}):
        raise NonFiniteError(result.metrics[NON_FINITE_KEY])
    return result
