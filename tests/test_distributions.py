"""PowerSpherical / HypersphericalUniform / Gaussian posteriors (sphereard.distributions).

The MIT package `power-spherical` (De Cao & Aziz) is used only as a test oracle here.
"""

import math

import mpmath
import power_spherical as oracle
import pytest
import torch
import torch.nn.functional as F
from scipy.special import betainc, betaincinv
from torch.distributions import Normal, kl_divergence

from sphereard.distributions import (
    DiagonalGaussian,
    GaussianThenNormalize,
    HypersphericalUniform,
    PowerSpherical,
    expected_dot,
)
from sphereard.geometry import sphere_log_area

F64 = torch.float64
ORACLE_TOL = 1e-9  # float64 agreement with the oracle (observed ~1e-13)
KAPPAS = [0.1, 1.0, 10.0, 300.0]


def _locs(n, m, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, m, generator=g, dtype=dtype), dim=-1)


@pytest.mark.parametrize("m", [3, 16])
def test_matches_oracle_log_prob_entropy_kl_mean(m):
    loc, kappa = _locs(len(KAPPAS), m), torch.tensor(KAPPAS, dtype=F64)
    ours, ref = PowerSpherical(loc, kappa), oracle.PowerSpherical(loc, kappa)
    # the oracle's samples are off the sphere by ~1e-6 (float32 inside); log_prob is defined on it
    x = F.normalize(torch.cat([ref.rsample((8,)), torch.randn(8, len(KAPPAS), m, dtype=F64)]), dim=-1)
    torch.testing.assert_close(ours.log_prob(x), ref.log_prob(x), atol=ORACLE_TOL, rtol=ORACLE_TOL)
    torch.testing.assert_close(ours.entropy(), ref.entropy(), atol=ORACLE_TOL, rtol=ORACLE_TOL)
    kl = kl_divergence(ours, HypersphericalUniform(m, dtype=F64))
    torch.testing.assert_close(kl, sphere_log_area(m) - ref.entropy(), atol=ORACLE_TOL, rtol=ORACLE_TOL)
    # the oracle's own KL goes through its uniform entropy, which it evaluates in float32
    kl_ref = kl_divergence(ref, oracle.HypersphericalUniform(m, dtype=F64))
    torch.testing.assert_close(kl, kl_ref, atol=1e-6, rtol=0)


def test_batched_broadcasting_matches_oracle():
    m = 16
    loc = _locs(3, m).reshape(3, 1, m)  # (3, 1, m) broadcast against scale (3, 2)
    kappa = torch.tensor([[0.5, 4.0], [20.0, 1.0], [7.0, 100.0]], dtype=F64)
    d = PowerSpherical(loc, kappa)
    assert d.batch_shape == (3, 2) and d.event_shape == (m,)
    x = d.rsample((5,))
    assert x.shape == (5, 3, 2, m)
    lp = d.log_prob(x)
    assert lp.shape == (5, 3, 2)
    ref = oracle.PowerSpherical(loc.expand(3, 2, m).reshape(6, m), kappa.reshape(6))
    torch.testing.assert_close(lp.reshape(5, 6), ref.log_prob(x.reshape(5, 6, m)), atol=ORACLE_TOL, rtol=ORACLE_TOL)
    torch.testing.assert_close(d.entropy().reshape(6), ref.entropy(), atol=ORACLE_TOL, rtol=ORACLE_TOL)
    assert d.expand((4, 3, 2)).rsample().shape == (4, 3, 2, m)
    assert PowerSpherical(_locs(1, m)[0], 2.0).rsample((7,)).shape == (7, m)  # float scale, unbatched


@pytest.mark.parametrize("kappa", [0.0, 2.0, 50.0])
def test_log_prob_integrates_to_one_on_s2(kappa):
    n = 400  # midpoint rule on a (theta, phi) grid, integrand p(x) sin(theta)
    th = (torch.arange(n, dtype=F64) + 0.5) * math.pi / n
    ph = (torch.arange(2 * n, dtype=F64) + 0.5) * math.pi / n
    T, P = torch.meshgrid(th, ph, indexing="ij")
    x = torch.stack([T.sin() * P.cos(), T.sin() * P.sin(), T.cos()], dim=-1)  # (n, 2n, 3)
    d = PowerSpherical(_locs(1, 3, seed=3)[0], torch.tensor(kappa, dtype=F64))
    total = (d.log_prob(x).exp() * T.sin()).sum() * (math.pi / n) ** 2
    assert abs(total.item() - 1.0) < 1e-3


