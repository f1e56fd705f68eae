"""Per-token diffusion head: an adaLN MLP that predicts the rectified-flow velocity (SphereAR Sec. 3.2).

Condition y = SiLU(TimeEmbed(t) + Linear(c_k + PosEmbed(k))), where c_k is the AR output for
token k. Residual blocks x <- x + gate * SwiGLU(LN(x) (1 + scale) + shift) with SwiGLU hidden
1.5 x width; the (scale, shift, gate) projections of y are shared by consecutive blocks
(`adaln_groups` projections for `blocks` blocks; paper: 2 for B/L, 3 for H). The adaLN
projections and the output layer start at zero, so the head predicts v = 0 at initialisation
(DiT / MAR convention).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import SwiGLU
from torch import nn

from sphereard.ar.arch import HEAD_MLP_RATIO

TIME_FREQ_DIM = 256
TIME_SCALE = 1000.0  # t in [0, 1] is embedded as 1000 t, like diffusion timesteps
MAX_PERIOD = 10_000.0
LN_EPS = 1e-6
INIT_STD = 0.02


def timestep_embedding(t: torch.Tensor, dim: int = TIME_FREQ_DIM, max_period: float = MAX_PERIOD) -> torch.Tensor:
    """Sinusoidal features [cos, sin] of TIME_SCALE * t: (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = TIME_SCALE * t.float()[:, None] * freqs[None]  # (N, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int, freq_dim: int = TIME_FREQ_DIM):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # (N,) -> (N, W)
        emb = timestep_embedding(t, self.freq_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class HeadBlock(nn.Module):
    """Residual adaLN block; its modulation (scale, shift, gate) comes from outside (shared)."""

    def __init__(self, width: int, mlp_ratio: float = HEAD_MLP_RATIO):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=LN_EPS)
        self.mlp = SwiGLU(in_features=width, hidden_features=int(width * mlp_ratio), bias=True)

    def forward(self, x, scale, shift, gate):  # all (N, W)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


class DiffusionHead(nn.Module):
    """v_theta(x_t, t | c_k, k): token_dim -> token_dim, conditioned on a cond_dim vector."""

    def __init__(self, token_dim: int, cond_dim: int, width: int, blocks: int, adaln_groups: int,
                 num_positions: int, mlp_ratio: float = HEAD_MLP_RATIO):
        super().__init__()
        assert blocks >= 1 and adaln_groups >= 1, "head needs >= 1 block and >= 1 adaLN group"
        assert blocks % adaln_groups == 0, "head blocks must be divisible by adaln_groups (shared adaLN)"
        self.token_dim = token_dim
        self.blocks_per_group = blocks // adaln_groups
        self.pos_embed = nn.Embedding(num_positions, cond_dim)  # learned per-position condition
        self.cond_proj = nn.Linear(cond_dim, width)
        self.time_embed = TimestepEmbedder(width)
        self.input_proj = nn.Linear(token_dim, width)
        self.blocks = nn.ModuleList(HeadBlock(width, mlp_ratio) for _ in range(blocks))
        self.adaln = nn.ModuleList(nn.Linear(width, 3 * width) for _ in range(adaln_groups))
        self.final_norm = nn.LayerNorm(width, eps=LN_EPS, elementwise_affine=False)
        self.final_adaln = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, token_dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.pos_embed.weight, std=INIT_STD)
        for lin in (self.time_embed.mlp[0], self.time_embed.mlp[2]):
            nn.init.normal_(lin.weight, std=INIT_STD)
        for lin in (*self.adaln, self.final_adaln, self.out):  # zero-initialised outputs
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def condition(self, cond: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Embed AR condition + position once per token: cond (N, D), pos (N,) long -> (N, W)."""
        return self.cond_proj(cond + self.pos_embed(pos))

    def velocity(self, x: torch.Tensor, t: torch.Tensor, c_emb: torch.Tensor) -> torch.Tensor:
        """x (N, d), t (N,), c_emb (N, W) from `condition` -> v (N, d)."""
        y = F.silu(self.time_embed(t) + c_emb)  # (N, W)
        h = self.input_proj(x.to(c_emb.dtype))
        for i, block in enumerate(self.blocks):
            if i % self.blocks_per_group == 0:
                scale, shift, gate = self.adaln[i // self.blocks_per_group](y).chunk(3, dim=-1)
            h = block(h, scale, shift, gate)
        scale, shift = self.final_adaln(y).chunk(2, dim=-1)
        return self.out(self.final_norm(h) * (1 + scale) + shift)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x (N, d), t (N,), cond (N, D), pos (N,) -> v (N, d)."""
        return self.velocity(x, t, self.condition(cond, pos))
