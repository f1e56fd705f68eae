"""Train one tokenizer with Ray Train, export its EMA weights and measure reconstruction (PSNR, SSIM,
LPIPS when its weights are local) on the held-out split: DVC stage `train_vae@{posterior}-{seed}`.

Outputs (sphereard/layout.py): `tokenizer.out/<posterior>/seed<k>/` ckpt/, model/, info.json,
reconstructions.png; the metrics file `<metrics_dir>/tokenizer/<posterior>/seed<k>.json`.
"""

from __future__ import annotations

import functools
import logging
import time

import numpy as np
import pandas as pd
import torch

from sphereard.config import Params, absolute_paths
from sphereard.data import images_as_uint8, manifest_path
from sphereard.eval.reconstruction import reconstruction_metrics_by_decode
from sphereard.export import read_meta
from sphereard.layout import checkpoint_dir, export_dir, history_file, mlflow_run, reconstructions_file, write_results
from sphereard.tokenizer.inference import reconstruct_decodes
from sphereard.tokenizer.losses import load_lpips
from sphereard.tokenizer.task import TokenizerTask, tokenizer_meta
from sphereard.tokenizer.vae import create_tokenizer
from sphereard.tracking import image_grid, start_run
from sphereard.train import LoopSpec, fit, load_latest
from sphereard.train.checkpoint import latest_meta
from sphereard.train.convergence import convergence_summary, plateaued
from sphereard.train.export import export_ema
from sphereard.train.loop import HISTORY_KEY, TRAIN_PREFIX
from sphereard.utils.io import atomic_path

log = logging.getLogger(__name__)

GRID_IMAGES = 32
# the curves whose smoothed final value goes into the metrics file: the losses and the posterior's
# statistics (`Posterior.stats`: noise of the tokens the generator will learn)
CONVERGENCE_METRICS = ("kl", "recon", "cos_sample_mode", "kappa_mean", "kappa_p05", "kappa_p95", "std_mean",
                       "std_min_dim", "std_max_dim")
EVAL_BATCH = 250


def export_tokenizer(params: Params, posterior: str, run_id: str | None):
    """Rebuild the tokenizer from its last checkpoint's raw or EMA weights (`tokenizer.train.export`) and
    export it -> the model (eval).

    Raises UserError naming the checkpoint folder when there is no usable checkpoint."""
    tok = params.tokenizer
    vae, _ = export_ema(
        checkpoint_dir(params, "tokenizer", posterior), export_dir(params, "tokenizer", posterior),
        lambda: create_tokenizer(tok.preset, posterior=posterior, radius=tok.radius, **tok.overrides),
        lambda vae, step: {**tokenizer_meta(params, posterior, vae.radius), "step": step, "mlflow_run_id": run_id,
                           "weights": tok.train.export},
        weights=tok.train.export)
    return vae


