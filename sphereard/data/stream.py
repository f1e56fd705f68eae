"""Streaming reads: training workers read Parquet row groups on demand, never a whole split.

Two pieces, used by the image shards (`shards.ShardDataset`) and the latent cache (`latents.LatentDataset`):

- `RowGroupReader`: random access to the rows of Parquet files through an LRU cache of at most
  `capacity` decoded row groups; only the Parquet footers are read up front. Memory: capacity x one
  row group, whatever the number of rows.
- `window_order`: the data order of one epoch on one worker, a pure function of (seed, epoch, rank).
  The row groups are permuted and cut into windows of `window` groups, the rows of each window
  shuffled; the epoch's order is the windows one after another, and worker r reads the r-th of W equal
  contiguous runs of it. A worker then touches one window (<= `window` groups) at a time, so
  `capacity = window` bounds its memory, and reads each of its groups once per epoch (a group on the
  border of two workers' runs is read by both). It is the shard-then-buffer shuffle of streaming loaders (WebDataset,
  Ray Data's local shuffle buffer) made exactly resumable: a run resumed at step s skips to the same
  position of the same order (`train/sampler.py`). With a window of every group it is a uniform
  permutation of the worker's rows.

Each worker's epoch has floor(N / W) rows (the same on every worker, as DDP needs): every row is read
once per epoch by exactly one worker, except the last N mod W rows of the order.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sphereard.errors import UserError, error_detail

PARQUET_ERRORS = (pa.ArrowException, OSError, KeyError)


def _parquet(path: Path, read: Callable[[], Any], what: str) -> Any:
    """`read()` of one Parquet file; a corrupt file or a missing column is a UserError naming it (`what` may
    hold `{}` for where the library's detail goes)."""
    try:
        return read()
    except PARQUET_ERRORS as e:
        text = what.format(error_detail(e)) if "{}" in what else f"{what} ({error_detail(e)})"
        raise UserError(f"{path}: not a readable {text}") from None


class RowGroupReader:
    """Rows of `files` (in order) by global index, read one row group at a time.

    `convert(table, group)` turns a row group's Arrow table (the `columns`) into what `item` hands
    out (numpy arrays, say); at most `capacity` converted groups are held (least recently used
    dropped). Pickles without its cache, so DataLoader workers start empty.
    Raises UserError naming the file when a footer or a row group is not readable Parquet."""

    def __init__(self, files: Sequence[str | Path], columns: list[str], capacity: int,
                 convert: Callable[[pa.Table, int], Any], what: str = "Parquet file", hint: str = ""):
        assert capacity >= 1, "the row-group cache must hold at least one group"
        self.files, self.columns, self.capacity, self.convert = [Path(f) for f in files], columns, capacity, convert
        self.what = what if not hint else f"{what} ({{}}); {hint}"
        self.groups: list[tuple[int, int]] = []  # (file index, row group index)
        sizes = []
        for fi, f in enumerate(self.files):
            meta = _parquet(f, lambda f=f: pq.read_metadata(f), self.what)
            for gi in range(meta.num_row_groups):
                self.groups.append((fi, gi))
                sizes.append(meta.row_group(gi).num_rows)
        self.sizes = np.asarray(sizes, np.int64)  # (G,)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)])  # (G + 1,)
        self._cache: OrderedDict[int, Any] = OrderedDict()
        self.reads = 0  # row groups read so far (tests, benchmarks)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": OrderedDict()}

    def locate(self, index: int) -> tuple[int, int]:
        """Global row -> (row group, row within it)."""
        assert 0 <= index < len(self), f"row {index} is outside [0, {len(self)})"
        g = bisect.bisect_right(self.starts, index) - 1
        return g, int(index - self.starts[g])

    def group(self, g: int) -> Any:
        """The converted row group g (read on a cache miss)."""
        if g in self._cache:
            self._cache.move_to_end(g)
            return self._cache[g]
        fi, gi = self.groups[g]
        path = self.files[fi]
        table = _parquet(path, lambda: pq.ParquetFile(path).read_row_group(gi, columns=self.columns), self.what)
        value = self.convert(table, g)
        self.reads += 1
        self._cache[g] = value
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return value

    def item(self, index: int) -> tuple[Any, int]:
        """(converted group, row within it) of global row `index`."""
        g, offset = self.locate(index)
        return self.group(g), offset


def window_order(sizes: np.ndarray, seed: int, epoch: int, window: int, rank: int = 0,
                 world_size: int = 1) -> np.ndarray:
    """Global row indices (floor(N / world_size),) this worker reads in `epoch` (module docstring).

    sizes: rows per row group (G,); window: row groups per shuffle window (>= 1)."""
    assert window >= 1 and 0 <= rank < world_size, "need window >= 1 and 0 <= rank < world_size"
    sizes = np.asarray(sizes, np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    per_worker = int(starts[-1]) // world_size
    perm = np.random.default_rng([seed, epoch]).permutation(len(sizes))  # (G,)
    parts = []
    for w in range(0, len(perm), window):
        rows = np.concatenate([np.arange(starts[g], starts[g + 1]) for g in perm[w:w + window]])
        np.random.default_rng([seed, epoch, w]).shuffle(rows)
        parts.append(rows)
    order = np.concatenate(parts) if parts else np.zeros(0, np.int64)  # (N,): the epoch's global order
    return order[rank * per_worker:(rank + 1) * per_worker]  # a contiguous run of windows per worker
