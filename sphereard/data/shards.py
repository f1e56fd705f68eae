"""Parquet shards + manifest: the output of the `prepare` stage and the Dataset that reads it.

Layout of a prepared directory:
  {split}-{index:05d}.parquet   columns image (PNG bytes), label (int32), key (string), split (string)
  manifest.json                 source, image_size, channels, classes, per split: rows, class_counts,
                                shards [{file, rows, sha256}]
The directory is built under a temporary sibling name and renamed on success only.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from tqdm import tqdm

from sphereard.data.sources import SPLITS, CapSelector, open_source
from sphereard.data.stream import RowGroupReader
from sphereard.data.transforms import (
    center_crop_resize,
    pad_to_square_size,
    resize_square,
    to_channels,
    to_unit_tensor,
    unit_tensor_to_uint8,
)
from sphereard.errors import UserError, error_detail
from sphereard.utils.io import atomic_path, read_json_object, require_fields, sha256_file
from sphereard.utils.parallel import ordered_map

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
RESIZE_MODES = ("pad", "center_crop")


def manifest_path(data_out: str | Path) -> Path:
    """The manifest of the prepared data in `data_out` (`data.out`): `<data_out>/manifest.json`."""
    return Path(data_out) / MANIFEST_FILE
SCHEMA = pa.schema([("image", pa.binary()), ("label", pa.int32()),
                    ("key", pa.string()), ("split", pa.string())])


def _check_cfg(cfg) -> None:
    if not (isinstance(cfg.image_size, int) and cfg.image_size > 0):
        raise UserError(f"image_size: must be a positive int, got {cfg.image_size!r}")
    if cfg.resize not in RESIZE_MODES:
        raise UserError(f"resize: must be one of {RESIZE_MODES}, got {cfg.resize!r}")
    if cfg.channels not in (1, 3):
        raise UserError(f"channels: must be 1 or 3, got {cfg.channels!r}")
    if not 0.0 < cfg.test_fraction < 1.0:
        raise UserError(f"test_fraction: must be in (0, 1), got {cfg.test_fraction!r}")
    if cfg.max_per_class is not None and cfg.max_per_class < 1:
        raise UserError(f"max_per_class: must be >= 1 or null, got {cfg.max_per_class!r}")
    if cfg.shard_rows < 1:
        raise UserError(f"shard_rows: must be >= 1, got {cfg.shard_rows!r}")
    if cfg.row_group_rows < 1:
        raise UserError(f"row_group_rows: must be >= 1, got {cfg.row_group_rows!r}")
    if cfg.interleave < 1:
        raise UserError(f"interleave: must be >= 1, got {cfg.interleave!r}")


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes, where: str | Callable[[], str] = "image") -> np.ndarray:
    """PNG bytes -> uint8 (H, W, C) array (C = 1 for greyscale).

    Raises UserError naming `where` (a string, or a function giving it: built only on error, off the
    per-item hot path) when the bytes are not a decodable 8-bit image."""
    def named() -> str:
        return where() if callable(where) else where

    try:
        arr = np.array(Image.open(io.BytesIO(data)))  # writable copy (torch.from_numpy needs one)
    except UnidentifiedImageError:
        raise UserError(f"{named()}: not a decodable image (no image format recognised)") from None
    except (OSError, SyntaxError, ValueError, TypeError, Image.DecompressionBombError) as e:
        raise UserError(f"{named()}: not a decodable image ({e})") from None
    if arr.dtype != np.uint8:
        raise UserError(f"{named()}: image is {arr.dtype}, expected 8-bit")
    return arr[..., None] if arr.ndim == 2 else arr


class _ShardWriter:
    """Streams rows of one split into shards: a row group every `row_group_rows` rows, a new shard every
    `shard_rows` rows, so it holds at most one row group. `prefix` names its shards `<prefix>-<k>.parquet`."""

    def __init__(self, out_dir: Path, split: str, prefix: str, shard_rows: int, row_group_rows: int,
                 class_counts: list[int]):
        self.out_dir, self.split, self.prefix = out_dir, split, prefix
        self.shard_rows, self.row_group_rows = shard_rows, row_group_rows
        self.rows, self.shards, self.class_counts = [], [], class_counts  # class_counts shared by the split
        self.writer, self.path, self.in_shard = None, None, 0

    def add(self, png: bytes, label: int, key: str) -> None:
        self.rows.append((png, label, key))
        self.class_counts[label] += 1
        if len(self.rows) >= min(self.row_group_rows, self.shard_rows - self.in_shard):
            self._write_group()

    def _write_group(self) -> None:
        if not self.rows:
            return
        if self.writer is None:
            self.path = self.out_dir / f"{self.prefix}-{len(self.shards):05d}.parquet"
            self.writer = pq.ParquetWriter(self.path, SCHEMA)
        images, labels, keys = zip(*self.rows, strict=True)
        table = pa.table([pa.array(images, pa.binary()), pa.array(labels, pa.int32()),
                          pa.array(keys, pa.string()), pa.array([self.split] * len(keys), pa.string())],
                         schema=SCHEMA)
        self.writer.write_table(table, row_group_size=len(self.rows))  # exactly one row group
        self.in_shard += len(self.rows)
        self.rows = []
        if self.in_shard >= self.shard_rows:
            self._close_shard()

    def _close_shard(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        self.shards.append({"file": self.path.name, "rows": self.in_shard, "sha256": sha256_file(self.path)})
        self.writer, self.in_shard = None, 0

    def finish(self) -> list[dict]:
        self._write_group()
        self._close_shard()
        return self.shards


class _SplitWriter:
    """The shards of one split: `interleave` shard writers, each row to the writer of its key's hash (one
    writer: `<split>-<k>.parquet`, as before; more: `<split>-<w>-<k>.parquet`)."""

    def __init__(self, out_dir: Path, split: str, cfg, num_classes: int):
        self.class_counts = [0] * num_classes
        n = cfg.interleave
        self.writers = [_ShardWriter(out_dir, split, split if n == 1 else f"{split}-{w:03d}", cfg.shard_rows,
                                     cfg.row_group_rows, self.class_counts) for w in range(n)]

    def add(self, png: bytes, label: int, key: str) -> None:
        self.writers[key_bucket(key, len(self.writers))].add(png, label, key)

    def summary(self) -> dict:
        shards = [s for w in self.writers for s in w.finish()]
        return {"rows": sum(s["rows"] for s in shards), "class_counts": self.class_counts, "shards": shards}


def key_bucket(key: str, buckets: int) -> int:
    """A stable bucket in [0, buckets) from sha256(key)."""
    return 0 if buckets == 1 else int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % buckets


PREPARE_CHUNK = 256  # images per task of a parallel prepare


def _resize(img: Image.Image, mode: str, size: int, background: int) -> Image.Image:
    return pad_to_square_size(img, size, background) if mode == "pad" else center_crop_resize(img, size)


def _prepare_chunk(job: tuple[list, int, str, int, int]) -> list[bytes]:
    """[(key, load), ...] -> PNG bytes per image: load, channels, resize to the stored size, encode.
    Runs in this process or a Ray task (`utils.parallel.ordered_map`); UserError naming the key."""
    items, channels, mode, size, background = job
    out = []
    for key, load in items:
        img = to_channels(load(), channels, background)
        try:
            img = _resize(img, mode, size, background)
        except ValueError as e:
            raise UserError(f"resize: {key}: {e} (use resize: center_crop)") from None
        out.append(encode_png(img))
    return out


def prepare_dataset(cfg, out_dir: str | Path) -> dict:
    """Read `cfg.source`, transform every kept image to a stored square (`store_size`, else image_size)
    of `channels`, and write train/test Parquet shards (row groups of `row_group_rows`) + manifest.json
    into `out_dir` (atomically). Returns the manifest.

    The source is read in order here; decoding and resizing run in `cfg.workers` Ray tasks (0: here)
    on chunks of PREPARE_CHUNK images, their results written in order, so the shards are byte-identical
    whatever the number of workers. The manifest is written once, at the end."""
    _check_cfg(cfg)
    source = open_source(cfg)
    label_of = {c: i for i, c in enumerate(source.classes)}
    size = cfg.store_size or cfg.image_size
    select = CapSelector(cfg.max_per_class)
    t0 = time.perf_counter()

    def chunks():  # lists of PREPARE_CHUNK items, in source order
        items = []
        for item in source.iterate(select):
            items.append(item)
            if len(items) == PREPARE_CHUNK:
                yield items
                items = []
            if select.cap is not None and all(select.done(c) for c in source.classes):
                break
        if items:
            yield items

    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        writers = {s: _SplitWriter(tmp, s, cfg, len(source.classes)) for s in SPLITS}
        total = source.total if cfg.max_per_class is None else None
        with tqdm(total=total, desc=f"prepare {cfg.source}", unit="img", mininterval=1.0) as bar:
            batches = deque()  # the items of the chunks in flight, in order

            def jobs():
                for items in chunks():
                    batches.append(items)
                    yield [(it.key, it.load) for it in items], cfg.channels, cfg.resize, size, source.background

            for pngs in ordered_map(_prepare_chunk, jobs(), cfg.workers):
                items = batches.popleft()
                for item, png in zip(items, pngs, strict=True):
                    writers[item.split].add(png, label_of[item.class_name], item.key)
                bar.update(len(items))
        splits = {s: w.summary() for s, w in writers.items()}
        for s, info in splits.items():
            if info["rows"] == 0:
                raise UserError(f"{cfg.path}: split {s!r} got no images (check test_fraction / source)")
        manifest = {
            "format_version": FORMAT_VERSION, "source": cfg.source, "source_path": str(cfg.path),
            "image_size": cfg.image_size, "stored_size": size, "channels": cfg.channels, "resize": cfg.resize,
            "test_fraction": cfg.test_fraction, "max_per_class": cfg.max_per_class,
            "classes": list(source.classes), "num_classes": len(source.classes), "splits": splits}
        manifest_path(tmp).write_text(json.dumps(manifest, indent=2) + "\n")
    n, dt = sum(v["rows"] for v in splits.values()), time.perf_counter() - t0
    log.info("prepared %d images (%s) into %s in %.1f s (%.0f images/s, %d workers)", n,
             ", ".join(f"{s}={v['rows']}" for s, v in splits.items()), out_dir, dt, n / max(dt, 1e-9), cfg.workers)
    return manifest


MANIFEST_FIELDS = {"image_size": int, "channels": int, "classes": list, "num_classes": int, "splits": dict}
SPLIT_FIELDS = {"shards": list}
SHARD_FIELDS = {"file": str, "rows": int, "sha256": str}
PARQUET_ERRORS = (pa.ArrowException, OSError, KeyError)


def check_manifest(path: Path, manifest: dict) -> dict:
    """Keys, types and values of a manifest read from `path`; raises UserError naming the key."""
    require_fields(path, manifest, MANIFEST_FIELDS)
    if manifest["image_size"] < 1:
        raise UserError(f"{path}: key 'image_size' must be positive, got {manifest['image_size']}")
    if manifest["channels"] not in (1, 3):
        raise UserError(f"{path}: key 'channels' must be 1 or 3, got {manifest['channels']}")
    if manifest["num_classes"] < 1 or len(manifest["classes"]) != manifest["num_classes"]:
        raise UserError(f"{path}: key 'num_classes' is {manifest['num_classes']} but 'classes' lists "
                        f"{len(manifest['classes'])}")
    for split, info in manifest["splits"].items():
        if not isinstance(info, dict):
            raise UserError(f"{path}: key 'splits.{split}' must be an object, got {info!r}")
        require_fields(path, info, SPLIT_FIELDS, f"splits.{split}.")
        for i, shard in enumerate(info["shards"]):
            if not isinstance(shard, dict):
                raise UserError(f"{path}: key 'splits.{split}.shards[{i}]' must be an object, got {shard!r}")
            require_fields(path, shard, SHARD_FIELDS, f"splits.{split}.shards[{i}].")
    return manifest


def load_manifest(root: str | Path, verify: bool = True) -> dict:
    """Read manifest.json; with verify, check every shard exists with its row count and sha256.

    Raises UserError naming manifest.json (missing, truncated, malformed: the key) or the shard."""
    root = Path(root)
    path = manifest_path(root)
    if not path.is_file():
        raise UserError(f"{path}: missing (run the prepare stage)")
    manifest = check_manifest(path, read_json_object(path, "dataset manifest"))
    if verify:
        for info in manifest["splits"].values():
            for sh in info["shards"]:
                _verify_shard(root / sh["file"], sh)
    return manifest


def _verify_shard(f: Path, sh: dict) -> None:
    if not f.is_file():
        raise UserError(f"{f}: shard listed in {MANIFEST_FILE} is missing")
    if sha256_file(f) != sh["sha256"]:
        raise UserError(f"{f}: sha256 mismatch (shard modified or corrupt)")
    rows = _parquet(f, lambda: pq.read_metadata(f).num_rows)
    if rows != sh["rows"]:
        raise UserError(f"{f}: has {rows} rows, manifest says {sh['rows']}")


def _parquet(path: Path, read):
    """`read()` of one Parquet shard; a corrupt file or missing column is a UserError naming it."""
    try:
        return read()
    except PARQUET_ERRORS as e:
        raise UserError(f"{path}: not a readable shard ({error_detail(e)})") from None


def _checked_labels(root: Path, manifest: dict, split: str, labels: np.ndarray) -> np.ndarray:
    """int64 labels (N,) of (part of) a split; UserError naming the manifest if one is outside its classes."""
    labels = np.asarray(labels).astype(np.int64)
    if len(labels) and not (labels.min() >= 0 and labels.max() < manifest["num_classes"]):
        raise UserError(f"{manifest_path(root)}: split {split!r} has labels outside [0, {manifest['num_classes']})")
    return labels


def stored_size(manifest: dict) -> int:
    """Side of the stored squares: `stored_size` (larger than image_size, for random crops), else image_size."""
    return manifest.get("stored_size", manifest["image_size"])


def _decode_row(root: Path, manifest: dict, split: str, i: int, data: bytes) -> np.ndarray:
    """Row `i` of a split decoded to uint8 (S, S, C), S = `stored_size`; UserError naming its shard if it
    does not decode or has another shape than the manifest's."""
    image = decode_png(data, lambda: _row_source(root, manifest, split, i))
    want = (stored_size(manifest), stored_size(manifest), manifest["channels"])
    if image.shape != want:
        raise UserError(f"{_row_source(root, manifest, split, i)}: image is {image.shape}, {MANIFEST_FILE} says {want}")
    return image


