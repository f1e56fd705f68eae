"""Load an exported tokenizer (`sphereard.export` format) back into a HybridVAE."""

from __future__ import annotations

from pathlib import Path

import torch

from sphereard.export import META_FILE, WEIGHTS_FILE, build_from_meta, check_posterior, read_export
from sphereard.tokenizer.vae import create_tokenizer
from sphereard.utils.weights import load_state_strict


def load_tokenizer(model_dir: str | Path, device: str | torch.device = "cpu", posterior: str | None = None):
    """Rebuild a trained HybridVAE (eval mode) from its export; with `posterior`, check it is that one.

    Raises UserError naming the file: missing or corrupt files, metadata of another kind or
    posterior, weights that do not fit the architecture model.json describes."""
    model_dir = Path(model_dir)
    state, meta = read_export(model_dir, device, kind="tokenizer")
    check_posterior(meta, model_dir, posterior)
    with torch.device(device):
        vae = build_from_meta(model_dir / META_FILE, lambda: create_tokenizer(
            meta["preset"], posterior=meta["posterior"], radius=meta["radius"], **meta["overrides"]))
    load_state_strict(vae, state, model_dir / WEIGHTS_FILE)
    return vae.eval(), meta
