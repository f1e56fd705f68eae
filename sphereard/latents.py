"""Latent cache: posterior moments of every train image and, optionally, of its horizontal flip.

The moments (MAR's term) are the posterior's parameters per token (`sphereard.tokenizer.posterior`).
The AR stage draws a fresh posterior sample from them at every step (SphereAR Sec. 4.1, as MAR
does), instead of training on one frozen sample. One Parquet file per tokenizer: `label` (int32),
`moments` and, with flips, `moments_flip` (fixed-size lists of L*P floats), plus `cache.json`
(posterior, radius, shapes, views, dtype, the Parquet file's sha256). An exported model's metadata
is `model.json` (`sphereard.export`); a data set's is `manifest.json` (`sphereard.data.shards`).

No overflow: format 2 and later (`cache.json` "format") store the posterior's unbounded positive
scales (`log_channels`: the Power Spherical kappa) as their natural log, so no value overflows
a float16 column (kappa > 65504 used to become inf, and PS(mu, inf) sampled -mu). A float16
cache rounds: mu to ~5e-4 and kappa to ~0.4% relative (its log to 2^-7 near log kappa = 10), far
inside the posterior's own spread; `encode.dtype: float32` stores both to float32 precision. Writing stops
with one UserError naming the file, column, position and value when a parameter is not finite
or cannot be stored in the cache dtype. Caches without "format" (format 1) hold raw moments and
are still read. Readers get raw moments either way: `read_latent_cache`, `decode_column`.
Format 3 renamed the metadata file, its `params_dim` key and the columns (formerly `meta.json`,
`params`, `params_flip`); formats 1 and 2 are still read under their old names.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from sphereard.data.stream import RowGroupReader
from sphereard.errors import UserError, error_detail
from sphereard.tokenizer.posterior import cache_log_channels
from sphereard.utils.io import atomic_path, read_json_object, require_fields, sha256_file

LATENTS_FILE = "latents.parquet"
META_FILE = "cache.json"
MOMENT_COLUMNS = ("moments", "moments_flip")
ARROW_DTYPES = {"float16": pa.float16(), "float32": pa.float32()}
ROW_GROUP_ROWS = 8192
CACHE_FORMAT = 3  # 1: raw moments (no "format" key); 2: `log_channels` stored as log; 3: renamed
# Formats 1 and 2: their metadata file, and their names of the moments columns and `moments_dim`
LEGACY_META_FILE = "meta.json"
LEGACY_NAMES = {"moments": "params", "moments_flip": "params_flip", "moments_dim": "params_dim"}


def encode_moments(moments: np.ndarray, log_channels, dtype: str) -> np.ndarray:
    """Raw moments (B, L, P) -> the stored values (B, L, P) in `dtype`: log of `log_channels`, rest as is."""
    out = moments.astype(np.float64)
    if len(log_channels):
        with np.errstate(divide="ignore", invalid="ignore"):  # log(<= 0) -> -inf / nan, caught by the caller
            out[..., list(log_channels)] = np.log(out[..., list(log_channels)])
    with np.errstate(over="ignore"):
        return out.astype(dtype)


def decode_moments(stored: torch.Tensor, log_channels) -> torch.Tensor:
    """Stored values (..., P) -> raw moments (..., P): exp of `log_channels` (float32 then), rest as is."""
    if not len(log_channels):
        return stored
    out = stored.to(torch.float32, copy=True)  # exp(log kappa) can exceed the float16 range
    idx = list(log_channels)
    out[..., idx] = out[..., idx].exp()
    return out


def _stored_values(column: pa.ChunkedArray | pa.Array, meta: dict) -> np.ndarray:
    """One Parquet moments column -> its stored values (n, L, P), possibly a read-only view."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, meta["num_tokens"], meta["moments_dim"])


