"""Training task for the SphereAR generator (SphereAR Sec. 3.2, 4.1) on a cached tokenizer's latents.

Runs inside the generic Ray Train loop (`sphereard/train/loop.py`); one task per posterior. Every
step draws a *fresh* posterior sample z ~ q(z | x) from the cached parameters of the image (or
its flip) on the device, as MAR and the official SphereAR code do, then minimises the rectified
flow loss of next-token prediction. AdamW without decay for embeddings, the input projection and
1-D params; warmup + cosine; grad clip; EMA (all from `sphereard.train.optim`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from sphereard.ar.arch import GeneratorArch, resolve_generator_arch
from sphereard.ar.presets import NO_DECAY_PATTERNS, SphereARModel, create_generator
from sphereard.ar.sampler import sampling_kwargs
from sphereard.config import OptimConfig, Params, SamplingConfig
from sphereard.data import ShardDataset, load_manifest
from sphereard.data.transforms import augment, crop_probability
from sphereard.errors import UserError
from sphereard.eval.figures import class_grid, class_label, read_class_names
from sphereard.latents import LatentDataset, meta_path, pick_views, read_latent_meta
from sphereard.layout import export_dir, latent_cache_dir
from sphereard.tokenizer.inference import model_to_uint8
from sphereard.tokenizer.posterior import sample_from_moments
from sphereard.train import StepContext, TrainTask, build_ema, build_optimizer, build_scheduler, optimizer_step
from sphereard.train.checkpoint import load_training_states, training_states
from sphereard.utils.io import require_fields

log = logging.getLogger(__name__)

MEDIA_MAX_CLASSES = 10  # the training-time grid shows at most this many classes (evenly spaced)
MEDIA_PER_CLASS = 4  # images per class: one grid row per class
MEDIA_MAX_SAMPLER_STEPS = 16  # few sampler steps: a progress picture, not an evaluation


def check_arch_fits_cache(arch: GeneratorArch, meta: dict, cache_dir: str | Path) -> None:
    """The generator must model the cached tokens: same classes, token dim d and grid."""
    for field, cache_key in (("num_classes", "num_classes"), ("token_dim", "latent_dim"), ("grid_size", "grid_size")):
        ours, cached = getattr(arch, field), meta[cache_key]
        if ours != cached:
            raise UserError(f"generator.preset / generator.overrides.{field}: {field}={ours} does not match "
                            f"{cache_dir} ({cache_key}={cached})")


def generator_arch_for_cache(params: Params, posterior: str) -> tuple[GeneratorArch, dict]:
    """Resolve generator.preset + overrides and check them against the latent cache's `cache.json`."""
    cache_dir = latent_cache_dir(params, posterior)
    meta = read_latent_meta(cache_dir, verify=False)
    require_fields(meta_path(cache_dir), meta, {"num_classes": int, "latent_dim": int, "grid_size": int,
                                                 "radius": float})  # what the generator needs of the cache
    arch = resolve_generator_arch(params.generator.preset, params.generator.overrides, "generator")
    check_arch_fits_cache(arch, meta, cache_dir)
    if meta["posterior"] != posterior:
        raise UserError(f"{cache_dir}: holds {meta['posterior']!r} latents, expected {posterior!r}")
    return arch, meta


def generator_arch_for_tokenizer(params: Params, posterior: str):
    """(arch, frozen tokenizer on the CPU) for `latents: online`: the generator must model the tokenizer's
    tokens (token dim, grid) and the data's classes. UserError naming the export or the key."""
    from sphereard.tokenizer.export import load_tokenizer

    vae, _ = load_tokenizer(export_dir(params, "tokenizer", posterior), "cpu", posterior=posterior)
    manifest = load_manifest(params.data.out, verify=False)
    arch = resolve_generator_arch(params.generator.preset, params.generator.overrides, "generator")
    shapes = {"num_classes": manifest["num_classes"], "latent_dim": vae.latent_dim, "grid_size": vae.grid_size}
    check_arch_fits_cache(arch, shapes, export_dir(params, "tokenizer", posterior))
    return arch, vae.eval()


