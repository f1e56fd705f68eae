"""Batched inference helpers between uint8 images (N, H, W, C) and the tokenizer's [-1, 1] tensors.

Posterior samples are drawn with torch's global RNG forked and seeded (`seeded_global_rng`): the
Power Spherical sampler draws through torch.distributions' Beta / Gamma, which take no generator.
"""

from __future__ import annotations

import numpy as np
import torch

from sphereard.eval.names import DECODES
from sphereard.tokenizer.vae import HybridVAE
from sphereard.utils.rng import seeded_global_rng

UINT8_MAX = 255.0


def uint8_to_model(images: np.ndarray, device) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, C, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float()
    return x / (UINT8_MAX / 2) - 1.0


def model_to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N, C, H, W), nominally in [-1, 1] -> uint8 (N, H, W, C), clamped and rounded."""
    x = ((x.detach().float().clamp(-1, 1) + 1.0) * (UINT8_MAX / 2)).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def encode_moments(vae: HybridVAE, images: np.ndarray, batch_size: int, device) -> torch.Tensor:
    """uint8 images (N, H, W, C) -> posterior moments (N, L, P) on `device` (posterior.py layouts)."""
    return torch.cat([vae.encode_moments(uint8_to_model(images[i:i + batch_size], device))
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def reconstruct(vae: HybridVAE, images: np.ndarray, batch_size: int, device, sample: bool = False,
                seed: int = 0) -> np.ndarray:
    """Encode and decode uint8 images (N, H, W, C) -> uint8 (N, H, W, C): decode(posterior mode), or with
    `sample` decode(one posterior sample per token), drawn reproducibly from `seed`."""
    decode = "sample" if sample else "mode"
    return reconstruct_decodes(vae, images, batch_size, device, seed, decodes=(decode,))[decode]


@torch.no_grad()
def reconstruct_decodes(vae: HybridVAE, images: np.ndarray, batch_size: int, device, seed: int,
                        decodes: tuple[str, ...] = DECODES) -> dict[str, np.ndarray]:
    """uint8 images (N, H, W, C) -> {'mode': decode(mode), 'sample': decode(sample)} (those in `decodes`),
    uint8 (N, H, W, C) each.

    The posterior is encoded once per batch; the samples (one per token) come from torch's global RNG
    seeded with `seed` inside a fork, so they are the same for the same seed and batch size, whichever
    decodes are asked for, and the caller's RNG state is untouched."""
    assert set(decodes) <= set(DECODES), f"decodes must be among {DECODES}"
    latent = {"mode": vae.mode, "sample": vae.sample}
    out: dict[str, list[np.ndarray]] = {decode: [] for decode in decodes}
    with seeded_global_rng(seed, device):
        for i in range(0, len(images), batch_size):
            moments = vae.encode_moments(uint8_to_model(images[i:i + batch_size], device))  # (B, L, P)
            for decode in decodes:
                out[decode].append(model_to_uint8(vae.decode(latent[decode](moments))))
    return {decode: np.concatenate(parts) for decode, parts in out.items()}
