"""Tests for sphereard.ar: cached decoding, causality, projection after CFG, presets, flow, overfitting."""

import pytest
import torch

from sphereard.ar import (
    GENERATOR_PRESETS,
    cfg_combine,
    cfg_scale_at,
    count_params,
    create_generator,
    default_projection,
    euler,
    euler_maruyama,
    integrate,
    interpolate,
    project_tokens,
    resolve_generator_arch,
    sample_t,
    score_from_velocity,
    velocity_target,
)
from sphereard.ar.arch import PAPER_PARAMS, README_PARAMS
from sphereard.ar.presets import NO_DECAY_PATTERNS
from sphereard.ar.riemannian import exp_euler, uniform_sphere
from sphereard.ar.sampler import generate
from sphereard.errors import UserError
from sphereard.geometry import project_to_sphere
from sphereard.train.optim import param_groups

F32_TOL = 1e-5  # float32 agreement between mathematically equal computations
TINY = dict(dim=32, depth=2, heads=2, mlp_hidden=64, num_class_tokens=2, grid_size=2, token_dim=4,
            num_classes=4, head_blocks=2, head_width=32, adaln_groups=1, label_dropout=0.0)



def tiny_model(seed=0, **overrides):
    """Tiny generator with every weight random (no zero-initialised outputs), in eval mode."""
    torch.manual_seed(seed)
    model = create_generator("fmnist-xs", **{**TINY, **overrides})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


# ---------------------------------------------------------------- transformer
def test_kv_cached_decoding_equals_full_causal_forward():
    model = tiny_model(grid_size=3, num_class_tokens=3)
    tr = model.transformer
    z = torch.randn(3, 9, 4)
    labels = torch.tensor([0, 3, tr.null_class])
    with torch.no_grad():
        full = tr(z, labels)  # (3, 9, 32)
        cond, state = tr.prefill(labels)
        steps = [cond] + [tr.step(z[:, k], state) for k in range(8)]
    inc = torch.stack(steps, dim=1)
    assert full.shape == inc.shape == (3, 9, 32)
    assert (full - inc).abs().max().item() < F32_TOL
    assert state.length == tr.max_len == 3 + 9 - 1


def test_causality_cond_k_depends_only_on_earlier_tokens():
    model = tiny_model(grid_size=3)
    tr = model.transformer
    z = torch.randn(2, 9, 4)
    labels = torch.tensor([1, 2])
    with torch.no_grad():
        base = tr(z, labels)
        for k in (0, 4, 7):
            z2 = z.clone()
            z2[:, k] += 1.0
            out = tr(z2, labels)
            # cond[:, j] predicts z_j from z_<j: changing z_k leaves positions 0..k untouched
            assert (out[:, : k + 1] - base[:, : k + 1]).abs().max().item() < 1e-6
            assert (out[:, k + 1] - base[:, k + 1]).abs().max().item() > 1e-3
        z2 = z.clone()
        z2[:, -1] += 1.0  # the last token is never an input
        assert torch.equal(tr(z2, labels), base)
        other = tr(z, torch.tensor([3, 0]))  # the class prefix conditions every position
        assert ((other - base).abs().amax(dim=-1) > 1e-3).all()


def test_label_dropout_only_in_training():
    model = tiny_model(label_dropout=0.5)
    tr = model.transformer
    labels = torch.zeros(4000, dtype=torch.long)
    tr.train()
    frac = (tr.drop_labels(labels) == tr.null_class).float().mean().item()
    assert abs(frac - 0.5) < 0.05
    tr.eval()
    assert torch.equal(tr.drop_labels(labels), labels)


