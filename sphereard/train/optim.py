"""AdamW with decay/no-decay groups, warmup + cosine schedule, clipping and EMA (paper Sec. 4.1).

Schedule: timm `CosineLRScheduler` stepped per update with `step_update(step)`, where `step` is the
number of updates already done. It is stateless (the lr is a function of `step` alone), so resuming
only needs the step:
    step < W:   lr = lr_max * step / W                                   (linear warmup from 0)
    step >= W:  lr = min_lr + (lr_max - min_lr) * (1 + cos(pi * (step - W) / (T - W))) / 2
with W = warmup_steps and T = total steps; lr = min_lr from step T on. `schedule: constant` is the
same warmup followed by a cosine whose floor equals its peak, i.e. lr_max.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import nn

from sphereard.config import OptimConfig

WARMUP_LR_INIT = 0.0


def is_no_decay(name: str, param: torch.Tensor, no_decay_patterns: Sequence[str] = ()) -> bool:
    """No weight decay for 1-D params (norm gains, biases, scalars) and names matching a pattern.

    Callers pass regexes (`re.search` on the parameter name) for embeddings and input projections,
    e.g. `(r"class_emb", r"pos_embed", r"^input_proj\\.")` (paper Sec. 4.1: "none for embeddings,
    input projection and 1-D params")."""
    return param.ndim <= 1 or any(re.search(p, name) for p in no_decay_patterns)


def param_groups(named_params: Iterable[tuple[str, nn.Parameter]], weight_decay: float,
                 no_decay_patterns: Sequence[str] = ()) -> list[dict]:
    """Two AdamW groups: {"params": decayed, "weight_decay": wd} and {"params": rest, 0.0}."""
    decay, no_decay = [], []
    for name, param in named_params:
        if param.requires_grad:
            (no_decay if is_no_decay(name, param, no_decay_patterns) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    return [g for g in groups if g["params"]]


def build_optimizer(named_params: Iterable[tuple[str, nn.Parameter]], cfg: OptimConfig,
                    no_decay_patterns: Sequence[str] = (), lr: float | None = None) -> torch.optim.AdamW:
    """AdamW(lr, betas, weight_decay) over `model.named_parameters()`; fused kernels on CUDA.

    `lr` overrides cfg.lr (e.g. a discriminator with its own rate)."""
    groups = param_groups(named_params, cfg.weight_decay, no_decay_patterns)
    assert groups, "optimizer needs at least one trainable parameter"
    on_cuda = groups[0]["params"][0].is_cuda
    return torch.optim.AdamW(groups, lr=cfg.lr if lr is None else lr, betas=tuple(cfg.betas), fused=on_cuda)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> CosineLRScheduler:
    """Linear warmup then cosine to min_lr (or constant), as in the module docstring."""
    assert total_steps > 0, "total_steps must be positive"
    warmup = min(cfg.warmup_steps, total_steps)
    floor = cfg.min_lr if cfg.schedule == "cosine" else None  # None: floor = each group's own peak
    sched = CosineLRScheduler(
        optimizer, t_initial=max(1, total_steps - warmup), lr_min=0.0 if floor is None else floor,
        warmup_t=warmup, warmup_lr_init=WARMUP_LR_INIT, warmup_prefix=True, t_in_epochs=False)
    if floor is None:
        sched.lr_min = sched.base_values[0]
        assert all(v == sched.lr_min for v in sched.base_values), "constant schedule needs one lr for all groups"
    sched.step_update(0)
    return sched


def clip_grad(params: Iterable[torch.Tensor] | nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm to `max_norm`; returns the norm before clipping (a tensor, no sync)."""
    if isinstance(params, nn.Module):
        params = params.parameters()
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler: CosineLRScheduler,
                   step: int, params: Iterable[torch.Tensor] | nn.Module, grad_clip: float) -> dict:
    """One update: set the lr for update `step`, backward, clip, step, zero grads.

    Returns {"lr": float, "grad_norm": tensor} for the loop's metrics. Call it once per optimizer
    per step (a GAN task calls it for the generator and for the discriminator)."""
    scheduler.step_update(step)
    loss.backward()
    grad_norm = clip_grad(params, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"lr": optimizer.param_groups[0]["lr"], "grad_norm": grad_norm.detach()}


def build_ema(model: nn.Module, cfg: OptimConfig) -> ModelEmaV3:
    """timm EMA of the *unwrapped* model; call `ema.update(model, step=step + 1)` after each update.

    With `step` given, timm copies the weights at the first update, then uses cfg.ema_decay."""
    return ModelEmaV3(model, decay=cfg.ema_decay)
