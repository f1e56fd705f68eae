"""Reproducible draws from torch's global RNG for code that cannot take a `torch.Generator`.

The posterior heads draw through torch.distributions (Beta / Gamma for the Power Spherical, randn for
the Gaussians), which take no generator argument; `seeded_global_rng` forks the global RNG of the CPU
and the given device, seeds it and restores the caller's state on exit, so a seeded block is
reproducible and leaves every other draw in the process unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded_global_rng(seed: int, device="cpu") -> Iterator[None]:
    """Inside the block torch's global RNG (CPU and `device`) starts from `seed`; on exit it is restored."""
    device = torch.device(device)
    accelerator = device.type not in ("cpu", "meta")
    devices = [device.index if device.index is not None else torch.accelerator.current_device_index()] \
        if accelerator else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if accelerator else None):
        torch.manual_seed(seed)
        yield