# ---------------------------------------------------------------- sampling
@pytest.mark.parametrize("sampler", ["euler", "euler_maruyama"])
@pytest.mark.parametrize("schedule", ["constant", "linear"])
@pytest.mark.parametrize("w", [1.0, 4.5])
def test_sphere_projection_puts_every_token_on_radius(sampler, schedule, w):
    model = tiny_model()
    labels = torch.tensor([0, 1, 3])
    kw = dict(cfg_scale=w, cfg_schedule=schedule, sampler=sampler, steps=4, return_norms=True)
    z, pre = model.sample(labels, projection="sphere", radius=1.5, seed=0, **kw)
    assert z.shape == (3, 4, 4) and pre.shape == (3, 4)
    assert (z.norm(dim=-1) - 1.5).abs().max().item() < F32_TOL
    z_free, pre_free = model.sample(labels, projection="none", seed=0, **kw)
    assert (z_free.norm(dim=-1) - pre_free).abs().max().item() < F32_TOL  # none: no change
    assert (z_free.norm(dim=-1) - 2.0).abs().min().item() > 1e-3  # norms free, != R = sqrt(4)
    # same noise, same first condition: token 0 before projection agrees across modes
    assert (pre[:, 0] - pre_free[:, 0]).abs().max().item() < F32_TOL


def reference_conditional_sampling(model, labels, sampler, steps, seed, radius, flow="euclidean"):
    """Plain conditional sampling: full (uncached) causal forward per token, no CFG batch. flow riemannian:
    uniform noise on the radius-R sphere, exponential-map Euler steps, no projection (tokens stay on it)."""
    tr, head = model.transformer, model.head
    g = torch.Generator().manual_seed(seed)
    B, d = labels.shape[0], tr.token_dim
    z = torch.zeros(B, 0, d)
    with torch.no_grad():
        for k in range(tr.num_tokens):
            cond = tr(torch.cat([z, torch.zeros(B, 1, d)], dim=1), labels)[:, k]  # (B, D)
            c_emb = head.condition(cond, torch.full((B,), k))
            v_fn = lambda x, t, c_emb=c_emb: head.velocity(x, torch.full((B,), t), c_emb)  # noqa: E731
            if flow == "riemannian":
                x = exp_euler(v_fn, uniform_sphere((B, d), radius, generator=g), steps, radius)
            else:
                x = project_to_sphere(integrate(sampler, v_fn, torch.randn(B, d, generator=g), steps, 0.04, g), radius)
            z = torch.cat([z, x[:, None]], dim=1)
    return z


@pytest.mark.parametrize("sampler", ["euler", "euler_maruyama"])
def test_cfg_scale_one_equals_plain_conditional_sampling(sampler):
    model = tiny_model()
    labels = torch.tensor([2, 0])
    ref = reference_conditional_sampling(model, labels, sampler, 5, seed=3, radius=2.0)
    for schedule in ("constant", "linear"):
        z = generate(model.transformer, model.head, labels, cfg_scale=1.0, cfg_schedule=schedule,
                     sampler=sampler, steps=5, seed=3)
        assert (z - ref).abs().max().item() < F32_TOL
    # guided 2B batch, linear schedule: w_0 = 1, so token 0 is the conditional one
    g = model.sample(labels, cfg_scale=4.5, cfg_schedule="linear", sampler=sampler, steps=5, seed=3)
    assert (g[:, 0] - ref[:, 0]).abs().max().item() < F32_TOL
    assert (g[:, 1:] - ref[:, 1:]).abs().max().item() > 1e-3  # guidance acts on later tokens


def test_cfg_unit_weight_separate_samples_token_0_unguided_on_both_streams():
    """`separate`: the weight-1 token is plain sampling of [labels; null] (2B draws); `shared` (default)
    and `separate` agree when no token has weight 1 (constant schedule)."""
    model = tiny_model()
    labels = torch.tensor([1, 3])
    both = model.sample(torch.tensor([1, 3, 4, 4]), cfg_scale=1.0, steps=3, num_tokens=1, seed=5)  # 4 = null
    sep = model.sample(labels, cfg_scale=3.0, cfg_schedule="linear", steps=3, seed=5, cfg_unit_weight="separate")
    shared = model.sample(labels, cfg_scale=3.0, cfg_schedule="linear", steps=3, seed=5)
    assert torch.equal(sep[:, 0], both[:2, 0])
    assert (sep[:, 0] - shared[:, 0]).abs().max().item() > 1e-3
    const = [model.sample(labels, cfg_scale=3.0, cfg_schedule="constant", steps=3, seed=5, cfg_unit_weight=u)
             for u in ("shared", "separate")]
    assert torch.equal(const[0], const[1])