def decode_column(column: pa.ChunkedArray | pa.Array, meta: dict) -> torch.Tensor:
    """One Parquet moments column of a cache with `meta` (any format) -> raw moments (n, L, P).

    For readers of row groups (`sphereard.ar.train.eval_batches`): the stored values are not the
    parameters when meta["log_channels"] is non-empty."""
    stored = np.require(_stored_values(column, meta), requirements="W")  # torch needs writable memory
    return decode_moments(torch.from_numpy(stored), meta.get("log_channels", ()))


def _first_bad(bad: np.ndarray) -> tuple[int, int, int]:
    """(image, token, channel) of the first True in a (B, L, P) mask."""
    return tuple(int(i) for i in np.argwhere(bad)[0])


def _checked_column(moments: np.ndarray, log_channels, dtype: str, where: str, first_row: int) -> pa.FixedSizeListArray:
    """Encode moments (B, L, P) into a Parquet column; UserError (one line) for a value that is not
    finite or whose stored form overflows `dtype` or does not decode to a finite float32."""
    if not np.isfinite(moments).all():
        i, t, c = _first_bad(~np.isfinite(moments))
        raise UserError(f"{where}: non-finite posterior parameter {float(moments[i, t, c])} at image {first_row + i}, "
                        f"token {t}, channel {c} (encoder output)")
    stored = encode_moments(moments, log_channels, dtype)
    decoded = decode_moments(torch.from_numpy(stored), log_channels).numpy()
    bad = ~(np.isfinite(stored) & np.isfinite(decoded))
    if bad.any():
        i, t, c = _first_bad(bad)
        why = ("is stored as its log, which needs 0 < value < 3.4e38" if c in log_channels
               else f"overflows {dtype} (set encode.dtype=float32)")
        raise UserError(f"{where}: posterior parameter {float(moments[i, t, c]):g} at image {first_row + i}, "
                        f"token {t}, channel {c} {why}")
    n = stored.shape[0]
    flat = pa.array(stored.reshape(-1), type=ARROW_DTYPES[dtype])
    return pa.FixedSizeListArray.from_arrays(flat, stored.size // max(n, 1))


class LatentCacheWriter:
    """Streams batches into the cache; the directory appears only when `close()` succeeds.

        with LatentCacheWriter(out_dir, meta) as cache:
            cache.write(moments, labels, moments_flip)  # (B, L, P), (B,), (B, L, P) or None
    """

    def __init__(self, out_dir: str | Path, meta: dict, dtype: str = "float16"):
        assert dtype in ARROW_DTYPES, f"cache dtype must be one of {sorted(ARROW_DTYPES)}"
        self.out_dir, self.meta, self.dtype = Path(out_dir), meta, dtype
        self.rows, self.shape, self.views, self.writer = 0, None, None, None
        self.log_channels: tuple[int, ...] = ()

    def __enter__(self) -> LatentCacheWriter:
        self._atomic = atomic_path(self.out_dir)
        self.tmp = self._atomic.__enter__()
        self.tmp.mkdir()
        return self

    def write(self, moments: np.ndarray, labels: np.ndarray, moments_flip: np.ndarray | None = None,
              crops: Sequence[np.ndarray] = ()) -> None:
        """One batch: the centre view's moments (B, L, P), labels (B,), its flip's (B, L, P) or None, and
        the random crops' views (each (B, L, P): crop 0, its flip when flips are cached, crop 1, ...)."""
        assert moments.ndim == 3, "moments must be (B, L, P)"
        assert all(v.shape == moments.shape for v in (moments_flip, *crops) if v is not None), \
            "every view must match moments (B, L, P)"
        assert len(labels) == moments.shape[0], "one label per cached image"
        assert self.shape in (None, moments.shape[1:]), "every batch must have the same (L, P)"
        names = [MOMENT_COLUMNS[0]] + ([MOMENT_COLUMNS[1]] if moments_flip is not None else [])
        names += crop_columns(len(crops) // len(names), moments_flip is not None)
        assert len(names) == 1 + (moments_flip is not None) + len(crops), "crops: one view per crop (and flip)"
        assert self.views in (None, names), "every batch must have the same views (flips, crops)"
        if self.shape is None:
            assert "posterior" in self.meta, "cache meta must name the posterior kind"
            self.log_channels = cache_log_channels(self.meta["posterior"], moments.shape[2])
        self.shape, self.views = moments.shape[1:], names
        self.center_views = 1 + (moments_flip is not None)
        columns = {"label": pa.array(labels.astype(np.int32))}
        for name, values in zip(names, (v for v in (moments, moments_flip, *crops) if v is not None), strict=True):
            where = f"{self.out_dir / LATENTS_FILE} column {name!r}"
            columns[name] = _checked_column(values, self.log_channels, self.dtype, where, self.rows)
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
            self.meta = {**self.meta, "rows": self.rows, "num_tokens": self.shape[0], "moments_dim": self.shape[1],
                         "views": len(self.views), "view_columns": self.views, "center_views": self.center_views,
                         "dtype": self.dtype, "format": CACHE_FORMAT,
                         "log_channels": list(self.log_channels), "sha256": sha256_file(self.tmp / LATENTS_FILE)}
            (self.tmp / META_FILE).write_text(json.dumps(self.meta, indent=2))
        self._atomic.__exit__(exc_type, exc, tb)


META_FIELDS = {"posterior": str, "sha256": str, "rows": int, "num_tokens": int, "moments_dim": int}
COUNT_FIELDS = ("rows", "num_tokens", "moments_dim")
PARQUET_ERRORS = (pa.ArrowException, OSError)
RERUN = "re-run the encode stage"


def cache_format(meta: dict) -> int:
    return meta.get("format", 1)


def moment_columns(meta: dict) -> tuple[str, str]:
    """The names of the (moments, moments_flip) columns in a cache with `meta`: renamed in format 3."""
    return MOMENT_COLUMNS if cache_format(meta) >= 3 else tuple(LEGACY_NAMES[c] for c in MOMENT_COLUMNS)


def crop_columns(crops: int, flips: bool) -> list[str]:
    """Column names of `crops` random-crop views (each followed by its flip when flips are cached)."""
    return [f"moments_crop{k}{suffix}" for k in range(crops) for suffix in (("", "_flip") if flips else ("",))]


def view_columns(meta: dict, names: Sequence[str]) -> list[str]:
    """The moments columns of a cache, in view order: `view_columns` of its metadata (caches with crops),
    else those of (moments, moments_flip) among the file's column `names`."""
    return list(meta.get("view_columns") or [c for c in moment_columns(meta) if c in names])


def _check_meta(meta_path: Path, meta: dict) -> dict:
    """Raises UserError naming the metadata file: a format newer than this code, a key of META_FIELDS
    missing or of another type, a count below 1, or `log_channels` that are not channels of the
    moments. Returns it with format 1 and 2 keys under their format-3 names."""
    if "format" in meta:
        require_fields(meta_path, meta, {"format": int})
        if meta["format"] > CACHE_FORMAT:
            raise UserError(f"{meta_path}: cache format {meta['format']} is newer than this code reads "
                            f"(<= {CACHE_FORMAT}); {RERUN}")
    if cache_format(meta) < 3 and LEGACY_NAMES["moments_dim"] in meta:
        meta = {**meta, "moments_dim": meta[LEGACY_NAMES["moments_dim"]]}
    require_fields(meta_path, meta, META_FIELDS)
    for key in COUNT_FIELDS:
        if meta[key] < 1:
            raise UserError(f"{meta_path}: key {key!r} must be >= 1, got {meta[key]}")
    channels = meta.get("log_channels", [])
    if not isinstance(channels, list) or not all(type(c) is int and 0 <= c < meta["moments_dim"] for c in channels):
        raise UserError(f"{meta_path}: key 'log_channels' must list channels in [0, {meta['moments_dim']}), "
                        f"got {channels!r}")
    return meta


def meta_path(cache_dir: str | Path) -> Path:
    """The cache's metadata file: `cache.json`, or `meta.json` in a cache of format 1 or 2."""
    legacy = Path(cache_dir) / LEGACY_META_FILE
    return legacy if legacy.is_file() and not (Path(cache_dir) / META_FILE).exists() else Path(cache_dir) / META_FILE


def read_latent_meta(cache_dir: str | Path, verify: bool = True) -> dict:
    """cache.json of a latent cache; with `verify`, latents.parquet must have the sha256 it records.

    Raises UserError naming the file: either file missing, the metadata not a JSON object (truncated,
    corrupt, not UTF-8) or failing `_check_meta`, or (with `verify`) a sha256 mismatch."""
    cache_dir = Path(cache_dir)
    meta_file, data_path = meta_path(cache_dir), cache_dir / LATENTS_FILE
    for path in (meta_file, data_path):
        if not path.is_file():
            raise UserError(f"{path}: latent cache file missing (run the encode stage)")
    meta = _check_meta(meta_file, read_json_object(meta_file, "latent cache metadata"))
    if verify and sha256_file(data_path) != meta["sha256"]:
        raise UserError(f"{data_path}: sha256 does not match {meta_file} (corrupt or modified cache)")
    return meta


def _read_table(data_path: Path) -> pa.Table:
    """The whole Parquet file; UserError naming it when it is not readable Parquet (truncated, corrupt)."""
    try:
        return pq.read_table(data_path, memory_map=True)
    except PARQUET_ERRORS as err:
        raise UserError(f"{data_path}: not a readable latent cache ({error_detail(err)}); {RERUN}") from None


def _check_schema(schema: pa.Schema, num_rows: int, meta: dict, data_path: Path) -> list[str]:
    """Raises UserError naming the Parquet file when its rows or columns differ from what cache.json says:
    the row count, a missing label / moments column, or a moments column that is not `num_tokens` x
    `moments_dim` floats per row. Returns the moments columns in view order (`view_columns`)."""
    meta_file = meta_path(data_path.parent)
    if num_rows != meta["rows"]:
        raise UserError(f"{data_path}: holds {num_rows} rows, {meta_file} says {meta['rows']}; {RERUN}")
    width = meta["num_tokens"] * meta["moments_dim"]
    columns = view_columns(meta, schema.names)
    for name in ("label", moment_columns(meta)[0], *columns):
        if name not in schema.names:
            raise UserError(f"{data_path}: no column {name!r} (not a latent cache of the encode stage); {RERUN}")
    if not pa.types.is_integer(schema.field("label").type):
        raise UserError(f"{data_path}: column 'label' holds {schema.field('label').type}, not integers")
    for name in columns:
        kind = schema.field(name).type
        if not (pa.types.is_fixed_size_list(kind) and kind.list_size == width
                and pa.types.is_floating(kind.value_type)):
            raise UserError(f"{data_path}: column {name!r} holds {kind}, {meta_file} says {meta['num_tokens']} "
                            f"tokens x {meta['moments_dim']} floats per row")
    return columns


def _check_nulls(table: pa.Table, data_path: Path) -> None:
    for name in table.column_names:
        if table.column(name).null_count:
            raise UserError(f"{data_path}: column {name!r} has {table.column(name).null_count} null rows; {RERUN}")


def _check_table(table: pa.Table, meta: dict, data_path: Path) -> list[str]:
    """`_check_schema` and no null rows (UserError naming the file); returns the moments columns."""
    columns = _check_schema(table.schema, table.num_rows, meta, data_path)
    _check_nulls(table, data_path)
    return columns


def read_latent_cache(cache_dir: str | Path, verify: bool = True,
                      decode: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Returns raw moments (N, V, L, P) [centre view, its flip when cached, crop views], labels (N,), meta.

    Reads the whole file (tests, small caches); training streams it (`LatentDataset`).
    moments have the cache dtype, or float32 when it stores log channels (decoded kappa can exceed float16).
    `decode=False` returns the stored values instead (cache dtype; `decode_moments` turns them into
    moments), so a reader can keep the cache at its stored size and decode per item.
    Raises UserError naming the file: `read_latent_meta`'s checks, a Parquet file that is not
    readable (truncated or corrupt; read with verify=False) or whose rows and columns differ from
    the metadata (`_check_table`)."""
    meta = read_latent_meta(cache_dir, verify)
    data_path = Path(cache_dir) / LATENTS_FILE
    table = _read_table(data_path)
    columns = _check_table(table, meta, data_path)
    stored = np.stack([_stored_values(table.column(c), meta) for c in columns], axis=1)  # (N, V, L, P)
    moments = torch.from_numpy(stored)
    if decode:
        moments = decode_moments(moments, meta.get("log_channels", ()))
    labels = torch.from_numpy(table.column("label").to_numpy().astype(np.int64))
    return moments, labels, meta


class LatentDataset(Dataset):
    """Items (moments (V, L, P) float32 of every cached view: the image [its flip] [crops]; label).

    Streams the cache: row groups are read on demand, at most `cache_groups` held at their stored
    size (`stream.RowGroupReader`), decoded one item at a time; `row_group_sizes()` lets the training
    sampler read a window of groups at a time. Deterministic per index: the training step picks a
    view (`pick_views`) under its own seed. `verify` checks the sha256 first: a stage does that once,
    its workers pass False. Raises UserError as `read_latent_cache` (a row group's null rows when read)."""

    def __init__(self, cache_dir: str | Path, verify: bool = True, cache_groups: int = 2):
        self.meta = read_latent_meta(cache_dir, verify)
        self.path = Path(cache_dir) / LATENTS_FILE
        footer = _read_footer(self.path)
        self.columns = _check_schema(footer.schema.to_arrow_schema(), footer.num_rows, self.meta, self.path)
        self.center_views = self.meta.get("center_views", len(self.columns))
        self.log_channels = tuple(self.meta.get("log_channels", ()))
        self.reader = RowGroupReader([self.path], ["label", *self.columns], cache_groups, self._convert,
                                     "latent cache", RERUN)

    def _convert(self, table: pa.Table, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A row group -> stored values (n, V, L, P) and int64 labels (n,)."""
        _check_nulls(table, self.path)
        stored = np.stack([_stored_values(table.column(c), self.meta) for c in self.columns], axis=1)
        labels = torch.from_numpy(table.column("label").to_numpy().astype(np.int64))
        return torch.from_numpy(np.require(stored, requirements="W")), labels

    def row_group_sizes(self) -> np.ndarray:
        return self.reader.sizes

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        (stored, labels), row = self.reader.item(index)
        return decode_moments(stored[row], self.log_channels).float(), labels[row]


def _read_footer(data_path: Path) -> pq.FileMetaData:
    try:
        return pq.read_metadata(data_path)
    except PARQUET_ERRORS as err:
        raise UserError(f"{data_path}: not a readable latent cache ({error_detail(err)}); {RERUN}") from None


def pick_views(moments: torch.Tensor, center_views: int | None = None, crop_prob: float = 0.0) -> torch.Tensor:
    """One cached view per item (B, V, L, P) -> (B, L, P), under the global RNG (the step seed).

    Views [0, center_views) are the centre view and its flip, the rest random crops (and their flips):
    with probability `crop_prob` a crop view uniformly, else a centre view uniformly (the paper's flip,
    and its crop schedule on cached crops). Draws 2 B uniforms whatever the arguments."""
    b, v = moments.shape[:2]
    c = v if center_views is None else center_views
    u = torch.rand(b, 2, device=moments.device)  # (B, 2): crop or centre, which view
    use_crop = (u[:, 0] < crop_prob) & (v > c)
    centre = (u[:, 1] * c).long().clamp(max=c - 1)
    crop = c + (u[:, 1] * max(v - c, 1)).long().clamp(max=max(v - c - 1, 0))
    view = torch.where(use_crop, crop, centre)  # (B,)
    return moments[torch.arange(b, device=moments.device), view]
