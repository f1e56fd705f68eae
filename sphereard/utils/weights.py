"""Checked weight reads: a missing, corrupt or mismatched weights file is one UserError naming it.

`read_safetensors` / `read_torch_weights` read a file (tensors only, never code), `check_finite`
rejects NaN / inf, and `load_state_strict` fits a state dict to a module, naming the first key
whose presence or shape differs (weights of another model, preset or override).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from sphereard.errors import UserError, error_detail, first_lines

TORCH_LOAD_ERRORS = (RuntimeError, OSError, EOFError, ValueError, KeyError, AttributeError, ImportError,
                     pickle.UnpicklingError)
WEIGHTS_ONLY_MARK = "WeightsUnpickler error:"


def _torch_load_detail(err: BaseException) -> str:
    """The useful part of a torch.load error (weights-only refusals carry a page of advice)."""
    text = str(err)
    if WEIGHTS_ONLY_MARK in text:
        tail = text.split(WEIGHTS_ONLY_MARK, 1)[1].split("Check the documentation", 1)[0]
        return "refused by weights-only loading: " + " ".join(tail.split()).split(". ")[0]
    return error_detail(err)


def read_safetensors(path: str | os.PathLike, what: str = "weights", device: str | torch.device = "cpu",
                     finite: bool = True) -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors file on `device`.

    Raises UserError naming the file when it is missing, not a safetensors file (truncated,
    corrupt, another format) or, with `finite`, holds NaN / inf values."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} file missing")
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise UserError(f"{path}: cannot read {what}: truncated, corrupt or not a .safetensors file "
                        f"({first_lines(err)})") from None
    if finite:
        check_finite(state, path)
    return state


def read_torch_weights(path: str | os.PathLike, what: str = "weights") -> dict[str, torch.Tensor]:
    """A state dict saved with `torch.save`, loaded with `weights_only=True` (tensors only, on CPU).

    Raises UserError naming the file when it is missing, unreadable, carries code or other
    non-tensor objects, or does not hold a mapping of names to tensors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} file missing")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except TORCH_LOAD_ERRORS as err:
        raise UserError(f"{path}: cannot read {what}: not a tensors-only torch.save file "
                        f"({_torch_load_detail(err)})") from None
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"{path}: {what} must be a state dict (names -> tensors), got {type(state).__name__}")
    return dict(state)


def check_finite(state: Mapping[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Raises UserError naming `source` and the first floating tensor with NaN or inf values."""
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise UserError(f"{source}: tensor {key!r} holds NaN or inf values (diverged or corrupt weights)")


def state_mismatch(module: nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """None if `state` fits `module` exactly (same keys, same shapes), else one sentence naming the
    first differing key (in the module's order) and both shapes."""
    expected = module.state_dict()
    model = type(module).__name__
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    for key, want in expected.items():
        if key in state and tuple(state[key].shape) != tuple(want.shape):
            return (f"tensor {key!r} has shape {tuple(state[key].shape)} in the file but {tuple(want.shape)} in "
                    f"the {model} built from its settings")
    if missing:
        return (f"no tensor {missing[0]!r} {tuple(expected[missing[0]].shape)}, which the {model} needs "
                f"({len(missing)} of {len(expected)} missing)")
    if unexpected:
        return f"tensor {unexpected[0]!r} is not part of the {model} ({len(unexpected)} unexpected)"
    return None


def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str | os.PathLike) -> nn.Module:
    """`module.load_state_dict(state)` (strict); returns the module.

    Raises UserError "<source>: weights of a different model: <first mismatch>" when keys or shapes differ."""
    problem = state_mismatch(module, state)
    if problem is not None:
        raise UserError(f"{source}: weights of a different model: {problem}")
    module.load_state_dict(state)
    return module
