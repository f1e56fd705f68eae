"""Power Spherical distribution and the uniform distribution on S^{m-1}.

Power Spherical: De Cao & Aziz 2020, "The Power Spherical distribution"; SphereAR (arXiv
2509.24335, Sec. 3.1) uses it as the tokenizer posterior with a KL to the uniform prior.
Density p(x; mu, kappa) = C(kappa, m) (1 + mu.x)^kappa on S^{m-1}, with
alpha = (m-1)/2 + kappa, beta = (m-1)/2 and
log C = -[(alpha+beta) log 2 + beta log pi + lgamma(alpha) - lgamma(alpha+beta)].

Accurate at any concentration, in float32 as well: the lgamma / digamma differences go through
`sphereard.distributions.special` (no cancellation, ~1e-5 relative from kappa = 0 to 1e30), and
sampling draws 1 - z (small when kappa is large) rather than z, with its own large-alpha
reparameterisation, so kappa = inf or any huge value samples mu with finite gradients.
"""

import math

import torch
from torch import Tensor
from torch.distributions import Beta, Distribution, Gamma, constraints
from torch.distributions.kl import register_kl

from sphereard.distributions.special import kl_power_spherical_uniform, log_gamma_ratio
from sphereard.geometry import sphere_log_area

SPHERE_TOL = 1e-4  # |  ||x|| - 1 | allowed by the unit-sphere constraint (float32 round-off)
# alpha above which 1 - z ~ Beta(beta, alpha) is drawn as G_beta / (G_beta + G_alpha) with gamma draws:
# torch's implicit Beta gradient degrades there (0 for beta = 1/2 at alpha 1e5, NaN from alpha ~1e7-1e10)
GAMMA_DRAW_ALPHA = 1e3


class _UnitSphere(constraints.Constraint):
    """Vectors of unit L2 norm on the last dim."""

    is_discrete = False
    event_dim = 1

    def check(self, value: Tensor) -> Tensor:
        return (value.norm(dim=-1) - 1.0).abs() < SPHERE_TOL


unit_sphere = _UnitSphere()


def _half_dims(dim: int) -> float:
    """beta = (m - 1) / 2, the concentration of the Beta marginal that does not depend on kappa."""
    return 0.5 * (dim - 1)


def expected_dot(scale, dim: int):
    """E[mu.x] = (alpha - beta) / (alpha + beta) = kappa / (kappa + m - 1) for x ~ PS(mu, kappa); 1 at kappa = inf."""
    assert dim >= 2, "Power Spherical needs dimension m >= 2"
    if not torch.is_tensor(scale):
        return 1.0 if math.isinf(scale) else scale / (scale + dim - 1)
    kappa = scale.clamp(max=torch.finfo(scale.dtype).max / 4)  # inf -> huge: ratio 1, gradient 0
    return kappa / (kappa + (dim - 1))


def _uniform_direction(shape: torch.Size, dim: int, device, dtype) -> Tensor:
    """Uniform samples on S^{dim-1}: normalised standard normals. -> shape + (dim,)."""
    g = torch.randn(shape + (dim,), device=device, dtype=dtype)
    return g / g.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)


class HypersphericalUniform(Distribution):
    """Uniform distribution on the unit sphere S^{dim-1} in R^dim (the SphereAR tokenizer prior)."""

    arg_constraints = {}
    support = unit_sphere
    has_rsample = True

    def __init__(self, dim, device=None, dtype=None, validate_args=None):
        self.dim = int(dim)
        assert self.dim >= 1, "sphere dimension must be >= 1"
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.dtype = torch.get_default_dtype() if dtype is None else dtype
        super().__init__(torch.Size(), torch.Size((self.dim,)), validate_args=validate_args)

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        return _uniform_direction(torch.Size(sample_shape), self.dim, self.device, self.dtype)

    def log_prob(self, value: Tensor) -> Tensor:
        """-log |S^{dim-1}| everywhere on the sphere. (..., dim) -> (...)."""
        if self._validate_args:
            self._validate_sample(value)
        return torch.full(value.shape[:-1], -sphere_log_area(self.dim), device=value.device, dtype=value.dtype)

    def entropy(self) -> Tensor:
        return torch.tensor(sphere_log_area(self.dim), device=self.device, dtype=self.dtype)


