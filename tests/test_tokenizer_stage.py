"""Tokenizer stage: Ray Train with 2 CPU workers lowers the loss and resumes; the latent cache round trip;
reconstruction metrics on both decodes."""

import dataclasses
import functools
import math

import pytest
import torch

from sphereard.config import absolute_paths, parse_params
from sphereard.data import ShardDataset, prepare_dataset
from sphereard.errors import UserError
from sphereard.export import export_model
from sphereard.latents import LATENTS_FILE, LatentDataset, read_latent_cache
from sphereard.profiles import materialise
from sphereard.tokenizer import create_tokenizer, reconstruction_loss
from sphereard.tokenizer.export import load_tokenizer
from sphereard.tokenizer.task import TokenizerTask, tokenizer_meta
from sphereard.train import LoopSpec, fit, load_latest

FP16_ATOL = 2e-3  # cache stores float16; params are O(1) (mu, logvar) or O(10) (kappa, relative)


@pytest.fixture(scope="module")
def smoke_params(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok_stage")
    data = materialise("smoke")
    data["data"]["out"] = str(root / "shards")
    data["data"]["max_per_class"] = 8
    data["tokenizer"]["out"] = str(root / "tokenizer")
    data["encode"]["out"] = str(root / "latents")
    params = absolute_paths(parse_params(data))
    prepare_dataset(params.data, params.data.out)
    return params


def with_train(params, **changes):
    tok = params.tokenizer
    train = tok.train.model_copy(update=changes)
    return params.model_copy(update={"tokenizer": tok.model_copy(update={"train": train})})


def fixed_batch_loss(params, state=None):
    torch.manual_seed(0)
    vae = create_tokenizer(params.tokenizer.preset, posterior="spherical")
    if state is not None:
        vae.load_state_dict(state)
    x = torch.stack([ShardDataset(params.data.out, "train")[i][0] for i in range(32)])
    with torch.no_grad():
        return reconstruction_loss(vae(x, sample=False)["recon"], x).item()


@pytest.mark.slow
def test_two_ray_workers_lower_the_loss_and_resume_at_the_saved_step(smoke_params, tmp_path):
    steps = 16
    ray_cfg = smoke_params.tokenizer.train.ray.model_copy(update={"num_workers": 2})
    params = with_train(smoke_params, steps=steps, ckpt_every=4, log_every=4, sample_every=steps,
                        disc_start=8, ray=ray_cfg)
    ckpt_dir = tmp_path / "ckpt"
    spec = LoopSpec(task_factory=functools.partial(TokenizerTask, params, "spherical"), loop=params.tokenizer.train,
                    ckpt_dir=str(ckpt_dir), seed=0, stop_after=8)
    fit(spec, "test-vae-2workers")
    assert load_latest(ckpt_dir).step == 8  # interrupted after 8 of 16 steps
    fit(dataclasses.replace(spec, stop_after=None), "test-vae-2workers")
    final = load_latest(ckpt_dir)
    assert final.step == steps
    assert final.meta["world_size"] == 2
    assert {"model", "ema", "optimizer", "disc", "disc_optimizer"} <= set(final.states)
    before, after = fixed_batch_loss(params), fixed_batch_loss(params, final.states["model"])
    assert after < 0.8 * before, (before, after)


def test_encode_round_trip_reproduces_encoder_output(smoke_params):
    from sphereard.layout import export_dir
    from sphereard.layout import latent_cache_dir as latent_dir
    from sphereard.tokenizer.encode import encode_split, subset_indices

    for posterior, hflip, max_images in (("spherical", True, None), ("gaussian", False, 50)):
        smoke_params = smoke_params.model_copy(update={"encode": smoke_params.encode.model_copy(
            update=dict(hflip=hflip, max_images=max_images))})
        torch.manual_seed(1)
        vae = create_tokenizer(smoke_params.tokenizer.preset, posterior=posterior).eval()
        model_dir = export_dir(smoke_params, "tokenizer", posterior)  # <tokenizer.out>/<posterior>/seed0/model
        export_model(model_dir, vae, tokenizer_meta(smoke_params, posterior, vae.radius))
        meta = encode_split(smoke_params, posterior, torch.device("cpu"))
        params, labels, read_meta = read_latent_cache(latent_dir(smoke_params, posterior))
        dataset = ShardDataset(smoke_params.data.out, "train")
        kept = subset_indices(len(dataset), max_images, smoke_params.seed)
        assert meta["rows"] == len(kept) == params.shape[0] == (max_images or len(dataset))
        assert meta["train_images"] == len(dataset)
        assert params.shape[1] == read_meta["views"] == (2 if hflip else 1)
        assert read_meta["posterior"] == posterior and read_meta["radius"] == pytest.approx(vae.radius)
        x = torch.stack([dataset[i][0] for i in kept])
        loaded, _ = load_tokenizer(model_dir)
        with torch.no_grad():
            expected = loaded.encode_moments(x)
            expected_flip = loaded.encode_moments(x.flip(3))
        scale = expected.abs().amax(dim=(0, 1)).clamp_min(1.0)  # per-channel magnitude (kappa can be large)
        assert torch.allclose(params[:, 0].float() / scale, expected / scale, atol=FP16_ATOL)
        if hflip:
            assert torch.allclose(params[:, 1].float() / scale, expected_flip / scale, atol=FP16_ATOL)
        assert torch.equal(labels, torch.tensor([dataset[i][1] for i in kept]))
        item, label = LatentDataset(latent_dir(smoke_params, posterior))[0]
        assert item.shape == (2 if hflip else 1, vae.num_tokens, vae.moments_dim) and item.dtype == torch.float32


def test_encode_subset_is_seeded_sorted_and_unique():
    from sphereard.tokenizer.encode import subset_indices

    assert subset_indices(5, None, 0) == subset_indices(5, 9, 0) == [0, 1, 2, 3, 4]
    picked = subset_indices(1000, 100, seed=3)
    assert len(set(picked)) == 100 and picked == sorted(picked) and picked == subset_indices(1000, 100, seed=3)
    assert picked != subset_indices(1000, 100, seed=4)


def test_latent_cache_detects_tampering(smoke_params):
    from sphereard.layout import latent_cache_dir as latent_dir

    cache = latent_dir(smoke_params, "spherical")
    if not (cache / LATENTS_FILE).exists():
        pytest.skip("needs the round-trip test's cache")
    blob = bytearray((cache / LATENTS_FILE).read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (cache / LATENTS_FILE).write_bytes(bytes(blob))
    with pytest.raises(UserError, match=r"latents\.parquet: sha256 does not match"):
        read_latent_cache(cache)


def test_export_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"model\.json: exported model file missing"):
        load_tokenizer(tmp_path)


def test_exports_from_before_the_moments_rename_still_load(tmp_path):
    """Exports written before issue 13 name the posterior layer `to_params`; they load under `to_moments`."""
    from safetensors.torch import load_file, save_file

    from sphereard.export import WEIGHTS_FILE, export_model
    from sphereard.tokenizer.vae import create_tokenizer

    vae = create_tokenizer("fmnist-xs", posterior="spherical")
    meta = {"kind": "tokenizer", "preset": "fmnist-xs", "overrides": {}, "posterior": "spherical",
            "radius": vae.radius, "step": 1}
    export_model(tmp_path / "model", vae, meta)
    state = load_file(tmp_path / "model" / WEIGHTS_FILE)
    old = {k.replace("to_moments.", "to_params.", 1): v for k, v in state.items()}
    assert old.keys() != state.keys()
    save_file(old, str(tmp_path / "model" / WEIGHTS_FILE))
    loaded, _ = load_tokenizer(tmp_path / "model")
    x = torch.rand(2, vae.arch.in_channels, vae.arch.image_size, vae.arch.image_size) * 2 - 1
    torch.testing.assert_close(loaded.encode_moments(x), vae.eval().encode_moments(x))


class RecordingRun:
    """Stand-in for the MLflow run: records the artifacts logged."""

    def __init__(self):
        self.artifacts = []

    def log_artifact(self, path):
        self.artifacts.append(path)


@pytest.mark.parametrize("posterior", ["spherical", "gaussian_norm", "gaussian"])
def test_train_vae_measures_both_decodes_reproducibly(smoke_params, posterior):
    """train_vae's reconstruction metrics: psnr / ssim on decode(mode) and decode(sample), finite; the sample
    decode differs from the mode decode and is the same for the same seed; another seed changes it only."""
    from sphereard.layout import reconstructions_file
    from sphereard.tokenizer.train import evaluate_reconstruction

    torch.manual_seed(0)
    vae = create_tokenizer(smoke_params.tokenizer.preset, posterior=posterior).eval()
    run = RecordingRun()
    metrics, count = evaluate_reconstruction(smoke_params, vae, posterior, run)
    assert set(metrics) == {"psnr_mode", "psnr_sample", "ssim_mode", "ssim_sample", "recon_images_per_s"}
    assert all(math.isfinite(v) for v in metrics.values()) and count > 0
    assert metrics["psnr_mode"] != metrics["psnr_sample"] and metrics["ssim_mode"] != metrics["ssim_sample"]
    assert run.artifacts == [reconstructions_file(smoke_params, posterior)] and run.artifacts[0].is_file()
    again, _ = evaluate_reconstruction(smoke_params, vae, posterior, RecordingRun())
    other, _ = evaluate_reconstruction(smoke_params.model_copy(update={"seed": smoke_params.seed + 1}), vae,
                                       posterior, RecordingRun())
    assert {k: again[k] for k in ("psnr_sample", "ssim_sample")} == {k: metrics[k] for k in ("psnr_sample",
                                                                                             "ssim_sample")}
    assert other["psnr_sample"] != metrics["psnr_sample"] and other["psnr_mode"] == metrics["psnr_mode"]
