"""Encode the train split into the latent cache: the posterior parameters of every train image (and of
its horizontal flip with `encode.hflip`), so AR training draws a fresh posterior sample at every step
(SphereAR Sec. 4.1). DVC stage `encode@{posterior}-{seed}`; the cache format is sphereard/latents.py.
"""

from __future__ import annotations

import logging
import time

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from sphereard.config import Params
from sphereard.data import ShardDataset
from sphereard.latents import LatentCacheWriter
from sphereard.layout import export_dir, latent_cache_dir
from sphereard.tokenizer.export import load_tokenizer

log = logging.getLogger(__name__)

HORIZONTAL = 3  # width axis of (B, C, H, W)


def subset_indices(num_images: int, max_images: int | None, seed: int) -> list[int]:
    """All indices, or a sorted random subset of `max_images` of them (the same for every tokenizer)."""
    if max_images is None or max_images >= num_images:
        return list(range(num_images))
    chosen = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed))[:max_images]
    return sorted(chosen.tolist())


@torch.no_grad()
def encode_split(params: Params, posterior: str, device: torch.device) -> dict:
    """Cache the posterior moments of the train split (`encode.max_images` of them) -> the cache's meta.

    Raises UserError naming the file when the tokenizer export is missing, corrupt or of another
    posterior (`load_tokenizer`), or the prepared data are unreadable; nothing is written then."""
    vae, meta = load_tokenizer(export_dir(params, "tokenizer", posterior), device, posterior=posterior)
    dataset = ShardDataset(params.data.out, "train")
    indices = subset_indices(len(dataset), params.encode.max_images, params.seed)
    loader = DataLoader(Subset(dataset, indices), batch_size=params.encode.batch_size, shuffle=False)
    cache_meta = {"posterior": posterior, "radius": vae.radius, "on_sphere": vae.on_sphere,
                  "latent_dim": vae.latent_dim, "grid_size": vae.grid_size, "num_classes": dataset.num_classes,
                  "train_images": len(dataset), "tokenizer": meta}
    out = latent_cache_dir(params, posterior)
    start = time.perf_counter()
    with LatentCacheWriter(out, cache_meta, params.encode.dtype) as cache:
        for images, labels in tqdm(loader, desc=f"encode {posterior}", unit="batch", mininterval=5):
            images = images.to(device)
            views = [images, images.flip(HORIZONTAL)] if params.encode.hflip else [images]
            encoded = vae.encode_moments(torch.cat(views))  # (V*B, L, P)
            per_view = encoded.float().cpu().numpy().reshape(len(views), len(images), *encoded.shape[1:])
            cache.write(per_view[0], labels.numpy(), per_view[1] if params.encode.hflip else None)
    elapsed = time.perf_counter() - start
    views = 2 if params.encode.hflip else 1
    log.info("encoded %d of %d train images%s with the %s tokenizer in %.1f s (%.0f encodes/s) -> %s", cache.rows,
             len(dataset), " (+ flips)" if params.encode.hflip else "", posterior, elapsed,
             views * cache.rows / elapsed, out)
    return cache.meta
