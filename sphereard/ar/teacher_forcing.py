"""Teacher-forced next-token predictions: every position at once, given the true prefix.

Used by the latent-geometry diagnostics (SphereAR Sec. 3.2, Fig. 4 story): the error of each
predicted token, split into its radial and tangential parts and read against its floor (two independent
posterior samples of the token, `sphereard.eval.diagnostics.radial_tangential_floor`), shows what the
projection removes.
"""

from __future__ import annotations

import torch

from sphereard.ar.magnitude import compose, sample_norm
from sphereard.ar.presets import SphereARModel
from sphereard.ar.sampler import draw_tokens


@torch.no_grad()
def teacher_forced_predictions(model: SphereARModel, z: torch.Tensor, labels: torch.Tensor, *, steps: int,
                               sampler: str = "euler", final_step: float = 0.0,
                               generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample token k from the head conditioned on the true z_<k, for all k in parallel.

    z (B, L, d) context tokens (the evaluate stage passes posterior samples, as in training), labels (B,)
    -> predictions (B, L, d), before any projection; no CFG. The model's own flow draws them (a riemannian
    head on the sphere of the context tokens' mean norm); a magnitude head gives each its sampled norm."""
    B, L, d = z.shape
    cond = model.transformer(z, labels)  # (B, L, D): position k conditions token k
    positions = torch.arange(L, device=z.device).repeat(B)  # (B*L,)
    c_emb = model.head.condition(cond.reshape(B * L, -1), positions)

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        return model.head.velocity(x, torch.full((x.shape[0],), t, device=x.device), c_emb).float()

    radius = float(z.norm(dim=-1).mean())
    pred = draw_tokens(model.flow, sampler, velocity, B * L, d, steps, final_step, radius, z.device, generator)
    if model.magnitude_head is not None:
        pred = compose(pred, sample_norm(*model.magnitude_head(cond.reshape(B * L, -1)), generator))
    return pred.reshape(B, L, d)
