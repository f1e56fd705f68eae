"""Encode the train split into the latent cache: the posterior parameters of every train image (and of
its horizontal flip with `encode.hflip`, and of `encode.crops` random crops with `generator.train.crop`),
so AR training draws a fresh posterior sample at every step (SphereAR Sec. 4.1). DVC stage
`encode@{posterior}-{seed}`; the cache format is sphereard/latents.py.

Parallel: the images are cut into chunks of `encode.batch_size`, encoded by `encode.workers` Ray tasks
(one GPU each when the cluster has GPUs; 0 = in this process) and written in order, so every batch is
the same and the cache is byte-identical whatever the number of workers. A crop of row r is drawn
from its own generator seeded by (seed, r, k), so it does not depend on which worker encodes it.
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache

import numpy as np
import torch
from tqdm import tqdm

from sphereard.config import Params
from sphereard.data import ShardDataset, manifest_path
from sphereard.data.transforms import random_crop_batch, resize_square
from sphereard.export import WEIGHTS_FILE
from sphereard.latents import LatentCacheWriter
from sphereard.layout import export_dir, latent_cache_dir
from sphereard.tokenizer.export import load_tokenizer
from sphereard.utils.device import default_device
from sphereard.utils.parallel import ordered_map

log = logging.getLogger(__name__)

HORIZONTAL = 3  # width axis of (B, C, H, W)


def subset_indices(num_images: int, max_images: int | None, seed: int) -> list[int]:
    """All indices, or a sorted random subset of `max_images` of them (the same for every tokenizer)."""
    if max_images is None or max_images >= num_images:
        return list(range(num_images))
    chosen = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed))[:max_images]
    return sorted(chosen.tolist())


def crop_seed(seed: int, row: int, crop: int) -> int:
    """Seed of crop `crop` of train row `row`: a function of the row, not of the worker or batch."""
    return int(np.random.SeedSequence([seed, row, crop]).generate_state(1, np.uint32)[0])


def image_views(images: torch.Tensor, rows: list[int], params: Params) -> list[torch.Tensor]:
    """Stored squares (B, C, S, S) of train rows `rows` -> the cached views, each (B, C, H, W): the centre
    view, its flip (encode.hflip), then per crop k the crop and its flip."""
    size, crop = params.data.image_size, params.generator.train.crop
    centre = resize_square(images, size)
    flips = params.encode.hflip
    views = [centre, centre.flip(HORIZONTAL)] if flips else [centre]
    for k in range(params.encode.crops):
        cropped = torch.cat([
            random_crop_batch(images[i:i + 1], size, crop.min_fraction, 1.0,  # geometry drawn on the CPU:
                              generator=torch.Generator().manual_seed(crop_seed(params.seed, r, k)))  # any device
            for i, r in enumerate(rows)])
        views += [cropped, cropped.flip(HORIZONTAL)] if flips else [cropped]
    return views


def _inputs_stamp(params: Params, posterior: str) -> tuple[tuple[int, int], ...]:
    """(mtime ns, size) of the tokenizer's weights and the data manifest: a retrained tokenizer or
    re-prepared data is a new cache key."""
    stamps = []
    for path in (export_dir(params, "tokenizer", posterior) / WEIGHTS_FILE, manifest_path(params.data.out)):
        try:
            st = path.stat()
            stamps.append((st.st_mtime_ns, st.st_size))
        except OSError:
            stamps.append((0, 0))  # the readers name the missing file
    return tuple(stamps)


def _worker_state(params_json: str, posterior: str, device: str):
    """(params, tokenizer, streaming train split) of this process, loaded once per tokenizer export (Ray tasks
    reuse their worker process across chunks)."""
    params = Params.model_validate_json(params_json)
    return _cached_state(params_json, posterior, device, _inputs_stamp(params, posterior))


@lru_cache(maxsize=2)
def _cached_state(params_json: str, posterior: str, device: str, stamp: tuple):
    params = Params.model_validate_json(params_json)
    vae, _ = load_tokenizer(export_dir(params, "tokenizer", posterior), device, posterior=posterior)
    data = ShardDataset(params.data.out, "train", verify=False, full_size=True)  # verified by the stage
    return params, vae, data


@torch.no_grad()
def _encode_chunk(job: tuple[str, str, str | None, list[int]]) -> tuple[list[np.ndarray], np.ndarray]:
    """(params JSON, posterior, device or None = this task's, train rows) -> (views' moments, each
    (B, L, P) float32, labels (B,)). Runs in this process or a Ray task (`ordered_map`)."""
    params_json, posterior, device, rows = job
    device = device or str(default_device())  # a Ray task: its GPU when it has one, as the stage's own rule
    params, vae, data = _worker_state(params_json, posterior, device)
    items = [data[r] for r in rows]
    images = torch.stack([x for x, _ in items]).to(device)  # (B, C, S, S)
    views = image_views(images, rows, params)
    encoded = vae.encode_moments(torch.cat(views))  # (V*B, L, P)
    per_view = encoded.float().cpu().numpy().reshape(len(views), len(rows), *encoded.shape[1:])
    return list(per_view), np.array([y for _, y in items], np.int64)


def encode_split(params: Params, posterior: str, device: torch.device) -> dict:
    """Cache the posterior moments of the train split (`encode.max_images` of them) -> the cache's meta.

    Raises UserError naming the file when the tokenizer export is missing, corrupt or of another
    posterior (`load_tokenizer`), or the prepared data are unreadable; nothing is written then."""
    vae, meta = load_tokenizer(export_dir(params, "tokenizer", posterior), "cpu", posterior=posterior)
    dataset = ShardDataset(params.data.out, "train")  # the shards' sha256, once per stage run
    indices = subset_indices(len(dataset), params.encode.max_images, params.seed)
    cache_meta = {"posterior": posterior, "radius": vae.radius, "on_sphere": vae.on_sphere,
                  "latent_dim": vae.latent_dim, "grid_size": vae.grid_size, "num_classes": dataset.num_classes,
                  "train_images": len(dataset), "crops": params.encode.crops, "tokenizer": meta}
    out, batch, workers = latent_cache_dir(params, posterior), params.encode.batch_size, params.encode.workers
    params_json = params.model_dump_json()
    jobs = ((params_json, posterior, str(device) if workers == 0 else None, indices[i:i + batch])
            for i in range(0, len(indices), batch))
    gpus = 1 if workers and _cluster_gpus(workers) > 0 else 0
    start = time.perf_counter()
    with LatentCacheWriter(out, cache_meta, params.encode.dtype) as cache:
        progress = tqdm(total=len(indices), desc=f"encode {posterior}", unit="img", mininterval=5)
        for views, labels in ordered_map(_encode_chunk, jobs, workers, num_gpus=gpus):
            flip = views[1] if params.encode.hflip else None
            cache.write(views[0], labels, flip, crops=views[1 + (flip is not None):])
            progress.update(len(labels))
        progress.close()
    _cached_state.cache_clear()  # the tokenizer and reader of this stage run (a sweep runs many in one process)
    elapsed = time.perf_counter() - start
    log.info("encoded %d of %d train images (%d views each) with the %s tokenizer in %.1f s (%.0f images/s, "
             "%d workers) -> %s", cache.rows, len(dataset), cache.meta["views"], posterior, elapsed,
             cache.rows / elapsed, workers, out)
    return cache.meta


def _cluster_gpus(workers: int) -> float:
    """GPUs of the Ray instance the tasks will run on (started here when none is)."""
    import ray

    from sphereard.utils.ray_local import DATA_OBJECT_STORE_BYTES, init_ray

    init_ray(workers, DATA_OBJECT_STORE_BYTES)
    return ray.cluster_resources().get("GPU", 0)
