"""sphereard: continuous-token autoregressive image generation on hyperspherical latents (SphereAR)."""

__version__ = "0.1.0"
