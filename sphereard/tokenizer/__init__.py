"""Hybrid CNN + ViT VAE tokenizer: posterior heads, preset registry, losses (SphereAR Sec. 3.1, 4.1)."""

from sphereard.tokenizer.losses import (
    LPIPS_WEIGHTS_ENV,
    PatchDiscriminator,
    PerceptualLoss,
    adversarial_weight,
    d_hinge_loss,
    g_hinge_loss,
    load_lpips,
    reconstruction_loss,
)
from sphereard.tokenizer.posterior import (
    POSTERIOR_CLASSES,
    GaussianNormPosterior,
    GaussianPosterior,
    Posterior,
    SphericalPosterior,
    build_posterior,
    default_radius,
    sample_from_params,
)
from sphereard.tokenizer.presets import TOKENIZER_PRESETS, TokenizerArch, create_tokenizer, tokenizer_arch
from sphereard.tokenizer.vae import HybridVAE

__all__ = [
    "LPIPS_WEIGHTS_ENV",
    "PatchDiscriminator",
    "PerceptualLoss",
    "adversarial_weight",
    "d_hinge_loss",
    "g_hinge_loss",
    "load_lpips",
    "reconstruction_loss",
    "POSTERIOR_CLASSES",
    "TOKENIZER_PRESETS",
    "GaussianNormPosterior",
    "GaussianPosterior",
    "HybridVAE",
    "Posterior",
    "SphericalPosterior",
    "TokenizerArch",
    "build_posterior",
    "create_tokenizer",
    "default_radius",
    "sample_from_params",
    "tokenizer_arch",
]
