"""Exported models: a directory with `model.safetensors` (EMA weights) and `model.json` (how to rebuild).

Stages downstream of training load these, never the training checkpoints.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from sphereard.errors import UserError
from sphereard.utils.io import atomic_path, read_json_object, require_fields
from sphereard.utils.weights import check_finite, read_safetensors

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"


def export_model(out_dir: str | Path, module: nn.Module, meta: dict) -> None:
    """Atomically write the module's weights and the metadata needed to rebuild it.

    Raises UserError (nothing written) when a weight holds NaN or inf."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    check_finite(state, f"{out_dir}: weights to export")
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        save_file(state, str(tmp / WEIGHTS_FILE))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))


# model.json keys every export has, and the extra keys each kind's loader reads
META_FIELDS = {"preset": str, "overrides": dict, "radius": float}
KIND_FIELDS = {"tokenizer": {"posterior": str}, "generator": {"step": int}}


def read_meta(model_dir: str | Path, kind: str | None = None) -> dict:
    """model.json of an export, checked: a JSON object with the keys (and types) its loader reads,
    a positive finite radius, and (with `kind`) written for that kind of model.

    Raises UserError naming model.json and the key for a missing, truncated or malformed file."""
    path = Path(model_dir) / META_FILE
    meta = read_json_object(path, "exported model metadata")
    written_for = meta.get("kind")
    if kind is not None and written_for is not None and written_for != kind:
        raise UserError(f"{path}: key 'kind' is {written_for!r}: this export holds a {written_for}, "
                        f"expected a {kind}")
    require_fields(path, meta, {**META_FIELDS, **KIND_FIELDS.get(kind, {})})
    if not (math.isfinite(meta["radius"]) and meta["radius"] > 0):
        raise UserError(f"{path}: key 'radius' must be a positive finite number, got {meta['radius']!r}")
    return meta


def read_export(model_dir: str | Path, device: str | torch.device = "cpu",
                kind: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """(weights, checked metadata) of an export; UserError naming the file for any unreadable part."""
    model_dir = Path(model_dir)
    for name in (META_FILE, WEIGHTS_FILE):
        if not (model_dir / name).is_file():
            raise UserError(f"{model_dir / name}: exported model file missing (run the training stage)")
    meta = read_meta(model_dir, kind)
    return read_safetensors(model_dir / WEIGHTS_FILE, "exported weights", device), meta


def build_from_meta(meta_path: Path, build):
    """`build()`, with a UserError about the rebuilt architecture prefixed by the model.json it came from."""
    try:
        return build()
    except UserError as err:
        raise UserError(f"{meta_path}: {err}") from None


def check_posterior(meta: dict, model_dir: Path, posterior: str | None) -> None:
    if posterior is not None and meta.get("posterior", posterior) != posterior:
        raise UserError(f"{model_dir / META_FILE}: key 'posterior' is {meta['posterior']!r}, expected "
                        f"{posterior!r} (export of another tokenizer)")
