"""The magnitude ablation (`generator.magnitude: predict`, sphereard.ar.magnitude): the log-norm head, its loss,
sampling and composition of tokens, and a tiny generator that learns its tokens' norms."""

import math

import pytest
import torch

from sphereard.ar.flow import flow_loss
from sphereard.ar.magnitude import (
    LOG_STD_RANGE,
    MagnitudeHead,
    compose,
    direction_targets,
    log_norm_nll,
    sample_norm,
)
from sphereard.ar.presets import create_generator
from sphereard.ar.teacher_forcing import teacher_forced_predictions
from sphereard.geometry import project_to_sphere

F32_TOL = 1e-5
TINY = dict(dim=32, depth=2, heads=2, mlp_hidden=64, num_class_tokens=2, grid_size=2, token_dim=4,
            num_classes=4, head_blocks=2, head_width=32, adaln_groups=1, label_dropout=0.0)
LOG_MEAN, LOG_STD = 1.0, 0.1  # the training tokens' log-norm distribution


def test_log_norm_nll_is_the_gaussian_nll_of_the_log_norm():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(50, 6, generator=g) * torch.rand(50, 1, generator=g) * 5
    mean, log_std = torch.randn(50, generator=g), 0.5 * torch.randn(50, generator=g)
    y = z.norm(dim=-1).log()
    expected = -torch.distributions.Normal(mean, log_std.exp()).log_prob(y).mean()
    torch.testing.assert_close(log_norm_nll(mean, log_std, z), expected, rtol=1e-6, atol=1e-6)
    # at the head's initial output (mean 0, std 1): 0.5 E[(log ||z||)^2] + 0.5 log(2 pi)
    zeros = torch.zeros(50)
    torch.testing.assert_close(log_norm_nll(zeros, zeros, z), 0.5 * (y ** 2).mean() + 0.5 * math.log(2 * math.pi))
    # gradients reach mean and log_std
    mean.requires_grad_(True)
    log_std.requires_grad_(True)
    log_norm_nll(mean, log_std, z).backward()
    torch.testing.assert_close(mean.grad, -(y - mean.detach()) / (2 * log_std.detach()).exp() / 50)


def test_sample_norm_has_the_requested_log_mean_and_std():
    n = 200_000
    mean, log_std = torch.full((n,), 0.7), torch.full((n,), math.log(0.3))
    norms = sample_norm(mean, log_std, torch.Generator().manual_seed(0))
    assert norms.shape == (n,) and (norms > 0).all()
    logs = norms.log()
    assert abs(logs.mean().item() - 0.7) < 0.005  # SE 0.3 / sqrt(n) ~ 7e-4
    assert abs(logs.std().item() - 0.3) < 0.005
    a = sample_norm(mean[:5], log_std[:5], torch.Generator().manual_seed(1))
    b = sample_norm(mean[:5], log_std[:5], torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_compose_and_direction_targets():
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(20, 8, generator=g) * 3
    norm = torch.rand(20, generator=g) * 10 + 0.1
    z = compose(direction, norm)
    torch.testing.assert_close(z.norm(dim=-1), norm)
    cos = (z * direction).sum(-1) / (z.norm(dim=-1) * direction.norm(dim=-1))
    assert (cos - 1).abs().max().item() < F32_TOL
    t = direction_targets(direction)
    assert ((t.norm(dim=-1) - math.sqrt(8)).abs()).max().item() < F32_TOL  # the sqrt(d) sphere
    torch.testing.assert_close(t, project_to_sphere(direction, math.sqrt(8)))


def test_magnitude_head_starts_at_standard_normal_and_clamps_log_std():
    head = MagnitudeHead(16, 8)
    mean, log_std = head(torch.randn(5, 16))
    assert mean.shape == log_std.shape == (5,)
    assert torch.equal(mean, torch.zeros(5)) and torch.equal(log_std, torch.zeros(5))
    with torch.no_grad():
        head.net[3].bias.copy_(torch.tensor([0.0, -50.0]))
    assert torch.equal(head(torch.randn(5, 16))[1], torch.full((5,), LOG_STD_RANGE[0]))


def _log_normal_tokens(n, L, d, seed):
    g = torch.Generator().manual_seed(seed)
    norms = (LOG_MEAN + LOG_STD * torch.randn(n, L, generator=g)).exp()
    return compose(torch.randn(n * L, d, generator=g), norms.reshape(-1)).reshape(n, L, d)


def test_predict_loss_is_the_direction_flow_loss_plus_the_nll():
    torch.manual_seed(0)
    model = create_generator("fmnist-xs", "euclidean", "predict", **TINY).eval()
    with torch.no_grad():
        for p in model.magnitude_head.parameters():
            p.add_(0.1 * torch.randn_like(p))  # a non-trivial (mean, std)
    z, labels = _log_normal_tokens(3, 4, 4, 0), torch.tensor([0, 1, 3])
    with torch.no_grad():
        cond = model.transformer(z, labels)
        flow = flow_loss(model.head, direction_targets(z), cond, model.arch.diff_batch_mul,
                         torch.Generator().manual_seed(7))
        nll = log_norm_nll(*model.magnitude_head(cond.reshape(-1, cond.shape[-1])), z.reshape(-1, 4))
        total = model.loss(z, labels, torch.Generator().manual_seed(7))
        plain = create_generator("fmnist-xs", **TINY).eval()
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("magnitude_head.")})
        whole_tokens = plain.loss(z, labels, torch.Generator().manual_seed(7))
    torch.testing.assert_close(total, flow + nll, rtol=1e-6, atol=1e-6)
    assert nll.item() > 0.1 and flow.item() > 0.1
    # the flow term models directions, not the tokens themselves (norms ~ e^1 here, != sqrt(d) = 2)
    assert abs(whole_tokens.item() - flow.item()) > 1e-3


