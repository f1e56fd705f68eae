"""DVC stage `train_vae@{posterior}`: train one tokenizer with Ray Train, export its EMA weights,
and measure reconstruction (PSNR, SSIM, LPIPS when its weights are local) on the held-out split.

    python -m pipelines.train_vae --posterior spherical [--params FILE] [--stop-after N]
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

import numpy as np
import torch

from pipelines._cli import add_training_args, stage_main
from sphereard.config import Params, absolute_paths, as_dict
from sphereard.data import images_as_uint8
from sphereard.eval.reconstruction import reconstruction_metrics
from sphereard.export import export_model, read_meta
from sphereard.layout import write_results
from sphereard.tokenizer import create_tokenizer, load_lpips
from sphereard.tokenizer.inference import reconstruct
from sphereard.tokenizer.task import TokenizerTask, tokenizer_meta
from sphereard.tracking import image_grid, start_run
from sphereard.train import LoopSpec, fit, load_latest
from sphereard.train.checkpoint import latest_state
from sphereard.utils.io import atomic_path
from sphereard.utils.weights import load_state_strict

log = logging.getLogger("pipelines.train_vae")

GRID_IMAGES = 32
EVAL_BATCH = 250


def tokenizer_dir(params: Params, posterior: str) -> Path:
    return Path(params.tokenizer.out) / posterior


def export_ema(params: Params, posterior: str, ckpt_dir: Path, model_dir: Path, run_id: str | None):
    """Rebuild the tokenizer from the last checkpoint's EMA weights and export it."""
    tok = params.tokenizer
    ckpt, ema = latest_state(ckpt_dir, "ema")
    vae = create_tokenizer(tok.preset, posterior=posterior, radius=tok.radius, **tok.overrides)
    load_state_strict(vae, ema, f"{ckpt.path}: 'ema'")
    meta = {**tokenizer_meta(params, posterior, vae.radius), "step": ckpt.step, "mlflow_run_id": run_id}
    export_model(model_dir, vae, meta)
    return vae.eval()


def evaluate_reconstruction(params: Params, vae, out: Path, run) -> tuple[dict[str, float], int]:
    """(held-out reconstruction metrics, number of images measured) + an input/reconstruction grid PNG."""
    real, _ = images_as_uint8(params.data.out, "test", limit=params.tokenizer.eval_images)
    start = time.perf_counter()
    recon = reconstruct(vae, real, EVAL_BATCH, "cpu")
    elapsed = time.perf_counter() - start
    lpips = load_lpips(params.evaluation.lpips_weights_path) if params.evaluation.lpips_weights_path else None
    metrics = reconstruction_metrics(real, recon, lpips=lpips)
    metrics.update(recon_images_per_s=len(real) / elapsed)
    pair = torch.from_numpy(np.concatenate([real[:GRID_IMAGES], recon[:GRID_IMAGES]]))
    with atomic_path(out / "reconstructions.png") as tmp:
        image_grid(pair.permute(0, 3, 1, 2).float(), nrow=GRID_IMAGES // 2, value_range=(0, 255)).save(tmp)
    run.log_artifact(out / "reconstructions.png")
    return metrics, len(real)


def run(params: Params, args) -> None:
    posterior = args.posterior
    out = tokenizer_dir(params, posterior)
    ckpt_dir, model_dir = out / "ckpt", out / "model"
    name = f"vae-{posterior}"
    tags = {"stage": "train_vae", "posterior": posterior, "profile": params.profile}
    logged = {"posterior": posterior, "data": as_dict(params.data), "tokenizer": as_dict(params.tokenizer)}
    with start_run(params.tracking, ".", name, params=logged, tags=tags) as run:
        spec = LoopSpec(task_factory=functools.partial(TokenizerTask, absolute_paths(params), posterior),
                        loop=params.tokenizer.train, ckpt_dir=str(ckpt_dir), seed=params.seed, run=run,
                        stop_after=args.stop_after, config_snapshot=logged)
        fit(spec, name)
        if args.stop_after is not None and load_latest(ckpt_dir).step < params.tokenizer.train.steps:
            log.info("stopped early as asked (--stop-after %d); rerun to resume", args.stop_after)
            return
        vae = export_ema(params, posterior, ckpt_dir, model_dir, run.run_id)
        metrics, eval_images = evaluate_reconstruction(params, vae, out, run)
        run.log_metrics({f"recon/{k}": v for k, v in metrics.items()}, step=params.tokenizer.train.steps)
        info = {"posterior": posterior, "eval_images": eval_images, "step": read_meta(model_dir)["step"]}
        write_results(params, "tokenizer", posterior, metrics, info)
        log.info("%s: %s", name, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))


if __name__ == "__main__":
    stage_main(__doc__, run, add_training_args)