@pytest.mark.parametrize("m", [3, 16])
def test_monte_carlo_expected_dot_and_unit_norm(m):
    n_samples = 20000
    kappa = torch.tensor([0.5, 5.0, 50.0], dtype=F64)
    loc = _locs(3, m, seed=1)
    torch.manual_seed(0)
    d = PowerSpherical(loc, kappa)
    x = d.rsample((n_samples,))  # (N, 3, m)
    assert (x.norm(dim=-1) - 1).abs().max().item() < 1e-12
    t = (x * loc).sum(-1).mean(0)
    a, b = (m - 1) / 2 + kappa, torch.full_like(kappa, (m - 1) / 2)
    std_t = (4 * a * b / ((a + b) ** 2 * (a + b + 1))).sqrt()  # t = 2Z - 1, Z ~ Beta(a, b)
    assert ((t - expected_dot(kappa, m)).abs() < 5 * std_t / math.sqrt(n_samples)).all()
    assert ((x.mean(0) - d.mean).abs() < 5 / math.sqrt(n_samples)).all()  # each coordinate has var <= 1


@pytest.mark.parametrize("m", [3, 16])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_loc_at_plus_minus_e1(m, dtype):
    e1 = torch.zeros(m, dtype=dtype)
    e1[0] = 1.0
    near = F.normalize(e1 + 1e-7 * torch.ones(m, dtype=dtype), dim=0)
    locs = torch.stack([e1, -e1, near, -near])  # (4, m)
    torch.manual_seed(1)
    for kappa, n in [(1e4, 64), (3.0, 4000)]:
        x = PowerSpherical(locs, torch.full((4,), kappa, dtype=dtype)).rsample((n,))
        assert torch.isfinite(x).all()
        assert (x.norm(dim=-1) - 1).abs().max().item() < (1e-5 if dtype == torch.float32 else 1e-12)
        dots = (x * locs).sum(-1)  # (n, 4)
        if kappa > 100:
            assert dots.min().item() > 0.99  # concentrated around loc, not around -loc
        else:
            assert (dots.mean(0) - expected_dot(kappa, m)).abs().max().item() < 0.05


def test_reparam_gradient_wrt_loc_matches_finite_differences():
    m, h = 5, 1e-6
    loc = _locs(3, m, seed=4)
    loc[:, 0] = loc[:, 0].abs() + 0.2  # stay away from loc_1 = 0, where the reflection sign switches
    loc = F.normalize(loc, dim=-1)
    kappa = torch.tensor([0.5, 3.0, 40.0], dtype=F64)
    w = torch.randn(4, 3, m, dtype=F64)

    def f(lc):
        torch.manual_seed(123)  # same Beta and direction noise at every evaluation
        return (w * PowerSpherical(lc, kappa, validate_args=False).rsample((4,))).sum()

    lc = loc.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(lc), lc)
    for k in range(3):
        v = torch.randn(3, m, dtype=F64, generator=torch.Generator().manual_seed(k))
        fd = (f(loc + h * v) - f(loc - h * v)) / (2 * h)
        assert abs(fd.item() - (grad * v).sum().item()) < 1e-7 * max(1.0, abs(fd.item()))


@pytest.mark.parametrize("m, kappa", [(3, 0.7), (16, 5.0), (16, 200.0)])
def test_reparam_gradient_wrt_scale_matches_quantile_finite_differences(m, kappa):
    """The Beta rsample gradient is implicit: d z / d kappa at fixed quantile u = I_z(alpha, beta).

    Finite differences of the inverse CDF at that fixed u (scipy) give the same derivative; torch's
    Beta gradient is itself an approximation, accurate to ~1e-3 relative (hence the tolerance).
    """
    n, h = 32, 1e-5
    loc = _locs(n, m, seed=5)
    k = torch.full((n,), kappa, dtype=F64, requires_grad=True)
    torch.manual_seed(2)
    t = (PowerSpherical(loc, k).rsample() * loc).sum(-1)  # loc.x = 2z - 1 exactly (orthogonal map)
    (grad,) = torch.autograd.grad(t.sum(), k)
    a, b = (m - 1) / 2 + kappa, (m - 1) / 2
    u = betainc(a, b, ((t.detach() + 1) / 2).numpy())
    fd = 2 * (betaincinv(a + h, b, u) - betaincinv(a - h, b, u)) / (2 * h)
    torch.testing.assert_close(grad, torch.from_numpy(fd), rtol=5e-3, atol=1e-6)


