"""Safe loading of an official SphereAR checkpoint (facts: docs/official-checkpoints.md §1).

The training script saves a plain dict {model, optimizer, epochs, args[, ema][, model_disc,
optimizer_disc]} with `torch.save` (official `train.py:484-506`); its only non-tensor global is the
run's `argparse.Namespace`, so that is the one class allow-listed for `weights_only=True`.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import torch

from sphereard.errors import UserError, error_detail

ALLOWED_GLOBALS = (argparse.Namespace,)
ALLOWED_NAMES = {"argparse.Namespace"}
DETAIL_CHARS = 160  # of the library's message quoted in an unreadable-file error
WEIGHT_ENTRIES = ("ema", "model")  # `auto` prefers EMA, as the official sampler does (sample_ddp.py:56-65)


def load_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict, loaded with `weights_only=True` and only `argparse.Namespace` allowed.

    Raises UserError naming the file: missing, unreadable, not a dict, or needing another global."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file not found")
    try:
        unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception as err:  # not a torch zip file, truncated, ...
        detail = error_detail(err)
        detail = detail if len(detail) <= DETAIL_CHARS else detail[:DETAIL_CHARS] + "..."
        raise UserError(f"{path}: not a readable torch checkpoint, truncated or another format ({detail})") from None
    refused = sorted(unsafe - ALLOWED_NAMES)
    if refused:
        raise UserError(f"{path}: refused: the checkpoint needs the global {refused[0]!r}, which is not "
                        f"allow-listed (only {', '.join(sorted(ALLOWED_NAMES))})")
    try:
        with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise UserError(f"{path}: could not load the checkpoint safely ({error_detail(err)})") from None
    if not isinstance(ckpt, dict):
        raise UserError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    return ckpt


def select_weights(ckpt: dict, path: str | Path, which: str = "auto") -> tuple[str, dict[str, torch.Tensor]]:
    """(entry name, state dict) of `which` in {auto, ema, model}; auto = 'ema' if present, else 'model'.

    Raises UserError naming the file when the entry is absent or is not a dict of tensors."""
    names = [n for n in WEIGHT_ENTRIES if n in ckpt] if which == "auto" else [which]
    if not names or names[0] not in ckpt:
        wanted = "'ema' or 'model'" if which == "auto" else repr(which)
        raise UserError(f"{path}: no {wanted} entry in the checkpoint (has: {', '.join(map(str, ckpt)) or 'nothing'})")
    state = ckpt[names[0]]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: entry {names[0]!r} is not a state dict of tensors")
    return names[0], state


def run_args(ckpt: dict) -> dict:
    """The run's argparse fields as a dict ({} when `args` is absent)."""
    args = ckpt.get("args")
    return vars(args) if isinstance(args, argparse.Namespace) else {}
