"""Sphere geometry on the last tensor dim (SphereAR, arXiv 2509.24335, Sec. 3).

Latent tokens live on the sphere of radius R in R^D. Every function here is pure, works on any
leading batch shape (..., D) and follows the input's device and dtype. Points passed as `x`/`y`
are re-normalised internally where that makes a function more robust; tangent vectors are not.
"""

import math

import torch
from torch import Tensor

NORM_EPS = 1e-12  # floor on vector norms, keeps divisions finite for (near-)zero vectors


def _unit(x: Tensor, eps: float = NORM_EPS) -> Tensor:
    """x / max(||x||, eps) on the last dim; the floor is raised to the dtype's tiny (float16)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(max(eps, torch.finfo(x.dtype).tiny))


def _check_radius(radius) -> None:
    if not isinstance(radius, Tensor):
        assert radius > 0, "radius R must be positive"


def project_to_sphere(x: Tensor, radius=1.0, eps: float = NORM_EPS) -> Tensor:
    """N_R(x) = R * x / ||x|| (Sec. 3). (..., D) -> (..., D).

    Norms are floored at eps, so vectors shorter than eps land inside the sphere and the zero
    vector maps to zero, with finite values and gradients (no NaN).
    """
    _check_radius(radius)
    return radius * _unit(x, eps)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(dim=-1, keepdim=True)  # (..., 1)


def tangent_project(x: Tensor, v: Tensor) -> Tensor:
    """Component of v orthogonal to the point x (any radius): v - <v, x^> x^. (..., D)."""
    u = _unit(x)
    return v - _dot(v, u) * u


def radial_tangential_split(x_ref: Tensor, err: Tensor) -> tuple[Tensor, Tensor]:
    """Split err into (radial, tangential) w.r.t. the direction x_ref / ||x_ref||.

    radial = <err, u> u with u = x_ref / ||x_ref||, tangential = err - radial; both (..., D)
    and radial + tangential == err. Used for error diagnostics on spherical latents.
    """
    u = _unit(x_ref)
    radial = _dot(err, u) * u
    return radial, err - radial


def _angle(u: Tensor, w: Tensor) -> Tensor:
    """Angle between unit vectors, 2 atan2(||u - w||, ||u + w||): accurate at 0 and pi. (..., 1)."""
    return 2.0 * torch.atan2((u - w).norm(dim=-1, keepdim=True), (u + w).norm(dim=-1, keepdim=True))


def _sinc(theta: Tensor) -> Tensor:
    """sin(theta) / theta with the limit 1 at 0 (torch.sinc is the normalised sin(pi x)/(pi x))."""
    return torch.sinc(theta / math.pi)


def geodesic_distance(x: Tensor, y: Tensor, radius=1.0) -> Tensor:
    """Great-circle distance R * angle(x, y) on the radius-R sphere. (..., D), (..., D) -> (...)."""
    _check_radius(radius)
    return radius * _angle(_unit(x), _unit(y)).squeeze(-1)


def exp_map(x: Tensor, v: Tensor, radius=1.0) -> Tensor:
    """Exponential map at x on the radius-R sphere: walk the geodesic with velocity v for unit time.

    exp_x(v) = cos(th) x + R sin(th) v / ||v||, th = ||v|| / R, written as cos(th) x + sinc(th) v
    so v = 0 returns x exactly. The normal component of v (w.r.t. x) is discarded first.
    x: (..., D) on the sphere, v: (..., D) -> (..., D).
    """
    _check_radius(radius)
    x = radius * _unit(x)
    v = tangent_project(x, v)
    theta = v.norm(dim=-1, keepdim=True) / radius  # (..., 1)
    return torch.cos(theta) * x + _sinc(theta) * v


def log_map(x: Tensor, y: Tensor, radius=1.0) -> Tensor:
    """Logarithmic map: tangent vector v at x with exp_x(v) = y and ||v|| = geodesic_distance(x, y).

    v = R th / sin(th) * (y^ - cos(th) x^) with th = angle(x, y); y = x gives v = 0. Undefined
    (non-finite) for antipodal y = -x, where every direction is a shortest geodesic.
    x, y: (..., D) -> (..., D).
    """
    _check_radius(radius)
    u, w = _unit(x), _unit(y)
    theta = _angle(u, w)  # (..., 1)
    d = (w - u) - _dot(w - u, u) * u  # = w - cos(th) u, computed from the small difference w - u
    return radius * d / _sinc(theta)


def slerp(x: Tensor, y: Tensor, t, radius=1.0) -> Tensor:
    """Spherical linear interpolation exp_x(t log_x(y)) on the radius-R sphere.

    t: float or tensor broadcastable to the batch shape (...); t = 0 gives x, t = 1 gives y and
    the path has constant speed. Stable for x ~ y; undefined for antipodal points.
    x, y: (..., D) -> (..., D).
    """
    if isinstance(t, Tensor):
        t = t.unsqueeze(-1)  # (..., 1)
    return exp_map(x, t * log_map(x, y, radius), radius)


def sphere_log_area(dim):
    """log surface area of the unit sphere S^{dim-1} in R^dim: log 2 + (dim/2) log pi - lgamma(dim/2).

    Float for an int dim, tensor for a tensor dim.
    """
    if isinstance(dim, Tensor):
        dim = dim.to(torch.get_default_dtype()) if not dim.is_floating_point() else dim
        return math.log(2.0) + 0.5 * dim * math.log(math.pi) - torch.lgamma(0.5 * dim)
    assert dim >= 1, "sphere dimension must be >= 1"
    return math.log(2.0) + 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim)