def test_expected_gradient_wrt_scale_matches_closed_form():
    m, n_samples = 16, 20000
    torch.manual_seed(3)
    for kappa in [1.0, 8.0]:
        k = torch.tensor(kappa, dtype=F64, requires_grad=True)
        loc = _locs(1, m, seed=6)[0]
        (g,) = torch.autograd.grad((PowerSpherical(loc, k).rsample((n_samples,)) @ loc).mean(), k)
        exact = (m - 1) / (kappa + m - 1) ** 2  # d/dkappa of kappa / (kappa + m - 1)
        assert abs(g.item() - exact) < 0.03 * exact


def test_kl_to_uniform_nonnegative_and_vanishes_as_kappa_to_zero():
    m = 16
    kappas = torch.tensor([0.0, 1e-6, 1e-3, 0.1, 1.0, 10.0, 100.0], dtype=F64)
    kl = kl_divergence(PowerSpherical(_locs(7, m), kappas), HypersphericalUniform(m, dtype=F64))
    assert kl.shape == (7,)
    assert (kl >= -1e-12).all()
    assert (kl[1:] > kl[:-1]).all()  # increasing in kappa
    assert abs(kl[0].item()) < 1e-12 and kl[1].item() < 1e-5
    # KL = E_q[log q(x)] + log |S^{m-1}|, by Monte Carlo
    torch.manual_seed(4)
    q = PowerSpherical(_locs(1, m)[0], torch.tensor(10.0, dtype=F64))
    mc = q.log_prob(q.rsample((20000,))).mean() + sphere_log_area(m)
    kl_10 = kl_divergence(q, HypersphericalUniform(m, dtype=F64))
    assert abs(mc.item() - kl_10.item()) < 0.02


def test_hyperspherical_uniform():
    m = 16
    u = HypersphericalUniform(m, dtype=F64)
    torch.manual_seed(5)
    x = u.sample((4000,))
    assert x.shape == (4000, m) and x.dtype == F64
    assert (x.norm(dim=-1) - 1).abs().max().item() < 1e-12
    assert x.mean(0).abs().max().item() < 5 / math.sqrt(4000)
    torch.testing.assert_close(u.log_prob(x[:3]), torch.full((3,), -sphere_log_area(m), dtype=F64))
    assert abs(u.entropy().item() - sphere_log_area(m)) < 1e-12
    ps0 = PowerSpherical(_locs(1, m)[0], torch.tensor(0.0, dtype=F64))  # kappa = 0 is uniform
    torch.testing.assert_close(ps0.log_prob(x[:3]), u.log_prob(x[:3]), atol=1e-12, rtol=0)
    ref = oracle.HypersphericalUniform(m, dtype=F64)
    # the oracle evaluates log |S^{m-1}| in float32, hence 1e-6
    torch.testing.assert_close(u.log_prob(x[:3]), ref.log_prob(x[:3]), atol=1e-6, rtol=0)
    torch.testing.assert_close(u.entropy(), ref.entropy().reshape(()).to(F64), atol=1e-6, rtol=0)


def test_argument_validation():
    with pytest.raises(ValueError):
        PowerSpherical(torch.tensor([1.0, 1.0, 0.0]), torch.tensor(1.0))  # loc not unit
    with pytest.raises(ValueError):
        PowerSpherical(torch.tensor([1.0, 0.0, 0.0]), torch.tensor(-1.0))  # negative kappa
    with pytest.raises(ValueError):
        PowerSpherical(torch.tensor([1.0, 0.0, 0.0]), 1.0).log_prob(torch.tensor([2.0, 0.0, 0.0]))


