"""Diagonal Gaussian posterior and the "Gaussian, then L2-normalised" baseline.

The baseline samples z ~ N(mean, diag(exp(logvar))) and projects it with N_R (SphereAR,
arXiv 2509.24335, Sec. 3.1 and App. B). Its KL term is the plain Gaussian KL to N(0, I),
which only bounds the KL of the projected (pushforward) distribution loosely; the Power
Spherical posterior's KL to the uniform prior is exact.
"""

import torch
from torch import Tensor

from sphereard.geometry import project_to_sphere

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # clamp keeps exp(logvar) finite in float32 (as in LDM's VAE)


class DiagonalGaussian:
    """N(mean, diag(exp(logvar))) over the last (latent) dim. mean, logvar: (..., D)."""

    def __init__(self, mean: Tensor, logvar: Tensor):
        assert mean.shape == logvar.shape, "mean and logvar must have the same shape (..., D)"
        self.mean = mean
        self.logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        self.std = torch.exp(0.5 * self.logvar)

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        """mean + std * eps, eps ~ N(0, I). -> sample_shape + (..., D)."""
        eps = torch.randn(torch.Size(sample_shape) + self.mean.shape, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> Tensor:
        return self.mean

    def kl_to_standard_normal(self) -> Tensor:
        """KL(N(mean, var) || N(0, I)) = 0.5 sum_D (mean^2 + var - 1 - logvar). (..., D) -> (...)."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).sum(dim=-1)


class GaussianThenNormalize:
    """Baseline posterior: z = N_R(g), g ~ DiagonalGaussian(mean, logvar) (SphereAR App. B).

    rsample/mode lie on the radius-R sphere; kl_to_standard_normal is the Gaussian KL of g
    (the looser bound the paper contrasts with the Power Spherical KL).
    """

    def __init__(self, mean: Tensor, logvar: Tensor, radius=1.0):
        assert radius > 0, "radius R must be positive"
        self.gaussian = DiagonalGaussian(mean, logvar)
        self.radius = radius

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        """N_R(mean + std * eps). -> sample_shape + (..., D), norm R."""
        return project_to_sphere(self.gaussian.rsample(sample_shape), self.radius)

    def mode(self) -> Tensor:
        return project_to_sphere(self.gaussian.mean, self.radius)

    def kl_to_standard_normal(self) -> Tensor:
        """Gaussian KL of the pre-projection sample, summed over D. (...)."""
        return self.gaussian.kl_to_standard_normal()
