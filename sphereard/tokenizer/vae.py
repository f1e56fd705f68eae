"""Hybrid CNN + ViT VAE tokenizer (SphereAR Sec. 3.1 and 4.1).

image (B, C, H, W) in [-1, 1]
  -> CNN stem (stride 2^S) -> tokens (B, L, W) -> ViT encoder -> linear -> raw (B, L, P)
  -> posterior moments (B, L, P) -> latent z (B, L, d)   [spherical: ||z|| = R = sqrt(d)]
  -> linear -> ViT decoder -> CNN up-stem -> image (B, C, H, W)
with L = (H / patch)^2 tokens in raster order.
"""

from __future__ import annotations

import torch
from torch import nn

from sphereard.tokenizer.cnn import CNNDecoder, CNNEncoder
from sphereard.tokenizer.posterior import Posterior, build_posterior
from sphereard.tokenizer.presets import TokenizerArch, tokenizer_arch
from sphereard.tokenizer.vit import ViTDecoder, ViTEncoder, grid_to_tokens, tokens_to_grid


class HybridVAE(nn.Module):
    def __init__(self, arch: TokenizerArch, posterior: str = "spherical", radius: float | None = None):
        super().__init__()
        self.arch = arch
        self.posterior: Posterior = build_posterior(posterior, arch.latent_dim, radius)
        g, w = arch.grid_size, arch.width
        self.cnn_enc = CNNEncoder(arch.in_channels, arch.cnn_channels, arch.enc_extra_units)
        self.vit_enc = ViTEncoder(g, w, arch.enc_layers, arch.heads, arch.num_registers, arch.mlp_hidden,
                                  arch.rope_patch_offset)
        self.to_moments = nn.Linear(w, self.posterior.moments_dim, bias=True)
        self.from_latent = nn.Linear(arch.latent_dim, w, bias=False)
        self.vit_dec = ViTDecoder(g, w, arch.dec_layers, arch.heads, arch.num_registers, arch.mlp_hidden,
                                  arch.rope_patch_offset)
        self.cnn_dec = CNNDecoder(arch.in_channels, arch.cnn_channels, arch.dec_extra_units, arch.upsample)

    # --- shapes -----------------------------------------------------------------------------
    @property
    def grid_size(self) -> int:
        return self.arch.grid_size

    @property
    def num_tokens(self) -> int:
        return self.arch.num_tokens

    @property
    def latent_dim(self) -> int:
        return self.arch.latent_dim

    @property
    def moments_dim(self) -> int:
        return self.posterior.moments_dim

    @property
    def radius(self) -> float:
        """Sphere radius R (default sqrt(d)); nominal only for the unnormalised gaussian posterior."""
        return self.posterior.radius

    @property
    def on_sphere(self) -> bool:
        """True when every latent token has norm R (spherical, gaussian_norm)."""
        return self.posterior.on_sphere

    # --- encode / decode ----------------------------------------------------------------------
    def encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, C, H, W) in [-1, 1] -> posterior moments (B, L, P) (see posterior.py layouts)."""
        a = self.arch
        assert x.shape[1:] == (a.in_channels, a.image_size, a.image_size), (
            f"tokenizer input must be (B, {a.in_channels}, {a.image_size}, {a.image_size}), got {tuple(x.shape)}")
        h = grid_to_tokens(self.cnn_enc(x))  # (B, L, W)
        raw = self.to_moments(self.vit_enc(h)).float()  # posterior math in fp32, also under autocast
        return self.posterior.parameterise(raw)  # (B, L, P)

    def sample(self, moments: torch.Tensor) -> torch.Tensor:
        """Reparameterised latent (B, L, d) from moments (B, L, P)."""
        return self.posterior.sample(moments)

    def mode(self, moments: torch.Tensor) -> torch.Tensor:
        """Deterministic latent (B, L, d): R * mu (spherical), N_R(mean), or mean."""
        return self.posterior.mode(moments)

    def kl(self, moments: torch.Tensor) -> torch.Tensor:
        """(B,) KL per token, averaged over tokens (posterior.py)."""
        return self.posterior.kl(moments)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (B, L, d) -> image (B, C, H, W) (unbounded; ~[-1, 1] once trained)."""
        assert z.shape[1:] == (self.num_tokens, self.latent_dim), (
            f"latent must be (B, {self.num_tokens}, {self.latent_dim}), got {tuple(z.shape)}")
        h = self.vit_dec(self.from_latent(z.to(self.from_latent.weight.dtype)))  # (B, L, W)
        return self.cnn_dec(tokens_to_grid(h, self.grid_size))

    def encode(self, x: torch.Tensor, sample: bool = True) -> torch.Tensor:
        """Image -> latent (B, L, d): a posterior sample, or its mode when sample=False."""
        moments = self.encode_moments(x)
        return self.sample(moments) if sample else self.mode(moments)

    def forward(self, x: torch.Tensor, sample: bool = True) -> dict[str, torch.Tensor]:
        """dict(recon (B, C, H, W), z (B, L, d), moments (B, L, P), kl (B,))."""
        moments = self.encode_moments(x)
        z = self.sample(moments) if sample else self.mode(moments)
        return {"recon": self.decode(z), "z": z, "moments": moments, "kl": self.kl(moments)}


def create_tokenizer(name: str, posterior: str = "spherical", radius: float | None = None, **overrides) -> HybridVAE:
    """Build a HybridVAE from preset `name` (+ arch overrides); wrap in `with torch.device(...)` to place it."""
    return HybridVAE(tokenizer_arch(name, **overrides), posterior=posterior, radius=radius)
