"""Shared Transformer layers: 2D RoPE, attention with KV cache, SwiGLU block."""

from sphereard.utils.lazy import lazy_exports

ROPE_HEAD_MULTIPLE = 4  # 2D RoPE rotates channel pairs on two axes: head_dim must be a multiple of 4

_EXPORTS = {  # public name -> submodule defining it (imported on first use)
    "Attention": "attention", "KVCache": "attention",
    "TransformerBlock": "block", "swiglu_hidden_dim": "block",
    "RoPE2D": "rope", "apply_rope": "rope", "grid_positions": "rope",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
