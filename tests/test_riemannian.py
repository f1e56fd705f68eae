"""Riemannian flow matching on the radius-R sphere (sphereard.ar.riemannian), its sampler path, config rules
and export round trip of the head options (`generator.flow`, `generator.magnitude`)."""

import pytest
import torch
import torch.nn.functional as F
from test_ar import reference_conditional_sampling

from sphereard.ar.diffusion_head import DiffusionHead
from sphereard.ar.export import load_generator
from sphereard.ar.flow import sample_t
from sphereard.ar.presets import create_generator
from sphereard.ar.riemannian import exp_euler, geodesic_path, riemannian_flow_loss, uniform_sphere
from sphereard.ar.sampler import draw_tokens, generate
from sphereard.ar.task import generator_meta
from sphereard.ar.teacher_forcing import teacher_forced_predictions
from sphereard.config import Params, parse_params
from sphereard.distributions.power_spherical import PowerSpherical, expected_dot
from sphereard.errors import UserError
from sphereard.export import export_model
from sphereard.geometry import geodesic_distance, project_to_sphere, slerp

F32_TOL = 1e-5  # float32 relative agreement
TINY = dict(dim=32, depth=2, heads=2, mlp_hidden=64, num_class_tokens=2, grid_size=2, token_dim=4,
            num_classes=4, head_blocks=2, head_width=32, adaln_groups=1, label_dropout=0.0)


