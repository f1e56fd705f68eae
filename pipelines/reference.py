"""DVC stage `reference`: reference statistics of real train images, once per feature extractor.

    python -m pipelines.reference [--params FILE]

`evaluation.num_real` images drawn at random (seeded) from the train split; with
`evaluation.adm_reference` set, the inception statistics come from that ADM/OpenAI reference
batch instead (the paper's ImageNet protocol).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from pipelines._cli import stage_main
from sphereard.config import Params
from sphereard.data import images_as_uint8
from sphereard.eval.adm import adm_ref_stats
from sphereard.eval.metrics import compute_ref_stats, save_ref_stats
from sphereard.eval.setup import build_extractors, reference_path
from sphereard.utils.device import default_device

log = logging.getLogger("pipelines.reference")


def real_subset(params: Params) -> np.ndarray:
    images, _ = images_as_uint8(params.data.out, "train")
    rng = np.random.default_rng(params.seed)
    keep = rng.permutation(len(images))[:params.evaluation.num_real]
    return images[np.sort(keep)]


def run(params: Params, args) -> None:
    ev = params.evaluation
    extractors = build_extractors(params, default_device())
    real = None
    for name, ext in zip(ev.extractors, extractors):
        start = time.perf_counter()
        if name == "inception" and ev.adm_reference:
            stats = adm_ref_stats(ev.adm_reference, ext if _adm_has_images(ev.adm_reference) else None)
        else:
            real = real_subset(params) if real is None else real
            stats = compute_ref_stats(real, ext, ev.batch_size)
        save_ref_stats(reference_path(params, name), stats)
        log.info("reference %s: %d images, dim %d, %.1f s -> %s", stats.tag, stats.num_images, stats.mu.shape[0],
                 time.perf_counter() - start, reference_path(params, name))


def _adm_has_images(path: str) -> bool:
    with np.load(path, allow_pickle=False) as z:
        return "arr_0" in z.files


if __name__ == "__main__":
    stage_main(__doc__, run)
