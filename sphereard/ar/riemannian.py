"""Riemannian flow matching on the radius-R sphere (Chen & Lipman 2023; SphereAR Sec. 6, future work).

The Euclidean head (`flow.py`) moves tokens through R^d and relies on the projection after CFG to
land on the sphere. Here every point of a trajectory lies on the sphere S_R = {x : ||x|| = R}:

  noise     x_0 ~ Uniform(S_R)                                 (R * normalised standard normal)
  path      x_t = exp_{x_0}(t V), V = log_{x_0}(z)             (the geodesic, = slerp(x_0, z, t))
  target    u_t = d x_t / dt = -theta sin(t theta) x_0 + cos(t theta) V,  theta = ||V|| / R
            (constant speed ||V||, tangent at x_t: <u_t, x_t> = 0)
  loss      || P_{x_t} v_theta(x_t, t) - u_t ||^2,  P_x = the projection onto the tangent space at x
  sampling  x <- exp_x(dt P_x v(x, t)), Euler steps on [0, 1] with the exponential map

Training times are the Euclidean head's (logit-normal, `flow.sample_t`) and each token is repeated
`diff_batch_mul` times with fresh noise and t, as there. CFG combines the conditional and
unconditional tangent velocities at the same x_t (`cfg.cfg_combine`, linear, so the result stays
tangent) before the exponential-map step: guidance cannot move a token off the sphere. There is no
stochastic sampler: the Euclidean SDE's drift uses the score of a Gaussian path (`flow.py`), which
this path does not have; `riemannian` samples with `euler` only (config rule).

The data tokens' own norms give R (spherical and gaussian_norm posterior samples lie on S_R).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sphereard.ar.flow import VelocityFn, sample_t
from sphereard.geometry import exp_map, log_map, project_to_sphere, tangent_project

FLOWS: tuple[str, ...] = ("euclidean", "riemannian")


def uniform_sphere(shape: tuple[int, ...], radius, device=None, generator: torch.Generator | None = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform points on the radius-R sphere: R * g / ||g||, g ~ N(0, I). shape (..., d) -> (..., d)."""
    g = torch.randn(shape, device=device, generator=generator, dtype=dtype)
    return project_to_sphere(g, radius)


def geodesic_path(x0: torch.Tensor, z: torch.Tensor, t: torch.Tensor, radius) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, u_t) of the geodesic from x0 (t = 0) to z (t = 1) on the radius-R sphere (module docstring).

    x0, z: (N, d) on the sphere; t: (N,) in [0, 1]; radius: float or (N, 1). Returns x_t (N, d) on the
    sphere and its velocity u_t (N, d), tangent at x_t, of constant norm geodesic_distance(x0, z).
    Undefined (non-finite) for antipodal x0 = -z, a measure-zero event under uniform noise.
    """
    V = log_map(x0, z, radius)  # (N, d), tangent at x0, ||V|| = R theta
    t = t.reshape(-1, 1)  # (N, 1)
    theta = V.norm(dim=-1, keepdim=True) / radius  # (N, 1), the angle x0 -> z
    x_t = exp_map(x0, t * V, radius)
    u_t = -theta * torch.sin(t * theta) * project_to_sphere(x0, radius) + torch.cos(t * theta) * V
    return x_t, u_t


def riemannian_flow_loss(head, z: torch.Tensor, cond: torch.Tensor, diff_batch_mul: int = 4,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """Tangent-velocity MSE of the diffusion head, averaged over tokens, copies and channels.

    z: (B, L, d) target tokens on a sphere (R = their norm), cond: (B, L, D) AR conditions. Same
    batching as `flow.flow_loss` (the condition embedded once, then `diff_batch_mul` copies).
    """
    assert diff_batch_mul >= 1, "diff_batch_mul must be >= 1"
    B, L, d = z.shape
    assert cond.shape[:2] == (B, L), "cond must have one condition per target token: (B, L, D)"
    pos = torch.arange(L, device=z.device).repeat(B)  # (B L,)
    c_emb = head.condition(cond.reshape(B * L, -1), pos).repeat(diff_batch_mul, 1)  # (M, W)
    target = z.reshape(B * L, d).repeat(diff_batch_mul, 1).float()  # (M, d)
    radius = target.norm(dim=-1, keepdim=True)  # (M, 1): the data sphere
    noise = uniform_sphere(target.shape, radius, z.device, generator)
    t = sample_t(target.shape[0], z.device, generator)  # (M,)
    x_t, u_t = geodesic_path(noise, target, t, radius)
    v = tangent_project(x_t, head.velocity(x_t, t, c_emb).float())
    return F.mse_loss(v, u_t)


def exp_euler(v_fn: VelocityFn, x0: torch.Tensor, steps: int, radius) -> torch.Tensor:
    """Euler on the sphere: x <- exp_x(dt P_x v(x, t)) for `steps` equal steps over [0, 1].

    x0: (N, d) on the radius-R sphere; every iterate stays on it (exp_map renormalises x).
    """
    assert steps >= 1, "steps must be >= 1"
    dt = 1.0 / steps
    x = x0
    for i in range(steps):
        x = exp_map(x, dt * v_fn(x, i * dt), radius)  # exp_map drops v's normal component
    return x
