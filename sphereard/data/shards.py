"""Parquet shards + manifest: the output of the `prepare` stage and the Dataset that reads it.

Layout of a prepared directory:
  {split}-{index:05d}.parquet   columns image (PNG bytes), label (int32), key (string), split (string)
  manifest.json                 source, image_size, channels, classes, per split: rows, class_counts,
                                shards [{file, rows, sha256}]
The directory is built under a temporary sibling name and renamed on success only.
"""

from __future__ import annotations

import io
import json
import logging
import time
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
from sphereard.data.transforms import center_crop_resize, pad_to_square_size, to_channels, to_unit_tensor
from sphereard.errors import UserError, error_detail
from sphereard.utils.io import atomic_path, read_json_object, require_fields, sha256_file

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
    """Buffers rows of one split and writes a shard every `shard_rows` rows."""

    def __init__(self, out_dir: Path, split: str, shard_rows: int, num_classes: int):
        self.out_dir, self.split, self.shard_rows = out_dir, split, shard_rows
        self.rows, self.shards, self.class_counts = [], [], [0] * num_classes

    def add(self, png: bytes, label: int, key: str) -> None:
        self.rows.append((png, label, key))
        self.class_counts[label] += 1
        if len(self.rows) >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        images, labels, keys = zip(*self.rows, strict=True)
        table = pa.table([pa.array(images, pa.binary()), pa.array(labels, pa.int32()),
                          pa.array(keys, pa.string()), pa.array([self.split] * len(keys), pa.string())],
                         schema=SCHEMA)
        path = self.out_dir / f"{self.split}-{len(self.shards):05d}.parquet"
        pq.write_table(table, path)
        self.shards.append({"file": path.name, "rows": len(self.rows), "sha256": sha256_file(path)})
        self.rows = []

    def summary(self) -> dict:
        self.flush()
        return {"rows": sum(s["rows"] for s in self.shards),
                "class_counts": self.class_counts, "shards": self.shards}


def prepare_dataset(cfg, out_dir: str | Path) -> dict:
    """Read `cfg.source`, transform every kept image to image_size x image_size x channels, and
    write train/test Parquet shards + manifest.json into `out_dir` (atomically). Returns the manifest."""
    _check_cfg(cfg)
    source = open_source(cfg)
    label_of = {c: i for i, c in enumerate(source.classes)}
    resize = {"pad": lambda im: pad_to_square_size(im, cfg.image_size, source.background),
              "center_crop": lambda im: center_crop_resize(im, cfg.image_size)}[cfg.resize]
    select = CapSelector(cfg.max_per_class)
    t0 = time.perf_counter()
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        writers = {s: _ShardWriter(tmp, s, cfg.shard_rows, len(source.classes)) for s in SPLITS}
        total = source.total if cfg.max_per_class is None else None
        with tqdm(total=total, desc=f"prepare {cfg.source}", unit="img", mininterval=1.0) as bar:
            for item in source.iterate(select):
                img = to_channels(item.image, cfg.channels, source.background)
                try:
                    img = resize(img)
                except ValueError as e:
                    raise UserError(f"resize: {item.key}: {e} (use resize: center_crop)") from e
                writers[item.split].add(encode_png(img), label_of[item.class_name], item.key)
                bar.update()
                if select.cap is not None and all(select.done(c) for c in source.classes):
                    break
        splits = {s: w.summary() for s, w in writers.items()}
        for s, info in splits.items():
            if info["rows"] == 0:
                raise UserError(f"{cfg.path}: split {s!r} got no images (check test_fraction / source)")
        manifest = {
            "format_version": FORMAT_VERSION, "source": cfg.source, "source_path": str(cfg.path),
            "image_size": cfg.image_size, "channels": cfg.channels, "resize": cfg.resize,
            "test_fraction": cfg.test_fraction, "max_per_class": cfg.max_per_class,
            "classes": list(source.classes), "num_classes": len(source.classes), "splits": splits}
        manifest_path(tmp).write_text(json.dumps(manifest, indent=2) + "\n")
    n, dt = sum(v["rows"] for v in splits.values()), time.perf_counter() - t0
    log.info("prepared %d images (%s) into %s in %.1f s (%.0f images/s)", n,
             ", ".join(f"{s}={v['rows']}" for s, v in splits.items()), out_dir, dt, n / max(dt, 1e-9))
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