def test_tiny_predict_generator_learns_the_token_norms():
    torch.manual_seed(0)
    model = create_generator("fmnist-xs", "euclidean", "predict", **TINY)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(4).repeat(8)
    for step in range(150):
        z = _log_normal_tokens(32, 4, 4, 100 + step)
        loss = model.loss(z, labels, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for w in (1.0, 3.0):
        out = model.sample(torch.arange(4).repeat(16), cfg_scale=w, sampler="euler", steps=4,
                           projection="none", seed=0)
        logs = out.norm(dim=-1).log()
        assert abs(logs.mean().item() - LOG_MEAN) < 0.1, (w, logs.mean().item())
        assert 0.03 < logs.std().item() < 0.3, (w, logs.std().item())
    untrained = create_generator("fmnist-xs", "euclidean", "predict", **TINY).eval()
    out = untrained.sample(torch.arange(4).repeat(16), sampler="euler", steps=4, projection="none", seed=0)
    assert abs(out.norm(dim=-1).log().mean().item() - LOG_MEAN) > 0.5  # init: log-norms ~ N(0, 1)
    # teacher forcing composes the same way
    z = _log_normal_tokens(8, 4, 4, 0)
    pred = teacher_forced_predictions(model, z, torch.arange(4).repeat(2), steps=4,
                                      generator=torch.Generator().manual_seed(0))
    assert abs(pred.norm(dim=-1).log().mean().item() - LOG_MEAN) < 0.1


@pytest.mark.parametrize("w", [1.0, 3.0])
def test_sampled_norms_follow_the_magnitude_head(w):
    """With a head set to a fixed (mean, std), the sampled tokens' norms are exactly its draws, whatever CFG does."""
    torch.manual_seed(0)
    model = create_generator("fmnist-xs", "euclidean", "predict", **TINY).eval()
    with torch.no_grad():
        model.magnitude_head.net[3].bias.copy_(torch.tensor([2.0, math.log(0.05)]))
        for p in model.head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    out = model.sample(torch.arange(4).repeat(64), cfg_scale=w, sampler="euler", steps=3, projection="none", seed=0)
    logs = out.norm(dim=-1).log()
    assert abs(logs.mean().item() - 2.0) < 0.01 and abs(logs.std().item() - 0.05) < 0.01
    # projection sphere would override the head's norms: `auto` for gaussian is none
    on_sphere = model.sample(torch.arange(4), cfg_scale=w, sampler="euler", steps=3, projection="sphere", seed=0)
    assert ((on_sphere.norm(dim=-1) - 2.0).abs()).max().item() < F32_TOL