def generator_meta(params: Params, posterior: str, radius: float, tokenizer_dir: str | Path) -> dict:
    """What `sphereard.ar.export.load_generator` and the sampling stage need."""
    gen = params.generator
    return {"kind": "generator", "preset": gen.preset, "overrides": gen.overrides, "flow": gen.flow,
            "magnitude": gen.magnitude, "posterior": posterior, "radius": radius, "tokenizer_dir": str(tokenizer_dir)}


def build_training(model: SphereARModel, cfg: OptimConfig, total_steps: int):
    """AdamW (paper param groups), warmup + cosine schedule, EMA of the unwrapped model."""
    opt = build_optimizer(model.named_parameters(), cfg, NO_DECAY_PATTERNS)
    return opt, build_scheduler(opt, cfg, total_steps), build_ema(model, cfg)


def train_update(model: SphereARModel, forward: Callable, opt, sched, ema, moments: torch.Tensor,
                 labels: torch.Tensor, step: int, posterior: str, radius: float, ctx: StepContext) -> dict:
    """One generator update on cached posterior moments (B, L, P) and labels (B,) -> metrics.

    `forward(z, labels)` is the (possibly DDP-wrapped or compiled) `model.loss`."""
    with torch.no_grad():
        z = sample_from_moments(posterior, moments.float(), radius)  # (B, L, d): fresh posterior sample
    with ctx.autocast():
        loss = forward(z, labels)
    metrics = {"loss": loss.detach()}
    metrics.update(optimizer_step(loss, opt, sched, step, model, ctx.optim.grad_clip))
    ema.update(model, step=step + 1)
    return metrics


def media_labels(num_classes: int, device) -> torch.Tensor:
    """Class-balanced labels (C * MEDIA_PER_CLASS,), classes evenly spaced over [0, num_classes)."""
    count = min(num_classes, MEDIA_MAX_CLASSES)
    classes = torch.linspace(0, num_classes - 1, count, device=device).round().long()
    return classes.repeat_interleave(MEDIA_PER_CLASS)


def media_grid(images: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str] | None = None):
    """Decoded samples (N, C, H, W) in [-1, 1] and their classes (N,) -> a PIL grid with one row per
    class (in order of first appearance), the class name as its row label (`class <id>` without names)."""
    assert images.ndim == 4 and len(images) == len(labels), "need (N, C, H, W) images and (N,) labels"
    pixels = model_to_uint8(images)  # (N, H, W, C)
    ids = labels.detach().cpu().numpy()
    classes = list(dict.fromkeys(ids.tolist()))
    return class_grid([pixels[ids == c] for c in classes], [class_label(int(c), class_names) for c in classes])


