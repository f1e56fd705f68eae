"""Train the SphereAR generator on one tokenizer's latent cache with Ray Train, export its EMA weights
and write a small, honest metrics file: DVC stage `train_ar@{posterior}-{seed}`.

Outputs (sphereard/layout.py) under `generator.out/<posterior>/seed<k>/`: `ckpt/` (resumable checkpoints;
DVC `persist: true`), `model/` (EMA weights + model.json) and `info.json` (params, steps,
tokens_seen = steps * batch_size * L, world_size); the metrics file `<metrics_dir>/generator/<posterior>/seed<k>.json`:
  ema_loss             flow loss of the exported EMA model on LOSS_EVAL_BATCHES random batches of
                       the training latent cache (there is no held-out latent set; un-flipped
                       images): fresh posterior samples, fixed seed, eval mode (no label dropout), fp32
  train_loss_window    mean training loss of the raw model over the last logging window of this
                       invocation (includes label dropout); absent if this invocation trained no step
  train_tokens_per_s   tokens/s over that window, summed over workers (includes data loading and
                       any checkpoint/media time inside the window); absent likewise
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from sphereard.ar.presets import count_params, create_generator
from sphereard.ar.task import GeneratorTask, generator_arch_for_cache, generator_meta
from sphereard.config import Params, absolute_paths
from sphereard.data import manifest_path
from sphereard.errors import UserError, error_detail
from sphereard.export import META_FILE
from sphereard.latents import LATENTS_FILE, decode_column, moment_columns, read_latent_meta
from sphereard.layout import checkpoint_dir, export_dir, latent_cache_dir, mlflow_run, write_results
from sphereard.tokenizer.posterior import sample_from_moments
from sphereard.tracking import start_run
from sphereard.train import LoopSpec, fit, load_latest
from sphereard.train.export import export_ema
from sphereard.utils.device import default_device

log = logging.getLogger(__name__)

LOSS_EVAL_BATCHES = 8
LOSS_EVAL_MAX_BATCH = 256
LOSS_EVAL_SEED = 1234


def export_generator(params: Params, posterior: str, radius: float, run_id: str | None):
    """Rebuild the generator from its last checkpoint's EMA weights and export it -> (model (eval), step).

    Raises UserError naming the checkpoint folder when there is no usable checkpoint."""
    gen = params.generator

    def meta(model, step: int) -> dict:
        return {**generator_meta(params, posterior, radius, export_dir(params, "tokenizer", posterior)), "step": step,
                "params": count_params(model), "mlflow_run_id": run_id}

    return export_ema(checkpoint_dir(params, "generator", posterior), export_dir(params, "generator", posterior),
                      lambda: create_generator(gen.preset, gen.flow, gen.magnitude, **gen.overrides), meta)


def eval_batches(cache_dir: Path, num_batches: int, batch: int, seed: int):
    """Yield (moments (B, L, P), labels (B,)) of random rows, each batch from a random Parquet row group,
    so the estimate never loads the whole cache (ImageNet: tens of GB). Un-flipped images only."""
    meta, path = read_latent_meta(cache_dir, verify=False), cache_dir / LATENTS_FILE
    rng = np.random.default_rng(seed)
    try:
        parquet = pq.ParquetFile(path)
        for _ in range(num_batches):
            group = parquet.read_row_group(int(rng.integers(parquet.num_row_groups)),
                                           columns=["label", moment_columns(meta)[0]])
            rows = group.take(rng.choice(group.num_rows, size=min(batch, group.num_rows), replace=False))
            yield (decode_column(rows.column(moment_columns(meta)[0]), meta).float(),  # (B, L, P) raw moments
                   torch.from_numpy(rows.column("label").to_numpy().astype(np.int64)))
    except (pa.ArrowException, OSError) as err:
        raise UserError(f"{path}: not a readable latent cache ({error_detail(err)})") from None


@torch.no_grad()
def ema_loss(model, params: Params, posterior: str, radius: float, device: torch.device) -> float:
    """Mean flow loss of `model` over a few random batches of the training cache (module docstring)."""
    batch = min(params.generator.train.batch_size, LOSS_EVAL_MAX_BATCH)
    rng = torch.Generator(device=device).manual_seed(LOSS_EVAL_SEED)
    torch.manual_seed(LOSS_EVAL_SEED)  # posterior sampling uses the global RNG
    model = model.to(device).eval()
    losses = [float(model.loss(sample_from_moments(posterior, cached.to(device), radius), labels.to(device),
                               generator=rng))
              for cached, labels in eval_batches(latent_cache_dir(params, posterior), LOSS_EVAL_BATCHES, batch,
                                                 LOSS_EVAL_SEED)]
    return sum(losses) / len(losses)


def fit_generator(params: Params, posterior: str, run, run_name: str, stop_after: int | None = None,
                  config_snapshot: dict | None = None):
    """Train (or resume) the `posterior` generator on its latent cache into its checkpoint dir, logging
    into `run`, with `params.seed`; the stage and the sweep's training trials both train through this.
    Returns Ray's Result. Raises as `sphereard.train.fit`."""
    spec = LoopSpec(task_factory=functools.partial(GeneratorTask, absolute_paths(params), posterior),
                    loop=params.generator.train, ckpt_dir=str(checkpoint_dir(params, "generator", posterior)),
                    seed=params.seed, run=run, stop_after=stop_after, config_snapshot=config_snapshot or {})
    return fit(spec, run_name)


