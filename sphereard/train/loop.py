"""Generic per-worker training loop for Ray Train; each training stage implements a `TrainTask`.

On every worker: device from Ray, DDP through `ray.train.torch.prepare_model` (gloo on CPU, NCCL
on GPU), this worker's shard of the task's dataset (endless, resumable: `sampler.py`), bf16
autocast when precision resolves to bf16, resume from the latest checkpoint in `spec.ckpt_dir`.
Rank 0 writes checkpoints, logs metrics (means over the window and the workers) and media; every
checkpoint's meta carries the logged `train/*` history up to its step (`HISTORY_KEY`), so a resumed
run keeps it and the stages can judge convergence without the tracking server.

Resume is bit-exact, at any step (mid-epoch included): the data order is a function of the step
(`sampler.py`), the loader never draws from torch's global RNG, and after the batch is fetched the
global RNG is reseeded from (seed, step, rank), so every random draw of `train_step` (augmentation,
posterior samples, flow noise, label dropout) is the same in a resumed and an uninterrupted run
(same batch_size, world size and thread count). Datasets are deterministic; augmentation happens
in `train_step`. Training stops at the first non-finite step metric (`guard.py`) before anything
is checkpointed from it. Our checkpoint dir is the source of truth;
each checkpoint is also reported to Ray as a small pointer so Ray's FailureConfig restarts the
worker group, which then resumes from the same dir (a shared filesystem on multi-node clusters).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from sphereard.config import OptimConfig, TrainLoopConfig
from sphereard.errors import UserError, error_detail
from sphereard.tracking import NullRun, Run
from sphereard.train.checkpoint import DEFAULT_KEEP, load_latest, save_checkpoint, step_dir_name
from sphereard.train.guard import NON_FINITE_KEY, FiniteGuard, NonFiniteError, check_states_finite
from sphereard.train.sampler import endless_batches, make_loader, to_device
from sphereard.utils.io import read_json_object, require_fields

log = logging.getLogger(__name__)

RAY_POINTER_FILE = "pointer.json"
TRAIN_PREFIX = "train/"  # the task's step metrics, as logged (window means)
HISTORY_KEY = "history"  # checkpoint meta: [{"step", "train/<metric>": mean over the log window}, ...]
RESUME_DETAIL_CHARS = 300  # of a library error quoted in a resume failure
PROGRESS_MIN_INTERVAL_S = 5.0


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto -> bf16 on CUDA (when supported), fp32 elsewhere."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def step_seed(seed: int, step: int, rank: int) -> int:
    """A well-mixed 63-bit seed per (run seed, step, worker)."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(2, np.uint64)[0] >> np.uint64(1))


@dataclass
class StepContext:
    """What a task needs from the loop: device, world, precision, step budget."""

    device: torch.device
    rank: int
    world_size: int
    local_batch_size: int
    total_steps: int
    optim: OptimConfig
    precision: str
    run: Run = field(default_factory=NullRun)
    batches_per_epoch: int = 0  # set once the data loader is built (epoch-based schedules: the crop)

    def epoch(self, step: int) -> int:
        """The data epoch step `step` (updates done) is in."""
        assert self.batches_per_epoch > 0, "the data loader sets batches_per_epoch before the first step"
        return step // self.batches_per_epoch

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        """Wrap forward passes (not backward) in this."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def prepare_model(self, model: nn.Module, **ddp_kwargs) -> nn.Module:
        """Move to the device; wrap in DDP when world_size > 1 (gradients averaged across workers)."""
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs=ddp_kwargs or None)


class TrainTask:
    """A training stage's model logic. The loop owns data order, devices, resume and logging.

    Order on each worker: `dataset()`, `build(ctx)`, `load_state_dicts(...)` when resuming, then
    `train_step(batch, step)` for step = start .. end-1. `step` counts updates already done."""

    def dataset(self) -> Dataset:
        """Map-style dataset of training items (built on every worker, without re-verifying checksums:
        `check_data` did that once). Streaming datasets expose `row_group_sizes()` (`sampler.py`)."""
        raise NotImplementedError

    def check_data(self) -> None:
        """Verify the task's inputs (checksums) once per stage run, on the driver, before any worker starts."""

    def build(self, ctx: StepContext) -> None:
        """Create models (`ctx.prepare_model`), optimizers/schedulers (`optim.py`) and EMA."""
        raise NotImplementedError

    def train_step(self, batch: Any, step: int) -> dict[str, Any]:
        """Forward under `ctx.autocast()`, backward and update (`optim.optimizer_step`) -> metrics.

        Metric values may be tensors (no host sync); every worker must return the same keys."""
        raise NotImplementedError

    def state_dicts(self) -> dict[str, Any]:
        """name -> state_dict of everything to checkpoint (unwrapped model, EMA module, optimizers)."""
        raise NotImplementedError

    def load_state_dicts(self, states: dict[str, Any]) -> None:
        raise NotImplementedError

    def items_per_batch(self, batch: Any) -> int:
        """Items in this worker's batch, for throughput (images, or tokens for token models)."""
        if isinstance(batch, torch.Tensor):
            first = batch
        else:
            first = next(iter(batch.values() if isinstance(batch, dict) else batch))
        return int(first.shape[0])

    def log_media(self, step: int, run: Run) -> None:
        """Rank 0 only, every sample_every steps: sample grids etc. Use the unwrapped/EMA model:
        a DDP forward here would wait for the other workers."""