class GeneratorTask(TrainTask):
    def __init__(self, params: Params, posterior: str):
        self.params, self.posterior = params, posterior
        self.tokenizer = None
        self.class_names: list[str] | None = None  # row labels of the media grid, read with the tokenizer

    def dataset(self) -> Dataset:
        """The latent cache, streamed (`generator.train.latents: cache`), or the train images, streamed
        (`online`: stored squares when cropping; encoded in train_step)."""
        window, crop = self.params.generator.train.shuffle_window, self.params.generator.train.crop
        if self.online:
            self.arch, self.encoder = generator_arch_for_tokenizer(self.params, self.posterior)
            self.radius = float(self.encoder.radius)
            return ShardDataset(self.params.data.out, "train", verify=False, cache_groups=window,
                                full_size=crop.enabled)
        self.arch, meta = generator_arch_for_cache(self.params, self.posterior)
        data = LatentDataset(latent_cache_dir(self.params, self.posterior), verify=False, cache_groups=window)
        assert meta["posterior"] == self.posterior, "the latent cache must come from this posterior's tokenizer"
        self.radius = float(meta["radius"])
        self.center_views = data.center_views
        return data

    @property
    def online(self) -> bool:
        return self.params.generator.train.latents == "online"

    def check_data(self) -> None:
        if self.online:
            ShardDataset(self.params.data.out, "train", verify=True).check_labels()
        else:
            read_latent_meta(latent_cache_dir(self.params, self.posterior), verify=True)

    def build(self, ctx: StepContext) -> None:
        gen = self.params.generator
        self.ctx = ctx
        with torch.device(ctx.device):
            self.gen = create_generator(gen.preset, gen.flow, gen.magnitude, **gen.overrides)
        self.model = ctx.prepare_model(self.gen)
        self.opt, self.sched, self.ema = build_training(self.gen, ctx.optim, ctx.total_steps)
        if self.online:
            self.encoder = self.encoder.to(ctx.device).requires_grad_(False)

    def train_step(self, batch, step: int) -> dict:
        crop = self.params.generator.train.crop
        if self.online:
            images, labels = batch  # (B, C, S, S) stored squares (or (B, C, H, W)), (B,)
            x = augment(images, self.params.data.image_size, crop, self.ctx.epoch(step))  # crop, flip
            with torch.no_grad():
                moments = self.encoder.encode_moments(x).float()  # (B, L, P): the frozen tokenizer's posterior
        else:
            views, labels = batch  # (B, V, L, P) cached posterior moments of each view, (B,)
            prob = (crop_probability(self.ctx.epoch(step), crop.decay_start_epoch, crop.decay_end_epoch)
                    if crop.enabled else 0.0)
            moments = pick_views(views, self.center_views, prob)  # (B, L, P), under the step seed
        return train_update(self.gen, self.model, self.opt, self.sched, self.ema, moments, labels, step,
                            self.posterior, self.radius, self.ctx)

    def items_per_batch(self, batch) -> int:
        """Tokens (B * L): the loop's perf/items_per_s is then tokens/s."""
        first, _ = batch  # (B, V, L, P) cached moments, or (B, C, H, W) images (online)
        if self.params is not None and self.online:
            return int(first.shape[0] * self.arch.grid_size ** 2)
        return int(first.shape[0] * first.shape[2])

    def state_dicts(self) -> dict:
        return training_states(self.gen, self.ema.module, self.opt)

    def load_state_dicts(self, states: dict) -> None:
        """Resume model, EMA and optimizer (UserError as `load_training_states`)."""
        load_training_states(states, self.gen, self.ema.module, self.opt)

    @torch.no_grad()
    def log_media(self, step: int, run) -> None:
        """A class-balanced grid sampled with the EMA model and decoded: one row per class, labelled
        with the class name from the prepared data's manifest (`media_grid`)."""
        if not run.enabled:
            return
        if self.tokenizer is None:  # rank 0 only, loaded once
            from sphereard.tokenizer.export import load_tokenizer

            self.tokenizer, _ = load_tokenizer(export_dir(self.params, "tokenizer", self.posterior), self.ctx.device)
            self.class_names = read_class_names(self.params.data.out, self.arch.num_classes)
        # fixed defaults (training does not depend on the `sampling` block); a riemannian head samples with euler
        cfg = SamplingConfig(sampler="euler" if self.gen.flow == "riemannian" else "euler_maruyama")
        ema: nn.Module = self.ema.module.eval()
        labels = media_labels(self.arch.num_classes, self.ctx.device)
        kwargs = sampling_kwargs(cfg, self.posterior, self.radius, min(cfg.steps, MEDIA_MAX_SAMPLER_STEPS))
        z = ema.sample(labels, seed=cfg.seed, **kwargs)  # (N, L, d)
        images = self.tokenizer.decode(z).clamp(-1, 1)  # (N, C, H, W)
        run.log_image(media_grid(images, labels, self.class_names), "generated", step)
