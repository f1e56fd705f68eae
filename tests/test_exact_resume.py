"""Bit-exact resume at any step (mid-epoch included) and the non-finite guard, on the real noisy tasks.

Tokenizer: Power Spherical posterior samples, per-image flips and the PatchGAN discriminator (from
step 2). Generator: fresh posterior samples from a 2-view latent cache (view picked per item),
rectified-flow noise and times, label dropout. An epoch here is 5 batches; the interrupted runs stop
at steps 3 and 6 (both mid-epoch) and resume; model, EMA and optimizer states (discriminator
included) must be bit-identical to an uninterrupted run.
"""

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from sphereard.ar.task import GeneratorTask
from sphereard.config import absolute_paths, parse_params
from sphereard.data import prepare_dataset
from sphereard.latents import LatentCacheWriter, LatentDataset, pick_views
from sphereard.layout import latent_cache_dir
from sphereard.profiles import materialise
from sphereard.tokenizer.task import TokenizerTask
from sphereard.train import LoopSpec, fit, load_latest
from sphereard.train.guard import FiniteGuard, NonFiniteError
from sphereard.train.loop import HISTORY_KEY
from sphereard.train.sampler import endless_batches, make_loader

IMAGES_PER_CLASS = 4  # per class and split: 40 train images -> 5 batches of 8 per epoch
BATCH, STEPS, STOPS = 8, 10, (3, 3)  # interrupted run: 0..3 | 3..6 | 6..10 (3 and 6 are mid-epoch)


@pytest.fixture(scope="module")
def params(tmp_path_factory):
    root = tmp_path_factory.mktemp("exact_resume")
    data = materialise("smoke")
    data["data"].update(out=str(root / "shards"), max_per_class=IMAGES_PER_CLASS)
    data["tokenizer"]["out"] = str(root / "tokenizer")
    data["encode"]["out"] = str(root / "latents")
    data["generator"]["out"] = str(root / "generator")
    params = absolute_paths(parse_params(data))
    prepare_dataset(params.data, params.data.out)
    return params


def with_loop(params, block: str, **changes):
    cfg = getattr(params, block)
    train = cfg.train.model_copy(update=dict(steps=STEPS, batch_size=BATCH, log_every=2, ckpt_every=3,
                                             sample_every=STEPS, **changes))
    return params.model_copy(update={block: cfg.model_copy(update={"train": train})})


def run_split_and_straight(tmp_path, task_factory, loop, metas: dict | None = None):
    """The same run twice: interrupted at STOPS then finished, and uninterrupted -> (split, straight)
    states; their checkpoint metas go into `metas` when given."""
    states = {}
    for name in ("split", "straight"):
        spec = LoopSpec(task_factory=task_factory, loop=loop, ckpt_dir=str(tmp_path / name), seed=7)
        if name == "split":
            for stop in STOPS:
                fit(dataclasses.replace(spec, stop_after=stop), f"resume-{name}")
        fit(spec, f"resume-{name}")
        ckpt = load_latest(spec.ckpt_dir)
        assert ckpt.step == STEPS
        states[name] = ckpt.states
        if metas is not None:
            metas[name] = ckpt.meta
    return states["split"], states["straight"]


def assert_bit_identical(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), f"{where}: max |diff| {(a.double() - b.double()).abs().max()}"
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_bit_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_bit_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_epoch_layout_puts_the_stops_mid_epoch(params):
    loader, sampler, per_epoch = make_loader(TokenizerTask(params, "spherical").dataset(), BATCH, 0, 1, 7, 0, False,
                                             window=2)
    assert per_epoch == 5 and all(stop % per_epoch for stop in (STOPS[0], sum(STOPS)))


def test_loader_does_not_touch_the_global_rng(params):
    """Creating an epoch's iterator (at a resume) must not shift the step's random stream."""
    loader, sampler, per_epoch = make_loader(TokenizerTask(params, "spherical").dataset(), BATCH, 0, 1, 7, 0, False,
                                             window=2)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    first = next(endless_batches(loader, sampler, 5, per_epoch))
    assert torch.equal(torch.rand(3), expected)
    again = next(endless_batches(loader, sampler, 5, per_epoch))
    assert torch.equal(first[0], again[0]), "the batch of a step is a function of the step"


@pytest.mark.parametrize("loader_workers", [0, 1])
def test_tokenizer_resume_is_bit_exact_with_posterior_samples_flips_and_discriminator(params, tmp_path,
                                                                                      loader_workers):
    """Also with a DataLoader worker process: its resumed epoch restarts mid-way, yet nothing drifts."""
    p = with_loop(params, "tokenizer", disc_start=2, disc_weight=0.5, lpips_weight=0.0,
                  num_loader_workers=loader_workers)
    metas = {}
    split, straight = run_split_and_straight(tmp_path, functools.partial(TokenizerTask, p, "spherical"),
                                             p.tokenizer.train, metas)
    assert {"model", "ema", "optimizer", "disc", "disc_optimizer"} <= set(split)
    assert_bit_identical(split, straight, "tokenizer")
    # the logged history rides in the checkpoints: a resumed run keeps every earlier row; windows
    # that no stop cuts (steps 2, 6, 8, 10) are identical, a stop adds its own short window (3)
    history = {name: {row["step"]: row for row in meta[HISTORY_KEY]} for name, meta in metas.items()}
    assert list(history["straight"]) == [2, 4, 6, 8, 10] and list(history["split"]) == [2, 3, 4, 6, 8, 10]
    for step in (2, 6, 8, 10):
        assert history["split"][step] == history["straight"][step], step
    assert {"train/kl", "train/recon", "train/kappa_mean", "train/cos_sample_mode"} <= set(history["split"][10])


