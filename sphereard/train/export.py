"""Export a trained model: the EMA (or raw) weights of its last checkpoint, as a `sphereard.export` model folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from sphereard.export import export_model
from sphereard.train.checkpoint import latest_state
from sphereard.utils.weights import load_state_strict

EXPORTED_STATES = {"ema": "ema", "raw": "model"}  # export choice -> checkpoint state


def export_ema(ckpt_dir: str | Path, model_dir: str | Path, build: Callable[[], nn.Module],
               meta: Callable[[nn.Module, int], dict], weights: str = "ema") -> tuple[nn.Module, int]:
    """Load the newest checkpoint's `weights` state ('ema', or 'raw': the optimised weights, state
    'model') into `build()` and export it to `model_dir` with `meta(model, step)` as its model.json;
    returns (the model in eval mode, the checkpoint's step).

    Raises UserError naming the folder when there is no checkpoint, or the checkpoint when it has no
    such state or its tensors do not fit the model."""
    assert weights in EXPORTED_STATES, f"weights must be one of {tuple(EXPORTED_STATES)}, got {weights!r}"
    state = EXPORTED_STATES[weights]
    ckpt, tensors = latest_state(ckpt_dir, state)
    model = build()
    load_state_strict(model, tensors, f"{ckpt.path}: '{state}'")
    export_model(model_dir, model, meta(model, ckpt.step))
    return model.eval(), ckpt.step
