"""Hybrid CNN + ViT VAE tokenizer: posterior heads, preset registry, losses (SphereAR Sec. 3.1, 4.1)."""

from sphereard.utils.lazy import lazy_exports

_EXPORTS = {  # public name -> submodule defining it (imported on first use)
    "LPIPS_WEIGHTS_ENV": "losses", "PatchDiscriminator": "losses", "PerceptualLoss": "losses",
    "adversarial_weight": "losses", "d_hinge_loss": "losses", "g_hinge_loss": "losses",
    "load_lpips": "losses", "reconstruction_loss": "losses",
    "POSTERIOR_CLASSES": "posterior", "GaussianNormPosterior": "posterior", "GaussianPosterior": "posterior",
    "Posterior": "posterior", "SphericalPosterior": "posterior", "build_posterior": "posterior",
    "default_radius": "posterior", "sample_from_moments": "posterior",
    "TOKENIZER_PRESETS": "presets", "TokenizerArch": "presets", "create_tokenizer": "vae",
    "tokenizer_arch": "presets",
    "HybridVAE": "vae",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
