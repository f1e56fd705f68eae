"""Generic per-worker training loop for Ray Train; each training stage implements a `TrainTask`.

On every worker: device from Ray, DDP through `ray.train.torch.prepare_model` (gloo on CPU, NCCL
on GPU), this worker's shard of the task's dataset (endless, resumable: `sampler.py`), bf16
autocast when precision resolves to bf16, resume from the latest checkpoint in `spec.ckpt_dir`.
Rank 0 writes checkpoints, logs metrics (means over the window and the workers) and media.

Resume is exact: before every step the torch RNG is reseeded from (seed, step, rank), and the data
order is a function of the step, so a resumed run draws the same batches and noise as an
uninterrupted one (same batch_size and num_workers assumed; random augmentations running inside
DataLoader worker processes restart their streams). Our checkpoint dir is the source of truth;
each checkpoint is also reported to Ray as a small pointer so Ray's FailureConfig restarts the
worker group, which then resumes from the same dir (a shared filesystem on multi-node clusters).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from sphereard.config import OptimConfig, TrainLoopConfig
from sphereard.errors import UserError
from sphereard.tracking import NullRun, Run
from sphereard.train.checkpoint import DEFAULT_KEEP, load_latest, save_checkpoint, step_dir_name
from sphereard.train.sampler import endless_batches, make_loader, to_device

log = logging.getLogger(__name__)

RAY_POINTER_FILE = "pointer.json"
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
        """Map-style dataset of training items (built on every worker)."""
        raise NotImplementedError

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
        first = batch if isinstance(batch, torch.Tensor) else next(iter(batch.values() if isinstance(batch, dict) else batch))
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
        out = {f"train/{k}": float(v) / (self.steps * world_size) for k, v in zip(keys, vec[:-1])}
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


def _data_order(spec: LoopSpec, ctx: StepContext) -> dict:
    """What the data order depends on (saved in every checkpoint's meta)."""
    return {"seed": spec.seed, "world_size": ctx.world_size, "batch_size": spec.loop.batch_size}


def _checkpoint(spec: LoopSpec, task: TrainTask, ctx: StepContext, step: int, metrics: dict) -> None:
    """Rank 0 saves to spec.ckpt_dir (others wait in the report barrier)."""
    if ctx.is_main:
        meta = {**_data_order(spec, ctx), "config": spec.config_snapshot}
        save_checkpoint(spec.ckpt_dir, step, task.state_dicts(), meta, keep=spec.keep_checkpoints)
    _report(spec, ctx, step, metrics)


def _resume(spec: LoopSpec, task: TrainTask, ctx: StepContext) -> int:
    """Load the latest checkpoint (if any) into the task; returns the step to start from."""
    ckpt = load_latest(spec.ckpt_dir)
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            pointer = json.loads((Path(d) / RAY_POINTER_FILE).read_text())
        log.warning("Ray restarted the workers (last reported step %d); resuming from %s at step %s",
                    pointer["step"], spec.ckpt_dir, None if ckpt is None else ckpt.step)
    if ckpt is None:
        return 0
    for key, now in _data_order(spec, ctx).items():
        if ckpt.meta.get(key) != now:
            log.warning("%s: saved with %s=%s, now %s: data order differs from an uninterrupted run",
                        ckpt.path, key, ckpt.meta.get(key), now)
    try:
        task.load_state_dicts(ckpt.states)
    except (RuntimeError, KeyError, ValueError) as err:
        raise UserError(f"{ckpt.path}: does not fit the current model ({str(err).splitlines()[0]}); "
                        f"remove {spec.ckpt_dir} to start over") from None
    log.info("resumed from %s at step %d", ckpt.path, ckpt.step)
    return ckpt.step


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
    start = _resume(spec, task, ctx)
    end = loop.steps if spec.stop_after is None else min(loop.steps, start + spec.stop_after)
    if start >= end:
        _report(spec, ctx, start, {})
        return
    loader, sampler, batches_per_epoch = make_loader(dataset, ctx.local_batch_size, rank, world_size, spec.seed,
                                                     loop.num_loader_workers, pin_memory=device.type == "cuda")
    batches = endless_batches(loader, sampler, start, batches_per_epoch)
    log.info("rank %d/%d on %s (%s): steps %d..%d, %d batches/epoch", rank, world_size, device, ctx.precision,
             start, end, batches_per_epoch)
    progress = tqdm(total=loop.steps, initial=start, disable=rank != 0, mininterval=PROGRESS_MIN_INTERVAL_S)
    window, logged = MetricWindow(), {}
    for step in range(start, end):
        torch.manual_seed(step_seed(spec.seed, step, rank))
        batch = to_device(next(batches), device)
        metrics = task.train_step(batch, step)
        window.add(metrics, task.items_per_batch(batch))
        done = step + 1
        progress.update(1)
        if done % loop.log_every == 0 or done == end:
            logged = window.reduce(device, world_size)
            window = MetricWindow()
            ctx.run.log_metrics(logged, step=done)
            progress.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in logged.items()}, refresh=False)
        if rank == 0 and (done % loop.sample_every == 0 or done == loop.steps):
            task.log_media(done, ctx.run)
        if done % loop.ckpt_every == 0 or done == end:
            _checkpoint(spec, task, ctx, done, logged)
    progress.close()
