"""Multi-head self-attention on torch SDPA, with an optional KV cache for incremental decoding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sphereard.nn.rope import apply_rope


class KVCache:
    """Preallocated keys/values (B, H, max_len, Dh) for one attention layer."""

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int, device, dtype):
        shape = (batch, heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, T, Dh) after the cached ones; return all keys/values so far."""
        end = self.length + k.shape[2]
        assert end <= self.k.shape[2], "KV cache overflow: sequence longer than max_len"
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


def causal_mask(q_len: int, kv_len: int, device) -> torch.Tensor:
    """Boolean (q_len, kv_len) mask: query i (at absolute kv_len - q_len + i) sees keys <= itself."""
    offset = kv_len - q_len
    q_pos = torch.arange(q_len, device=device)[:, None] + offset
    return torch.arange(kv_len, device=device)[None, :] <= q_pos


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, bias: bool = False):
        super().__init__()
        assert dim % num_heads == 0, "attention width must be divisible by the number of heads"
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, D)
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,  # cos, sin: (T, Dh)
        causal: bool = False,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        B, T, D = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, T, Dh)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, H, S, Dh), S = cached + T
        S = k.shape[2]
        if causal and S == T:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif causal and T > 1:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, S, x.device))
        else:  # bidirectional, or a single new query that may see every cached key
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, T, D))
