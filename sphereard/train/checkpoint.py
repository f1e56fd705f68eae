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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from sphereard.errors import UserError
from sphereard.utils.io import atomic_path, atomic_write_text, read_json_object, require_fields
from sphereard.utils.weights import load_state_strict, read_safetensors

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
LATEST_FILE = "latest"
STATE_FILE = "state.json"
STEP_DIR_RE = re.compile(r"^step-([0-9]{8})\Z")  # also what `latest` may name: no path, no ".."
STATE_NAME_RE = re.compile(r"^[A-Za-z0-9_]+\Z")  # a state's file is <name>.safetensors in the step dir
DEFAULT_KEEP = 3
STALE_PATTERNS = (".step-*.tmp-*", ".step-*.old-*", f".{LATEST_FILE}.tmp-*")  # crashed atomic writes
TENSOR_TAG, TUPLE_TAG, ITEMS_TAG = "__tensor__", "__tuple__", "__items__"
STRUCTURE_ERRORS = (KeyError, TypeError, ValueError, AttributeError)  # a state.json structure that was edited
POINTER_SHOWN_CHARS = 60
PARAM_SHAPED_STATE = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer")  # Adam(W), SGD


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
    latest = _read_pointer(ckpt_dir / LATEST_FILE)
    for _, path in _step_dirs(ckpt_dir)[:-keep]:
        if path.name != latest:
            shutil.rmtree(path, ignore_errors=True)
    for pattern in STALE_PATTERNS:
        for stale in ckpt_dir.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


def _read_pointer(pointer: Path) -> str:
    """The step dir name held by a `latest` pointer.

    Raises UserError naming the pointer when it is unreadable, not UTF-8 text, or names anything but
    a step dir of its own checkpoint dir (`step-XXXXXXXX`: no path, no `..`, nothing outside)."""
    hint = "remove it to resume from the newest complete step dir"
    try:
        name = pointer.read_bytes().decode("utf-8").strip()
    except OSError as err:
        raise UserError(f"{pointer}: unreadable checkpoint pointer ({err})") from None
    except UnicodeDecodeError:
        raise UserError(f"{pointer}: not a text file naming a step dir (corrupt pointer); {hint}") from None
    if not STEP_DIR_RE.match(name):
        shown = name if len(name) <= POINTER_SHOWN_CHARS else name[:POINTER_SHOWN_CHARS] + "..."
        raise UserError(f"{pointer}: names {shown!r}, not a step dir of {pointer.parent} (step-XXXXXXXX); {hint}")
    return name


def latest_step_dir(ckpt_dir: str | Path) -> Path | None:
    """The step dir `latest` names (or the newest complete one if the pointer is missing); None if none.

    Raises UserError naming `latest` when it is not a step dir name (`_read_pointer`) or names a
    step dir without a state.json."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    pointer = ckpt_dir / LATEST_FILE
    if pointer.is_file():
        path = ckpt_dir / _read_pointer(pointer)
        if not (path / STATE_FILE).is_file():
            raise UserError(f"{pointer}: names {path.name}, which has no {STATE_FILE}")
        return path
    complete = [p for _, p in _step_dirs(ckpt_dir) if (p / STATE_FILE).is_file()]
    return complete[-1] if complete else None


def latest_meta(ckpt_dir: str | Path) -> dict | None:
    """The `meta` of the newest checkpoint (its state.json only, no tensors); None when there is none."""
    step_dir = latest_step_dir(ckpt_dir)
    return None if step_dir is None else _read_record(step_dir / STATE_FILE).get("meta", {})


def discard_checkpoints(ckpt_dir: str | Path) -> list[str]:
    """Remove every step dir and the `latest` pointer of `ckpt_dir`; returns the removed names."""
    ckpt_dir = Path(ckpt_dir)
    removed = [p.name for _, p in _step_dirs(ckpt_dir)]
    for name in removed:
        shutil.rmtree(ckpt_dir / name)
    (ckpt_dir / LATEST_FILE).unlink(missing_ok=True)
    return removed


def _read_record(path: Path) -> dict:
    """A step dir's state.json, checked.

    Raises UserError naming it when it is missing, not a JSON object (truncated, not UTF-8), not
    this format, lacks 'step' (int >= 0) or 'structure' (object), has a 'meta' that is not an
    object, or names a state that is not a plain name (its file must lie in the step dir)."""
    record = read_json_object(path, "checkpoint state")
    if record.get("format") != FORMAT_VERSION:
        raise UserError(f"{path}: not a sphereard checkpoint (format {record.get('format')!r}, "
                        f"expected {FORMAT_VERSION})")
    require_fields(path, record, {"step": int, "structure": dict})
    if not isinstance(record.get("meta", {}), dict):
        raise UserError(f"{path}: key 'meta' must be an object, got {record['meta']!r}")
    if record["step"] < 0:
        raise UserError(f"{path}: key 'step' must be >= 0, got {record['step']}")
    for name in record["structure"]:
        if not STATE_NAME_RE.match(name):
            raise UserError(f"{path}: state name {name!r} in 'structure' is not a plain name")
    return record


def _read_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Raises UserError naming the file when it is missing, not a .safetensors file (truncated,
    corrupt) or holds NaN / inf (the loop never saves such states: `guard.check_states_finite`)."""
    return read_safetensors(path, "checkpoint tensors", device)