@dataclass
class LoopSpec:
    """Everything `train_loop_per_worker` needs; sent to the workers (must pickle)."""

    task_factory: Callable[[], TrainTask]  # e.g. functools.partial(VAETask, params); called per worker
    loop: TrainLoopConfig
    ckpt_dir: str  # absolute, visible to every worker
    seed: int = 0
    run: Run = field(default_factory=NullRun)
    stop_after: int | None = None  # end this invocation after this many steps (checkpointed); rerun resumes
    keep_checkpoints: int = DEFAULT_KEEP
    config_snapshot: dict = field(default_factory=dict)
    fingerprint: str = ""  # settings + seed + code (`fingerprint.py`); set by `launch.fit`


class MetricWindow:
    """Sums of step metrics since the last log; `reduce` averages over steps and workers."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.steps, self.items, self.start = 0, 0, time.perf_counter()

    def add(self, metrics: dict[str, Any], items: int) -> None:
        for key, value in metrics.items():
            value = torch.as_tensor(value).detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.steps, self.items = self.steps + 1, self.items + items

    def reduce(self, device: torch.device, world_size: int) -> dict[str, float]:
        keys = sorted(self.sums)
        vec = torch.stack([self.sums[k].to(device) for k in keys] + [torch.tensor(float(self.items), device=device)])
        if world_size > 1:
            dist.all_reduce(vec)  # SUM over workers
        vec = vec.cpu()
        out = {f"{TRAIN_PREFIX}{k}": float(v) / (self.steps * world_size) for k, v in zip(keys, vec[:-1], strict=True)}
        out["perf/items_per_s"] = float(vec[-1]) / max(time.perf_counter() - self.start, 1e-9)
        return out


def _report(spec: LoopSpec, ctx: StepContext, step: int, metrics: dict) -> None:
    """All ranks report (a barrier); rank 0 attaches a pointer to our checkpoint for Ray's restarts."""
    metrics = {**metrics, "step": step}
    if not ctx.is_main:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / RAY_POINTER_FILE).write_text(json.dumps({"ckpt_dir": spec.ckpt_dir, "step": step}))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=step_dir_name(step))


def _report_non_finite(ctx: StepContext, message: str) -> None:
    """Every worker reports the divergence; rank 0 attaches a (marker) checkpoint, because the driver's
    `Result.metrics` are those of the latest report that carried one (`launch.fit` raises it)."""
    metrics = {NON_FINITE_KEY: message}
    if not ctx.is_main:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / RAY_POINTER_FILE).write_text(json.dumps({"non_finite": message}))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name="non-finite")


def _data_order(spec: LoopSpec, ctx: StepContext) -> dict:
    """What the data order depends on (saved in every checkpoint's meta)."""
    return {"seed": spec.seed, "world_size": ctx.world_size, "batch_size": spec.loop.batch_size}


def _checkpoint(spec: LoopSpec, task: TrainTask, ctx: StepContext, step: int, metrics: dict,
                history: list[dict]) -> None:
    """Rank 0 saves to spec.ckpt_dir (others wait in the report barrier), with the logged history."""
    if ctx.is_main:
        meta = {**_data_order(spec, ctx), "config": spec.config_snapshot, "fingerprint": spec.fingerprint,
                HISTORY_KEY: history}
        save_checkpoint(spec.ckpt_dir, step, task.state_dicts(), meta, keep=spec.keep_checkpoints)
    _report(spec, ctx, step, metrics)


def _ray_pointer_step(directory: str | Path) -> int | None:
    """The step in the pointer of the checkpoint Ray restored, for the log only (our checkpoint dir is
    the source of truth): an unreadable pointer is one warning line and None, never an error."""
    path = Path(directory) / RAY_POINTER_FILE
    try:
        return require_fields(path, read_json_object(path, "Ray checkpoint pointer"), {"step": int})["step"]
    except UserError as err:
        log.warning("%s (ignored: resuming from the checkpoint dir)", err)
        return None


def _error_detail(err: BaseException) -> str:
    """A library error on one line: its type and first two lines (a state_dict error's first line is only
    its header), at most RESUME_DETAIL_CHARS characters."""
    text = error_detail(err, count=2)
    return text if len(text) <= RESUME_DETAIL_CHARS else text[:RESUME_DETAIL_CHARS] + "..."