def test_generate_rejects_bad_arguments():
    model = tiny_model()
    labels = torch.tensor([0])
    for kw, word in [(dict(sampler="rk4"), "sampler"), (dict(cfg_schedule="cosine"), "cfg_schedule"),
                     (dict(num_tokens=5), "num_tokens"), (dict(projection="ball"), "projection"),
                     (dict(cfg_scale=-1.0), "cfg_scale"), (dict(final_step=1.0), "final_step"),
                     (dict(cfg_unit_weight="own"), "cfg_unit_weight")]:
        with pytest.raises(UserError, match=word):
            model.sample(labels, steps=1, **kw)
    with pytest.raises(UserError, match="labels"):
        model.sample(torch.tensor([9]), steps=1)


# ---------------------------------------------------------------- cfg / projection
def test_cfg_combine_and_schedules():
    vc, vu = torch.tensor([3.0, 1.0]), torch.tensor([1.0, 1.0])
    assert torch.equal(cfg_combine(vc, vu, 1.0), vc)
    assert torch.equal(cfg_combine(vc, vu, 0.0), vu)
    assert torch.allclose(cfg_combine(vc, vu, 4.5), torch.tensor([10.0, 1.0]))
    assert cfg_scale_at(7, 16, 4.5, "constant") == 4.5
    assert cfg_scale_at(0, 256, 4.5, "linear") == 1.0
    assert cfg_scale_at(128, 256, 4.5, "linear") == pytest.approx(2.75)
    assert cfg_scale_at(255, 256, 4.5, "linear") == pytest.approx(1 + 3.5 * 255 / 256)
    with pytest.raises(UserError, match="cfg_schedule"):
        cfg_scale_at(0, 4, 2.0, "cosine")


def test_projection_modes():
    z = torch.randn(5, 3, 16) * 3
    assert torch.allclose(project_tokens(z, "sphere", 4.0).norm(dim=-1), torch.full((5, 3), 4.0))
    assert project_tokens(z, "none", 4.0) is z
    assert [default_projection(p) for p in ("spherical", "gaussian_norm", "gaussian")] == ["sphere", "sphere", "none"]
    with pytest.raises(UserError, match="posterior"):
        default_projection("vmf")
    with pytest.raises(UserError, match="projection"):
        project_tokens(z, "ball", 1.0)


# ---------------------------------------------------------------- presets
@pytest.mark.parametrize("name", ["SphereAR-B", "SphereAR-L", "SphereAR-H"])
def test_paper_preset_parameter_counts(name):
    with torch.device("meta"):
        model = create_generator(name)
    n = count_params(model)
    assert abs(n / PAPER_PARAMS[name] - 1) < 0.02, f"{name}: {n / 1e6:.2f}M vs paper {PAPER_PARAMS[name] / 1e6:.0f}M"
    assert abs(n / README_PARAMS[name] - 1) < 0.02
    assert model.arch.num_tokens == 256 and model.arch.num_class_tokens == 16


def test_small_presets_and_errors():
    assert set(GENERATOR_PRESETS) >= {"fmnist-s", "fmnist-xs"}
    assert resolve_generator_arch("fmnist-s").grid_size == 8
    assert resolve_generator_arch("fmnist-s").token_dim == 16
    with pytest.raises(UserError, match="SphereAR-X"):
        create_generator("SphereAR-X")
    with pytest.raises(UserError, match="generator.overrides.width"):
        create_generator("fmnist-xs", width=3)
    with pytest.raises(UserError, match="adaln_groups"):
        create_generator("fmnist-xs", head_blocks=3, adaln_groups=2)
    with pytest.raises(UserError, match="heads"):
        create_generator("fmnist-xs", heads=3)
    head = create_generator("SphereAR-H", dim=64, heads=4, depth=1, head_width=24).head  # 12 blocks, 3 groups
    assert len(head.adaln) == 3 and head.blocks_per_group == 4
    x, t = torch.randn(6, 16), torch.rand(6)
    assert torch.equal(head(x, t, torch.randn(6, 64), torch.arange(6)), torch.zeros(6, 16))  # zero-init output


