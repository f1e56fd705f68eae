"""Causal Transformer over raster-ordered latent tokens with a class-token prefix (SphereAR Sec. 3.2).

Input  = [c_1..c_P, z_0, ..., z_{L-2}]: P class tokens (one embedding row of size P*D per class,
         row `num_classes` is the null class for CFG), then the linearly projected tokens.
Output = cond_k for k = 0..L-1, taken at input positions P-1..P+L-2: the hidden state at the
         last class token predicts z_0 and the state at z_{k-1} predicts z_k (teacher forcing).
LLaMA-style blocks without biases, RMSNorm on the input embeddings and at the end, 2D RoPE on
patch positions (class tokens at (0, 0)). Sampling uses `prefill` then `step` with a per-call
`DecodeState` of KV caches, so each new token costs one position of compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sphereard.nn import KVCache, RoPE2D, TransformerBlock, grid_positions
from sphereard.nn.block import RMSNORM_EPS

INIT_STD = 0.02


@dataclass
class DecodeState:
    """KV caches of one sampling call plus the number of sequence positions already fed."""

    caches: list[KVCache]
    length: int = 0


class ARTransformer(nn.Module):
    def __init__(self, token_dim: int, dim: int, depth: int, heads: int, num_classes: int,
                 num_class_tokens: int, grid_size: int, label_dropout: float = 0.1,
                 mlp_hidden: int | None = None, rope_patch_offset: float = 0.0):
        super().__init__()
        assert dim % heads == 0, "dim must be divisible by heads"
        assert 0.0 <= label_dropout < 1.0, "label_dropout must be in [0, 1)"
        self.token_dim, self.dim, self.heads = token_dim, dim, heads
        self.num_classes, self.null_class = num_classes, num_classes
        self.num_prefix = num_class_tokens
        self.num_tokens = grid_size * grid_size
        self.max_len = self.num_prefix + self.num_tokens - 1  # the last token is never an input
        self.label_dropout = label_dropout
        self.class_embed = nn.Embedding(num_classes + 1, num_class_tokens * dim)
        self.proj_in = nn.Linear(token_dim, dim)
        self.emb_norm = nn.RMSNorm(dim, eps=RMSNORM_EPS)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, mlp_hidden) for _ in range(depth))
        self.norm = nn.RMSNorm(dim, eps=RMSNORM_EPS)
        positions = grid_positions(grid_size, grid_size, num_class_tokens, rope_patch_offset)[: self.max_len]  # (T, 2)
        self.rope = RoPE2D(dim // heads, positions)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=INIT_STD)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def drop_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Replace each label by the null class with probability label_dropout (training only)."""
        if not self.training or self.label_dropout == 0.0:
            return labels
        drop = torch.rand(labels.shape, device=labels.device) < self.label_dropout
        return torch.where(drop, torch.full_like(labels, self.null_class), labels)

    def class_tokens(self, labels: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, P, D)
        return self.class_embed(labels).view(labels.shape[0], self.num_prefix, self.dim)

    def _run(self, x: torch.Tensor, start: int, state: DecodeState | None = None) -> torch.Tensor:
        """Blocks over positions [start, start + T) of the sequence: (B, T, D) -> (B, T, D)."""
        T = x.shape[1]
        assert start + T <= self.max_len, "sequence longer than class tokens + grid - 1"
        rope = self.rope(start, T)
        x = self.emb_norm(x)
        for i, block in enumerate(self.blocks):
            x = block(x, rope=rope, causal=True, cache=None if state is None else state.caches[i])
        if state is not None:
            state.length = start + T
        return self.norm(x)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced conditions: z (B, L, d), labels (B,) -> cond (B, L, D), cond[:, k] predicts z_k.

        z[:, L-1] is not used (nothing follows it). Labels are dropped to the null class with
        probability label_dropout in training mode.
        """
        B, L, _ = z.shape
        assert 1 <= L <= self.num_tokens, "z must hold between 1 and grid_size**2 tokens"
        x = torch.cat([self.class_tokens(self.drop_labels(labels)), self.proj_in(z[:, : L - 1])], dim=1)
        return self._run(x, 0)[:, self.num_prefix - 1:]  # (B, L, D)

    def new_state(self, batch: int) -> DecodeState:
        p = self.proj_in.weight
        head_dim = self.dim // self.heads
        caches = [KVCache(batch, self.heads, self.max_len, head_dim, p.device, p.dtype) for _ in self.blocks]
        return DecodeState(caches)

    def prefill(self, labels: torch.Tensor) -> tuple[torch.Tensor, DecodeState]:
        """Start decoding: labels (B,) (null class allowed) -> (cond for z_0 (B, D), fresh state)."""
        state = self.new_state(labels.shape[0])
        h = self._run(self.class_tokens(labels), 0, state)
        return h[:, -1], state

    def step(self, z_k: torch.Tensor, state: DecodeState) -> torch.Tensor:
        """Feed the token just sampled, z_k (B, d) -> cond for z_{k+1} (B, D)."""
        h = self._run(self.proj_in(z_k)[:, None], state.length, state)
        return h[:, -1]