def _sphere_points(n, d, radius, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return project_to_sphere(torch.randn(n, d, generator=g, dtype=dtype), radius)


def tiny_riemannian(seed=0, **overrides):
    """Tiny riemannian generator with every weight randomised (non-zero head velocities), eval mode."""
    torch.manual_seed(seed)
    model = create_generator("fmnist-xs", "riemannian", **{**TINY, **overrides})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


# ---------------------------------------------------------------- the geodesic path
@pytest.mark.parametrize("R", [1.0, 4.0, 8.0])
def test_geodesic_path_endpoints_and_slerp(R):
    x0, z = _sphere_points(64, 16, R, 0), _sphere_points(64, 16, R, 1)
    for t, end in ((0.0, x0), (1.0, z)):
        x_t, _ = geodesic_path(x0, z, torch.full((64,), t), R)
        assert ((x_t - end).norm(dim=-1) / R).max().item() < F32_TOL
    t = torch.rand(64, generator=torch.Generator().manual_seed(2))
    x_t, _ = geodesic_path(x0, z, t, R)
    assert ((x_t - slerp(x0, z, t, R)).norm(dim=-1) / R).max().item() < F32_TOL
    assert ((x_t.norm(dim=-1) - R).abs() / R).max().item() < F32_TOL
    # x_t lies on the great circle: its distances to both ends add up to the whole arc
    whole = geodesic_distance(x0, z, R)
    arc = geodesic_distance(x0, x_t, R) + geodesic_distance(x_t, z, R)
    assert ((arc - whole).abs() / R).max().item() < 1e-4
    assert ((geodesic_distance(x0, x_t, R) - t * whole).abs() / R).max().item() < 1e-4


@pytest.mark.parametrize("R", [1.0, 4.0, 8.0])
def test_geodesic_velocity_has_constant_speed_and_is_the_time_derivative(R):
    x0, z = _sphere_points(32, 16, R, 3, torch.float64), _sphere_points(32, 16, R, 4, torch.float64)
    dist = geodesic_distance(x0, z, R)  # (32,)
    h = 1e-5
    for t in (0.0, 0.1, 0.37, 0.5, 0.8, 0.99):
        tt = torch.full((32,), t, dtype=torch.float64)
        _, u = geodesic_path(x0, z, tt, R)
        torch.testing.assert_close(u.norm(dim=-1), dist, rtol=1e-10, atol=0)
        lo, hi = max(t - h, 0.0), t + h  # central difference (one-sided at t = 0)
        x_lo, _ = geodesic_path(x0, z, torch.full_like(tt, lo), R)
        x_hi, _ = geodesic_path(x0, z, torch.full_like(tt, hi), R)
        fd = (x_hi - x_lo) / (hi - lo)
        tol = 1e-8 if t > 0 else 1e-4  # forward difference: O(h) error
        assert ((fd - u).norm(dim=-1) / dist).max().item() < tol, t


@pytest.mark.parametrize("R", [1.0, 4.0, 8.0])
def test_target_velocity_is_tangent_at_x_t(R):
    x0, z = _sphere_points(256, 16, R, 5), _sphere_points(256, 16, R, 6)
    t = sample_t(256, generator=torch.Generator().manual_seed(7))
    x_t, u = geodesic_path(x0, z, t, R)
    cos = (u * x_t).sum(-1).abs() / (R * u.norm(dim=-1))
    assert cos.max().item() < F32_TOL
    # and it is not trivially zero: it carries the whole arc length
    assert (u.norm(dim=-1) > 0.1 * R).all()


def test_uniform_sphere_has_radius_and_zero_mean():
    x = uniform_sphere((20_000, 5), 3.0, generator=torch.Generator().manual_seed(0))
    assert ((x.norm(dim=-1) - 3.0).abs() / 3.0).max().item() < F32_TOL
    assert x.mean(0).abs().max().item() < 0.05  # E[x] = 0, per-coordinate std 3 / sqrt(5): SE ~ 0.01
    radius = torch.tensor([[1.0], [7.0]])  # a radius per row, as the loss passes it
    y = uniform_sphere((2, 5), radius, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(y.norm(dim=-1), radius.squeeze(-1))


@pytest.mark.parametrize("R", [1.0, 4.0, 8.0])
def test_exp_euler_stays_on_the_sphere_for_any_velocity_field(R):
    g = torch.Generator().manual_seed(0)
    d = 8
    A, b = torch.randn(d, d, generator=g), torch.randn(d, generator=g)  # not tangent anywhere in general

    def v(x, t):
        return x @ A.T + (1.0 + t) * R * b

    x0 = uniform_sphere((64, d), R, generator=g)
    x = exp_euler(v, x0, 1000, R)
    assert ((x.norm(dim=-1) - R).abs() / R).max().item() < F32_TOL
    assert ((x - x0).norm(dim=-1) > 0.1 * R).all()  # the field moved every point


def test_exp_euler_integrates_a_rotation_exactly_enough():
    """A tangent rotation field v(x) = W x (W skew) has the flow exp(W t) x: Euler on the sphere converges to it."""
    d = 3
    W = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)  # about e3
    x0 = _sphere_points(16, d, 2.0, 8, torch.float64)
    exact = x0 @ torch.linalg.matrix_exp(W).T
    x = exp_euler(lambda x, t: x @ W.T, x0, 1000, 2.0)
    assert (x - exact).norm(dim=-1).max().item() < 5e-3


# ---------------------------------------------------------------- the loss
class ExactHead:
    """Stand-in head that replays the loss's random draws and returns the exact target u_t (plus a radial part,
    which P_x must drop, scaled by `radial`), or (`zero`) the zero velocity."""

    def __init__(self, z, diff_batch_mul, generator, radial=0.0, zero=False):
        self.target = z.reshape(-1, z.shape[-1]).repeat(diff_batch_mul, 1).float()
        self.gen = torch.Generator().set_state(generator.get_state())
        self.radial, self.zero, self.u = radial, zero, None

    def condition(self, cond, pos):
        return cond

    def velocity(self, x_t, t, c_emb):
        radius = self.target.norm(dim=-1, keepdim=True)
        noise = uniform_sphere(self.target.shape, radius, None, self.gen)
        t_rep = sample_t(self.target.shape[0], None, self.gen)
        assert torch.equal(t, t_rep)
        x_rep, self.u = geodesic_path(noise, self.target, t_rep, radius)
        assert torch.equal(x_t, x_rep)
        return torch.zeros_like(self.u) if self.zero else self.u + self.radial * x_t


def test_riemannian_flow_loss_is_the_tangent_velocity_mse():
    R, mul = 2.5, 3
    z = _sphere_points(12, 6, R, 0).reshape(3, 4, 6)
    cond = torch.zeros(3, 4, 1)
    for radial in (0.0, 5.0):  # a normal component of the prediction costs nothing
        g = torch.Generator().manual_seed(1)
        head = ExactHead(z, mul, g, radial)
        assert riemannian_flow_loss(head, z, cond, mul, g).item() < 1e-10
    g = torch.Generator().manual_seed(1)
    head = ExactHead(z, mul, g, zero=True)
    loss = riemannian_flow_loss(head, z, cond, mul, g)
    torch.testing.assert_close(loss, (head.u ** 2).mean(), rtol=1e-6, atol=0)  # MSE(0, u_t)
    assert loss.item() > 0.1


def test_riemannian_flow_loss_backward_with_a_real_head():
    torch.manual_seed(0)
    head = DiffusionHead(4, 8, 16, 2, 1, 4)
    with torch.no_grad():
        head.out.weight.normal_(std=0.1)  # non-zero velocities
        head.final_adaln.weight.normal_(std=0.1)
    z = project_to_sphere(torch.randn(2, 4, 4), 2.0)
    cond = torch.randn(2, 4, 8)
    loss = riemannian_flow_loss(head, z, cond, 4, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    grads = [p.grad for p in head.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)
    assert head.out.weight.grad.abs().max().item() > 0
    # same generator -> same loss; another -> another
    again = riemannian_flow_loss(head, z, cond, 4, torch.Generator().manual_seed(0))
    other = riemannian_flow_loss(head, z, cond, 4, torch.Generator().manual_seed(1))
    assert again.item() == loss.item() and other.item() != loss.item()


# ---------------------------------------------------------------- learning a distribution on S^2
S2_KAPPA = 10.0
S2_MU = F.normalize(torch.tensor([1.0, -2.0, 0.5]), dim=0)


def _s2_sample_mean(head: DiffusionHead, n=10_000, steps=50) -> tuple[float, torch.Tensor]:
    """(mean of mu.x, samples) of exp-Euler samples of the head from uniform noise on S^2."""
    with torch.no_grad():
        c = head.condition(torch.zeros(n, 8), torch.zeros(n, dtype=torch.long))
        x0 = uniform_sphere((n, 3), 1.0, generator=torch.Generator().manual_seed(2))
        x = exp_euler(lambda x, t: head.velocity(x, torch.full((n,), t), c), x0, steps, 1.0)
    return (x @ S2_MU).mean().item(), x


def test_riemannian_head_learns_a_power_spherical_on_s2():
    """Train on PS(mu, 10) samples with a constant condition; the samples' E[mu.x] must match kappa / (kappa + 2).

    A fully trained flow of this small head lands ~0.01 above the target (model error; the exact marginal
    velocity gives 0.836 at 50 steps), an untrained one (v = 0) stays uniform at E[mu.x] = 0."""
    torch.manual_seed(0)
    head = DiffusionHead(3, 8, 64, 2, 1, 1)
    target = expected_dot(S2_KAPPA, 3)  # 0.8333
    untrained, _ = _s2_sample_mean(head, n=2_000)
    assert abs(untrained - target) > 0.5  # the check below can fail
    ps = PowerSpherical(S2_MU, torch.tensor(S2_KAPPA))
    steps, batch = 1000, 256
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g, cond = torch.Generator().manual_seed(1), torch.zeros(batch, 1, 8)
    for _ in range(steps):
        z = ps.sample((batch,)).unsqueeze(1)  # (B, 1, 3)
        loss = riemannian_flow_loss(head, z, cond, 4, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    mean_dot, x = _s2_sample_mean(head)
    assert abs(mean_dot - target) < 0.02, (mean_dot, target)
    assert ((x.norm(dim=-1) - 1.0).abs()).max().item() < F32_TOL
    direction = F.normalize(x.mean(0), dim=0)
    assert torch.acos((direction @ S2_MU).clamp(max=1.0)).item() < 0.05  # mean direction is mu


# ---------------------------------------------------------------- sampling with the generator
def test_riemannian_cfg_one_equals_plain_conditional_sampling():
    model = tiny_riemannian()
    labels = torch.tensor([2, 0, 3])
    R = 1.5
    ref = reference_conditional_sampling(model, labels, "euler", 6, seed=3, radius=R, flow="riemannian")
    kw = dict(sampler="euler", steps=6, radius=R, projection="none", seed=3)
    constant = model.sample(labels, cfg_scale=1.0, cfg_schedule="constant", **kw)
    linear = generate(model.transformer, model.head, labels, cfg_scale=1.0, flow="riemannian", **kw)
    assert torch.equal(constant, linear)  # w = 1: the null stream is skipped, the schedule is moot
    assert (constant - ref).abs().max().item() < F32_TOL
    # guided, linear schedule: w_0 = 1, so token 0 is the conditional one; later tokens are guided
    guided = model.sample(labels, cfg_scale=4.0, cfg_schedule="linear", **kw)
    assert (guided[:, 0] - ref[:, 0]).abs().max().item() < F32_TOL
    assert (guided[:, 1:] - ref[:, 1:]).abs().max().item() > 1e-3
    # the randomised head moves tokens: the samples are not the noise
    noise = uniform_sphere((3, 4), R, generator=torch.Generator().manual_seed(3))
    assert (constant[:, 0] - noise).norm(dim=-1).min().item() > 1e-2


@pytest.mark.parametrize("schedule", ["constant", "linear"])
@pytest.mark.parametrize("R", [None, 1.5, 8.0])
def test_guided_riemannian_tokens_stay_on_the_sphere_without_projection(schedule, R):
    model = tiny_riemannian(seed=1)
    labels = torch.tensor([0, 1, 2, 3])
    z, pre = model.sample(labels, cfg_scale=4.0, cfg_schedule=schedule, sampler="euler", steps=8, radius=R,
                          projection="none", seed=0, return_norms=True)
    radius = 2.0 if R is None else R  # default sqrt(d), d = 4
    assert ((z.norm(dim=-1) - radius).abs() / radius).max().item() < F32_TOL
    assert ((pre - radius).abs() / radius).max().item() < F32_TOL


def test_draw_tokens_riemannian_and_errors():
    v = lambda x, t: torch.ones_like(x)  # noqa: E731
    x = draw_tokens("riemannian", "euler", v, 10, 5, 20, 0.0, 3.0, None, torch.Generator().manual_seed(0))
    assert x.shape == (10, 5) and ((x.norm(dim=-1) - 3.0).abs() / 3.0).max().item() < F32_TOL
    with pytest.raises(UserError, match="sampler='euler_maruyama'"):
        draw_tokens("riemannian", "euler_maruyama", v, 10, 5, 20, 0.0, 3.0, None)
    with pytest.raises(UserError, match="flow='spherical'"):
        draw_tokens("spherical", "euler", v, 10, 5, 20, 0.0, 3.0, None)


def test_sampler_and_factory_refuse_bad_flow_options():
    model = tiny_riemannian()
    labels = torch.tensor([0])
    with pytest.raises(UserError, match=r"^sampler='euler_maruyama'"):
        model.sample(labels, steps=1)  # the default sampler is euler_maruyama
    with pytest.raises(UserError, match=r"^sampler='euler_maruyama'"):
        generate(model.transformer, model.head, labels, steps=1, sampler="euler_maruyama", flow="riemannian")
    with pytest.raises(UserError, match=r"^flow='geodesic'"):
        generate(model.transformer, model.head, labels, steps=1, sampler="euler", flow="geodesic")
    with pytest.raises(UserError, match=r"^flow='geodesic': must be one of euclidean, riemannian"):
        create_generator("fmnist-xs", "geodesic")
    with pytest.raises(UserError, match=r"^magnitude='both': must be one of none, predict"):
        create_generator("fmnist-xs", "euclidean", "both")


def test_riemannian_model_loss_and_teacher_forcing():
    model = tiny_riemannian()
    R = 1.5
    z = project_to_sphere(torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(0)), R)
    labels = torch.tensor([1, 2])
    cond = model.transformer(z, labels)
    expected = riemannian_flow_loss(model.head, z, cond, model.arch.diff_batch_mul, torch.Generator().manual_seed(5))
    torch.testing.assert_close(model.loss(z, labels, torch.Generator().manual_seed(5)), expected, rtol=1e-6, atol=0)
    pred = teacher_forced_predictions(model, z, labels, steps=5, generator=torch.Generator().manual_seed(0))
    assert pred.shape == z.shape
    assert ((pred.norm(dim=-1) - R).abs() / R).max().item() < F32_TOL  # the context tokens' sphere
    with pytest.raises(UserError, match="sampler"):
        teacher_forced_predictions(model, z, labels, steps=5, sampler="euler_maruyama")


# ---------------------------------------------------------------- config rules
def _params(**changes) -> dict:
    data = Params().model_dump()
    for path, value in changes.items():
        block, key = path.split("__")
        data[block][key] = value
    return data


def _error(data) -> str:
    with pytest.raises(UserError) as err:
        parse_params(data)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_riemannian_needs_sphere_posteriors():
    message = _error(_params(generator__flow="riemannian", sampling__sampler="euler"))  # default posteriors: + gaussian
    assert message.startswith("generator.flow='riemannian': needs latents on the sphere"), message
    assert "gaussian latents are not" in message
    message = _error(_params(generator__flow="riemannian", sampling__sampler="euler",
                             tokenizer__posteriors=["gaussian"]))
    assert message.startswith("generator.flow='riemannian'"), message


@pytest.mark.xfail(strict=True, reason="validate_cross_block reports the sampler of the first (spherical) "
                                       "posterior before the flow conflict of gaussian (see report)")
def test_riemannian_with_default_posteriors_and_sampler_names_the_flow_first():
    message = _error(_params(generator__flow="riemannian"))
    assert message.startswith("generator.flow='riemannian'"), message


def test_riemannian_needs_the_euler_sampler():
    message = _error(_params(generator__flow="riemannian", tokenizer__posteriors=["spherical"]))
    assert message.startswith("sampling.sampler='euler_maruyama': the riemannian head samples with"), message
    for posteriors in (["spherical"], ["gaussian_norm"], ["spherical", "gaussian_norm"]):
        params = parse_params(_params(generator__flow="riemannian", tokenizer__posteriors=posteriors,
                                      sampling__sampler="euler"))
        assert params.generator.flow == "riemannian"


def test_magnitude_predict_needs_gaussian_posteriors():
    for posteriors in (["spherical"], ["gaussian_norm"], ["gaussian", "spherical"]):
        message = _error(_params(generator__magnitude="predict", tokenizer__posteriors=posteriors))
        assert message.startswith("generator.magnitude='predict': predict needs latents of varying norm"), message
    params = parse_params(_params(generator__magnitude="predict", tokenizer__posteriors=["gaussian"]))
    assert params.generator.magnitude == "predict" and params.generator.flow == "euclidean"
    # the defaults still validate, and unknown names are refused by name
    assert (Params().generator.flow, Params().generator.magnitude) == ("euclidean", "none")
    assert _error(_params(generator__flow="geodesic")).startswith("generator.flow='geodesic': must be one of")
    assert _error(_params(generator__magnitude="both")).startswith("generator.magnitude='both': must be one of")


# ---------------------------------------------------------------- export round trip
@pytest.mark.parametrize("flow, magnitude, posterior, sampler", [
    ("riemannian", "none", "spherical", "euler"),
    ("euclidean", "predict", "gaussian", "euler_maruyama"),
])
def test_export_round_trip_keeps_flow_and_magnitude(tmp_path, flow, magnitude, posterior, sampler):
    params = parse_params(_params(generator__flow=flow, generator__magnitude=magnitude,
                                  tokenizer__posteriors=[posterior], sampling__sampler=sampler))
    gen = params.generator
    torch.manual_seed(0)
    model = create_generator(gen.preset, gen.flow, gen.magnitude, **gen.overrides)
    meta = {**generator_meta(params, posterior, 4.0, tmp_path / "tok"), "step": 1}
    assert (meta["flow"], meta["magnitude"]) == (flow, magnitude)
    export_model(tmp_path / "gen", model, meta)
    loaded, loaded_meta = load_generator(tmp_path / "gen", posterior=posterior)
    assert (loaded.flow, loaded.magnitude) == (flow, magnitude)
    assert (loaded_meta["flow"], loaded_meta["magnitude"]) == (flow, magnitude)
    assert (loaded.magnitude_head is not None) == (magnitude == "predict")
    state, back = model.state_dict(), loaded.state_dict()
    assert state.keys() == back.keys() and all(torch.equal(state[k], back[k]) for k in state)
    # an export written before the options existed (no keys) loads as the paper's head
    old = {k: v for k, v in meta.items() if k not in ("flow", "magnitude")}
    plain = create_generator(gen.preset, **gen.overrides)
    export_model(tmp_path / "old", plain, old)
    assert (load_generator(tmp_path / "old")[0].flow, load_generator(tmp_path / "old")[0].magnitude) == (
        "euclidean", "none")
    if magnitude == "predict":  # the magnitude head's weights make the option part of the model
        export_model(tmp_path / "lying", model, old)
        with pytest.raises(UserError, match="weights of a different model"):
            load_generator(tmp_path / "lying")

