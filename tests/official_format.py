"""Test helper: random checkpoints in the official SphereAR format, built from models of ours.

The inverse of the importer's mapping (`sphereard.convert.official.to_official`) applied to a random
model of ours with the official RoPE option, saved like the official training script: a dict with
`model`, `ema`, `optimizer`, `epochs` and the run's `argparse.Namespace` (docs/official-checkpoints.md §1).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from sphereard.ar.presets import create_generator
from sphereard.convert.importer import rope_tables
from sphereard.convert.official import GENERATOR_RULES, TOKENIZER_RULES, to_official
from sphereard.tokenizer.vae import create_tokenizer

TOKENIZER = ("emoji-s", {})  # small configurations with the official block structure
GENERATOR = ("fmnist-s", {})  # token_dim 16 on an 8x8 grid: fits emoji-s latents
OFFSET = {"rope_patch_offset": 0.5}


@torch.no_grad()
def randomise(module: nn.Module, seed: int) -> nn.Module:
    """Every parameter random (norm gains near 1), so zero-initialised layers cannot hide a mapping bug."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        p.copy_(1.0 + 0.1 * noise if p.dim() == 1 and name.endswith("weight") else 0.05 * noise)
    return module.eval()


def small_models(seed: int = 0):
    """(tokenizer, generator) of ours, random, with the official RoPE positions."""
    vae = randomise(create_tokenizer(TOKENIZER[0], posterior="spherical", **OFFSET, **TOKENIZER[1]), seed)
    gen = randomise(create_generator(GENERATOR[0], **OFFSET, **GENERATOR[1]), seed + 1)
    return vae, gen


def official_vae_state(vae) -> dict[str, torch.Tensor]:
    """`vae.*` tensors of an official checkpoint, RoPE tables included."""
    heads = {"encoder.layers.": vae.arch.heads, "decoder.layers.": vae.arch.heads}
    state = {**to_official(vae.state_dict(), TOKENIZER_RULES, heads), **rope_tables(vae)}
    return {f"vae.{k}": v for k, v in state.items()}


def official_state(vae, gen) -> dict[str, torch.Tensor]:
    """The full official generator state dict: the AR tensors plus the S-VAE under `vae.`."""
    return {**official_vae_state(vae), **to_official(gen.state_dict(), GENERATOR_RULES, {"layers.": gen.arch.heads})}


def run_args(gen=None, vae_only: bool = False) -> argparse.Namespace:
    arch = gen.arch if gen is not None else None
    fields = dict(model=GENERATOR[0], vae_only=vae_only, lr=1e-4, data_path="/data", ema=0.9999)
    if arch is not None:
        fields.update(latent_dim=arch.token_dim, cls_token_num=arch.num_class_tokens, num_classes=arch.num_classes,
                      image_size=arch.grid_size * 4, patch_size=4)
    return argparse.Namespace(**fields)


def fake_optimizer(state: dict[str, torch.Tensor]) -> dict:
    """An AdamW-style state dict (plain values plus tensors), as the official files carry."""
    first = next(iter(state.values()))
    return {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros_like(first),
                          "exp_avg_sq": torch.zeros_like(first)}},
            "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.95), "weight_decay": 0.05, "params": [0]}]}


def save_official(path: Path, ema: dict[str, torch.Tensor], model: dict[str, torch.Tensor] | None = None,
                  args: argparse.Namespace | None = None, **extra) -> Path:
    """torch.save a dict shaped like the official training checkpoints."""
    model = model if model is not None else ema
    ckpt = {"model": model, "optimizer": fake_optimizer(model), "epochs": 7, "args": args or run_args()}
    if ema is not None:
        ckpt["ema"] = ema
    ckpt.update(extra)
    torch.save(ckpt, path)
    return path
