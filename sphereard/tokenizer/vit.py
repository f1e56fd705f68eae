"""ViT encoder/decoder stacks over the token grid of the hybrid VAE (SphereAR Sec. 4.1).

Both stacks run bidirectional pre-norm Transformer blocks with 2D RoPE on the grid and prepend
learnable register tokens (paper: 4) at RoPE position (0, 0); the registers are dropped again at
the output, so (B, L, W) in -> (B, L, W) out with L = grid * grid (square grids, raster order).
"""

from __future__ import annotations

import torch
from torch import nn

from sphereard.nn import RoPE2D, TransformerBlock, grid_positions
from sphereard.nn.block import RMSNORM_EPS

REGISTER_INIT_STD = 0.02


class ViTStack(nn.Module):
    """Register tokens + `depth` Transformer blocks with 2D RoPE; registers dropped at the end."""

    def __init__(self, grid: int, width: int, depth: int, heads: int, num_registers: int,
                 mlp_hidden: int | None = None, rope_patch_offset: float = 0.0):
        super().__init__()
        assert width % heads == 0, "ViT width must be divisible by the number of heads"
        self.num_registers = num_registers
        self.registers = nn.Parameter(torch.randn(num_registers, width) * REGISTER_INIT_STD)
        self.blocks = nn.ModuleList(TransformerBlock(width, heads, mlp_hidden) for _ in range(depth))
        self.rope = RoPE2D(width // heads, grid_positions(grid, grid, num_registers, rope_patch_offset))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, W) -> (B, L, W)
        regs = self.registers.to(x.dtype).expand(x.shape[0], -1, -1)  # (B, R, W)
        x = torch.cat([regs, x], dim=1)  # (B, R + L, W)
        rope = self.rope()
        for block in self.blocks:
            x = block(x, rope=rope)
        return x[:, self.num_registers:]


class ViTEncoder(nn.Module):
    """CNN feature tokens (B, L, W) -> encoder features (B, L, W): ViT stack, RMSNorm, linear."""

    def __init__(self, grid: int, width: int, depth: int, heads: int, num_registers: int,
                 mlp_hidden: int | None = None, rope_patch_offset: float = 0.0):
        super().__init__()
        self.stack = ViTStack(grid, width, depth, heads, num_registers, mlp_hidden, rope_patch_offset)
        self.norm = nn.RMSNorm(width, eps=RMSNORM_EPS)
        self.out = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(self.stack(x)))


class ViTDecoder(nn.Module):
    """Latent features (B, L, W) -> grid tokens (B, L, W): a 3x3 conv over the grid, then the ViT stack."""

    def __init__(self, grid: int, width: int, depth: int, heads: int, num_registers: int,
                 mlp_hidden: int | None = None, rope_patch_offset: float = 0.0):
        super().__init__()
        self.grid = grid
        self.conv_in = nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False)
        self.stack = ViTStack(grid, width, depth, heads, num_registers, mlp_hidden, rope_patch_offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(tokens_to_grid(x, self.grid))  # (B, W, g, g)
        return self.stack(grid_to_tokens(x))


def grid_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h*w, C) in raster order."""
    return x.flatten(2).transpose(1, 2)


def tokens_to_grid(x: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, grid*grid, C) -> (B, C, grid, grid)."""
    B, L, C = x.shape
    assert L == grid * grid, "token count must equal grid * grid"
    return x.transpose(1, 2).reshape(B, C, grid, grid)
