"""Sphere geometry identities (sphereard.geometry), float64 unless stated."""

import math

import pytest
import torch

from sphereard.geometry import (
    exp_map,
    geodesic_distance,
    log_map,
    project_to_sphere,
    radial_tangential_split,
    slerp,
    sphere_log_area,
    tangent_project,
)

TOL = 1e-10  # float64 identities
R = 4.0  # sqrt(16), the paper's radius for d = 16


def _points(n=32, d=16, seed=0, radius=R):
    g = torch.Generator().manual_seed(seed)
    return project_to_sphere(torch.randn(n, d, generator=g, dtype=torch.float64), radius)


def _tangent(x, scale=1.0, seed=1):
    g = torch.Generator().manual_seed(seed)
    return scale * tangent_project(x, torch.randn(x.shape, generator=g, dtype=x.dtype))


def test_project_to_sphere_norm_and_direction():
    x = torch.randn(5, 3, 16, dtype=torch.float64)
    z = project_to_sphere(x, R)
    assert z.shape == x.shape
    torch.testing.assert_close(z.norm(dim=-1), torch.full((5, 3), R, dtype=torch.float64), atol=TOL, rtol=0)
    cos = (z * x).sum(-1) / (z.norm(dim=-1) * x.norm(dim=-1))
    torch.testing.assert_close(cos, torch.ones_like(cos), atol=TOL, rtol=0)


def test_project_to_sphere_tiny_and_zero_norms_float32():
    x = torch.tensor([[1e-9, -2e-9, 3e-10], [0.0, 0.0, 0.0]], dtype=torch.float32, requires_grad=True)
    z = project_to_sphere(x, 2.0)
    assert abs(z[0].norm().item() - 2.0) < 1e-6  # short (norm > eps) vectors still land on the sphere
    assert torch.isfinite(z).all() and z[1].abs().max().item() == 0.0  # zero has no direction: 0, not NaN
    z.sum().backward()
    assert torch.isfinite(x.grad).all()
    z16 = project_to_sphere(torch.zeros(4, dtype=torch.float16), 1.0)  # eps below float16 range
    assert torch.isfinite(z16).all()


def test_tangent_project_orthogonal_any_radius():
    x = 3.0 * _points(radius=1.7)
    v = torch.randn_like(x)
    t = tangent_project(x, v)
    assert (t * x).sum(-1).abs().max().item() < TOL * 10
    torch.testing.assert_close(tangent_project(x, t), t, atol=TOL, rtol=0)  # idempotent


def test_radial_tangential_split():
    x = _points()
    err = torch.randn_like(x)
    radial, tang = radial_tangential_split(x, err)
    torch.testing.assert_close(radial + tang, err, atol=TOL, rtol=0)
    assert (tang * x).sum(-1).abs().max().item() < TOL * 10
    # radial is parallel to x: its norm equals |<err, x/||x||>|
    expected = ((err * x).sum(-1) / x.norm(dim=-1)).abs()
    torch.testing.assert_close(radial.norm(dim=-1), expected, atol=TOL, rtol=0)


def test_exp_log_round_trips():
    x = _points(seed=0)
    y = _points(seed=5)
    v = log_map(x, y, R)
    assert (v * x).sum(-1).abs().max().item() < 1e-9  # log is a tangent vector
    torch.testing.assert_close(exp_map(x, v, R), y, atol=1e-9, rtol=0)
    # log(exp(v)) = v for ||v|| < pi R
    w = _tangent(x)
    w = w * (2.5 * R / w.norm(dim=-1, keepdim=True))  # length 2.5 R < pi R
    torch.testing.assert_close(log_map(x, exp_map(x, w, R), R), w, atol=1e-9, rtol=0)


def test_exp_map_lands_on_sphere_and_distance_is_norm_v():
    x = _points()
    v = _tangent(x, scale=0.7)
    y = exp_map(x, v, R)
    torch.testing.assert_close(y.norm(dim=-1), torch.full((32,), R, dtype=torch.float64), atol=TOL, rtol=0)
    torch.testing.assert_close(geodesic_distance(x, y, R), v.norm(dim=-1), atol=1e-9, rtol=0)


def test_zero_vector_and_identical_points():
    x = _points(n=4)
    torch.testing.assert_close(exp_map(x, torch.zeros_like(x), R), x, atol=TOL, rtol=0)
    assert log_map(x, x, R).abs().max().item() < 1e-12
    assert geodesic_distance(x, x, R).abs().max().item() < 1e-12
    # tiny separation: log stays accurate (no cancellation blow-up)
    eps_v = _tangent(x, scale=1e-9)
    y = exp_map(x, eps_v, R)
    torch.testing.assert_close(log_map(x, y, R), eps_v, atol=1e-15, rtol=1e-6)
    # gradients through exp at v = 0 are finite
    v = torch.zeros_like(x, requires_grad=True)
    exp_map(x, v, R).sum().backward()
    assert torch.isfinite(v.grad).all()


def test_geodesic_distance_known_values():
    e = torch.eye(3, dtype=torch.float64)
    d = geodesic_distance(R * e[0], R * e[1], R)
    assert abs(d.item() - R * math.pi / 2) < TOL
    assert abs(geodesic_distance(e[0], -e[0], 1.0).item() - math.pi) < TOL


def test_slerp_endpoints_and_constant_speed():
    x, y = _points(seed=2), _points(seed=3)
    torch.testing.assert_close(slerp(x, y, 0.0, R), x, atol=1e-9, rtol=0)
    torch.testing.assert_close(slerp(x, y, 1.0, R), y, atol=1e-9, rtol=0)
    mid = slerp(x, y, 0.5, R)
    d = geodesic_distance(x, y, R)
    torch.testing.assert_close(geodesic_distance(x, mid, R), d / 2, atol=1e-9, rtol=0)
    torch.testing.assert_close(geodesic_distance(mid, y, R), d / 2, atol=1e-9, rtol=0)
    t = torch.rand(32, dtype=torch.float64)  # per-row t, distance grows linearly in t
    torch.testing.assert_close(geodesic_distance(x, slerp(x, y, t, R), R), t * d, atol=1e-9, rtol=0)
    # x == y: no NaN, stays at x
    torch.testing.assert_close(slerp(x, x, 0.3, R), x, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dim, expected", [(2, 2 * math.pi), (3, 4 * math.pi), (4, 2 * math.pi**2)])
def test_sphere_log_area_known_values(dim, expected):
    assert abs(sphere_log_area(dim) - math.log(expected)) < 1e-12
    t = sphere_log_area(torch.tensor(float(dim), dtype=torch.float64))
    assert abs(t.item() - math.log(expected)) < 1e-12
