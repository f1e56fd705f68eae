"""Batched inference helpers between uint8 images (N, H, W, C) and the tokenizer's [-1, 1] tensors."""

from __future__ import annotations

import numpy as np
import torch

from sphereard.tokenizer.vae import HybridVAE

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
def reconstruct(vae: HybridVAE, images: np.ndarray, batch_size: int, device, sample: bool = False) -> np.ndarray:
    """Encode (posterior mode unless `sample`) and decode uint8 images; returns uint8 (N, H, W, C)."""
    out = [model_to_uint8(vae(uint8_to_model(images[i:i + batch_size], device), sample=sample)["recon"])
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out)