def _resume(spec: LoopSpec, task: TrainTask, ctx: StepContext) -> tuple[int, list[dict]]:
    """Load the latest checkpoint (if any) into the task; returns the step to start from and the
    logged history up to it (`HISTORY_KEY` of the checkpoint meta).

    Raises UserError naming the checkpoint (its step dir) when it is unreadable (`load_latest`) or
    does not fit the task's models and optimizers: the task's own UserError (e.g. "state 'model':
    weights of a different model: tensor 'x' has shape ...") or a library error, on one line."""
    ckpt = load_latest(spec.ckpt_dir)
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            reported = _ray_pointer_step(d)
        log.warning("Ray restarted the workers (last reported step %s); resuming from %s at step %s",
                    reported, spec.ckpt_dir, None if ckpt is None else ckpt.step)
    if ckpt is None:
        return 0, []
    for key, now in _data_order(spec, ctx).items():
        if ckpt.meta.get(key) != now:
            log.warning("%s: saved with %s=%s, now %s: data order differs from an uninterrupted run",
                        ckpt.path, key, ckpt.meta.get(key), now)
    start_over = f"remove {spec.ckpt_dir} to start over"
    try:
        task.load_state_dicts(ckpt.states)
    except UserError as err:
        raise UserError(f"{ckpt.path}: {err}; {start_over}") from None
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        raise UserError(f"{ckpt.path}: does not fit the current model ({_error_detail(err)}); {start_over}") from None
    log.info("resumed from %s at step %d", ckpt.path, ckpt.step)
    return ckpt.step, [row for row in ckpt.meta.get(HISTORY_KEY, []) if row["step"] <= ckpt.step]


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker function; `config["spec"]` is a LoopSpec (see `launch.fit`)."""
    spec: LoopSpec = config["spec"]
    loop = spec.loop
    train_ctx = ray.train.get_context()
    rank, world_size = train_ctx.get_world_rank(), train_ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif loop.ray.num_workers > 0:  # a Ray worker: its CPU share is its intra-op thread count
        torch.set_num_threads(loop.ray.cpus_per_worker)
    ctx = StepContext(device=device, rank=rank, world_size=world_size, local_batch_size=loop.batch_size // world_size,
                      total_steps=loop.steps, optim=loop.optim, precision=resolve_precision(loop.precision, device),
                      run=spec.run if rank == 0 else NullRun())
    task = spec.task_factory()
    dataset = task.dataset()
    torch.manual_seed(spec.seed)  # identical initial weights on every worker
    task.build(ctx)
    start, history = _resume(spec, task, ctx)
    end = loop.steps if spec.stop_after is None else min(loop.steps, start + spec.stop_after)
    if start >= end:
        _report(spec, ctx, start, {})
        return
    loader, sampler, batches_per_epoch = make_loader(dataset, ctx.local_batch_size, rank, world_size, spec.seed,
                                                     loop.num_loader_workers, pin_memory=device.type == "cuda",
                                                     window=loop.shuffle_window)
    ctx.batches_per_epoch = batches_per_epoch
    batches = endless_batches(loader, sampler, start, batches_per_epoch)
    log.info("rank %d/%d on %s (%s): steps %d..%d, %d batches/epoch", rank, world_size, device, ctx.precision,
             start, end, batches_per_epoch)
    progress = tqdm(total=loop.steps, initial=start, disable=rank != 0, mininterval=PROGRESS_MIN_INTERVAL_S)
    try:
        _run_steps(spec, task, ctx, batches, start, end, progress, history)
    except NonFiniteError as err:  # raised on every worker at the same step (the guard all-reduces)
        _report_non_finite(ctx, str(err))  # not raised: Ray would retry a deterministic failure
    finally:
        progress.close()


def _run_steps(spec: LoopSpec, task: TrainTask, ctx: StepContext, batches, start: int, end: int, progress,
               history: list[dict]) -> None:
    """Steps start .. end-1: fetch, reseed, train, check, log (appended to `history`), media, checkpoint."""
    loop, rank, world_size, device = spec.loop, ctx.rank, ctx.world_size, ctx.device
    window, logged, guard = MetricWindow(), {}, FiniteGuard()
    for step in range(start, end):
        batch = to_device(next(batches), device)
        torch.manual_seed(step_seed(spec.seed, step, rank))  # after the fetch: the step's draws only
        metrics = task.train_step(batch, step)
        guard.add(step, metrics)
        window.add(metrics, task.items_per_batch(batch))
        done = step + 1
        progress.update(1)
        is_log = done % loop.log_every == 0 or done == end
        is_media = done % loop.sample_every == 0 or done == loop.steps
        is_ckpt = done % loop.ckpt_every == 0 or done == end
        if is_log or is_media or is_ckpt:  # the same steps on every worker
            guard.check(world_size, device)  # raises on the first non-finite step, before any write
        if is_log:
            logged = window.reduce(device, world_size)
            window = MetricWindow()
            ctx.run.log_metrics(logged, step=done)
            history.append({"step": done, **{k: v for k, v in logged.items() if k.startswith(TRAIN_PREFIX)}})
            progress.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in logged.items()}, refresh=False)
        if rank == 0 and is_media:
            task.log_media(done, ctx.run)
        if is_ckpt:
            check_states_finite(task.state_dicts(), done)  # every worker: its replica of the states
            _checkpoint(spec, task, ctx, done, logged, history)
