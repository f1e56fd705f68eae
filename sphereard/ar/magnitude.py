"""The magnitude ablation (`generator.magnitude: predict`; SphereAR Sec. 5, the suggested "two-head" check).

With a plain Gaussian tokenizer, token z_k = ||z_k|| * u_k. The diffusion head models only the
direction, as a point on the sqrt(d) sphere (`direction_targets`; under CFG it is projected back
there, so guidance cannot inflate the scale), and this small head models the norm:

  log ||z_k|| | c_k ~ N(mean(c_k), std(c_k)^2),   (mean, log std) = MLP(LayerNorm(c_k))

conditioned on the same transformer output c_k. The loss is the Gaussian negative log-likelihood of
the log-norm (nats per token, constant included), added to the flow loss with weight 1. The token fed
back to the transformer and decoded is norm x unit direction: the AR inputs keep their magnitude, but
it comes from a head that CFG does not touch (the conditional stream's condition predicts it).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sphereard.geometry import NORM_EPS, project_to_sphere

MAGNITUDES: tuple[str, ...] = ("none", "predict")
LOG_STD_RANGE = (-7.0, 2.0)  # clamp of the predicted log std: std in [1e-3, 7.4] of a log-norm
INIT_STD = 0.02


def direction_targets(z: torch.Tensor) -> torch.Tensor:
    """Unit directions scaled to the sqrt(d) sphere (the Euclidean head's natural noise scale). (..., d)."""
    return project_to_sphere(z, math.sqrt(z.shape[-1]))


class MagnitudeHead(nn.Module):
    """p(log ||z_k|| | c_k): (N, D) conditions -> (mean (N,), log_std (N,)). The output layer starts at
    zero (mean 0, std 1), like the diffusion head's."""

    def __init__(self, cond_dim: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(cond_dim), nn.Linear(cond_dim, width), nn.SiLU(), nn.Linear(width, 2))
        nn.init.normal_(self.net[1].weight, std=INIT_STD)
        nn.init.zeros_(self.net[1].bias)
        nn.init.zeros_(self.net[3].weight)
        nn.init.zeros_(self.net[3].bias)

    def forward(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(cond).float().unbind(-1)  # (N,), (N,)
        return mean, log_std.clamp(*LOG_STD_RANGE)


def log_norm_nll(mean: torch.Tensor, log_std: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean Gaussian NLL (nats) of log ||z|| under N(mean, exp(log_std)^2). mean, log_std (N,), z (N, d)."""
    y = z.float().norm(dim=-1).clamp_min(NORM_EPS).log()  # (N,)
    return (0.5 * ((y - mean) / log_std.exp()) ** 2 + log_std + 0.5 * math.log(2 * math.pi)).mean()


def sample_norm(mean: torch.Tensor, log_std: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """||z|| = exp(mean + std * eps), eps ~ N(0, 1): (N,) -> (N,)."""
    eps = torch.randn(mean.shape, device=mean.device, generator=generator)
    return (mean + log_std.exp() * eps).exp()


def compose(direction: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """Token = norm x unit direction: direction (N, d), norm (N,) -> (N, d)."""
    return project_to_sphere(direction, 1.0) * norm.unsqueeze(-1)
