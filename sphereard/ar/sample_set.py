"""A class-balanced sample set of a trained generator, decoded by its tokenizer: DVC stage
`sample@{posterior}-{seed}` (`sample_set`), also the sweep trials' sampler (`generate_all`).

`sampling.num_per_class` images of every class, generated in batches of `sampling.batch_size`
with CFG on the velocity and the projection after CFG (SphereAR Sec. 3.3; `auto` projection:
`sphere` for spherical / gaussian_norm latents, `none` for gaussian). One torch.Generator seeded
with `sampling.seed` feeds all batches, so a rerun with the same batch size is identical.

Outputs under `sampling.out/<posterior>/seed<k>/` (sphereard/layout.py):
  samples.npz        ADM layout (`arr_0` uint8 (N, H, W, 3), grey data as 3 equal channels since the ADM
                     evaluator's network takes RGB; `arr_1` int64 labels (N,)) plus
                     `latents` float32 (N, L, d) (the generated tokens, after projection) and
                     `norms` float32 (N, L) (each token's norm after CFG, before projection)
  grids/             class_XX.png (the first CLASS_GRID_MAX samples of each class) and
                     overview.png (one row per class, at most OVERVIEW_MAX_CLASSES rows)
  info.json          device, precision, N, classes, tokens per image, generator step, resolved settings
The metrics file `<metrics_dir>/sampling/<posterior>/seed<k>.json` holds images/s (generation + decoding),
tokens/s (AR generation only), timings (s) and token-norm statistics.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from sphereard.ar.export import load_pair
from sphereard.ar.sampler import sampling_kwargs
from sphereard.config import Params
from sphereard.eval import figures
from sphereard.eval.adm import save_samples_npz
from sphereard.layout import OVERVIEW_FILE, grids_dir, mlflow_run, samples_file, write_results
from sphereard.tokenizer.inference import model_to_uint8
from sphereard.tracking import start_run
from sphereard.utils.device import default_device
from sphereard.utils.io import atomic_path

log = logging.getLogger(__name__)

OVERVIEW_MAX_CLASSES = 20  # rows of overview.png (evenly spaced classes)
OVERVIEW_PER_CLASS = 8  # columns of overview.png
CLASS_GRID_MAX = 16  # images in one class_XX.png (ImageNet-256: 1000 files of 4x4 images, ~2 MB each)


def class_balanced_labels(num_classes: int, per_class: int) -> np.ndarray:
    """[0]*n + [1]*n + ... : (num_classes * per_class,) int64."""
    return np.repeat(np.arange(num_classes, dtype=np.int64), per_class)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generate_all(model, vae, labels: np.ndarray, batch_size: int, kwargs: dict, seed: int,
                 device: torch.device) -> dict:
    """Images (N, H, W, C) uint8, latents (N, L, d) and pre-projection norms (N, L) float32 for `labels`
    (N,), batched, with timings `generate_s` / `decode_s` (s).

    Host arrays are filled in place (ImageNet: 50k images are ~10 GB; no second copy)."""
    rng = torch.Generator(device=device).manual_seed(seed)
    N, arch = len(labels), model.arch
    latents = np.empty((N, arch.num_tokens, arch.token_dim), np.float32)
    norms = np.empty((N, arch.num_tokens), np.float32)
    images = None
    gen_s = dec_s = 0.0
    for start in range(0, N, batch_size):
        y = torch.from_numpy(labels[start:start + batch_size]).to(device)
        end = start + len(y)
        _sync(device)
        t0 = time.perf_counter()
        z, n = model.sample(y, generator=rng, return_norms=True, **kwargs)  # (B, L, d), (B, L)
        _sync(device)
        t1 = time.perf_counter()
        batch_images = model_to_uint8(vae.decode(z))  # (B, H, W, C) uint8, on the host
        dec_s += time.perf_counter() - t1
        gen_s += t1 - t0
        if images is None:
            images = np.empty((N, *batch_images.shape[1:]), np.uint8)
        images[start:end], latents[start:end], norms[start:end] = batch_images, z.cpu().numpy(), n.cpu().numpy()
        log.info("sampled %d / %d images", end, N)
    return {"images": images, "latents": latents, "norms": norms, "generate_s": gen_s, "decode_s": dec_s}


def _grid(images: np.ndarray, nrow: int, label: str):
    """Square-ish grid of one class's images (N, H, W, C) uint8, `nrow` per row, `label` left of the first row."""
    rows = [images[i:i + nrow] for i in range(0, len(images), nrow)]
    return figures.class_grid(rows, [label] + [""] * (len(rows) - 1))


