"""Power Spherical distribution and the uniform distribution on S^{m-1}.

Power Spherical: De Cao & Aziz 2020, "The Power Spherical distribution"; SphereAR (arXiv
2509.24335, Sec. 3.1) uses it as the tokenizer posterior with a KL to the uniform prior.
Density p(x; mu, kappa) = C(kappa, m) (1 + mu.x)^kappa on S^{m-1}, with
alpha = (m-1)/2 + kappa, beta = (m-1)/2 and
log C = -[(alpha+beta) log 2 + beta log pi + lgamma(alpha) - lgamma(alpha+beta)].
"""

import math

import torch
from torch import Tensor
from torch.distributions import Beta, Distribution, constraints
from torch.distributions.kl import register_kl

from sphereard.geometry import sphere_log_area

SPHERE_TOL = 1e-4  # |  ||x|| - 1 | allowed by the unit-sphere constraint (float32 round-off)


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
    """E[mu.x] = (alpha - beta) / (alpha + beta) = kappa / (kappa + m - 1) for x ~ PS(mu, kappa)."""
    assert dim >= 2, "Power Spherical needs dimension m >= 2"
    beta = _half_dims(dim)
    alpha = beta + scale
    return (alpha - beta) / (alpha + beta)


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
    rsample is reparameterised in loc (Householder map) and scale (implicit Beta gradients).
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

    def log_normalizer(self) -> Tensor:
        """log C(kappa, m) = -[(alpha+beta) log 2 + beta log pi + lgamma(alpha) - lgamma(alpha+beta)]. (...)"""
        alpha, beta = self._alpha_beta
        return -((alpha + beta) * math.log(2.0) + beta * math.log(math.pi)
                 + torch.lgamma(alpha) - torch.lgamma(alpha + beta))

    def log_prob(self, value: Tensor) -> Tensor:
        """log C + kappa log(1 + loc.x). (..., m) -> (...); kappa = 0 gives the uniform density."""
        if self._validate_args:
            self._validate_sample(value)
        one_plus_dot = (1.0 + (self.loc * value).sum(-1)).clamp_min(0.0)  # (...)
        return self.log_normalizer() + torch.xlogy(self.scale, one_plus_dot)

    def entropy(self) -> Tensor:
        """H = -[log C + kappa (log 2 + digamma(alpha) - digamma(alpha+beta))]. (...)"""
        alpha, beta = self._alpha_beta
        expected_log = math.log(2.0) + torch.digamma(alpha) - torch.digamma(alpha + beta)  # E[log(1+mu.x)]
        return -(self.log_normalizer() + self.scale * expected_log)

    @property
    def mean(self) -> Tensor:
        """E[x] = loc * (alpha - beta) / (alpha + beta). (..., m)"""
        return self.loc * expected_dot(self.scale, self.dim).unsqueeze(-1)

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        """Reparameterised samples, sample_shape + batch_shape + (m,).

        t = 2Z - 1 with Z ~ Beta(alpha, beta) is the coordinate along e1, v ~ U(S^{m-2}) the
        rest: y = [t, sqrt(1 - t^2) v]. Then an orthogonal map sending e1 to loc: the reflection
        H_u y = y - 2 u (u.y) / (u.u) with u = e1 - s loc, times s, where s = -sign(loc_1)
        (s = -1 when loc_1 = 0). This is the stable-QR sign choice: u.u >= 1 always, so
        loc = +e1 or -e1 never divides by zero, and s H_u e1 = loc for unit loc.
        """
        shape = self._extended_shape(sample_shape)  # S + B + (m,)
        alpha, beta = self._alpha_beta
        z = Beta(alpha, beta, validate_args=False).rsample(sample_shape)  # S + B
        t = (2.0 * z - 1.0).unsqueeze(-1)  # S + B + (1,)
        # sqrt(1 - t^2) = 2 sqrt(z (1 - z)), accurate when z is close to 0 or 1
        r = 2.0 * (z * (1.0 - z)).clamp_min(torch.finfo(z.dtype).tiny).sqrt().unsqueeze(-1)
        v = _uniform_direction(shape[:-1], self.dim - 1, self.loc.device, self.loc.dtype)  # S + B + (m-1,)
        y = torch.cat([t, r * v], dim=-1)  # S + B + (m,)

        s = torch.where(self.loc[..., :1] >= 0, -1.0, 1.0).to(self.loc.dtype)  # B + (1,)
        u = -s * self.loc
        u = torch.cat([u[..., :1] + 1.0, u[..., 1:]], dim=-1)  # e1 - s loc, B + (m,)
        uu = (u * u).sum(-1, keepdim=True)  # >= 1 for unit loc
        return s * (y - 2.0 * u * (u * y).sum(-1, keepdim=True) / uu)


@register_kl(PowerSpherical, HypersphericalUniform)
def _kl_power_spherical_uniform(p: PowerSpherical, q: HypersphericalUniform) -> Tensor:
    """KL(PS(mu, kappa) || U(S^{m-1})) = log |S^{m-1}| - H(PS) (SphereAR Sec. 3.1). (...)"""
    assert p.dim == q.dim, "KL needs both distributions on the same sphere S^{m-1}"
    return sphere_log_area(p.dim) - p.entropy()