def write_two_view_cache(out_dir, rows=36, kappa=50.0):
    """Spherical posterior params (mu, kappa) for rows x 64 tokens x d=8, with a distinct flip view."""
    g = torch.Generator().manual_seed(0)
    mu = torch.nn.functional.normalize(torch.randn(2, rows, 64, 8, generator=g), dim=-1)
    params_ = torch.cat([mu, torch.full((2, rows, 64, 1), kappa)], dim=-1).numpy()  # (V, N, L, d + 1)
    meta = {"posterior": "spherical", "radius": 8 ** 0.5, "latent_dim": 8, "grid_size": 8, "num_classes": 10}
    with LatentCacheWriter(out_dir, meta) as cache:
        cache.write(params_[0], np.arange(rows) % 10, params_[1])


def test_generator_resume_is_bit_exact_with_view_picks_flow_noise_and_label_dropout(params, tmp_path):
    write_two_view_cache(latent_cache_dir(params, "spherical"))
    p = with_loop(params, "generator")
    assert p.generator.preset == "fmnist-xs"  # label_dropout 0.1: the null class is drawn at random
    split, straight = run_split_and_straight(tmp_path, functools.partial(GeneratorTask, p, "spherical"),
                                             p.generator.train)
    assert_bit_identical(split, straight, "generator")


def test_latent_items_carry_every_view_and_the_step_picks_one(tmp_path):
    write_two_view_cache(tmp_path / "cache")
    views, label = LatentDataset(tmp_path / "cache")[3]
    assert views.shape == (2, 64, 9) and not torch.equal(views[0], views[1]) and int(label) == 3
    batch = torch.stack([views] * 64)  # (B, V, L, P)
    picked = pick_views(batch)
    is_flip = (picked == views[1]).flatten(1).all(1)
    assert picked.shape == (64, 64, 9) and ((picked == views[0]).flatten(1).all(1) | is_flip).all()
    assert 10 < int(is_flip.sum()) < 54, "each view about half the time"


# ------------------------------------------------------------------ non-finite guard

def test_guard_names_the_first_non_finite_step_and_quantity():
    guard = FiniteGuard()
    for step in range(5):
        guard.add(step, {"loss": torch.tensor(1.0), "grad_norm": torch.tensor(float("inf") if step >= 3 else 1.0),
                         "lr": 0.1})
    with pytest.raises(NonFiniteError, match=r"at step 4: grad_norm=inf is not finite"):
        guard.check()
    guard.check()  # the window was consumed
    guard.add(9, {"loss": torch.tensor(float("nan"))})
    with pytest.raises(NonFiniteError, match=r"at step 10: loss=nan"):
        guard.check()


class DivergingTokenizerTask(TokenizerTask):
    """The real tokenizer task whose loss becomes NaN from update `bad_from` on (a poisoned batch)."""

    def __init__(self, params, posterior, bad_from):
        super().__init__(params, posterior)
        self.bad_from = bad_from

    def train_step(self, batch, step):
        if step >= self.bad_from:
            x, y = batch
            batch = (x * float("nan"), y)
        return super().train_step(batch, step)


def test_non_finite_loss_stops_training_and_keeps_the_last_finite_checkpoint(params, tmp_path):
    p = with_loop(params, "tokenizer", lpips_weight=0.0)
    spec = LoopSpec(task_factory=functools.partial(DivergingTokenizerTask, p, "spherical", bad_from=4),
                    loop=p.tokenizer.train, ckpt_dir=str(tmp_path / "ckpt"), seed=7)
    with pytest.raises(NonFiniteError, match=r"diverged at step 5: (kl|loss|recon)=nan is not finite"):
        fit(spec, "diverge")
    ckpt = load_latest(spec.ckpt_dir)
    assert ckpt.step == 3, "latest must stay on the last finite checkpoint"
    assert sorted(q.name for q in Path(spec.ckpt_dir).iterdir()) == ["latest", "step-00000003"]
    for name, state in ckpt.states.items():
        if name in ("model", "ema"):
            assert all(torch.isfinite(t).all() for t in state.values()), name


def test_diverging_stage_exits_with_one_line_and_exports_nothing(tmp_path):
    """`train_vae` with a huge learning rate: exit 2, one line naming the step, latest = last finite, no export."""
    import os
    import subprocess
    import sys

    import yaml

    data = materialise("smoke")
    data["data"].update(out=str(tmp_path / "shards"), max_per_class=IMAGES_PER_CLASS)
    data["tokenizer"]["out"] = str(tmp_path / "tok")
    data["tokenizer"]["train"].update(lpips_weight=0.0, ckpt_every=2, log_every=10)
    data["tokenizer"]["train"]["optim"].update(lr=1e4, min_lr=1e4)
    data["tracking"]["enabled"] = False
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(data))
    prepare_dataset(parse_params(data).data, data["data"]["out"])
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "pipelines.train_vae", "--posterior", "spherical",
                           "--params", str(params_file)], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(repo)}, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert "training diverged at step 3: recon=nan is not finite" in errors[0]
    out = tmp_path / "tok" / "spherical" / "seed0"  # run seed0: the default `--seed`
    assert (out / "ckpt" / "latest").read_text().strip() == "step-00000002"
    assert not (out / "model").exists() and not (tmp_path / "metrics").exists()