def write_grids(out: Path, images: np.ndarray, labels: np.ndarray, num_classes: int,
                class_names: list[str] | None = None) -> Path:
    """grids/class_XX.png per class (square-ish, the class name left of its first row) and grids/overview.png
    (one row per class, at most OVERVIEW_MAX_CLASSES, evenly spaced, class names as row labels); names
    from `class_names` (label id = index), else `class <id>` (sphereard/eval/figures.py)."""
    width = max(2, len(str(num_classes - 1)))
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for c in range(num_classes):
            shown_of_class = images[labels == c][:CLASS_GRID_MAX]
            _grid(shown_of_class, math.ceil(math.sqrt(len(shown_of_class))),
                  figures.class_label(c, class_names)).save(tmp / f"class_{c:0{width}d}.png")
        figures.class_grid(*figures.overview_rows(images, labels, OVERVIEW_MAX_CLASSES, OVERVIEW_PER_CLASS,
                                                  class_names)).save(tmp / OVERVIEW_FILE)
    return out / OVERVIEW_FILE


def norm_stats(norms: np.ndarray) -> dict:
    """Mean, std, min and max of token norms (any shape)."""
    return {"norm_mean": float(norms.mean()), "norm_std": float(norms.std()), "norm_min": float(norms.min()),
            "norm_max": float(norms.max())}


def sample_set(params: Params, posterior: str) -> None:
    """Generate, decode and save the sample set of `posterior` with its grids, metrics and info.

    Raises UserError naming the file for missing, corrupt or mismatched exports (`load_pair`)."""
    cfg, device = params.sampling, default_device()
    vae, _, model, meta = load_pair(params, posterior, device, use_ema=cfg.use_ema)
    num_classes, radius = model.arch.num_classes, float(meta["radius"])
    kwargs = sampling_kwargs(cfg, posterior, radius)
    labels = class_balanced_labels(num_classes, cfg.num_per_class)
    settings = {**kwargs, "seed": cfg.seed, "batch_size": cfg.batch_size, "num_per_class": cfg.num_per_class,
                "use_ema": cfg.use_ema}
    name, tags = mlflow_run(params, "sample", posterior, "sample")
    # resolved settings at the top level, under the sweep trials' names (cfg_scale, projection, radius, ...)
    logged = {"posterior": posterior, **settings, "sampling": cfg.model_dump(), "generator": meta}
    with start_run(params.tracking, ".", name, params=logged, tags=tags) as run:
        log.info("sampling %d images (%d classes x %d) on %s: %s", len(labels), num_classes, cfg.num_per_class,
                 device, settings)
        res = generate_all(model, vae, labels, cfg.batch_size, kwargs, cfg.seed, device)
        save_samples_npz(samples_file(params, posterior), res["images"], labels,
                         extra={"latents": res["latents"], "norms": res["norms"]})  # (N, L, d), (N, L) float32
        overview = write_grids(grids_dir(params, posterior), res["images"], labels, num_classes,
                               figures.read_class_names(params.data.out, num_classes))
        total_s = res["generate_s"] + res["decode_s"]
        tokens = res["latents"].shape[0] * res["latents"].shape[1]
        info = {"posterior": posterior, "device": str(device), "precision": "fp32", "num_images": len(labels),
                "num_classes": num_classes, "num_tokens": int(res["latents"].shape[1]), "generator_step": meta["step"],
                "settings": settings}
        stats = {"images_per_s": len(labels) / total_s, "tokens_per_s": tokens / res["generate_s"],
                 "generate_s": float(res["generate_s"]), "decode_s": float(res["decode_s"]), **norm_stats(res["norms"])}
        run.log_metrics({f"sample/{k}": v for k, v in stats.items()}, step=meta["step"])
        run.log_artifact(overview)
        write_results(params, "sampling", posterior, stats, info)
        log.info("%d images in %.1f s: %.3g images/s, %.3g tokens/s; pre-projection norms %.3f +- %.3f (R = %.3f)",
                 len(labels), total_s, stats["images_per_s"], stats["tokens_per_s"], stats["norm_mean"],
                 stats["norm_std"], radius)
