"""Latent posteriors and priors: Power Spherical / uniform on the sphere, diagonal Gaussians."""

from sphereard.distributions.gaussian import DiagonalGaussian, GaussianThenNormalize
from sphereard.distributions.power_spherical import HypersphericalUniform, PowerSpherical, expected_dot

__all__ = [
    "DiagonalGaussian",
    "GaussianThenNormalize",
    "HypersphericalUniform",
    "PowerSpherical",
    "expected_dot",
]
