"""Load an exported tokenizer (`sphereard.export` format) back into a HybridVAE."""

from __future__ import annotations

from pathlib import Path

import torch

from sphereard.export import META_FILE, WEIGHTS_FILE, build_from_meta, check_posterior, read_export
from sphereard.tokenizer.vae import create_tokenizer
from sphereard.utils.weights import load_state_strict

# Exports written before the posterior's parameters were named moments (issue 13) call its layer `to_params`
LEGACY_PREFIXES = {"to_params.": "to_moments."}


def renamed_legacy_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with keys of older exports (LEGACY_PREFIXES) under today's names; others as they are."""
    out = {}
    for key, value in state.items():
        old = next((p for p in LEGACY_PREFIXES if key.startswith(p)), None)
        out[LEGACY_PREFIXES[old] + key[len(old):] if old else key] = value
    return out


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
    load_state_strict(vae, renamed_legacy_keys(state), model_dir / WEIGHTS_FILE)
    return vae.eval(), meta
