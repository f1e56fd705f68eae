"""Atomic writes (outputs appear under their final name only once complete) and checked reads
(a missing, truncated or malformed input is one UserError naming the file and key)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from sphereard.errors import UserError, error_detail

HASH_CHUNK_BYTES = 1 << 20


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `final` only if the block succeeds.

    Works for files and directories (an existing target is replaced as a whole)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    target = tmp / final.name
    try:
        yield target
        if not target.exists():
            raise FileNotFoundError(f"{target}: nothing was written")
        if final.is_dir() and not final.is_symlink():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(target, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


# --- reading: every failure is one UserError naming the file (and key) ----------------------------

ZIP_MAGIC, NPY_MAGIC = b"PK\x03\x04", b"\x93NUMPY"
NPZ_CORRUPT_ERRORS = (EOFError, zipfile.BadZipFile, zlib.error)
NPZ_READ_ERRORS = (OSError, ValueError, KeyError, *NPZ_CORRUPT_ERRORS)


def read_text_file(path: str | os.PathLike, what: str, missing: str = "missing") -> str:
    """The UTF-8 text of `path`; UserError naming the file (`<path>: <what> <missing>`) when it is not a
    file, or when it is unreadable or not UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} {missing}")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: {what} unreadable ({type(err).__name__}: {err})") from None


def read_json_object(path: str | os.PathLike, what: str = "JSON file") -> dict:
    """A JSON object from `path`.

    Raises UserError naming the file when it is missing, unreadable, not UTF-8, not valid JSON
    (e.g. truncated) or not a JSON object."""
    path = Path(path)
    text = read_text_file(path, what)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({what}, truncated or corrupt: {err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: {what} must hold a JSON object, got {type(data).__name__}")
    return data


def _type_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("number" if k is float else k.__name__ for k in kinds)


def _has_type(value, kind) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):  # JSON true/false is not a number
        return bool in kinds
    if float in kinds and isinstance(value, int):
        return True
    return isinstance(value, kinds)


def require_fields(path: str | os.PathLike, data: dict, fields: dict[str, type | tuple[type, ...]],
                   prefix: str = "") -> dict:
    """Check that `data` (read from `path`) has each key of `fields` with a value of its type
    (`float` accepts any number, never a bool; `type(None)` allows null). Returns `data`.

    Raises UserError "<path>: key '<prefix><key>' missing" or "... must be <type>, got <value>"."""
    for key, kind in fields.items():
        if key not in data:
            raise UserError(f"{path}: key {prefix + key!r} missing")
        if not _has_type(data[key], kind):
            raise UserError(f"{path}: key {prefix + key!r} must be {_type_name(kind)}, got {data[key]!r}")
    return data


def read_npz(path: str | os.PathLike, names: tuple[str, ...], what: str = ".npz file") -> dict:
    """{name: array or None (absent)} for `names` in the .npz at `path`, read without pickles.

    Raises UserError naming the file when it is missing, not a .npz (another format, truncated,
    corrupt) or holds an object (pickled) array under one of `names`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        with open(path, "rb") as f:
            magic = f.read(len(ZIP_MAGIC))
        if magic != ZIP_MAGIC:
            kind = "is a single .npy array" if magic == NPY_MAGIC[:len(ZIP_MAGIC)] else f"begins with {magic!r}"
            raise UserError(f"{path}: not a .npz archive ({what}): the file {kind}")
        with np.load(path, allow_pickle=False) as z:
            return {name: (np.asarray(z[name]) if name in z.files else None) for name in names}
    except NPZ_READ_ERRORS as err:
        why = f"{what} truncated or corrupt" if isinstance(err, NPZ_CORRUPT_ERRORS) else f"cannot read {what}"
        raise UserError(f"{path}: {why} ({error_detail(err)})") from None
