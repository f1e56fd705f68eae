"""Autoregressive sampling with CFG and projection after CFG (SphereAR Sec. 3.3, Algorithm in App.).

For each raster position k: the transformer gives cond_k (cached decoding), the diffusion head
integrates the guided velocity v = v_u + w_k (v_c - v_u) from noise to a token, the token is
projected (`sphere`: N_R) and fed back. With guidance the conditional and unconditional (null
class) streams run as one batch of 2B; both heads see the same x_t. With w = 1 the null stream is
skipped altogether, which is exactly plain conditional sampling.

`cfg_unit_weight` decides a guided token whose weight is exactly 1 (token 0 of the linear schedule):
`shared` (default) runs the guided step (= the conditional velocity) and feeds its token to both
streams; `separate` integrates both streams unguided with independent noise (2B draws) and each stream
keeps its own token as context, so the null stream holds an unconditional sample from then on, as the
official code does (SphereAR `sampling.py:50-57`, `model.py:253-268`; docs/official-checkpoints.md).

`flow` picks the head's noise and integrator (`draw_tokens`): `euclidean` integrates from N(0, I)
in R^d; `riemannian` from uniform noise on the radius-R sphere with exponential-map Euler steps
(`ar/riemannian.py`), so tokens never leave the sphere. A `magnitude_head` (`ar/magnitude.py`)
gives each token its norm: the head's output after CFG is then a direction, scaled by a norm drawn
from the conditional stream's magnitude head (after the flow's draws of that token).
"""

from __future__ import annotations

import math

import torch

from sphereard.ar.cfg import CFG_SCHEDULES, CFG_UNIT_WEIGHTS, cfg_combine, cfg_scale_at
from sphereard.ar.diffusion_head import DiffusionHead
from sphereard.ar.flow import PAPER_FINAL_STEP, SAMPLERS, VelocityFn, integrate
from sphereard.ar.magnitude import MagnitudeHead, compose, sample_norm
from sphereard.ar.projection import PROJECTIONS, default_projection, project_tokens
from sphereard.ar.riemannian import FLOWS, exp_euler, uniform_sphere
from sphereard.ar.transformer import ARTransformer
from sphereard.config import SamplingConfig
from sphereard.errors import UserError


def check_args(transformer: ARTransformer, labels, num_tokens, cfg_scale, cfg_schedule, sampler,
                steps, final_step, projection, cfg_unit_weight, flow) -> None:
    if labels.dim() != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
        raise UserError(f"labels: expected a 1-D integer tensor, got {tuple(labels.shape)} {labels.dtype}")
    if labels.numel() and not bool(((labels >= 0) & (labels <= transformer.null_class)).all()):
        raise UserError(f"labels: must be class ids in [0, {transformer.num_classes}] "
                        f"({transformer.num_classes} = null class)")
    if not 1 <= num_tokens <= transformer.num_tokens:
        raise UserError(f"num_tokens={num_tokens}: must be in [1, {transformer.num_tokens}]")
    if not (math.isfinite(cfg_scale) and cfg_scale >= 0):
        raise UserError(f"cfg_scale={cfg_scale!r}: must be a finite number >= 0 (1 = no guidance)")
    if cfg_schedule not in CFG_SCHEDULES:
        raise UserError(f"cfg_schedule={cfg_schedule!r}: must be one of {', '.join(CFG_SCHEDULES)}")
    if sampler not in SAMPLERS:
        raise UserError(f"sampler={sampler!r}: must be one of {', '.join(SAMPLERS)}")
    if steps < 1:
        raise UserError(f"steps={steps}: must be >= 1")
    if not 0.0 <= final_step < 1.0:
        raise UserError(f"final_step={final_step}: must be in [0, 1)")
    if projection not in PROJECTIONS:
        raise UserError(f"projection={projection!r}: must be one of {', '.join(PROJECTIONS)}")
    if cfg_unit_weight not in CFG_UNIT_WEIGHTS:
        raise UserError(f"cfg_unit_weight={cfg_unit_weight!r}: must be one of {', '.join(CFG_UNIT_WEIGHTS)}")
    if flow not in FLOWS:
        raise UserError(f"flow={flow!r}: must be one of {', '.join(FLOWS)}")
    if flow == "riemannian" and sampler != "euler":
        raise UserError(f"sampler={sampler!r}: the riemannian head samples with exponential-map euler steps only")