class PowerSpherical(Distribution):
    """Power Spherical distribution PS(loc, scale) on S^{m-1} (De Cao & Aziz 2020).

    loc: (..., m) unit mean direction; scale: (...) concentration kappa >= 0 (floats allowed).
    Parameters broadcast: batch_shape = broadcast(loc.shape[:-1], scale.shape), event_shape = (m,).
    rsample is reparameterised in loc (Householder map) and scale (implicit Beta gradients; gamma
    pathwise gradients for alpha >= GAMMA_DRAW_ALPHA). scale may be inf: samples are then loc.
    """

    arg_constraints = {"loc": unit_sphere, "scale": constraints.nonnegative}
    support = unit_sphere
    has_rsample = True

    def __init__(self, loc: Tensor, scale, validate_args=None):
        assert loc.dim() >= 1 and loc.shape[-1] >= 2, "loc must be (..., m) with m >= 2"
        scale = torch.as_tensor(scale, dtype=loc.dtype, device=loc.device)
        batch_shape = torch.broadcast_shapes(loc.shape[:-1], scale.shape)
        self.dim = loc.shape[-1]
        self.loc = loc.expand(batch_shape + (self.dim,))  # (..., m)
        self.scale = scale.expand(batch_shape)  # (...)
        super().__init__(batch_shape, torch.Size((self.dim,)), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return PowerSpherical(self.loc.expand(batch_shape + (self.dim,)), self.scale.expand(batch_shape),
                              validate_args=False)

    @property
    def _alpha_beta(self) -> tuple[Tensor, Tensor]:
        beta = torch.full_like(self.scale, _half_dims(self.dim))
        return beta + self.scale, beta

    def _log_normalizer_at_half(self) -> Tensor:
        """log C + kappa log 2 = lgamma(alpha+beta) - lgamma(alpha) - beta log(4 pi), stably. (...)"""
        beta = _half_dims(self.dim)
        return log_gamma_ratio(beta + self.scale, beta) - beta * math.log(4.0 * math.pi)

    def log_normalizer(self) -> Tensor:
        """log C(kappa, m) = -[(alpha+beta) log 2 + beta log pi + lgamma(alpha) - lgamma(alpha+beta)]. (...)"""
        return self._log_normalizer_at_half() - self.scale * math.log(2.0)

    def log_prob(self, value: Tensor) -> Tensor:
        """log C + kappa log(1 + loc.x) = [log C + kappa log 2] + kappa log((1 + loc.x) / 2). (..., m) -> (...).

        (1 + t) / 2 is 1 - |x - mu|^2 / 4 = |x + mu|^2 / 4 on the unit sphere; the first form (through
        log1p) keeps the O(|x - mu|^2) deviation when x is close to mu, where kappa is large and
        1 + t would round it away. value is re-normalised first, so its float round-off off the sphere
        (~1e-7 in float32) is not amplified by a large kappa. kappa = 0 gives the uniform density;
        kappa = inf is a point mass at loc, which has no density (NaN there, -inf elsewhere).
        """
        if self._validate_args:
            self._validate_sample(value)
        x = value / value.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(value.dtype).tiny)  # (..., m)
        near = (self.loc * x).sum(-1) > 0  # (...)
        gap = ((x - self.loc).square().sum(-1) / 4).clamp(max=0.5)  # (1 - t) / 2 where near
        half = (x + self.loc).square().sum(-1) / 4  # (1 + t) / 2
        log_half = torch.where(near, self.scale * torch.log1p(-gap), torch.xlogy(self.scale, half))
        return self._log_normalizer_at_half() + log_half

    def entropy(self) -> Tensor:
        """H = -[log C + kappa E log(1 + mu.x)] = log |S^{m-1}| - KL(PS || U), from the stable KL. (...)"""
        return sphere_log_area(self.dim) - kl_power_spherical_uniform(self.scale, self.dim)

    @property
    def mean(self) -> Tensor:
        """E[x] = loc * (alpha - beta) / (alpha + beta). (..., m)"""
        return self.loc * expected_dot(self.scale, self.dim).unsqueeze(-1)

    def _sample_tail(self, sample_shape: torch.Size) -> Tensor:
        """w = 1 - Z with Z ~ Beta(alpha, beta), i.e. w ~ Beta(beta, alpha): S + B, in (0, 1).

        alpha < GAMMA_DRAW_ALPHA: torch's Beta (implicit reparameterisation gradients). Above it,
        w = G_b / (G_b + G_a) with G_b ~ Gamma(beta), G_a ~ Gamma(alpha) (same law; pathwise gradient
        through G_a, accurate at any alpha); alpha is capped at a finite bound there, which leaves
        w at the dtype's resolution: kappa = inf gives w ~ 1e-38 (float32), i.e. the sample mu.
        Drawing w rather than Z keeps 1 - Z exact when it is far below the float epsilon.
        """
        alpha, beta = self._alpha_beta
        use_gamma = alpha >= GAMMA_DRAW_ALPHA  # B
        fill = torch.full_like(alpha, GAMMA_DRAW_ALPHA)
        alpha_beta_draw = torch.where(use_gamma, fill, alpha)  # each draw sees its own domain only
        alpha_gamma_draw = torch.where(use_gamma, alpha, fill).clamp(max=torch.finfo(alpha.dtype).max / 16)
        w_beta = Beta(beta, alpha_beta_draw, validate_args=False).rsample(sample_shape)
        ones = torch.ones_like(alpha)
        g_b = Gamma(beta, ones, validate_args=False).sample(sample_shape)  # beta is a constant: no gradient
        g_a = Gamma(alpha_gamma_draw, ones, validate_args=False).rsample(sample_shape)
        w_gamma = g_b / (g_b + g_a)
        return torch.where(use_gamma, w_gamma, w_beta)

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        """Reparameterised samples, sample_shape + batch_shape + (m,).

        t = 2Z - 1 = 1 - 2w with Z ~ Beta(alpha, beta), w = 1 - Z (`_sample_tail`) is the coordinate
        along e1, v ~ U(S^{m-2}) the rest: y = [t, sqrt(1 - t^2) v]. Then an orthogonal map sending e1
        to loc: the reflection H_u y = y - 2 u (u.y) / (u.u) with u = e1 - s loc, times s, where
        s = -sign(loc_1) (s = -1 when loc_1 = 0). This is the stable-QR sign choice: u.u >= 1 always,
        so loc = +e1 or -e1 never divides by zero, and s H_u e1 = loc for unit loc.
        """
        shape = self._extended_shape(sample_shape)  # S + B + (m,)
        w = self._sample_tail(torch.Size(sample_shape))  # S + B
        t = (1.0 - 2.0 * w).unsqueeze(-1)  # S + B + (1,)
        # sqrt(1 - t^2) = 2 sqrt(w (1 - w)), accurate when w is close to 0 or 1
        r = 2.0 * (w * (1.0 - w)).clamp_min(torch.finfo(w.dtype).tiny).sqrt().unsqueeze(-1)
        v = _uniform_direction(shape[:-1], self.dim - 1, self.loc.device, self.loc.dtype)  # S + B + (m-1,)
        y = torch.cat([t, r * v], dim=-1)  # S + B + (m,)

        s = torch.where(self.loc[..., :1] >= 0, -1.0, 1.0).to(self.loc.dtype)  # B + (1,)
        u = -s * self.loc
        u = torch.cat([u[..., :1] + 1.0, u[..., 1:]], dim=-1)  # e1 - s loc, B + (m,)
        uu = (u * u).sum(-1, keepdim=True)  # >= 1 for unit loc
        return s * (y - 2.0 * u * (u * y).sum(-1, keepdim=True) / uu)


@register_kl(PowerSpherical, HypersphericalUniform)
def _kl_power_spherical_uniform(p: PowerSpherical, q: HypersphericalUniform) -> Tensor:
    """KL(PS(mu, kappa) || U(S^{m-1})) = log |S^{m-1}| - H(PS) (SphereAR Sec. 3.1), computed directly
    (`special.kl_power_spherical_uniform`): ~1e-5 relative in float32 also near kappa = 0. (...)"""
    assert p.dim == q.dim, "KL needs both distributions on the same sphere S^{m-1}"
    return kl_power_spherical_uniform(p.scale, p.dim)
