"""2D rotary position embedding on patch centres (SphereAR Sec. 3.2; RoPE, Su et al. 2021).

Half of each head's channels rotate with the patch row, the other half with its column.
Prefix tokens (class / register tokens) sit at position (0, 0); patches start at (1, 1), or at
(1 + offset, 1 + offset) with `patch_offset` (0.5 reproduces the official code's patch centres
(idx + 0.5) + 1, SphereAR `layers.py:239-270`; see docs/official-checkpoints.md).
"""

from __future__ import annotations

import torch
from torch import nn

from sphereard.nn import ROPE_HEAD_MULTIPLE

ROPE_BASE = 10_000.0
PREFIX_POSITION = 0.0
FIRST_PATCH_POSITION = 1.0


def grid_positions(grid_h: int, grid_w: int, num_prefix: int = 0, patch_offset: float = 0.0) -> torch.Tensor:
    """Raster-order (row, col) positions of `num_prefix` prefix tokens then a grid: (L, 2).

    Patch (r, c) sits at (r, c) + 1 + patch_offset; prefix tokens at 0."""
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    patches = torch.stack([rows, cols], dim=-1).reshape(-1, 2).float() + (FIRST_PATCH_POSITION + patch_offset)
    prefix = torch.full((num_prefix, 2), PREFIX_POSITION)
    return torch.cat([prefix, patches], dim=0)  # (num_prefix + H*W, 2)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, H, L, Dh) by angles given as cos/sin (L, Dh)."""
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


class RoPE2D(nn.Module):
    """Precomputes cos/sin tables (L, head_dim) for a fixed token layout."""

    def __init__(self, head_dim: int, positions: torch.Tensor, base: float = ROPE_BASE):
        super().__init__()
        assert head_dim % ROPE_HEAD_MULTIPLE == 0, "2D RoPE needs head_dim divisible by 4 (two axes x rotation pairs)"
        axis_dim = head_dim // 2
        inv_freq = 1.0 / (base ** (torch.arange(0, axis_dim, 2).float() / axis_dim))  # (axis_dim/2,)
        angles_row = positions[:, :1] * inv_freq  # (L, axis_dim/2)
        angles_col = positions[:, 1:] * inv_freq  # (L, axis_dim/2)
        half = torch.cat([angles_row, angles_col], dim=-1)  # (L, head_dim/2)
        angles = torch.cat([half, half], dim=-1)  # (L, head_dim), pairs (i, i + head_dim/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, start: int = 0, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.cos.shape[0] if length is None else start + length
        return self.cos[start:end], self.sin[start:end]
