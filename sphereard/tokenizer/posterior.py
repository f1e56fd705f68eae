"""Posterior heads of the hybrid VAE: spherical (S-VAE), gaussian_norm and gaussian (SphereAR Sec. 3.1, App. B).

All three share one interface over the per-token posterior moments (B, L, P) (MAR's term: the
distribution's parameters, not the config's `params`):
  moments_dim        P for a latent_dim d
  parameterise(raw)  raw encoder output (B, L, P) -> moments (B, L, P), the tensor that is cached
  sample(moments)    z (B, L, d), reparameterised
  mode(moments)      z (B, L, d), deterministic (posterior mode, on the sphere where it applies)
  kl(moments)        (B,) KL in nats **per token**, averaged over the L tokens of each image

Layouts: spherical [mu (unit, d) | kappa (1)], kappa = softplus(raw) + 1, latent = R * x with
x ~ PowerSpherical(mu, kappa), KL to the uniform distribution on S^{d-1} (exact, no R term);
gaussian_norm [mean (d) | logvar (d)], z = N_R(mean + std * eps), KL of the Gaussian to N(0, I);
gaussian      [mean (d) | logvar (d)], z = mean + std * eps, KL to N(0, I).
kappa may be arbitrarily large (also inf): the Power Spherical sampler then returns mu, and the
latent cache stores log kappa (`cache_log_channels`); logvar is clamped to [-30, 20] already.

KL normalisation: per-token KL (summed over the d channels for the Gaussians) and averaged over
tokens, as the official S-VAE does before weighting it by 0.004; batch-mean it for the loss.
The AR stage caches `moments` per image and calls `sample_from_moments` every training step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.distributions import kl_divergence

from sphereard.distributions import DiagonalGaussian, GaussianThenNormalize, HypersphericalUniform, PowerSpherical
from sphereard.errors import UserError
from sphereard.geometry import project_to_sphere

KAPPA_MIN = 1.0  # kappa = softplus(raw) + 1 (paper / official S-VAE)
STAT_QUANTILES = (0.05, 0.95)  # the kappa percentiles logged during training


def default_radius(latent_dim: int) -> float:
    """R = sqrt(d) (SphereAR Sec. 4.1): the radius of a standard Gaussian's typical set."""
    return math.sqrt(latent_dim)


