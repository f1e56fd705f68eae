"""Pre-norm Transformer block: RMSNorm -> attention, RMSNorm -> SwiGLU (LLaMA-style, SphereAR Sec. 4.1)."""

from __future__ import annotations

import math

import torch
from timm.layers import SwiGLU
from torch import nn

from sphereard.nn.attention import Attention, KVCache

SWIGLU_RATIO = 8 / 3
SWIGLU_MULTIPLE = 256
RMSNORM_EPS = 1e-6


def swiglu_hidden_dim(dim: int, ratio: float = SWIGLU_RATIO, multiple_of: int = SWIGLU_MULTIPLE) -> int:
    """Hidden width ratio*dim rounded up to a multiple (8d/3 -> multiple of 256 in the paper)."""
    return multiple_of * math.ceil(ratio * dim / multiple_of)


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_hidden: int | None = None, bias: bool = False):
        super().__init__()
        self.norm1 = nn.RMSNorm(dim, eps=RMSNORM_EPS)
        self.attn = Attention(dim, num_heads, bias=bias)
        self.norm2 = nn.RMSNorm(dim, eps=RMSNORM_EPS)
        hidden = mlp_hidden or swiglu_hidden_dim(dim)
        self.mlp = SwiGLU(in_features=dim, hidden_features=hidden, bias=bias)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, D)
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        causal: bool = False,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope=rope, causal=causal, cache=cache)
        return x + self.mlp(self.norm2(x))
