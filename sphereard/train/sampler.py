"""Endless, resumable data order: DistributedSampler epochs that can start mid-epoch.

Global step `s` (updates done) maps to epoch `s // B` and batch `s % B` of that epoch, with
B = batches per epoch per worker. The permutation of epoch `e` depends only on (seed, e), so a run
resumed at step `s` reads exactly the batches an uninterrupted run would have read (given the same
batch_size and number of workers).

The loader never touches torch's global RNG: it has its own generator (seeded from `seed`) for the
DataLoader workers' base seed, so starting an epoch mid-way after a resume does not shift the
training step's random stream. Datasets must be deterministic per index (the workers' own seeds
then do not matter): random augmentation belongs in `TrainTask.train_step`, which runs under the
step's seed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from sphereard.errors import UserError


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffle, drop_last) whose epoch can skip its first `skip` indices."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        super().set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return super().__len__() - self.skip


def make_loader(dataset: Dataset, local_batch_size: int, rank: int, world_size: int, seed: int,
                num_workers: int, pin_memory: bool) -> tuple[DataLoader, ResumableSampler, int]:
    """DataLoader over this worker's shard; returns (loader, sampler, batches per epoch)."""
    sampler = ResumableSampler(dataset, world_size, rank, seed)
    batches_per_epoch = sampler.num_samples // local_batch_size
    if batches_per_epoch == 0:
        raise UserError(f"batch_size: {local_batch_size * world_size} is larger than the dataset "
                        f"({len(dataset)} items over {world_size} workers)")
    loader = DataLoader(dataset, batch_size=local_batch_size, sampler=sampler, drop_last=True,
                        num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0,
                        generator=torch.Generator().manual_seed(seed))  # not the global RNG
    return loader, sampler, batches_per_epoch


def endless_batches(loader: DataLoader, sampler: ResumableSampler, start_step: int,
                    batches_per_epoch: int) -> Iterator[Any]:
    """Batches for steps start_step, start_step + 1, ... across epochs (sampler.set_epoch each epoch)."""
    epoch, skip = divmod(start_step, batches_per_epoch)
    while True:
        sampler.set_epoch(epoch, skip * loader.batch_size)
        yield from loader
        epoch, skip = epoch + 1, 0


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) batch to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