class Posterior:
    """Base class: holds the latent dim d and the sphere radius R."""

    name = "base"
    on_sphere = True  # whether latents have constant norm R

    def __init__(self, latent_dim: int, radius: float | None = None):
        assert latent_dim >= 2, "latent_dim must be >= 2 (a sphere S^{d-1} needs d >= 2)"
        self.latent_dim = latent_dim
        self.radius = float(default_radius(latent_dim) if radius is None else radius)
        assert self.radius > 0, "radius R must be positive"

    @property
    def moments_dim(self) -> int:
        raise NotImplementedError

    def parameterise(self, raw: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, moments: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mode(self, moments: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def kl(self, moments: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def cache_log_channels(self) -> tuple[int, ...]:
        """Channels of moments that are unbounded positive scales (kappa): the latent cache stores their
        log, which no float16 column overflows (kappa > 65504 would become inf). None by default."""
        return ()

    def stats(self, moments: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Convergence statistics of a batch (scalars, detached): `cos_sample_mode`, the mean cosine
        between each sample z (B, L, d) and its posterior mode: 1 = no posterior noise, ~0 = noise
        only; the subclasses add their concentration / scale summaries (issue 15: KL alone does not
        say how noisy the tokens the generator learns are)."""
        with torch.no_grad():
            cos = F.cosine_similarity(z.float(), self.mode(moments).float(), dim=-1)  # (B, L)
        return {"cos_sample_mode": cos.mean()}

    def _check(self, moments: torch.Tensor) -> None:
        assert moments.shape[-1] == self.moments_dim, (
            f"{self.name} posterior moments must have last dim {self.moments_dim} (latent_dim {self.latent_dim})")


class SphericalPosterior(Posterior):
    """S-VAE: Power Spherical posterior, uniform prior on S^{d-1}, latent R * x (Sec. 3.1)."""

    name = "spherical"

    @property
    def moments_dim(self) -> int:
        return self.latent_dim + 1

    def parameterise(self, raw: torch.Tensor) -> torch.Tensor:
        self._check(raw)
        mu = project_to_sphere(raw[..., :-1], 1.0)  # (B, L, d), unit norm
        kappa = F.softplus(raw[..., -1:]) + KAPPA_MIN  # (B, L, 1)
        return torch.cat([mu, kappa], dim=-1)

    def split(self, moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(moments)
        mu = project_to_sphere(moments[..., :-1], 1.0)  # re-normalise: cached moments may be rounded
        return mu, moments[..., -1]  # mu (B, L, d), kappa (B, L)

    def distribution(self, moments: torch.Tensor) -> PowerSpherical:
        mu, kappa = self.split(moments)
        return PowerSpherical(mu, kappa, validate_args=False)

    def sample(self, moments: torch.Tensor) -> torch.Tensor:
        return self.radius * self.distribution(moments).rsample()

    def mode(self, moments: torch.Tensor) -> torch.Tensor:
        return self.radius * self.split(moments)[0]

    def cache_log_channels(self) -> tuple[int, ...]:
        return (self.latent_dim,)  # kappa; mu is a unit vector

    def kl(self, moments: torch.Tensor) -> torch.Tensor:
        prior = HypersphericalUniform(self.latent_dim, device=moments.device, dtype=moments.dtype)
        return kl_divergence(self.distribution(moments), prior).mean(dim=-1)  # (B, L) -> (B,)

    def stats(self, moments: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """+ concentration kappa over the batch's tokens: mean, 5th and 95th percentiles."""
        kappa = self.split(moments.detach())[1].float().flatten()  # (B*L,)
        low, high = torch.quantile(kappa, torch.tensor(STAT_QUANTILES, device=kappa.device))
        return {**super().stats(moments, z), "kappa_mean": kappa.mean(), "kappa_p05": low, "kappa_p95": high}


def concentration_bias(kappa: float) -> float:
    """The raw pre-activation b with softplus(b) + KAPPA_MIN = kappa (kappa > KAPPA_MIN): the bias
    that makes a zero-input spherical head start at concentration kappa (`tokenizer.train.kappa_init`)."""
    assert kappa > KAPPA_MIN, f"kappa must exceed {KAPPA_MIN} (kappa = softplus(raw) + {KAPPA_MIN})"
    y = kappa - KAPPA_MIN
    return y + math.log(-math.expm1(-y))  # log(exp(y) - 1), stable for large y


@torch.no_grad()
def init_concentration(to_moments: torch.nn.Linear, kappa: float) -> None:
    """Set the bias of the kappa channel (the last output) of a spherical head's moments layer."""
    to_moments.bias[-1] = concentration_bias(kappa)


class GaussianPosterior(Posterior):
    """Diagonal Gaussian posterior, KL to N(0, I), no normalisation (the unconstrained baseline)."""

    name = "gaussian"
    on_sphere = False

    @property
    def moments_dim(self) -> int:
        return 2 * self.latent_dim

    def parameterise(self, raw: torch.Tensor) -> torch.Tensor:
        self._check(raw)
        g = DiagonalGaussian(*raw.chunk(2, dim=-1))  # clamps logvar to a finite range
        return torch.cat([g.mean, g.logvar], dim=-1)

    def split(self, moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(moments)
        mean, logvar = moments.chunk(2, dim=-1)
        return mean, logvar  # (B, L, d) each

    def distribution(self, moments: torch.Tensor):
        return DiagonalGaussian(*self.split(moments))

    def sample(self, moments: torch.Tensor) -> torch.Tensor:
        return self.distribution(moments).rsample()

    def mode(self, moments: torch.Tensor) -> torch.Tensor:
        return self.distribution(moments).mode()

    def kl(self, moments: torch.Tensor) -> torch.Tensor:
        return self.distribution(moments).kl_to_standard_normal().mean(dim=-1)  # (B, L) -> (B,)

    def stats(self, moments: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """+ the posterior std per latent dimension (mean over the batch's tokens): its mean over the
        d dimensions, and the smallest and largest dimension's."""
        std = torch.exp(0.5 * self.split(moments.detach())[1].float())  # (B, L, d)
        per_dim = std.reshape(-1, std.shape[-1]).mean(0)  # (d,)
        return {**super().stats(moments, z), "std_mean": per_dim.mean(), "std_min_dim": per_dim.min(),
                "std_max_dim": per_dim.max()}


class GaussianNormPosterior(GaussianPosterior):
    """Diagonal Gaussian sample, then N_R onto the radius-R sphere; Gaussian KL (App. B baseline)."""

    name = "gaussian_norm"
    on_sphere = True

    def distribution(self, moments: torch.Tensor) -> GaussianThenNormalize:
        return GaussianThenNormalize(*self.split(moments), radius=self.radius)


POSTERIOR_CLASSES: dict[str, type[Posterior]] = {
    cls.name: cls for cls in (SphericalPosterior, GaussianNormPosterior, GaussianPosterior)
}


def build_posterior(posterior: str, latent_dim: int, radius: float | None = None) -> Posterior:
    """Posterior head by name: spherical | gaussian_norm | gaussian."""
    if posterior not in POSTERIOR_CLASSES:
        raise UserError(f"posterior={posterior!r}: must be one of {', '.join(POSTERIOR_CLASSES)}")
    return POSTERIOR_CLASSES[posterior](latent_dim, radius)


def latent_dim_from_moments(posterior: str, moments_dim: int) -> int:
    """Invert moments_dim: d + 1 (spherical) or 2d (gaussians)."""
    if posterior == "spherical":
        return moments_dim - 1
    assert moments_dim % 2 == 0, "Gaussian posterior moments hold [mean | logvar], so P must be even"
    return moments_dim // 2


def cache_log_channels(posterior: str, moments_dim: int) -> tuple[int, ...]:
    """Channels of a `posterior`'s moments (..., moments_dim) that the latent cache stores as log."""
    return build_posterior(posterior, latent_dim_from_moments(posterior, moments_dim)).cache_log_channels()


def sample_from_moments(posterior: str, moments: torch.Tensor, radius: float | None = None,
                        mode: bool = False) -> torch.Tensor:
    """Fresh latent z (..., d) from cached posterior moments (..., P); `mode=True` gives the mode.

    `radius` defaults to sqrt(d) and is ignored by the plain gaussian posterior.
    """
    post = build_posterior(posterior, latent_dim_from_moments(posterior, moments.shape[-1]), radius)
    return post.mode(moments) if mode else post.sample(moments)