def _row_source(root: Path, manifest: dict, split: str, row: int) -> str:
    """'<shard file> row <i>' for row `row` of a split (error messages)."""
    for sh in manifest["splits"][split]["shards"]:
        if row < sh["rows"]:
            return f"{root / sh['file']} row {row}"
        row -= sh["rows"]
    return f"{manifest_path(root)} split {split!r} row {row}"


def _split_files(root: Path, manifest: dict, split: str) -> list[Path]:
    """The shard files of `split`; UserError for an unknown split or one without rows."""
    if split not in manifest["splits"]:
        raise UserError(f"split: {split!r} not in {manifest_path(root)} (has {sorted(manifest['splits'])})")
    if sum(sh["rows"] for sh in manifest["splits"][split]["shards"]) == 0:
        raise UserError(f"{manifest_path(root)}: split {split!r} has no images")
    return [root / sh["file"] for sh in manifest["splits"][split]["shards"]]


class ShardDataset(Dataset):
    """Images of one split as float (C, H, W) tensors in [-1, 1] with int labels; deterministic per
    index (training augments batches in its step: `transforms.random_hflip_batch`, `random_crop_batch`).

    Streams: row groups are read on demand, at most `cache_groups` held (`stream.RowGroupReader`), so
    memory does not grow with the split; `row_group_sizes()` lets the training sampler read a window
    of groups at a time. Items are image_size x image_size (a stored square larger than that is
    resized whole: the centre view), or the stored squares with `full_size` (for random crops).
    `verify` checks every shard's sha256 first: a stage does that once, its workers pass False."""

    def __init__(self, root: str | Path, split: str, verify: bool = True, cache_groups: int = 2,
                 full_size: bool = False):
        self.root, self.split = Path(root), split
        self.manifest = load_manifest(self.root, verify=verify)
        self.classes = self.manifest["classes"]
        self.num_classes = self.manifest["num_classes"]
        self.size = None if full_size else self.manifest["image_size"]
        self.reader = RowGroupReader(_split_files(self.root, self.manifest, split), ["image", "label"],
                                     cache_groups, self._convert, "shard")
        if len(self.reader) != self.manifest["splits"][split].get("rows", len(self.reader)):
            raise UserError(f"{manifest_path(self.root)}: split {split!r} lists "
                            f"{self.manifest['splits'][split]['rows']} rows, its shards hold {len(self.reader)}")

    def _convert(self, table: pa.Table, g: int) -> tuple[list[bytes], np.ndarray]:
        """A row group -> (PNG bytes per row, checked int64 labels (n,))."""
        labels = _checked_labels(self.root, self.manifest, self.split, table.column("label").to_numpy())
        return table.column("image").to_pylist(), labels

    def row_group_sizes(self) -> np.ndarray:
        return self.reader.sizes

    def check_labels(self) -> None:
        """Every label of the split inside the manifest's classes (reads the label column only): a stage
        checks this once, before training, so a bad label is one line, not an error inside a loader worker."""
        for f in self.reader.files:
            labels = _parquet(f, lambda f=f: pq.read_table(f, columns=["label"]).column("label").to_numpy())
            _checked_labels(self.root, self.manifest, self.split, labels)

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        (images, labels), row = self.reader.item(i)
        x = to_unit_tensor(_decode_row(self.root, self.manifest, self.split, i, images[row]))  # (C, S, S)
        if self.size is not None and x.shape[-1] != self.size:
            x = resize_square(x[None], self.size)[0]  # (C, H, W): the centre view
        return x, int(labels[row])


def images_as_uint8(root: str | Path, split: str, limit: int | None = None,
                    verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """First `limit` images of a split as uint8 (N, H, W, C) at image_size (a larger stored square is
    resized whole, as `ShardDataset`) plus int64 labels (N,), for evaluation; reads only the row
    groups it needs.

    Raises UserError naming the file for an unreadable manifest or shard, an empty split, an image
    that does not decode or has another shape than the manifest's, labels outside the classes."""
    data = ShardDataset(root, split, verify=verify, cache_groups=1)
    n = len(data) if limit is None else min(limit, len(data))
    manifest = data.manifest
    s, c = manifest["image_size"], manifest["channels"]
    images, labels = np.empty((n, s, s, c), np.uint8), np.empty(n, np.int64)
    for i in range(n):
        (pngs, group_labels), row = data.reader.item(i)
        image = _decode_row(data.root, manifest, split, i, pngs[row])  # (S, S, C)
        if image.shape[0] != s:  # a stored square larger than image_size: the centre view, as ShardDataset
            image = unit_tensor_to_uint8(resize_square(to_unit_tensor(image)[None], s)[0])
        images[i], labels[i] = image, group_labels[row]
    return images, labels
