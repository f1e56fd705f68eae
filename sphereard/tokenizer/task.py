"""Training task for a tokenizer (SphereAR Sec. 4.1): L1 + KL (+ LPIPS) (+ PatchGAN hinge from a step).

Runs inside the generic Ray Train loop (`sphereard/train/loop.py`); one task per posterior.
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import Dataset

from sphereard.config import Params
from sphereard.data import ShardDataset
from sphereard.data.transforms import augment
from sphereard.tokenizer.losses import (
    PatchDiscriminator,
    adversarial_weight,
    d_hinge_loss,
    g_hinge_loss,
    load_lpips,
    reconstruction_loss,
)
from sphereard.tokenizer.posterior import init_concentration
from sphereard.tokenizer.vae import create_tokenizer
from sphereard.train import StepContext, TrainTask, build_ema, build_optimizer, build_scheduler, optimizer_step
from sphereard.train.checkpoint import load_optimizer_state, load_training_states, require_state, training_states
from sphereard.utils.weights import load_state_strict

log = logging.getLogger(__name__)

MEDIA_IMAGES = 16
NO_DECAY_PATTERNS = (r"register", r"from_latent", r"to_moments")


def tokenizer_meta(params: Params, posterior: str, radius: float) -> dict:
    """What `sphereard.tokenizer.export.load_tokenizer` needs to rebuild the model."""
    cfg = params.tokenizer
    return {"kind": "tokenizer", "preset": cfg.preset, "overrides": cfg.overrides, "posterior": posterior,
            "radius": radius}


class TokenizerTask(TrainTask):
    def __init__(self, params: Params, posterior: str):
        self.params, self.posterior = params, posterior
        self.cfg = params.tokenizer.train

    def dataset(self) -> Dataset:
        """The train split, streamed; stored squares when cropping (crop and flip: in train_step, under
        the step seed)."""
        return ShardDataset(self.params.data.out, "train", verify=False, cache_groups=self.cfg.shuffle_window,
                            full_size=self.cfg.crop.enabled)

    def check_data(self) -> None:
        ShardDataset(self.params.data.out, "train", verify=True).check_labels()

    def build(self, ctx: StepContext) -> None:
        tok = self.params.tokenizer
        self.ctx = ctx
        with torch.device(ctx.device):
            self.vae = create_tokenizer(tok.preset, posterior=self.posterior, radius=tok.radius, **tok.overrides)
        if self.cfg.kappa_init is not None and self.posterior == "spherical":  # Gaussian heads: no kappa
            init_concentration(self.vae.to_moments, self.cfg.kappa_init)
        self.model = ctx.prepare_model(self.vae)
        self.opt = build_optimizer(self.vae.named_parameters(), ctx.optim, NO_DECAY_PATTERNS)
        self.sched = build_scheduler(self.opt, ctx.optim, ctx.total_steps)
        self.ema = build_ema(self.vae, ctx.optim)
        self.lpips = load_lpips(self.params.lpips_weights_path, ctx.device) if self.cfg.lpips_weight > 0 else None
        self.disc = None
        if self.cfg.disc_weight > 0 and self.cfg.disc_start < ctx.total_steps:
            with torch.device(ctx.device):
                self.disc = PatchDiscriminator(in_channels=self.vae.arch.in_channels)
            self.disc_model = ctx.prepare_model(self.disc)
            self.disc_opt = build_optimizer(self.disc.named_parameters(), ctx.optim)
            self.disc_sched = build_scheduler(self.disc_opt, ctx.optim, ctx.total_steps)
        self.media_batch = None

    def train_step(self, batch, step: int) -> dict:
        x, _ = batch  # (B, C, H, W) in [-1, 1] ((B, C, S, S) stored squares when cropping)
        x = augment(x, self.params.data.image_size, self.cfg.crop, self.ctx.epoch(step))
        if self.media_batch is None:
            self.media_batch = x[:MEDIA_IMAGES].detach().clone()
        gan_weight = adversarial_weight(step, self.cfg.disc_start, self.cfg.disc_weight) if self.disc else 0.0
        with self.ctx.autocast():
            out = self.model(x)
            recon = reconstruction_loss(out["recon"], x, self.cfg.recon_loss)
            kl = out["kl"].mean()
            loss = recon + self.cfg.kl_weight * kl
            metrics = {"recon": recon.detach(), "kl": kl.detach(),
                       **self.vae.posterior.stats(out["moments"], out["z"])}  # kappa / std, cos(sample, mode)
            if self.lpips is not None:
                perceptual = self.lpips(out["recon"], x).mean()
                loss = loss + self.cfg.lpips_weight * perceptual
                metrics["lpips"] = perceptual.detach()
            if gan_weight > 0:
                self.disc.requires_grad_(False)  # generator step: gradients flow to the VAE only
                g_loss = g_hinge_loss(self.disc(out["recon"]))
                self.disc.requires_grad_(True)
                loss = loss + gan_weight * g_loss
                metrics["g_hinge"] = g_loss.detach()
        metrics["loss"] = loss.detach()
        metrics.update(optimizer_step(loss, self.opt, self.sched, step, self.vae, self.ctx.optim.grad_clip))
        self.ema.update(self.vae, step=step + 1)
        if self.disc is not None:  # every step, so DDP collectives stay in lock-step across workers
            with self.ctx.autocast():
                d_loss = d_hinge_loss(self.disc_model(x), self.disc_model(out["recon"].detach()))
            scale = 1.0 if gan_weight > 0 else 0.0  # before disc_start: zero-weighted, no update effect
            d_update = optimizer_step(d_loss * scale, self.disc_opt, self.disc_sched, step, self.disc,
                                      self.ctx.optim.grad_clip)
            metrics.update(d_hinge=d_loss.detach(), d_grad_norm=d_update["grad_norm"])  # both NaN-guarded
        return metrics

    def state_dicts(self) -> dict:
        states = training_states(self.vae, self.ema.module, self.opt)
        if self.disc is not None:
            states.update(disc=self.disc.state_dict(), disc_optimizer=self.disc_opt.state_dict())
        return states

    def load_state_dicts(self, states: dict) -> None:
        """Resume model, EMA and optimizer (UserError as `load_training_states`), and the discriminator's
        states when both sides have one."""
        load_training_states(states, self.vae, self.ema.module, self.opt)
        if self.disc is not None and "disc" in states:
            load_state_strict(self.disc, require_state(states, "disc"), "state 'disc'")
            load_optimizer_state(self.disc_opt, require_state(states, "disc_optimizer"), "state 'disc_optimizer'")

    @torch.no_grad()
    def log_media(self, step: int, run) -> None:
        """Inputs (top rows) over EMA reconstructions (bottom rows)."""
        if self.media_batch is None:
            return
        ema = self.ema.module.eval()
        recon = ema(self.media_batch, sample=False)["recon"].clamp(-1, 1)
        run.log_image_grid(torch.cat([self.media_batch, recon]), "reconstructions", step,
                           nrow=MEDIA_IMAGES, value_range=(-1.0, 1.0))
