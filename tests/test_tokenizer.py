"""Hybrid VAE tokenizer: presets, shapes, posterior geometry, KL, cached-param sampling, losses."""

import logging
import math

import pytest
import torch

from sphereard.distributions import expected_dot
from sphereard.errors import UserError
from sphereard.tokenizer import (
    TOKENIZER_PRESETS,
    PatchDiscriminator,
    create_tokenizer,
    d_hinge_loss,
    g_hinge_loss,
    load_lpips,
    sample_from_moments,
    tokenizer_arch,
)
from sphereard.tokenizer.losses import LPIPS_WEIGHTS_ENV

POSTERIORS = ("spherical", "gaussian_norm", "gaussian")
PAPER_PARAMS = 75e6
PAPER_TOLERANCE = 0.02



def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def images(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth structured images in [-1, 1]: random blobs (learnable, unlike white noise)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    c = torch.rand(n, channels, 2, 1, 1, generator=g) * 1.2 - 0.6  # blob centres
    r = torch.rand(n, channels, 1, 1, generator=g) * 0.3 + 0.2
    d2 = (xx - c[:, :, 0]) ** 2 + (yy - c[:, :, 1]) ** 2
    return 2.0 * torch.exp(-d2 / r**2) - 1.0  # (n, C, size, size)


# --- presets -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(TOKENIZER_PRESETS))
def test_every_preset_builds_on_meta(name):
    with torch.device("meta"):
        vae = create_tokenizer(name)
    a = vae.arch
    assert vae.grid_size == a.image_size // a.patch_size and vae.num_tokens == vae.grid_size ** 2
    assert vae.radius == pytest.approx(math.sqrt(a.latent_dim))
    assert n_params(vae) > 0


def test_paper_preset_parameter_count():
    with torch.device("meta"):
        vae = create_tokenizer("svae-paper")
    n = n_params(vae)
    assert abs(n - PAPER_PARAMS) / PAPER_PARAMS < PAPER_TOLERANCE, f"{n / 1e6:.2f}M vs ~75M"
    assert vae.num_tokens == 256 and vae.latent_dim == 16 and vae.moments_dim == 17


def test_bad_preset_and_override_name_the_culprit():
    with pytest.raises(UserError, match="no-such-preset"):
        create_tokenizer("no-such-preset")
    with pytest.raises(UserError, match="widht"):
        create_tokenizer("fmnist-xs", widht=64)
    with pytest.raises(UserError, match="patch_size"):
        tokenizer_arch("fmnist-xs", patch_size=8)  # 3 CNN channels -> 2 stages -> patch must be 4
    with pytest.raises(UserError, match="posterior"):
        create_tokenizer("fmnist-xs", posterior="vmf")


# --- shapes and latent geometry -------------------------------------------------------------
@pytest.mark.parametrize("name", ["fmnist-xs", "emoji-s"])
def test_forward_shapes(name):
    torch.manual_seed(0)
    vae = create_tokenizer(name)
    a = vae.arch
    x = images(2, a.in_channels, a.image_size)
    out = vae(x)
    assert out["recon"].shape == x.shape
    assert out["z"].shape == (2, vae.num_tokens, a.latent_dim)
    assert out["moments"].shape == (2, vae.num_tokens, a.latent_dim + 1)
    assert out["kl"].shape == (2,)
    assert vae.decode(out["z"]).shape == x.shape


@pytest.fixture(scope="module")
def encoded():
    """params from encode_moments for each posterior of a random fmnist-xs VAE."""
    out = {}
    x = images(4, 1, 32)
    for kind in POSTERIORS:
        torch.manual_seed(1)
        vae = create_tokenizer("fmnist-xs", posterior=kind).eval()
        with torch.no_grad():
            out[kind] = (vae, vae.encode_moments(x))
    return out


@pytest.mark.parametrize("kind", ["spherical", "gaussian_norm"])
def test_sphere_latents_have_norm_radius(encoded, kind):
    vae, params = encoded[kind]
    for z in (vae.sample(params), vae.mode(params)):
        torch.testing.assert_close(z.norm(dim=-1), torch.full(z.shape[:-1], vae.radius), rtol=1e-5, atol=0)
    assert vae.on_sphere


def test_gaussian_latent_norms_vary(encoded):
    vae, params = encoded["gaussian"]
    norms = vae.sample(params).norm(dim=-1)
    assert norms.std() > 0.2 and not vae.on_sphere


@pytest.mark.parametrize("kind", POSTERIORS)
def test_kl_finite_and_non_negative(encoded, kind):
    vae, params = encoded[kind]
    kl = vae.kl(params)
    assert kl.shape == (4,) and torch.isfinite(kl).all() and (kl >= 0).all()


def test_spherical_kl_vanishes_only_for_uniform():
    """kappa -> 0 is the uniform distribution: KL ~ 0; kappa >= 1 (our floor) gives KL > 0."""
    post = create_tokenizer("fmnist-xs").posterior
    mu = torch.nn.functional.normalize(torch.randn(1, 3, 8), dim=-1)
    kl = lambda kappa: post.kl(torch.cat([mu, torch.full((1, 3, 1), kappa)], dim=-1))  # noqa: E731
    assert kl(1e-6).abs().max() < 1e-4 and kl(1.0).min() > 0 and kl(50.0).min() > kl(1.0).min()


# --- sampling from cached moments ----------------------------------------------------------
@pytest.mark.parametrize("kind", POSTERIORS)
def test_sample_from_moments_reproduces_posterior(encoded, kind):
    vae, moments = encoded[kind]
    cached = moments.clone()
    torch.testing.assert_close(sample_from_moments(kind, cached, vae.radius, mode=True), vae.mode(moments))
    torch.manual_seed(7)
    a = vae.sample(moments)
    torch.manual_seed(7)
    torch.testing.assert_close(sample_from_moments(kind, cached, vae.radius), a)
    d = vae.latent_dim
    if kind == "spherical":
        mu, kappa = moments[..., :d], moments[..., d]
        torch.testing.assert_close(vae.mode(moments), vae.radius * mu)
        many = torch.stack([sample_from_moments(kind, cached) for _ in range(400)])  # (S, B, L, d)
        mean_cos = (many / vae.radius * mu).sum(-1).mean(0)  # (B, L)
        torch.testing.assert_close(mean_cos, expected_dot(kappa, d), atol=0.06, rtol=0)
    else:
        mean, logvar = moments[..., :d], moments[..., d:]
        if kind == "gaussian":
            torch.testing.assert_close(vae.mode(moments), mean)
            s = torch.stack([sample_from_moments(kind, cached) for _ in range(400)])
            torch.testing.assert_close(s.mean(0), mean, atol=0.25, rtol=0)
            torch.testing.assert_close(s.std(0).log() * 2, logvar, atol=0.35, rtol=0)
        else:
            torch.testing.assert_close(vae.mode(moments), vae.radius * torch.nn.functional.normalize(mean, dim=-1))


# --- training signal ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", POSTERIORS)
def test_tiny_vae_overfits_one_batch(kind):
    torch.manual_seed(0)
    vae = create_tokenizer("fmnist-xs", posterior=kind)
    x = images(4, 1, 32, seed=3)
    opt = torch.optim.AdamW(vae.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(100):
        out = vae(x)
        loss = (out["recon"] - x).abs().mean() + 0.004 * out["kl"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = losses[0], sum(losses[-5:]) / 5
    assert last < first / 4, f"{kind}: loss {first:.3f} -> {last:.3f}"


# --- losses ------------------------------------------------------------------------------------
def test_lpips_without_weights_returns_none_and_logs(monkeypatch, caplog):
    monkeypatch.delenv(LPIPS_WEIGHTS_ENV, raising=False)
    with caplog.at_level(logging.WARNING, logger="sphereard.tokenizer.losses"):
        assert load_lpips(None) is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "LPIPS" in lines[0] and "weight is 0" in lines[0]


def test_lpips_missing_file_is_a_user_error(tmp_path):
    missing = tmp_path / "vgg16-397923af.pth"
    with pytest.raises(UserError, match="vgg16-397923af.pth"):
        load_lpips(missing)


@pytest.mark.slow
def test_lpips_loads_local_torchvision_vgg16(tmp_path):
    """A torchvision-layout vgg16 state dict (random values) loads into LPIPS without any download."""
    import lpips

    torch.manual_seed(0)
    src = lpips.LPIPS(pretrained=False, net="vgg", pnet_rand=True, verbose=False).net.state_dict()
    state = {f"features.{k.split('.')[1]}.{k.split('.')[2]}": v for k, v in src.items()}
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    loss = load_lpips(path)
    for k, v in src.items():
        torch.testing.assert_close(loss.lpips.net.state_dict()[k], v)
    x, y = images(2, 1, 32, seed=1), images(2, 1, 32, seed=2)
    assert loss(x, x).abs().max() < 1e-6 and (loss(x, y) > 0).all() and loss(x, y).shape == (2,)


def test_hinge_losses_on_constructed_logits():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - r) = [0, 0.5, 2] -> mean 5/6
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + f) = [0, 1, 2]   -> mean 1
    assert d_hinge_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 1.0))
    assert g_hinge_loss(fake).item() == pytest.approx(1.0 / 3.0)
    assert d_hinge_loss(torch.full((4,), 1.0), torch.full((4,), -1.0)).item() == 0.0  # margins met


def test_patch_discriminator_logit_grid():
    disc = PatchDiscriminator(in_channels=3, ndf=8, n_layers=3)
    assert disc(torch.zeros(2, 3, 32, 32)).shape == (2, 1, 2, 2)
