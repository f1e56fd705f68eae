"""Atomic training checkpoints in one directory (a DVC `persist: true` out).

Layout:
    ckpt_dir/latest                            text: name of the newest complete step dir
    ckpt_dir/step-00001000/<name>.safetensors  one file per named state (model, ema, optim, ...)
    ckpt_dir/step-00001000/state.json          {"format", "step", "meta", "structure": {name: ...}}

A step dir is assembled under a temporary sibling name and renamed (`sphereard.utils.io.atomic_path`),
then `latest` is replaced with `os.replace`: a crash at any point leaves the previous checkpoint
as the visible one. Nested states (optimizer `state_dict()`s) are flattened: tensors go to
safetensors under dotted keys, everything else stays in the JSON `structure` with
{"__tensor__": key} placeholders, so loading never unpickles anything.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sphereard.errors import UserError
from sphereard.utils.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
LATEST_FILE = "latest"
STATE_FILE = "state.json"
STEP_DIR_RE = re.compile(r"^step-(\d{8})$")
DEFAULT_KEEP = 3
STALE_PATTERNS = (".step-*.tmp-*", ".step-*.old-*", f".{LATEST_FILE}.tmp-*")  # crashed atomic writes
TENSOR_TAG, TUPLE_TAG, ITEMS_TAG = "__tensor__", "__tuple__", "__items__"


@dataclass
class Checkpoint:
    """A loaded checkpoint: `states[name]` mirrors what was passed to `save_checkpoint`."""

    step: int
    path: Path
    states: dict[str, Any]
    meta: dict


def step_dir_name(step: int) -> str:
    assert step >= 0, "checkpoint step must be >= 0"
    return f"step-{step:08d}"


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def flatten_state(state: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested state into ({dotted key: tensor}, JSON structure with tensor placeholders).

    A flat `module.state_dict()` keeps its own keys, so `<name>.safetensors` loads straight into a model."""
    tensors: dict[str, torch.Tensor] = {}

    def encode(obj: Any, key: str) -> Any:
        if isinstance(obj, torch.Tensor):
            if key in tensors:
                raise ValueError(f"state key {key!r} appears twice after flattening")
            tensors[key] = obj
            return {TENSOR_TAG: key}
        if isinstance(obj, Mapping):
            if all(isinstance(k, str) for k in obj):
                return {k: encode(v, _join(key, k)) for k, v in obj.items()}
            return {ITEMS_TAG: [[k, encode(v, _join(key, str(k)))] for k, v in obj.items()]}
        if isinstance(obj, tuple):
            return {TUPLE_TAG: [encode(v, _join(key, str(i))) for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [encode(v, _join(key, str(i))) for i, v in enumerate(obj)]
        return obj  # JSON scalars; json.dumps rejects anything else

    return tensors, encode(state, "")


def unflatten_state(tensors: Mapping[str, torch.Tensor], structure: Any) -> Any:
    """Inverse of `flatten_state`."""
    if isinstance(structure, dict):
        if set(structure) == {TENSOR_TAG}:
            return tensors[structure[TENSOR_TAG]]
        if set(structure) == {TUPLE_TAG}:
            return tuple(unflatten_state(tensors, v) for v in structure[TUPLE_TAG])
        if set(structure) == {ITEMS_TAG}:
            return {k: unflatten_state(tensors, v) for k, v in structure[ITEMS_TAG]}
        return {k: unflatten_state(tensors, v) for k, v in structure.items()}
    if isinstance(structure, list):
        return [unflatten_state(tensors, v) for v in structure]
    return structure


def _for_safetensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, and no two entries sharing storage (tied weights are stored twice)."""
    out, seen = {}, set()
    for key, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel() > 0:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out


def save_checkpoint(ckpt_dir: str | Path, step: int, states: Mapping[str, Any], meta: Mapping | None = None,
                    keep: int = DEFAULT_KEEP) -> Path:
    """Write `ckpt_dir/step-XXXXXXXX/` atomically, point `latest` at it, keep the newest `keep` dirs.

    `states`: name -> `state_dict()` (flat for modules, nested for optimizers); `meta`: JSON-able
    extras (config snapshot, seed, world size). Returns the final step directory."""
    assert keep >= 1, "keep at least one checkpoint"
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / step_dir_name(step)
    structure = {}
    with atomic_path(final) as tmp:
        tmp.mkdir()
        for name, state in states.items():
            tensors, structure[name] = flatten_state(state)
            save_file(_for_safetensors(tensors), str(tmp / f"{name}.safetensors"))
        record = {"format": FORMAT_VERSION, "step": step, "meta": dict(meta or {}), "structure": structure}
        (tmp / STATE_FILE).write_text(json.dumps(record, indent=1))
    atomic_write_text(ckpt_dir / LATEST_FILE, final.name + "\n")
    _prune(ckpt_dir, keep)
    log.info("saved checkpoint %s", final)
    return final


def _step_dirs(ckpt_dir: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := STEP_DIR_RE.match(p.name)) and p.is_dir()]
    return sorted(found)


def _prune(ckpt_dir: Path, keep: int) -> None:
    """Remove all but the newest `keep` step dirs, plus leftovers of interrupted saves."""
    latest = (ckpt_dir / LATEST_FILE).read_text().strip()
    for _, path in _step_dirs(ckpt_dir)[:-keep]:
        if path.name != latest:
            shutil.rmtree(path, ignore_errors=True)
    for pattern in STALE_PATTERNS:
        for stale in ckpt_dir.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


def latest_step_dir(ckpt_dir: str | Path) -> Path | None:
    """The step dir `latest` names (or the newest complete one if the pointer is missing); None if none."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    pointer = ckpt_dir / LATEST_FILE
    if pointer.is_file():
        path = ckpt_dir / pointer.read_text().strip()
        if not (path / STATE_FILE).is_file():
            raise UserError(f"{pointer}: names {path.name}, which has no {STATE_FILE}")
        return path
    complete = [p for _, p in _step_dirs(ckpt_dir) if (p / STATE_FILE).is_file()]
    return complete[-1] if complete else None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: unreadable checkpoint state ({err})") from None


def _read_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=str(device))
    except (OSError, SafetensorError) as err:
        raise UserError(f"{path}: unreadable checkpoint tensors ({err})") from None


def load_checkpoint(step_dir: str | Path) -> Checkpoint:
    """Load one step dir (all named states, on CPU)."""
    step_dir = Path(step_dir)
    record = _read_json(step_dir / STATE_FILE)
    if record.get("format") != FORMAT_VERSION or "structure" not in record:
        raise UserError(f"{step_dir / STATE_FILE}: not a sphereard checkpoint (format {record.get('format')!r})")
    states = {}
    for name, structure in record["structure"].items():
        tensors = _read_tensors(step_dir / f"{name}.safetensors")
        try:
            states[name] = unflatten_state(tensors, structure)
        except KeyError as err:
            raise UserError(f"{step_dir / f'{name}.safetensors'}: missing tensor {err}") from None
    return Checkpoint(step=int(record["step"]), path=step_dir, states=states, meta=record.get("meta", {}))


def load_latest(ckpt_dir: str | Path) -> Checkpoint | None:
    """The newest complete checkpoint in `ckpt_dir`, or None when there is none yet."""
    step_dir = latest_step_dir(ckpt_dir)
    return None if step_dir is None else load_checkpoint(step_dir)


def load_weights(path: str | Path, name: str = "model", device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Flat weights for inference from a `.safetensors` file, a step dir, or a checkpoint dir (its latest)."""
    path = Path(path)
    if path.is_file():
        return _read_tensors(path, device)
    step_dir = path if (path / STATE_FILE).is_file() else latest_step_dir(path)
    if step_dir is None:
        raise UserError(f"{path}: no checkpoint found")
    file = step_dir / f"{name}.safetensors"
    if not file.is_file():
        raise UserError(f"{file}: checkpoint has no {name!r} weights")
    return _read_tensors(file, device)
