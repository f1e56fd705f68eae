"""Stop training at the first non-finite loss, gradient norm or other step metric.

A diverged run (huge learning rate, a bad batch) must never write a checkpoint with non-finite
weights, move `latest` to it, or export a model: the loop calls `FiniteGuard.check()` before every
log, media and checkpoint, and `check_states_finite` on the states it is about to save; a failure
stops the stage with one line naming the first bad step and quantity. Per step the guard only keeps
a (K,) tensor on the device (no host sync); `check` syncs once for all steps since the previous
check, at points where the loop syncs anyway. The workers report the error to Ray
(`NON_FINITE_KEY`) instead of raising it, so Ray's FailureConfig does not retry a run that would
only diverge again; `launch.fit` raises it on the driver.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from sphereard.errors import UserError
from sphereard.train.checkpoint import flatten_state

NO_BAD_STEP = math.inf
NON_FINITE_KEY = "non_finite_error"  # reported to Ray instead of raising: a retry would diverge again


class NonFiniteError(UserError):
    """A training quantity became NaN or +-Inf; the last finite checkpoint stays `latest`."""


class FiniteGuard:
    """Collects every tensor step metric; `check` raises NonFiniteError on the first non-finite one.

        guard.add(step, metrics)      # each step: metrics {"loss": tensor, "grad_norm": tensor, ...}
        guard.check(world_size)       # before logging / checkpointing: raises or forgets the window
    """

    def __init__(self):
        self.steps: list[int] = []
        self.keys: list[tuple[str, ...]] = []
        self.values: list[torch.Tensor] = []  # one (K,) float tensor per step

    def add(self, step: int, metrics: dict) -> None:
        """Keep this step's scalar metrics (tensors, floats, ints; in the task's order) for `check`."""
        keys = tuple(k for k, v in metrics.items() if isinstance(v, (torch.Tensor, float, int)))  # task order
        if not keys:
            return
        device = next((v.device for v in metrics.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))
        self.steps.append(step)
        self.keys.append(keys)
        self.values.append(torch.stack([torch.as_tensor(metrics[k], device=device).detach().float().reshape(())
                                        for k in keys]))

    def _first_bad(self) -> tuple[float, str]:
        """(step, "key=value") of the first non-finite value in the window, or (inf, "")."""
        if not self.values:
            return NO_BAD_STEP, ""
        finite = torch.stack([torch.isfinite(v).all() for v in self.values]).cpu()  # (S,) one sync
        if bool(finite.all()):
            return NO_BAD_STEP, ""
        i = int((~finite).nonzero()[0])
        values = self.values[i].cpu()
        j = int((~torch.isfinite(values)).nonzero()[0])
        return float(self.steps[i]), f"{self.keys[i][j]}={float(values[j])}"

    def check(self, world_size: int = 1, device: torch.device | None = None) -> None:
        """Raise NonFiniteError naming the first non-finite (step, quantity) on any worker; every
        worker must call it at the same steps when world_size > 1 (it all-reduces the first bad step)."""
        step, key = self._first_bad()
        if world_size > 1:
            step, key = _first_across_workers(step, key, world_size, device)
        self.steps, self.keys, self.values = [], [], []
        if step != NO_BAD_STEP:
            raise NonFiniteError(f"training diverged at step {int(step) + 1}: {key} is not finite; nothing was "
                                 "checkpointed or exported after it (`latest` is the last finite checkpoint); "
                                 "lower optim.lr or check the data")


def _first_across_workers(step: float, key: str, world_size: int, device) -> tuple[float, str]:
    """The earliest (step, "key=value on worker r") over all workers: one all-reduce (MIN of
    step * world_size + rank), then the description from that worker (a broadcast, only on failure)."""
    rank = dist.get_rank()
    code = torch.tensor([step * world_size + rank], dtype=torch.float64, device=device)
    dist.all_reduce(code, op=dist.ReduceOp.MIN)
    if not math.isfinite(float(code)):
        return NO_BAD_STEP, ""
    bad_step, bad_rank = divmod(int(code), world_size)
    described = [key if rank == bad_rank else None]
    dist.broadcast_object_list(described, src=bad_rank, device=device)
    return float(bad_step), f"{described[0]} on worker {bad_rank}"


def check_states_finite(states: dict, step: int) -> None:
    """Raise NonFiniteError naming the first non-finite tensor of `states` ({name: state_dict or
    nested optimizer state}), e.g. weights an update overflowed while the step's metrics stayed finite."""
    for name, state in states.items():
        for key, t in flatten_state(state)[0].items():  # {dotted key: tensor}
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise NonFiniteError(f"training diverged at step {step}: {name}.{key} holds NaN or Inf; nothing was "
                                     "checkpointed or exported (`latest` is the last finite checkpoint); lower "
                                     "optim.lr or check the data")