def train_and_export(params: Params, posterior: str, stop_after: int | None = None) -> None:
    """Train (resuming this run's checkpoints), export, measure and write the stage's results.

    Raises UserError before Ray starts when the latent cache does not fit the generator or the
    tokenizer export is missing. With `stop_after` the loop ends after that many steps, no export."""
    arch, cache_meta = generator_arch_for_cache(params, posterior)  # fail fast, before Ray starts
    tok_dir = export_dir(params, "tokenizer", posterior)
    if not (tok_dir / META_FILE).is_file():
        raise UserError(f"{tok_dir / META_FILE}: exported tokenizer missing (run train_vae@{posterior}-{params.seed})")
    radius = float(cache_meta["radius"])
    ckpt_dir, model_dir = checkpoint_dir(params, "generator", posterior), export_dir(params, "generator", posterior)
    name, tags = mlflow_run(params, "ar", posterior, "train_ar")
    logged = {"posterior": posterior, "generator": params.generator.model_dump(),
              "latents": {k: cache_meta[k] for k in ("rows", "num_tokens", "latent_dim", "radius", "sha256")}}
    with start_run(params.tracking, ".", name, params=logged, tags=tags, system_metrics=True,
                   data_manifest=manifest_path(params.data.out)) as run:
        result = fit_generator(params, posterior, run, name, stop_after, config_snapshot=logged)
        if stop_after is not None and load_latest(ckpt_dir).step < params.generator.train.steps:
            log.info("stopped early as asked (--stop-after %d); rerun to resume", stop_after)
            return
        model, step = export_generator(params, posterior, radius, run.run_id)
        window = result.metrics or {}
        train_cfg = params.generator.train
        info = {"posterior": posterior, "preset": params.generator.preset, "params": count_params(model),
                "steps": step, "tokens_seen": step * train_cfg.batch_size * arch.num_tokens,
                "world_size": max(1, train_cfg.ray.num_workers)}
        measured = {"ema_loss": ema_loss(model, params, posterior, radius, default_device()),
                    "train_loss_window": window.get("train/loss"),
                    "train_tokens_per_s": window.get("perf/items_per_s")}
        metrics = {k: float(v) for k, v in measured.items() if v is not None}
        run.log_metrics({"final/ema_loss": metrics["ema_loss"]}, step=step)
        run.log_artifact(model_dir / META_FILE)
        write_results(params, "generator", posterior, metrics, info)
        log.info("%s: %s", name, ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                            for k, v in {**info, **metrics}.items()))
