"""DVC stage `sample@{posterior}`: class-balanced samples of the trained generator, decoded by its tokenizer.

    python -m pipelines.sample --posterior spherical [--params FILE]

`sampling.num_per_class` images of every class, generated in batches of `sampling.batch_size`
with CFG on the velocity and the projection after CFG (SphereAR Sec. 3.3; `auto` projection:
`sphere` for spherical / gaussian_norm latents, `none` for gaussian). One torch.Generator seeded
with `sampling.seed` feeds all batches, so a rerun with the same batch size is identical.

Outputs under `sampling.out/<posterior>/`:
  samples.npz        ADM layout (`arr_0` uint8 (N, H, W, 3), grey data as 3 equal channels since the ADM
                     evaluator's network takes RGB; `arr_1` int64 labels (N,)) plus
                     `latents` float32 (N, L, d) (the generated tokens, after projection) and
                     `norms` float32 (N, L) (each token's norm after CFG, before projection)
  grids/             class_XX.png (the first CLASS_GRID_MAX samples of each class) and
                     overview.png (one row per class, at most OVERVIEW_MAX_CLASSES rows)
  info.json          device, precision, N, classes, tokens per image, generator step, resolved settings
The metrics file `<metrics_dir>/sampling/<posterior>.json` (sphereard/layout.py) holds images/s
(generation + decoding), tokens/s (AR generation only), timings (s) and token-norm statistics.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from pipelines._cli import add_posterior_arg, stage_main
from sphereard.ar.export import check_pair, load_generator
from sphereard.ar.sampler import sampling_kwargs
from sphereard.config import Params, as_dict
from sphereard.eval.adm import save_samples_npz
from sphereard.eval.figures import class_grid, class_label, overview_rows, read_class_names
from sphereard.layout import tokenizer_model_dir, write_results
from sphereard.tokenizer.export import load_tokenizer
from sphereard.tokenizer.inference import model_to_uint8
from sphereard.tracking import start_run
from sphereard.train import load_weights
from sphereard.utils.device import default_device
from sphereard.utils.io import atomic_path
from sphereard.utils.weights import load_state_strict

log = logging.getLogger("pipelines.sample")

OVERVIEW_MAX_CLASSES = 20  # rows of overview.png (evenly spaced classes)
OVERVIEW_PER_CLASS = 8  # columns of overview.png
CLASS_GRID_MAX = 16  # images in one class_XX.png (ImageNet-256: 1000 files of 4x4 images, ~2 MB each)
NPZ_FILE, GRIDS_DIR = "samples.npz", "grids"


def samples_dir(params: Params, posterior: str) -> Path:
    return Path(params.sampling.out) / posterior


def class_balanced_labels(num_classes: int, per_class: int) -> np.ndarray:
    """[0]*n + [1]*n + ... : (num_classes * per_class,) int64."""
    return np.repeat(np.arange(num_classes, dtype=np.int64), per_class)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_models(params: Params, posterior: str, device: torch.device):
    """EMA generator (or the raw weights of its last checkpoint) + the tokenizer it was trained on.

    Raises UserError naming the file for missing, corrupt or mismatched exports / checkpoint weights."""
    gen_dir = Path(params.generator.out) / posterior
    model, meta = load_generator(gen_dir / "model", device, posterior=posterior)
    if not params.sampling.use_ema:
        load_state_strict(model, load_weights(gen_dir / "ckpt", "model", device), gen_dir / "ckpt")
    vae, _ = load_tokenizer(tokenizer_model_dir(params, posterior), device, posterior=posterior)
    check_pair(vae, tokenizer_model_dir(params, posterior), model, gen_dir / "model")
    return model, vae, meta


@torch.no_grad()
def generate_all(model, vae, labels: np.ndarray, batch_size: int, kwargs: dict, seed: int,
                 device: torch.device) -> dict:
    """Images, latents and pre-projection norms for `labels`, batched, with timings.

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
    return class_grid(rows, [label] + [""] * (len(rows) - 1))


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
            _grid(shown_of_class, math.ceil(math.sqrt(len(shown_of_class))), class_label(c, class_names)).save(
                tmp / f"class_{c:0{width}d}.png")
        class_grid(*overview_rows(images, labels, OVERVIEW_MAX_CLASSES, OVERVIEW_PER_CLASS, class_names)).save(
            tmp / "overview.png")
    return out / "overview.png"


def norm_stats(norms: np.ndarray) -> dict:
    return {"norm_mean": float(norms.mean()), "norm_std": float(norms.std()), "norm_min": float(norms.min()),
            "norm_max": float(norms.max())}


def run(params: Params, args) -> None:
    posterior, cfg = args.posterior, params.sampling
    device = default_device()
    model, vae, meta = load_models(params, posterior, device)
    num_classes, radius = model.arch.num_classes, float(meta["radius"])
    kwargs = sampling_kwargs(cfg, posterior, radius)
    labels = class_balanced_labels(num_classes, cfg.num_per_class)
    out = samples_dir(params, posterior)
    settings = {**kwargs, "seed": cfg.seed, "batch_size": cfg.batch_size, "num_per_class": cfg.num_per_class,
                "use_ema": cfg.use_ema}
    tags = {"stage": "sample", "posterior": posterior, "profile": params.profile}
    # resolved settings at the top level, under the sweep trials' names (cfg_scale, projection, radius, ...)
    logged = {"posterior": posterior, **settings, "sampling": as_dict(cfg), "generator": meta}
    with start_run(params.tracking, ".", f"sample-{posterior}", params=logged, tags=tags) as run:
        log.info("sampling %d images (%d classes x %d) on %s: %s", len(labels), num_classes, cfg.num_per_class,
                 device, settings)
        res = generate_all(model, vae, labels, cfg.batch_size, kwargs, cfg.seed, device)
        save_samples_npz(out / NPZ_FILE, res["images"], labels,
                         extra={"latents": res["latents"], "norms": res["norms"]})  # (N, L, d), (N, L) float32
        overview = write_grids(out / GRIDS_DIR, res["images"], labels, num_classes,
                               read_class_names(params.data.out, num_classes))
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


if __name__ == "__main__":
    stage_main(__doc__, run, add_posterior_arg)