def _unflatten(tensors: Mapping[str, torch.Tensor], structure: Any, file: Path) -> Any:
    """`unflatten_state`; UserError naming `file` when the structure asks for a tensor it lacks or is malformed."""
    try:
        return unflatten_state(tensors, structure)
    except KeyError as err:
        raise UserError(f"{file}: missing tensor {err}") from None
    except STRUCTURE_ERRORS as err:
        raise UserError(f"{file}: does not match its structure in {STATE_FILE} ({type(err).__name__}: {err})") from None


def load_checkpoint(step_dir: str | Path) -> Checkpoint:
    """Load one step dir (all named states, on CPU).

    Raises UserError naming the file: state.json unreadable or malformed (`_read_record`), a state's
    .safetensors file missing or corrupt, or tensors that do not match the recorded structure."""
    step_dir = Path(step_dir)
    record = _read_record(step_dir / STATE_FILE)
    states = {}
    for name, structure in record["structure"].items():
        file = step_dir / f"{name}.safetensors"
        states[name] = _unflatten(_read_tensors(file), structure, file)
    return Checkpoint(step=record["step"], path=step_dir, states=states, meta=record.get("meta", {}))


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


def require_state(states: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """`states[name]`, a mapping (a state_dict).

    Raises UserError "state '<name>': ..." when the checkpoint has no such state or it is not a
    mapping (the training loop prefixes the checkpoint path)."""
    if name not in states:
        raise UserError(f"state {name!r}: missing from the checkpoint (it holds {sorted(states)})")
    if not isinstance(states[name], Mapping):
        raise UserError(f"state {name!r}: not a state dict (got {type(states[name]).__name__})")
    return states[name]


def latest_state(ckpt_dir: str | Path, name: str) -> tuple[Checkpoint, Mapping[str, Any]]:
    """(newest checkpoint, its state `name`), e.g. the EMA weights a stage exports.

    Raises UserError naming the directory when there is no checkpoint, or the step dir when it has
    no such state."""
    ckpt = load_latest(ckpt_dir)
    if ckpt is None:
        raise UserError(f"{ckpt_dir}: no checkpoint to read (run the training stage first)")
    try:
        return ckpt, require_state(ckpt.states, name)
    except UserError as err:
        raise UserError(f"{ckpt.path}: {err}") from None


def optimizer_mismatch(optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> str | None:
    """None if `state` (an optimizer `state_dict()`) fits `optimizer`: same parameter groups and
    sizes, and every per-parameter tensor of PARAM_SHAPED_STATE (exp_avg, ...) shaped like its
    parameter; else one sentence naming the first difference."""
    groups, per_param = state.get("param_groups"), state.get("state")
    if not isinstance(groups, list) or not isinstance(per_param, Mapping) \
            or not all(isinstance(g, Mapping) and isinstance(g.get("params"), list) for g in groups):
        return "not an optimizer state (no 'state' / 'param_groups' with 'params')"
    ours = optimizer.param_groups
    if len(groups) != len(ours):
        return f"{len(groups)} parameter group(s) in the checkpoint, {len(ours)} in the optimizer now"
    for i, (saved, now) in enumerate(zip(groups, ours, strict=True)):
        if len(saved["params"]) != len(now["params"]):
            return (f"parameter group {i} holds {len(saved['params'])} parameters in the checkpoint, "
                    f"{len(now['params'])} now")
        for index, param in zip(saved["params"], now["params"], strict=True):
            entry = per_param.get(index) if isinstance(index, int) else None
            for key, value in (entry.items() if isinstance(entry, Mapping) else ()):
                if key in PARAM_SHAPED_STATE and torch.is_tensor(value) and value.shape != param.shape:
                    return (f"{key!r} of parameter {index} (group {i}) has shape {tuple(value.shape)} in the "
                            f"checkpoint, the parameter is {tuple(param.shape)}")
    return None


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Mapping[str, Any], source: str) -> None:
    """`optimizer.load_state_dict(state)` after checking that it fits (`optimizer_mismatch`).

    Raises UserError "<source>: optimizer state of a different model: <first difference>"."""
    problem = optimizer_mismatch(optimizer, state)
    if problem is None:
        try:
            optimizer.load_state_dict(state)
            return
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            problem = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
    raise UserError(f"{source}: optimizer state of a different model: {problem}")


def training_states(model: torch.nn.Module, ema: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The states every TrainTask checkpoints: `model`, `ema` (the averaged copy) and `optimizer`."""
    return {"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict()}


def load_training_states(states: Mapping[str, Any], model: torch.nn.Module, ema: torch.nn.Module,
                         optimizer: torch.optim.Optimizer) -> None:
    """Resume what `training_states` saved.

    Raises UserError "state '<name>': ..." (the loop prefixes the checkpoint path) when a state
    is missing or belongs to another model (preset, overrides) or optimizer."""
    load_state_strict(model, require_state(states, "model"), "state 'model'")
    load_state_strict(ema, require_state(states, "ema"), "state 'ema'")
    load_optimizer_state(optimizer, require_state(states, "optimizer"), "state 'optimizer'")
