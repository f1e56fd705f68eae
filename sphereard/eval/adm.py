"""ADM / OpenAI evaluator `.npz` interop (Dhariwal & Nichol 2021, guided-diffusion evaluations/).

Reference batches (e.g. VIRTUAL_imagenet256_labeled.npz) hold `arr_0` uint8 (N, H, W, 3) images and
`mu` / `sigma`: TF Inception pool3 (2048-d) statistics, which torch-fidelity's inception-v3-compat
reproduces (the paper's ImageNet protocol). Sample batches hold `arr_0` images and `arr_1` labels;
`save_samples_npz` writes ours in that layout so the ADM evaluator can read them unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sphereard.errors import UserError
from sphereard.eval.metrics import RefStats, compute_ref_stats
from sphereard.utils.io import atomic_path

ADM_INCEPTION_DIM = 2048
ADM_STATS_TAG = "inception"  # ADM mu/sigma come from the standard FID Inception graph


def _check_images(images: np.ndarray, where: str) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise UserError(f"{where}: arr_0 must be uint8 (N, H, W, C) with C 1 or 3, got "
                        f"{images.dtype} {images.shape}")


def load_adm_npz(path: str | Path) -> dict:
    """{'images': uint8 (N, H, W, C) | None, 'labels': (N,) | None, 'mu': (D,) | None, 'sigma': (D, D) | None}."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: ADM .npz file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: (z[src] if src in z.files else None)
                   for k, src in (("images", "arr_0"), ("labels", "arr_1"), ("mu", "mu"), ("sigma", "sigma"))}
    except (ValueError, OSError) as e:
        raise UserError(f"{path}: not a readable .npz ({e})") from e
    if out["images"] is None and out["mu"] is None:
        raise UserError(f"{path}: has neither arr_0 (images) nor mu/sigma (statistics)")
    if out["images"] is not None:
        _check_images(out["images"], str(path))
    if (out["mu"] is None) != (out["sigma"] is None):
        raise UserError(f"{path}: has only one of mu / sigma")
    if out["mu"] is not None:
        d = out["mu"].shape[0]
        if out["mu"].ndim != 1 or out["sigma"].shape != (d, d):
            raise UserError(f"{path}: mu {out['mu'].shape} / sigma {out['sigma'].shape} shapes do not match")
    return out


def adm_ref_stats(path: str | Path, extractor=None, batch_size: int = 250) -> RefStats:
    """Reference statistics from an ADM reference batch.

    With an extractor and images: features of `arr_0` (enables KID / precision-recall). Otherwise
    the file's own `mu` / `sigma` (Inception pool3, FD only), valid for the inception extractor.
    """
    ref = load_adm_npz(path)
    if extractor is not None and ref["images"] is not None:
        return compute_ref_stats(ref["images"], extractor, batch_size)
    if ref["mu"] is None:
        raise UserError(f"{path}: holds images but no mu/sigma; give an extractor to compute statistics")
    if extractor is not None and extractor.tag != ADM_STATS_TAG:
        raise UserError(f"{path}: mu/sigma are FID-Inception statistics; extractor {extractor.tag!r} "
                        "cannot use them (the file has no images)")
    if ref["mu"].shape[0] != ADM_INCEPTION_DIM:
        raise UserError(f"{path}: mu has dim {ref['mu'].shape[0]}, expected {ADM_INCEPTION_DIM} (Inception pool3)")
    return RefStats(ADM_STATS_TAG, ref["mu"].astype(np.float64), ref["sigma"].astype(np.float64), None, 0)


def save_samples_npz(path: str | Path, images: np.ndarray, labels=None,
                     extra: dict[str, np.ndarray] | None = None) -> Path:
    """Write samples in the ADM layout: arr_0 uint8 (N, H, W, C) [, arr_1 int64 labels (N,)],
    plus `extra` per-image arrays (e.g. latents, norms) that ADM readers ignore."""
    _check_images(images, "samples")
    arrays = {"arr_0": images}
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
        assert labels.shape == (len(images),), "one label per image"
        arrays["arr_1"] = labels
    for name, values in (extra or {}).items():
        assert not name.startswith("arr_"), f"extra array {name!r}: arr_* names belong to the ADM layout"
        assert len(values) == len(images), f"extra array {name!r}: one row per image"
        arrays[name] = values
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return Path(path)


def load_samples_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(images uint8 (N, H, W, C), labels (N,) or None) from an ADM-layout sample file."""
    ref = load_adm_npz(path)
    if ref["images"] is None:
        raise UserError(f"{path}: no arr_0 images")
    return ref["images"], ref["labels"]