def test_diagonal_gaussian_kl_rsample_mode():
    g = torch.Generator().manual_seed(7)
    mean, logvar = torch.randn(2, 5, 16, generator=g, dtype=F64), torch.randn(2, 5, 16, generator=g, dtype=F64)
    d = DiagonalGaussian(mean, logvar)
    ref = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(d.kl_to_standard_normal(), ref, atol=1e-12, rtol=1e-12)
    assert d.kl_to_standard_normal().shape == (2, 5)
    assert torch.equal(d.mode(), mean)
    torch.manual_seed(8)
    z = d.rsample()
    torch.manual_seed(8)
    torch.testing.assert_close(z, mean + (0.5 * logvar).exp() * torch.randn_like(mean))
    zero = DiagonalGaussian(torch.zeros(3, 4), torch.zeros(3, 4))
    assert zero.kl_to_standard_normal().abs().max().item() == 0.0


def test_gaussian_then_normalize():
    radius = 4.0
    mean = torch.randn(2, 8, 16, dtype=F64, requires_grad=True)
    logvar = torch.randn(2, 8, 16, dtype=F64, requires_grad=True)
    post = GaussianThenNormalize(mean, logvar, radius)
    z = post.rsample((3,))
    assert z.shape == (3, 2, 8, 16)
    assert (z.norm(dim=-1) - radius).abs().max().item() < 1e-12
    assert (post.mode().norm(dim=-1) - radius).abs().max().item() < 1e-12
    torch.testing.assert_close(post.kl_to_standard_normal(), DiagonalGaussian(mean, logvar).kl_to_standard_normal())
    (z.sum() + post.kl_to_standard_normal().sum()).backward()
    assert torch.isfinite(mean.grad).all() and logvar.grad.abs().sum().item() > 0
    z32 = GaussianThenNormalize(torch.randn(4, 16), torch.zeros(4, 16), radius).rsample()
    assert (z32.norm(dim=-1) - radius).abs().max().item() < 1e-5


# --- accuracy at any concentration (issue 11, item 4) ------------------------------------------

ACCURACY_KAPPAS = [1e-3, 1.0, 10.0, 1e3, 1e5, 1e7, 1e8]
ACCURACY_DIMS = [3, 16, 64, 256]
F32_REL_TOL = 1e-4  # required: 1e-3 of the exact value; observed <= 1e-5


def _exact_kl(kappa: float, m: int):
    """KL(PS || U) and its kappa-derivative, 40 digits (mpmath), from the lgamma / digamma form."""
    mpmath.mp.dps = 40
    b, k = mpmath.mpf(m - 1) / 2, mpmath.mpf(kappa)
    a = b + k
    kl = (mpmath.loggamma(a + b) - mpmath.loggamma(a) - k * (mpmath.digamma(a + b) - mpmath.digamma(a))
          - mpmath.loggamma(2 * b) + mpmath.loggamma(b))
    grad = k * (mpmath.psi(1, a) - mpmath.psi(1, a + b))  # d KL / d kappa
    return float(kl), float(grad)


@pytest.mark.parametrize("m", ACCURACY_DIMS)
def test_float32_kl_and_entropy_match_exact_values_at_any_concentration(m):
    kappa = torch.tensor(ACCURACY_KAPPAS)  # float32
    d = PowerSpherical(F.normalize(torch.ones(len(ACCURACY_KAPPAS), m), dim=-1), kappa)
    kl, entropy = kl_divergence(d, HypersphericalUniform(m)), d.entropy()
    assert kl.dtype == entropy.dtype == torch.float32
    exact_kl = torch.tensor([_exact_kl(k, m)[0] for k in kappa.tolist()], dtype=F64)  # at the float32 kappas
    exact_entropy = sphere_log_area(m) - exact_kl
    torch.testing.assert_close(kl.double(), exact_kl, rtol=F32_REL_TOL, atol=0)
    torch.testing.assert_close(entropy.double(), exact_entropy, rtol=F32_REL_TOL, atol=0)
    # float64 is exact to ~1e-13 everywhere, including O(kappa^2) KLs near kappa = 0
    kl64 = kl_divergence(PowerSpherical(d.loc.double(), kappa.double()), HypersphericalUniform(m, dtype=F64))
    torch.testing.assert_close(kl64, exact_kl, rtol=1e-11, atol=0)


