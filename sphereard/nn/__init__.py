"""Shared Transformer layers: 2D RoPE, attention with KV cache, SwiGLU block."""

from sphereard.nn.attention import Attention, KVCache
from sphereard.nn.block import TransformerBlock, swiglu_hidden_dim
from sphereard.nn.rope import RoPE2D, apply_rope, grid_positions

__all__ = [
    "Attention",
    "KVCache",
    "RoPE2D",
    "TransformerBlock",
    "apply_rope",
    "grid_positions",
    "swiglu_hidden_dim",
]
