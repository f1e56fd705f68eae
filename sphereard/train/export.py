"""Export a trained model: the EMA weights of its last checkpoint, as a `sphereard.export` model folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from sphereard.export import export_model
from sphereard.train.checkpoint import latest_state
from sphereard.utils.weights import load_state_strict


def export_ema(ckpt_dir: str | Path, model_dir: str | Path, build: Callable[[], nn.Module],
               meta: Callable[[nn.Module, int], dict]) -> tuple[nn.Module, int]:
    """Load the newest checkpoint's 'ema' state into `build()` and export it to `model_dir` with
    `meta(model, step)` as its model.json; returns (the model in eval mode, the checkpoint's step).

    Raises UserError naming the folder when there is no checkpoint, or the checkpoint when it has no
    'ema' state or its tensors do not fit the model."""
    ckpt, ema = latest_state(ckpt_dir, "ema")
    model = build()
    load_state_strict(model, ema, f"{ckpt.path}: 'ema'")
    export_model(model_dir, model, meta(model, ckpt.step))
    return model.eval(), ckpt.step
