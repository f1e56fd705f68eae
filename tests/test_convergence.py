"""Issue 15, tokenizer convergence: the posterior statistics logged while training, the kappa_init
option, the plateau criterion, and the training history that checkpoints carry across resumes."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sphereard.tokenizer.posterior import build_posterior, concentration_bias, init_concentration
from sphereard.train.convergence import (
    PLATEAU_TOL,
    convergence_summary,
    plateaued,
    second_half_change,
    smoothed,
)


def spherical_moments(kappa: float, shape=(64, 16), d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = F.normalize(torch.randn(*shape, d, generator=g), dim=-1)
    return torch.cat([mu, torch.full((*shape, 1), kappa)], dim=-1)  # (B, L, d + 1)


def test_spherical_stats_track_concentration_and_sample_noise():
    post = build_posterior("spherical", 16)
    cos = {}
    for kappa in (2.0, 18.0, 1e4):
        m = spherical_moments(kappa)
        torch.manual_seed(0)
        stats = post.stats(m, post.sample(m))
        assert stats["kappa_mean"] == pytest.approx(kappa) and stats["kappa_p05"] == pytest.approx(kappa)
        cos[kappa] = float(stats["cos_sample_mode"])
    # Power Spherical: E[mu . x] = (d - 1 + 2 kappa) ... rises with kappa; the kappa ~18, d = 16: ~0.55
    assert cos[2.0] < 0.25 < cos[18.0] < 0.65 < 0.99 < cos[1e4]
    assert abs(cos[18.0] - 0.55) < 0.05


def test_gaussian_stats_summarise_the_std_per_dimension():
    post = build_posterior("gaussian", 4)
    logvar = torch.log(torch.tensor([0.25, 1.0, 4.0, 1.0]) ** 2).expand(8, 3, 4)  # std 0.25, 1, 4, 1
    m = torch.cat([torch.zeros(8, 3, 4), logvar], dim=-1)
    stats = post.stats(m, post.sample(m))
    assert stats["std_min_dim"] == pytest.approx(0.25) and stats["std_max_dim"] == pytest.approx(4.0)
    assert stats["std_mean"] == pytest.approx(1.5625)
    assert -1 <= float(stats["cos_sample_mode"]) <= 1


@pytest.mark.parametrize("kappa", [1.01, 2.0, 20.0, 500.0])
def test_kappa_init_sets_the_starting_concentration(kappa):
    assert F.softplus(torch.tensor(concentration_bias(kappa), dtype=torch.float64)).item() + 1 == pytest.approx(kappa)
    layer = torch.nn.Linear(8, 17)
    torch.nn.init.zeros_(layer.weight)
    init_concentration(layer, kappa)
    moments = build_posterior("spherical", 16).parameterise(layer(torch.randn(2, 5, 8)))
    assert torch.allclose(moments[..., -1], torch.tensor(kappa), rtol=1e-5)
    with pytest.raises(AssertionError, match="kappa must exceed 1"):
        concentration_bias(1.0)


def test_plateau_criterion():
    steps = np.arange(10, 510, 10)  # 50 logged points
    flat = np.full(50, 2.0) + 0.01 * np.sin(steps)
    assert second_half_change(steps, flat) < 0.01
    ramp = np.linspace(1.0, 3.0, 50)  # the KL: still rising at the end
    assert second_half_change(steps, ramp) == pytest.approx(abs(smoothed(ramp)[24] - smoothed(ramp)[-1]) /
                                                            smoothed(ramp)[-1])
    assert second_half_change(steps, ramp) > PLATEAU_TOL
    assert math.isnan(second_half_change(steps[:3], flat[:3]))
    history = [{"step": int(s), "train/kl": float(k), "train/recon": 0.1, "train/kappa_mean": 20.0}
               for s, k in zip(steps, flat, strict=True)]
    summary = convergence_summary(history)
    assert set(summary) == {"kl_final", "kl_second_half_change", "recon_final", "recon_second_half_change",
                            "kappa_mean_final"}
    assert plateaued(summary)
    history[-1]["train/kl"] = 10.0  # a jump at the end
    assert not plateaued(convergence_summary(history))
    assert not plateaued({"kl_second_half_change": 0.0})  # a missing curve is no plateau


@pytest.mark.parametrize("choice", ["raw", "ema"])
def test_tokenizer_export_holds_the_chosen_weights(tmp_path, choice):
    """`tokenizer.train.export`: raw (default, as the official S-VAE) exports the optimised weights."""
    from sphereard.config import parse_params
    from sphereard.export import read_meta
    from sphereard.layout import checkpoint_dir, export_dir
    from sphereard.profiles import materialise
    from sphereard.tokenizer.train import export_tokenizer
    from sphereard.tokenizer.vae import create_tokenizer
    from sphereard.train.checkpoint import save_checkpoint

    data = materialise("smoke")
    data["tokenizer"]["out"] = str(tmp_path / "tokenizer")
    data["tokenizer"]["train"]["export"] = choice
    params = parse_params(data)
    assert parse_params(materialise("smoke")).tokenizer.train.export == "raw"
    vae = create_tokenizer(params.tokenizer.preset, posterior="spherical")
    raw = vae.state_dict()
    ema = {k: v + 1.0 if v.is_floating_point() else v for k, v in raw.items()}
    save_checkpoint(checkpoint_dir(params, "tokenizer", "spherical"), 7, {"model": raw, "ema": ema})
    exported = export_tokenizer(params, "spherical", None).state_dict()
    expected = raw if choice == "raw" else ema
    assert all(torch.equal(exported[k], expected[k]) for k in expected)
    meta = read_meta(export_dir(params, "tokenizer", "spherical"))
    assert meta["weights"] == choice and meta["step"] == 7
