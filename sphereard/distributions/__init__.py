"""Latent posteriors and priors: Power Spherical / uniform on the sphere, diagonal Gaussians."""

from sphereard.utils.lazy import lazy_exports

_EXPORTS = {  # public name -> submodule defining it (imported on first use)
    "DiagonalGaussian": "gaussian", "GaussianThenNormalize": "gaussian",
    "HypersphericalUniform": "power_spherical", "PowerSpherical": "power_spherical",
    "expected_dot": "power_spherical",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
