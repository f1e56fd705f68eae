"""Projection of sampled tokens after CFG (SphereAR Sec. 3.3): z <- N_R(z) = R z / ||z||.

`sphere` puts every generated token back on the radius-R sphere before it is fed to the next
AR step and decoded; `none` leaves it as sampled (the plain Gaussian-VAE baseline).
"""

from __future__ import annotations

import torch

from sphereard.config import SPHERE_POSTERIORS
from sphereard.errors import UserError
from sphereard.geometry import project_to_sphere

PROJECTIONS: tuple[str, ...] = ("sphere", "none")
FREE_POSTERIORS: tuple[str, ...] = ("gaussian",)


def project_tokens(z: torch.Tensor, mode: str, radius: float | None = None) -> torch.Tensor:
    """(..., d) -> (..., d). `sphere` needs a radius R > 0; `none` returns z unchanged."""
    if mode == "sphere":
        if radius is None:
            raise UserError("projection='sphere': needs a radius R (paper: sqrt(d))")
        return project_to_sphere(z, radius)
    if mode == "none":
        return z
    raise UserError(f"projection={mode!r}: must be one of {', '.join(PROJECTIONS)}")


def default_projection(posterior: str) -> str:
    """The projection that matches a tokenizer's latent geometry.

    spherical and gaussian_norm latents live on the sphere -> `sphere`; gaussian -> `none`.
    """
    if posterior in SPHERE_POSTERIORS:
        return "sphere"
    if posterior in FREE_POSTERIORS:
        return "none"
    known = ", ".join(SPHERE_POSTERIORS + FREE_POSTERIORS)
    raise UserError(f"posterior={posterior!r}: must be one of {known}")