def _read_split(root: Path, manifest: dict, split: str, columns: list[str]) -> pa.Table:
    """The named columns of every shard of `split`.

    Raises UserError for an unknown or empty split and for an unreadable shard."""
    if split not in manifest["splits"]:
        raise UserError(f"split: {split!r} not in {manifest_path(root)} (has {sorted(manifest['splits'])})")
    files = [root / sh["file"] for sh in manifest["splits"][split]["shards"]]
    tables = [_parquet(f, lambda f=f: pq.read_table(f, columns=columns)) for f in files]
    if sum(t.num_rows for t in tables) == 0:
        raise UserError(f"{manifest_path(root)}: split {split!r} has no images")
    return pa.concat_tables(tables)


def _checked_labels(root: Path, manifest: dict, split: str, table: pa.Table) -> np.ndarray:
    """int64 labels (N,) of a split's table; UserError naming the manifest if one is outside its classes."""
    labels = table.column("label").to_numpy().astype(np.int64)
    if len(labels) and not (labels.min() >= 0 and labels.max() < manifest["num_classes"]):
        raise UserError(f"{manifest_path(root)}: split {split!r} has labels outside [0, {manifest['num_classes']})")
    return labels


def _decode_row(root: Path, manifest: dict, split: str, i: int, data: bytes) -> np.ndarray:
    """Row `i` of a split decoded to uint8 (H, W, C); UserError naming its shard if it does not decode
    or has another shape than the manifest's."""
    image = decode_png(data, lambda: _row_source(root, manifest, split, i))
    want = (manifest["image_size"], manifest["image_size"], manifest["channels"])
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


class ShardDataset(Dataset):
    """Images of one split as float (C, H, W) tensors in [-1, 1] with int labels; deterministic per
    index (training flips batches in its step: `transforms.random_hflip_batch`).

    The (small) PNG bytes of the whole split are held in memory; decoding is lazy, per item."""

    def __init__(self, root: str | Path, split: str, verify: bool = True):
        self.root, self.split = Path(root), split
        self.manifest = load_manifest(self.root, verify=verify)
        self.classes = self.manifest["classes"]
        self.num_classes = self.manifest["num_classes"]
        table = _read_split(self.root, self.manifest, split, ["image", "label"])
        # large_binary: 64-bit offsets, so one contiguous array may exceed 2 GiB
        self.images = table.column("image").cast(pa.large_binary()).combine_chunks()
        self.labels = _checked_labels(self.root, self.manifest, split, table)  # (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = to_unit_tensor(_decode_row(self.root, self.manifest, self.split, i, self.images[i].as_py()))  # (C, H, W)
        return x, int(self.labels[i])


def images_as_uint8(root: str | Path, split: str, limit: int | None = None,
                    verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """First `limit` images of a split as uint8 (N, H, W, C) plus int64 labels (N,), for evaluation.

    Raises UserError naming the file for an unreadable manifest or shard, an empty split, an image
    that does not decode or has another shape than the manifest's, labels outside the classes."""
    root = Path(root)
    manifest = load_manifest(root, verify=verify)
    table = _read_split(root, manifest, split, ["image", "label"])
    if limit is not None:
        table = table.slice(0, limit)
    s, c = manifest["image_size"], manifest["channels"]
    images = np.empty((table.num_rows, s, s, c), np.uint8)
    for i, data in enumerate(table.column("image").to_pylist()):
        images[i] = _decode_row(root, manifest, split, i, data)
    return images, _checked_labels(root, manifest, split, table)