def test_float32_entropy_is_accurate_through_its_zero_crossing():
    """H(PS) changes sign near kappa ~ 9.6 (m = 16): there the bound is absolute (README: 1e-6 nats)."""
    m = 16
    kappa = torch.logspace(-3, 8, 300)  # float32, dense around the crossing
    d = PowerSpherical(F.normalize(torch.ones(len(kappa), m), dim=-1), kappa)
    exact = sphere_log_area(m) - torch.tensor([_exact_kl(k, m)[0] for k in kappa.tolist()], dtype=F64)
    assert (exact > 0).any() and (exact < 0).any(), "the grid must cross zero"
    torch.testing.assert_close(d.entropy().double(), exact, rtol=F32_REL_TOL, atol=1e-6)


@pytest.mark.parametrize("m", [3, 16, 256])
def test_float32_kl_gradient_is_finite_and_exact(m):
    kappas = [0.0] + ACCURACY_KAPPAS + [1e12, 1e30]
    kappa = torch.tensor(kappas + [math.inf], requires_grad=True)
    loc = F.normalize(torch.ones(len(kappas) + 1, m), dim=-1)
    kl = kl_divergence(PowerSpherical(loc, kappa), HypersphericalUniform(m))
    assert kl[-1].item() == math.inf and torch.isfinite(kl[:-1]).all()
    (grad,) = torch.autograd.grad(kl.sum(), kappa)
    assert torch.isfinite(grad).all() and grad[-1].item() == 0.0
    exact = torch.tensor([_exact_kl(k, m)[1] for k in kappa[:-1].tolist()], dtype=F64)
    torch.testing.assert_close(grad[:-1].double(), exact, rtol=1e-4, atol=1e-30)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_huge_or_infinite_concentration_samples_loc(dtype):
    m = 16
    loc = _locs(6, m, seed=9, dtype=dtype)
    for kappa in (1e9, 1e30, torch.finfo(dtype).max, math.inf):
        k = torch.full((6,), kappa, dtype=dtype, requires_grad=True)
        torch.manual_seed(10)
        x = PowerSpherical(loc, k).rsample((50,))  # (50, 6, m)
        assert torch.isfinite(x).all()
        cos = (x * loc).sum(-1)
        assert cos.min().item() > 1 - 1e-6, (kappa, cos.min().item())  # mu, never the antipode -mu
        (grad,) = torch.autograd.grad(cos.sum(), k)
        assert torch.isfinite(grad).all()
    inf = PowerSpherical(loc, torch.full((6,), math.inf, dtype=dtype))
    torch.testing.assert_close(inf.mean, loc)
    assert expected_dot(math.inf, m) == 1.0


@pytest.mark.parametrize("m, kappa", [(3, 1e5), (16, 1e4), (16, 1e9), (256, 1e12)])
def test_large_concentration_scale_gradient_is_unbiased(m, kappa):
    """d E[mu.x] / d kappa = (m - 1) / (kappa + m - 1)^2 also where torch's implicit Beta gradient fails
    (0 for m = 3 at kappa 1e5, NaN for m = 16 at 1e9); the pathwise estimate is averaged over samples."""
    n_samples = 4000
    torch.manual_seed(11)
    k = torch.tensor(kappa, requires_grad=True)  # float32
    loc = _locs(1, m, seed=12, dtype=torch.float32)[0]
    (g,) = torch.autograd.grad((PowerSpherical(loc, k).rsample((n_samples,)) @ loc).mean(), k)
    exact = (m - 1) / (kappa + m - 1) ** 2
    assert math.isfinite(g.item()) and abs(g.item() - exact) < 0.05 * exact, (g.item(), exact)


@pytest.mark.parametrize("m", [3, 16])
def test_float32_log_prob_accurate_at_high_concentration(m):
    loc = _locs(1, m, seed=13)[0]
    torch.manual_seed(14)
    for kappa in (1e3, 1e6, 1e8):
        x = F.normalize(PowerSpherical(loc, torch.tensor(kappa, dtype=F64)).rsample((100,)).float(), dim=-1)
        lp32 = PowerSpherical(loc.float(), torch.tensor(kappa)).log_prob(x)
        lp64 = PowerSpherical(loc.float().double(), torch.tensor(kappa, dtype=F64)).log_prob(x.double())
        torch.testing.assert_close(lp32.double(), lp64, rtol=1e-5, atol=1e-4)  # was off by 20-50 nats at 1e8
