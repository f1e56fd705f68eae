"""Latent cache: posterior parameters of every train image and, optionally, of its horizontal flip.

The AR stage draws a fresh posterior sample from these parameters at every step (SphereAR
Sec. 4.1, as MAR does), instead of training on one frozen sample. One Parquet file per
tokenizer: `label` (int32), `params` and, with flips, `params_flip` (fixed-size lists of L*P
floats), plus `meta.json` (posterior kind, radius, shapes, views, dtype, the Parquet file's sha256).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from sphereard.errors import UserError
from sphereard.utils.io import atomic_path, sha256_file

LATENTS_FILE = "latents.parquet"
META_FILE = "meta.json"
PARAM_COLUMNS = ("params", "params_flip")
ARROW_DTYPES = {"float16": pa.float16(), "float32": pa.float32()}
ROW_GROUP_ROWS = 8192


def _fixed_list(values: np.ndarray, dtype: str) -> pa.FixedSizeListArray:
    n = values.shape[0]
    flat = pa.array(values.reshape(-1).astype(dtype), type=ARROW_DTYPES[dtype])
    return pa.FixedSizeListArray.from_arrays(flat, values.size // max(n, 1))


class LatentCacheWriter:
    """Streams batches into the cache; the directory appears only when `close()` succeeds.

        with LatentCacheWriter(out_dir, meta) as cache:
            cache.write(params, labels, params_flip)  # (B, L, P), (B,), (B, L, P) or None
    """

    def __init__(self, out_dir: str | Path, meta: dict, dtype: str = "float16"):
        assert dtype in ARROW_DTYPES, f"cache dtype must be one of {sorted(ARROW_DTYPES)}"
        self.out_dir, self.meta, self.dtype = Path(out_dir), meta, dtype
        self.rows, self.shape, self.views, self.writer = 0, None, None, None

    def __enter__(self) -> "LatentCacheWriter":
        self._atomic = atomic_path(self.out_dir)
        self.tmp = self._atomic.__enter__()
        self.tmp.mkdir()
        return self

    def write(self, params: np.ndarray, labels: np.ndarray, params_flip: np.ndarray | None = None) -> None:
        assert params.ndim == 3, "params must be (B, L, P)"
        assert params_flip is None or params_flip.shape == params.shape, "params_flip must match params (B, L, P)"
        assert len(labels) == params.shape[0], "one label per cached image"
        assert self.shape in (None, params.shape[1:]), "every batch must have the same (L, P)"
        views = 1 if params_flip is None else 2
        assert self.views in (None, views), "every batch must have the same views (with or without flips)"
        self.shape, self.views = params.shape[1:], views
        columns = {"label": pa.array(labels.astype(np.int32)), "params": _fixed_list(params, self.dtype)}
        if params_flip is not None:
            columns["params_flip"] = _fixed_list(params_flip, self.dtype)
        table = pa.table(columns)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.tmp / LATENTS_FILE, table.schema, compression="zstd")
        self.writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        self.rows += len(labels)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.writer is not None:
            self.writer.close()
        if exc_type is None:
            assert self.rows > 0, "the latent cache must hold at least one image"
            self.meta = {**self.meta, "rows": self.rows, "num_tokens": self.shape[0], "params_dim": self.shape[1],
                         "views": self.views, "dtype": self.dtype, "sha256": sha256_file(self.tmp / LATENTS_FILE)}
            (self.tmp / META_FILE).write_text(json.dumps(self.meta, indent=2))
        self._atomic.__exit__(exc_type, exc, tb)


def read_latent_meta(cache_dir: str | Path, verify: bool = True) -> dict:
    cache_dir = Path(cache_dir)
    meta_path, data_path = cache_dir / META_FILE, cache_dir / LATENTS_FILE
    for path in (meta_path, data_path):
        if not path.is_file():
            raise UserError(f"{path}: latent cache file missing (run the encode stage)")
    meta = json.loads(meta_path.read_text())
    if verify and sha256_file(data_path) != meta["sha256"]:
        raise UserError(f"{data_path}: sha256 does not match {meta_path} (corrupt or modified cache)")
    return meta


def read_latent_cache(cache_dir: str | Path, verify: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Returns params (N, V, L, P) [original, flipped when cached], labels (N,), meta."""
    meta = read_latent_meta(cache_dir, verify)
    table = pq.read_table(Path(cache_dir) / LATENTS_FILE, memory_map=True)
    shape = (meta["rows"], meta["num_tokens"], meta["params_dim"])
    views = [table.column(c).combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(shape)
             for c in PARAM_COLUMNS if c in table.column_names]
    params = torch.from_numpy(np.stack(views, axis=1))  # (N, V, L, P)
    labels = torch.from_numpy(table.column("label").to_numpy().astype(np.int64))
    return params, labels, meta


class LatentDataset(Dataset):
    """Items (params (L, P) float32 of the image or, when cached, its flip, chosen at random; label)."""

    def __init__(self, cache_dir: str | Path, verify: bool = True):
        self.params, self.labels, self.meta = read_latent_cache(cache_dir, verify)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        view = int(torch.randint(self.params.shape[1], ()))  # horizontal-flip augmentation, as cached
        return self.params[index, view].float(), self.labels[index]
