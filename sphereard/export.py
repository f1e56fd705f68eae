"""Exported models: a directory with `model.safetensors` (EMA weights) and `model.json` (how to rebuild).

Stages downstream of training load these, never the training checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sphereard.errors import UserError
from sphereard.utils.io import atomic_path

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"


def export_model(out_dir: str | Path, module: nn.Module, meta: dict) -> None:
    """Atomically write the module's weights and the metadata needed to rebuild it."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        save_file(state, str(tmp / WEIGHTS_FILE))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))


def read_export(model_dir: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    model_dir = Path(model_dir)
    for name in (META_FILE, WEIGHTS_FILE):
        if not (model_dir / name).is_file():
            raise UserError(f"{model_dir / name}: exported model file missing (run the training stage)")
    try:
        state = load_file(str(model_dir / WEIGHTS_FILE), device=str(device))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise UserError(f"{model_dir / WEIGHTS_FILE}: cannot read weights ({err})") from None
    return state, json.loads((model_dir / META_FILE).read_text())


def load_tokenizer(model_dir: str | Path, device: str | torch.device = "cpu"):
    """Rebuild a trained HybridVAE (eval mode) from its export."""
    from sphereard.tokenizer import create_tokenizer

    state, meta = read_export(model_dir, device)
    with torch.device(device):
        vae = create_tokenizer(meta["preset"], posterior=meta["posterior"], radius=meta["radius"], **meta["overrides"])
    vae.load_state_dict(state)
    return vae.eval(), meta


def load_generator(model_dir: str | Path, device: str | torch.device = "cpu"):
    """Rebuild a trained SphereARModel (eval mode) from its export."""
    from sphereard.ar import create_generator

    state, meta = read_export(model_dir, device)
    with torch.device(device):
        model = create_generator(meta["preset"], **meta["overrides"])
    model.load_state_dict(state)
    return model.eval(), meta
