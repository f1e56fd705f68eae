"""Reference statistics of real train images, once per feature extractor: DVC stage `reference`.

`evaluation.num_real` images drawn at random (seeded) from the train split; with
`evaluation.adm_reference` set, the inception statistics come from that ADM/OpenAI reference
batch instead (the paper's ImageNet protocol, `sphereard.eval.adm.adm_ref_stats`): with the verified
FID Inception weights, FD uses the file's own whole-dataset mu/sigma and its images give the features
for KID / precision / recall; unverified weights refit mu/sigma on its images. Written to
`evaluation.out/reference/<extractor>.npz` (sphereard/layout.py).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from sphereard.config import Params
from sphereard.data import images_as_uint8, manifest_path
from sphereard.errors import UserError
from sphereard.eval.adm import MIN_SAMPLES, adm_ref_stats
from sphereard.eval.metrics import compute_ref_stats, save_ref_stats
from sphereard.eval.setup import build_extractors
from sphereard.layout import reference_file
from sphereard.utils.device import default_device

log = logging.getLogger(__name__)


def real_subset(params: Params) -> np.ndarray:
    """`evaluation.num_real` seeded train images (N, H, W, C) uint8; UserError naming the manifest if
    fewer than two exist."""
    images, _ = images_as_uint8(params.data.out, "train")
    if len(images) < MIN_SAMPLES:
        raise UserError(f"{manifest_path(params.data.out)}: {len(images)} train image(s); reference "
                        f"statistics need at least {MIN_SAMPLES}")
    rng = np.random.default_rng(params.seed)
    keep = rng.permutation(len(images))[:params.evaluation.num_real]
    return images[np.sort(keep)]


def write_references(params: Params) -> None:
    """Compute every extractor's statistics first, then write them all: a bad input (data, weights,
    `adm_reference`) is one UserError and leaves no file of this run behind."""
    ev = params.evaluation
    extractors = build_extractors(params, default_device())
    real, computed = None, {}
    for name, ext in zip(ev.extractors, extractors, strict=True):
        start = time.perf_counter()
        if name == "inception" and ev.adm_reference:
            computed[name] = adm_ref_stats(ev.adm_reference, ext, ev.batch_size)
        else:
            real = real_subset(params) if real is None else real
            computed[name] = compute_ref_stats(real, ext, ev.batch_size)
        log.info("reference %s: %d images, dim %d, %.1f s", computed[name].tag, computed[name].num_images,
                 computed[name].mu.shape[0], time.perf_counter() - start)
    for name, stats in computed.items():
        save_ref_stats(reference_file(params, name), stats)
        log.info("reference %s -> %s", stats.tag, reference_file(params, name))
