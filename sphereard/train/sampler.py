"""Endless, resumable data order: streaming epochs (`sphereard.data.stream.window_order`) that can
start mid-epoch.

Global step `s` (updates done) maps to epoch `s // B` and batch `s % B` of that epoch, with
B = batches per epoch per worker. The order of epoch `e` depends only on (seed, e, rank) and the
dataset's row groups, so a run resumed at step `s` reads exactly the batches an uninterrupted run
would have read (given the same batch_size, number of workers and shuffle window). A dataset with
`row_group_sizes()` (the Parquet shards, the latent cache) is read one window of row groups at a
time; any other map-style dataset counts as one group (a uniform permutation per epoch).

The loader never touches torch's global RNG: it has its own generator (seeded from `seed`) for the
DataLoader workers' base seed, so starting an epoch mid-way after a resume does not shift the
training step's random stream. Datasets must be deterministic per index (the workers' own seeds
then do not matter): random augmentation belongs in `TrainTask.train_step`, which runs under the
step's seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from sphereard.data.stream import window_order
from sphereard.errors import UserError


def row_group_sizes(dataset: Dataset) -> np.ndarray:
    """Rows per row group (G,) of a streaming dataset; one group of len(dataset) rows otherwise."""
    sizes = getattr(dataset, "row_group_sizes", None)
    return np.asarray(sizes() if sizes is not None else [len(dataset)], np.int64)


class ResumableSampler(Sampler[int]):
    """This worker's rows of each epoch in `window_order`, skipping the first `skip` of an epoch."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, window: int):
        self.sizes, self.rank, self.world_size = row_group_sizes(dataset), rank, num_replicas
        self.seed, self.window, self.epoch, self.skip = seed, window, 0, 0
        self.num_samples = int(self.sizes.sum()) // num_replicas

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[int]:
        order = window_order(self.sizes, self.seed, self.epoch, self.window, self.rank, self.world_size)
        return iter(order[self.skip:].tolist())

    def __len__(self) -> int:
        return self.num_samples - self.skip


def make_loader(dataset: Dataset, local_batch_size: int, rank: int, world_size: int, seed: int,
                num_workers: int, pin_memory: bool, window: int) -> tuple[DataLoader, ResumableSampler, int]:
    """DataLoader over this worker's share, `window` row groups at a time; returns (loader, sampler,
    batches per epoch). Raises UserError when one batch is larger than a worker's share."""
    sampler = ResumableSampler(dataset, world_size, rank, seed, window)
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