def test_param_groups_cover_every_parameter_once():
    model = create_generator("fmnist-xs")
    decay, rest = param_groups(model.named_parameters(), 0.05, NO_DECAY_PATTERNS)
    ids = [id(p) for p in decay["params"] + rest["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert id(model.transformer.class_embed.weight) in {id(p) for p in rest["params"]}
    assert all(p.ndim == 2 for p in decay["params"])


# ---------------------------------------------------------------- rectified flow
def test_flow_path_and_time_distribution():
    noise, z = torch.randn(4, 3), torch.randn(4, 3)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    xt = interpolate(noise, z, t)
    assert torch.allclose(xt[0], noise[0]) and torch.allclose(xt[3], z[3])
    assert torch.allclose(xt[1], 0.75 * noise[1] + 0.25 * z[1])
    assert torch.equal(velocity_target(noise, z), z - noise)
    ts = sample_t(20000, generator=torch.Generator().manual_seed(0))
    assert ts.min() > 0 and ts.max() < 1 and abs(ts.median().item() - 0.5) < 0.02


def point_mass_velocity(z_star):
    """Exact rectified-flow velocity when all data sit at z_star: straight lines to z_star."""
    return lambda x, t: (z_star - x) / (1.0 - t)


def test_integrators_exact_on_straight_paths():
    g = torch.Generator().manual_seed(0)
    z_star, x0 = torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g)
    assert torch.allclose(euler(lambda x, t: torch.ones_like(x), x0, 7), x0 + 1, atol=1e-6)  # constant field
    assert torch.allclose(euler(point_mass_velocity(z_star), x0, 10), z_star, atol=1e-5)
    out = euler_maruyama(point_mass_velocity(z_star), x0, 20, final_step=0.04, generator=g)
    assert torch.allclose(out, z_star, atol=1e-5)  # the final Euler step lands on the data exactly


def gaussian_velocity(mu, s):
    """Exact velocity for data N(mu, s^2 I): v = mu + (t s^2 - (1 - t)) / var_t * (x - t mu)."""
    def v(x, t):
        var = (1 - t) ** 2 + t ** 2 * s ** 2
        return mu + (t * s ** 2 - (1 - t)) / var * (x - t * mu)
    return v


def test_integrators_on_gaussian_data():
    mu, s = torch.tensor([1.0, -2.0]), 0.5
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(20000, 2, generator=g)
    # ODE flow of a Gaussian is the affine map x0 -> mu + s x0; Euler converges at first order
    err = {n: (euler(gaussian_velocity(mu, s), x0[:100], n) - (mu + s * x0[:100])).abs().max().item()
           for n in (200, 400)}
    assert err[400] < 1e-2 and 1.8 < err[200] / err[400] < 2.2
    # SDE keeps the marginals: samples follow N(mu, s^2)
    out = euler_maruyama(gaussian_velocity(mu, s), x0, 100, final_step=0.04, generator=g)
    assert (out.mean(0) - mu).abs().max() < 0.03
    assert (out.std(0) / s - 1).abs().max() < 0.05
    # score from velocity equals the analytic score of N(t mu, var_t)
    x, t = torch.randn(5, 2), 0.3
    var = (1 - t) ** 2 + t ** 2 * s ** 2
    assert torch.allclose(score_from_velocity(gaussian_velocity(mu, s)(x, t), x, t), -(x - t * mu) / var, atol=1e-5)


# ---------------------------------------------------------------- end to end
def test_tiny_model_overfits_four_sequences_and_samples_them():
    torch.manual_seed(0)
    model = create_generator("fmnist-xs", **TINY)  # paper init: zero head outputs
    R = 2.0
    data = project_tokens(torch.randn(4, 4, 4), "sphere", R)  # one sequence per class
    labels = torch.arange(4)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    z, y = data.repeat(4, 1, 1), labels.repeat(4)
    losses = []
    for _ in range(150):
        loss = model.loss(z, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.2 * first, f"flow loss {first:.3f} -> {last:.3f}"
    model.eval()
    between = ((data[:, None] - data[None]) ** 2).mean(dim=(2, 3))
    min_between = between[~torch.eye(4, dtype=torch.bool)].min()
    for sampler in ("euler", "euler_maruyama"):
        out = model.sample(labels.repeat(2), steps=20, sampler=sampler, radius=R, seed=0)
        d = ((out[:, None] - data[None]) ** 2).mean(dim=(2, 3))  # (8, 4)
        assert torch.equal(d.argmin(dim=1), labels.repeat(2))
        assert d.min(dim=1).values.max() < 0.05 * min_between
