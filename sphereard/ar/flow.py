"""Rectified flow for the per-token diffusion head (SphereAR Sec. 3.2; Liu et al. 2022, SiT).

Path x_t = (1 - t) eps + t z from noise (t = 0) to data (t = 1), target velocity z - eps,
training times t = sigmoid(n), n ~ N(0, 1) (logit-normal). Sampling integrates the learned
velocity v(x, t) from t = 0 to 1 with Euler (ODE), Euler-Maruyama (SDE, paper default) or Heun
(ODE, second order: two velocity evaluations per step, Karras et al. 2022 Alg. 1 without churn).

SDE form. For this path, E[z | x_t] = x + (1 - t) v and E[eps | x_t] = x - t v, and
x_t | z ~ N(t z, (1 - t)^2 I), so the score is

    s(x, t) = grad log p_t(x) = -E[eps | x] / (1 - t) = (t v - x) / (1 - t).

Any SDE  dx = [v + g(t)^2 / 2 * s] dt + g(t) dW  has the same marginals p_t as the ODE
dx = v dt (the extra drift cancels the diffusion term in the Fokker-Planck equation). We use
g(t)^2 = 2 (1 - t), i.e. drift = v + (1 - t) s = (1 + t) v - x, noise std sqrt(2 (1 - t) dt):
strong noise early, none at t = 1. The paper runs this for `steps` steps over [0, 1 - h] and
then takes one plain Euler step of size h = 0.04 (`final_step`) to land on t = 1 noise-free.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from sphereard.errors import UserError

VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]  # v(x (N, d), t) -> (N, d)
SAMPLERS: tuple[str, ...] = ("euler", "euler_maruyama", "heun")
EVALS_PER_STEP = {"euler": 1, "euler_maruyama": 1, "heun": 2}  # velocity evaluations per step
PAPER_FINAL_STEP = 0.04


def evaluations(sampler: str, steps: int, final_step: float = PAPER_FINAL_STEP) -> int:
    """NFE: velocity evaluations per token (Heun 2 a step; Euler-Maruyama's final Euler step counts)."""
    return steps * EVALS_PER_STEP[sampler] + (1 if sampler == "euler_maruyama" and final_step > 0 else 0)


def sample_t(n: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Logit-normal training times t = sigmoid(N(0, 1)): (n,)."""
    return torch.randn(n, device=device, generator=generator).sigmoid()


def interpolate(noise: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) noise + t z; noise, z (N, d), t (N,) or scalar."""
    t = t.reshape(-1, *([1] * (z.dim() - 1))) if torch.is_tensor(t) and t.dim() > 0 else t
    return (1.0 - t) * noise + t * z


def velocity_target(noise: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """d x_t / dt = z - noise: (N, d)."""
    return z - noise


def flow_loss(head, z: torch.Tensor, cond: torch.Tensor, diff_batch_mul: int = 4,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Velocity MSE of the diffusion head, averaged over tokens, copies and channels.

    z: (B, L, d) target tokens, cond: (B, L, D) AR conditions (cond[:, k] predicts z[:, k]).
    Each token's condition is repeated `diff_batch_mul` times with fresh noise and t (paper: 4).
    The head (`DiffusionHead`) embeds each condition once (`condition(cond, pos)`, pos = token
    index k) before the copies are made, then predicts `velocity(x_t, t, c_emb)` for all copies.
    """
    assert diff_batch_mul >= 1, "diff_batch_mul must be >= 1"
    B, L, d = z.shape
    assert cond.shape[:2] == (B, L), "cond must have one condition per target token: (B, L, D)"
    pos = torch.arange(L, device=z.device).repeat(B)  # (B L,)
    c_emb = head.condition(cond.reshape(B * L, -1), pos).repeat(diff_batch_mul, 1)  # (M, W), M = m B L
    target = z.reshape(B * L, d).repeat(diff_batch_mul, 1).float()  # (M, d)
    noise = torch.randn(target.shape, device=z.device, generator=generator)
    t = sample_t(target.shape[0], z.device, generator)  # (M,)
    v = head.velocity(interpolate(noise, target, t), t, c_emb)
    return F.mse_loss(v.float(), velocity_target(noise, target))


def score_from_velocity(v: torch.Tensor, x: torch.Tensor, t: float) -> torch.Tensor:
    """s(x, t) = (t v - x) / (1 - t) for the rectified-flow path (module docstring); t < 1."""
    assert t < 1.0, "the score is undefined at t = 1 (no noise left)"
    return (t * v - x) / (1.0 - t)


def euler(v_fn: VelocityFn, x0: torch.Tensor, steps: int, t0: float = 0.0, t1: float = 1.0) -> torch.Tensor:
    """Explicit Euler for dx = v(x, t) dt on [t0, t1] with `steps` equal steps."""
    assert steps >= 1, "steps must be >= 1"
    dt = (t1 - t0) / steps
    x = x0
    for i in range(steps):
        x = x + dt * v_fn(x, t0 + i * dt)
    return x


def heun(v_fn: VelocityFn, x0: torch.Tensor, steps: int) -> torch.Tensor:
    """Heun's method (explicit trapezoid) for dx = v(x, t) dt on [0, 1] with `steps` equal steps.

    x' = x + dt v(x, t);  x <- x + dt / 2 (v(x, t) + v(x', t + dt)). Second order, 2 evaluations a step;
    v is defined at t = 1 for rectified flow, so the last step is a full Heun step too."""
    assert steps >= 1, "steps must be >= 1"
    dt = 1.0 / steps
    x = x0
    for i in range(steps):
        t = i * dt
        v = v_fn(x, t)
        v_next = v_fn(x + dt * v, t + dt)
        x = x + (0.5 * dt) * (v + v_next)
    return x


def euler_maruyama(v_fn: VelocityFn, x0: torch.Tensor, steps: int, final_step: float = PAPER_FINAL_STEP,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Euler-Maruyama on the SDE of the module docstring over [0, 1 - h], then one Euler step h.

    h = final_step (paper 0.04); h = 0 runs the SDE all the way to t = 1.
    """
    assert steps >= 1, "steps must be >= 1"
    assert 0.0 <= final_step < 1.0, "final_step must be in [0, 1)"
    dt = (1.0 - final_step) / steps
    x = x0
    for i in range(steps):
        t = i * dt
        v = v_fn(x, t)
        g2 = 2.0 * (1.0 - t)  # diffusion coefficient g(t)^2
        drift = v + 0.5 * g2 * score_from_velocity(v, x, t)
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        x = x + drift * dt + (g2 * dt) ** 0.5 * noise
    if final_step > 0:
        x = x + final_step * v_fn(x, 1.0 - final_step)
    return x


def integrate(sampler: str, v_fn: VelocityFn, x0: torch.Tensor, steps: int,
              final_step: float = PAPER_FINAL_STEP, generator: torch.Generator | None = None) -> torch.Tensor:
    """Dispatch on the sampler name: `euler` / `heun` (ODE on [0, 1]) or `euler_maruyama` (SDE + final step)."""
    if sampler == "euler":
        return euler(v_fn, x0, steps)
    if sampler == "heun":
        return heun(v_fn, x0, steps)
    if sampler == "euler_maruyama":
        return euler_maruyama(v_fn, x0, steps, final_step, generator)
    raise UserError(f"sampler={sampler!r}: must be one of {', '.join(SAMPLERS)}")