def evaluate_reconstruction(params: Params, vae, posterior: str, run) -> tuple[dict[str, float], int]:
    """(held-out reconstruction metrics, number of images measured) + an input/reconstruction grid PNG.

    Metrics on both decodes, keys suffixed `_mode` / `_sample` (psnr_mode, psnr_sample, ssim_*, lpips_vgg_*
    when its weights are local); the posterior samples are drawn from `params.seed` (reproducible).
    `recon_images_per_s` times the encoding and both decodes. The grid shows the mode decode."""
    real, _ = images_as_uint8(params.data.out, "test", limit=params.tokenizer.eval_images, verify=False)
    start = time.perf_counter()
    recons = reconstruct_decodes(vae, real, EVAL_BATCH, "cpu", seed=params.seed)  # {'mode', 'sample'}: (N, H, W, C)
    elapsed = time.perf_counter() - start
    lpips = load_lpips(params.lpips_weights_path) if params.lpips_weights_path else None
    metrics = reconstruction_metrics_by_decode(real, recons, lpips=lpips)
    metrics.update(recon_images_per_s=len(real) / elapsed)
    pair = torch.from_numpy(np.concatenate([real[:GRID_IMAGES], recons["mode"][:GRID_IMAGES]]))
    grid = reconstructions_file(params, posterior)
    with atomic_path(grid) as tmp:
        image_grid(pair.permute(0, 3, 1, 2).float(), nrow=GRID_IMAGES // 2, value_range=(0, 255)).save(tmp)
    run.log_artifact(grid)
    return metrics, len(real)


def write_history(params: Params, posterior: str) -> dict[str, float]:
    """The logged training curves of the last checkpoint -> `history.csv` next to the export (step and
    one column per metric: kl, recon, the posterior statistics, ...) and their convergence summary
    (`sphereard.train.convergence`): the smoothed final values of CONVERGENCE_METRICS, the second-half
    change of kl and recon, and `plateaued` (1.0 when both changed by less than PLATEAU_TOL)."""
    history = (latest_meta(checkpoint_dir(params, "tokenizer", posterior)) or {}).get(HISTORY_KEY, [])
    frame = pd.DataFrame(history).rename(columns=lambda c: c.removeprefix(TRAIN_PREFIX))
    with atomic_path(history_file(params, posterior)) as tmp:
        frame.to_csv(tmp, index=False)
    summary = convergence_summary(history)
    kept = {k: v for k, v in summary.items() if k.removesuffix("_final") in CONVERGENCE_METRICS
            or k.endswith("_second_half_change")}
    return {**kept, "plateaued": float(plateaued(summary))}


def fit_tokenizer(params: Params, posterior: str, run, run_name: str, stop_after: int | None = None,
                  config_snapshot: dict | None = None):
    """Train (or resume) the `posterior` tokenizer into its checkpoint dir, logging into `run`, with
    `params.seed`; the stage and the sweep's training trials both train through this. Returns Ray's
    Result. Raises as `sphereard.train.fit`."""
    spec = LoopSpec(task_factory=functools.partial(TokenizerTask, absolute_paths(params), posterior),
                    loop=params.tokenizer.train, ckpt_dir=str(checkpoint_dir(params, "tokenizer", posterior)),
                    seed=params.seed, run=run, stop_after=stop_after, config_snapshot=config_snapshot or {})
    return fit(spec, run_name)


def train_and_export(params: Params, posterior: str, stop_after: int | None = None) -> None:
    """Train (resuming this run's checkpoints), export, measure and write the stage's results.

    With `stop_after` the loop ends after that many steps (checkpointed) and nothing is exported."""
    ckpt_dir = checkpoint_dir(params, "tokenizer", posterior)
    name, tags = mlflow_run(params, "vae", posterior, "train_vae")
    logged = {"posterior": posterior, "data": params.data.model_dump(), "tokenizer": params.tokenizer.model_dump(),
              "lpips_weights_path": params.lpips_weights_path}  # the LPIPS loss: part of the training config
    with start_run(params.tracking, ".", name, params=logged, tags=tags, system_metrics=True,
                   data_manifest=manifest_path(params.data.out)) as run:
        fit_tokenizer(params, posterior, run, name, stop_after, config_snapshot=logged)
        if stop_after is not None and load_latest(ckpt_dir).step < params.tokenizer.train.steps:
            log.info("stopped early as asked (--stop-after %d); rerun to resume", stop_after)
            return
        vae = export_tokenizer(params, posterior, run.run_id)
        metrics, eval_images = evaluate_reconstruction(params, vae, posterior, run)
        metrics.update(write_history(params, posterior))
        run.log_metrics({f"recon/{k}": v for k, v in metrics.items()}, step=params.tokenizer.train.steps)
        step = read_meta(export_dir(params, "tokenizer", posterior))["step"]
        write_results(params, "tokenizer", posterior, metrics,
                      {"posterior": posterior, "eval_images": eval_images, "step": step})
        log.info("%s: %s", name, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