def draw_tokens(flow: str, sampler: str, v_fn: VelocityFn, n: int, d: int, steps: int, final_step: float,
                radius: float, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """n tokens (n, d) from the head's flow: its noise, then its integrator (module docstring).

    euclidean: x0 ~ N(0, I), `flow.integrate(sampler, ...)`; riemannian: x0 ~ Uniform(S_R),
    `riemannian.exp_euler` (sampler must be `euler`, final_step unused). UserError for other names."""
    if flow == "riemannian":
        if sampler != "euler":
            raise UserError(f"sampler={sampler!r}: the riemannian head samples with exponential-map euler steps only")
        return exp_euler(v_fn, uniform_sphere((n, d), radius, device, generator), steps, radius)
    if flow != "euclidean":
        raise UserError(f"flow={flow!r}: must be one of {', '.join(FLOWS)}")
    x0 = torch.randn(n, d, device=device, generator=generator)
    return integrate(sampler, v_fn, x0, steps, final_step, generator)


def guided_velocity(head: DiffusionHead, c_emb: torch.Tensor, w: float, guided: bool) -> VelocityFn:
    """v(x, t) for B tokens; c_emb (B, W) or, if guided, (2B, W) = [conditional; unconditional]."""

    def v_fn(x: torch.Tensor, t: float) -> torch.Tensor:  # x (B, d)
        x_in = torch.cat([x, x]) if guided else x
        t_in = torch.full((x_in.shape[0],), t, device=x.device)
        v = head.velocity(x_in, t_in, c_emb).float()
        if not guided:
            return v
        v_cond, v_uncond = v.chunk(2)
        return cfg_combine(v_cond, v_uncond, w)

    return v_fn


@torch.no_grad()
def generate(
    transformer: ARTransformer,
    head: DiffusionHead,
    labels: torch.Tensor,
    *,
    num_tokens: int | None = None,
    cfg_scale: float = 1.0,
    cfg_schedule: str = "linear",
    sampler: str = "euler_maruyama",
    steps: int = 100,
    final_step: float = PAPER_FINAL_STEP,
    projection: str = "sphere",
    radius: float | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    return_norms: bool = False,
    cfg_unit_weight: str = "shared",
    flow: str = "euclidean",
    magnitude_head: MagnitudeHead | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Sample token sequences z (B, L, d) for class labels (B,) on labels.device.

    num_tokens: L (default: the full grid; fewer = a raster prefix). radius: R for `sphere`
    (default sqrt(d)). generator/seed: noise source (a generator wins; neither = global RNG).
    return_norms: also return ||z_k|| (B, L) of each token after CFG, before projection.
    The linear schedule ramps over the full grid length N: w_k = 1 + (w - 1) k / N.
    cfg_unit_weight: `shared` | `separate`, a guided token of weight 1 (see the module docstring).
    flow: `euclidean` | `riemannian`; magnitude_head: draws each token's norm (module docstring).
    """
    N = transformer.num_tokens
    L = N if num_tokens is None else num_tokens
    check_args(transformer, labels, L, cfg_scale, cfg_schedule, sampler, steps, final_step, projection,
                cfg_unit_weight, flow)
    labels = labels.long()
    device, B, d = labels.device, labels.shape[0], transformer.token_dim
    R = math.sqrt(d) if radius is None else radius
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    guided = cfg_scale != 1.0
    if guided:
        labels = torch.cat([labels, torch.full_like(labels, transformer.null_class)])
    cond, state = transformer.prefill(labels)  # (B or 2B, D)
    tokens, norms = [], []
    for k in range(L):
        c_emb = head.condition(cond, torch.full((cond.shape[0],), k, device=device))
        w_k = cfg_scale_at(k, N, cfg_scale, cfg_schedule)
        separate = guided and cfg_unit_weight == "separate" and w_k == 1.0
        v_fn = guided_velocity(head, c_emb, w_k, guided and not separate)
        n = 2 * B if separate else B
        z_k = draw_tokens(flow, sampler, v_fn, n, d, steps, final_step, R, device, generator)  # (n, d) after CFG
        norms.append(z_k[:B].norm(dim=-1))
        if magnitude_head is not None:  # the conditional stream's condition predicts the norm (rows 0..n-1)
            z_k = compose(z_k, sample_norm(*magnitude_head(cond[:n]), generator))
        z_k = project_tokens(z_k, projection, R)
        tokens.append(z_k[:B])
        if k + 1 < L:
            cond = transformer.step(torch.cat([z_k, z_k]) if guided and not separate else z_k, state)
    z = torch.stack(tokens, dim=1)  # (B, L, d)
    return (z, torch.stack(norms, dim=1)) if return_norms else z


def sampling_kwargs(cfg: SamplingConfig, posterior: str, radius: float, steps: int | None = None) -> dict:
    """Keyword arguments of `SphereARModel.sample` from the `sampling` block (`auto` projection resolved)."""
    projection = default_projection(posterior) if cfg.projection == "auto" else cfg.projection
    return {"cfg_scale": cfg.cfg_scale, "cfg_schedule": cfg.cfg_schedule, "sampler": cfg.sampler,
            "steps": cfg.steps if steps is None else steps, "final_step": cfg.final_step,
            "projection": projection, "radius": radius,
            # recorded only when not the default, so the settings of existing sample sets stay as they were
            **({"cfg_unit_weight": cfg.cfg_unit_weight} if cfg.cfg_unit_weight != "shared" else {})}
