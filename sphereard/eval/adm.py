"""ADM / OpenAI evaluator `.npz` interop (Dhariwal & Nichol 2021, guided-diffusion evaluations/).

Reference batches (e.g. VIRTUAL_imagenet256_labeled.npz) hold `arr_0` uint8 (N, H, W, 3) images and
`mu` / `sigma`: TF Inception pool3 (2048-d) statistics, which torch-fidelity's inception-v3-compat
reproduces (the paper's ImageNet protocol). Sample batches hold `arr_0` images and `arr_1` labels;
`save_samples_npz` writes ours in that layout so the ADM evaluator can read them unchanged (grey
images as 3 equal channels, since its network takes RGB; the in-project metrics read either).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sphereard.errors import UserError
from sphereard.eval.metrics import RefStats, check_stats, compute_ref_stats
from sphereard.eval.names import ADM_FILE_STATS
from sphereard.utils.io import atomic_path, read_npz

ADM_INCEPTION_DIM = 2048
ADM_STATS_TAG = "inception"  # ADM mu/sigma come from the standard FID Inception graph
MIN_SAMPLES = 2  # a Gaussian fit (FD) needs two feature rows
ADM_CHANNELS = 3  # the ADM evaluator's Inception takes RGB


def _check_images(images: np.ndarray, where: str) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise UserError(f"{where}: arr_0 must be uint8 (N, H, W, C) with C 1 or 3, got "
                        f"{images.dtype} {images.shape}")


def _check_labels(labels: np.ndarray, num_images: int | None, where: str) -> None:
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{where}: arr_1 (labels) must be integers (N,), got {labels.dtype} {labels.shape}")
    if num_images is not None and len(labels) != num_images:
        raise UserError(f"{where}: {len(labels)} labels (arr_1) for {num_images} images (arr_0)")


def load_adm_npz(path: str | Path) -> dict:
    """{'images': uint8 (N, H, W, C) | None, 'labels': (N,) | None, 'mu': (D,) | None, 'sigma': (D, D) | None}.

    Raises UserError naming the file: missing, not a .npz (another format, truncated), neither
    images nor statistics, images not uint8 (N, H, W, 1|3), labels not integers (N,) matching
    the images, only one of mu / sigma, mismatched shapes or non-finite statistics."""
    path = Path(path)
    arrays = read_npz(path, ("arr_0", "arr_1", "mu", "sigma"), "ADM .npz file")
    out = {k: arrays[src] for k, src in (("images", "arr_0"), ("labels", "arr_1"), ("mu", "mu"), ("sigma", "sigma"))}
    if out["images"] is None and out["mu"] is None:
        raise UserError(f"{path}: has neither arr_0 (images) nor mu/sigma (statistics)")
    if out["images"] is not None:
        _check_images(out["images"], str(path))
    if out["labels"] is not None:
        _check_labels(out["labels"], None if out["images"] is None else len(out["images"]), str(path))
    if (out["mu"] is None) != (out["sigma"] is None):
        raise UserError(f"{path}: has only one of mu / sigma")
    if out["mu"] is not None:
        check_stats(out["mu"], out["sigma"], path)
    return out


def adm_ref_stats(path: str | Path, extractor=None, batch_size: int = 250) -> RefStats:
    """Reference statistics from an ADM reference batch, as the ADM evaluator uses it.

    The file's `mu` / `sigma` are FID-Inception pool3 statistics over the whole dataset (ImageNet
    train, 1.28M images for VIRTUAL_imagenet256_labeled.npz); its `arr_0` images (10,000) serve
    only precision/recall (guided-diffusion `evaluations/README.md`). So with the verified FID
    Inception extractor and a file holding both, FD uses the file's mu/sigma and the features of
    `arr_0` ride along for KID / precision / recall (`num_images` counts those rows). Another
    extractor (e.g. `inception_unverified` weights) cannot use the file's statistics: its mu/sigma
    are fitted on `arr_0` features. A file without images gives FD only (inception extractor or
    none); a file without mu/sigma gives statistics of `arr_0`.
    Raises UserError naming the file when it is unreadable (`load_adm_npz`) or cannot serve `extractor`.
    """
    ref = load_adm_npz(path)
    has_stats = ref["mu"] is not None
    uses_file_stats = has_stats and (extractor is None or extractor.tag == ADM_STATS_TAG)
    features = None
    if extractor is not None and ref["images"] is not None:
        if len(ref["images"]) < MIN_SAMPLES:
            raise UserError(f"{path}: {len(ref['images'])} image(s) in arr_0; statistics need at least {MIN_SAMPLES}")
        features = compute_ref_stats(ref["images"], extractor, batch_size)
        if not uses_file_stats:
            return features
    if not has_stats:
        raise UserError(f"{path}: holds images but no mu/sigma; give an extractor to compute statistics")
    if not uses_file_stats:
        raise UserError(f"{path}: mu/sigma are FID-Inception statistics; extractor {extractor.tag!r} "
                        "cannot use them (the file has no images)")
    if ref["mu"].shape[0] != ADM_INCEPTION_DIM:
        raise UserError(f"{path}: mu has dim {ref['mu'].shape[0]}, expected {ADM_INCEPTION_DIM} (Inception pool3)")
    mu, sigma = ref["mu"].astype(np.float64), ref["sigma"].astype(np.float64)
    if features is None:
        return RefStats(ADM_STATS_TAG, mu, sigma, None, 0, ADM_FILE_STATS)
    return RefStats(ADM_STATS_TAG, mu, sigma, features.features, features.num_images, ADM_FILE_STATS)


def save_samples_npz(path: str | Path, images: np.ndarray, labels=None,
                     extra: dict[str, np.ndarray] | None = None, rgb: bool = True) -> Path:
    """Write samples in the ADM layout: arr_0 uint8 (N, H, W, C) [, arr_1 int64 labels (N,)],
    plus `extra` per-image arrays (e.g. latents, norms) that ADM readers ignore.

    With `rgb` (default) grey images are stored as 3 equal channels, since the ADM evaluator's
    network takes RGB; `rgb=False` keeps 1 channel. `load_samples_npz(..., channels=1)` reads
    either back as grey."""
    _check_images(images, "samples")
    if rgb and images.shape[-1] == 1:
        images = np.repeat(images, ADM_CHANNELS, axis=-1)
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


def _to_channels(images: np.ndarray, channels: int, where: str) -> np.ndarray:
    """Images with `channels` channels: as stored, or 3 equal (grey) channels back to 1."""
    c = images.shape[-1]
    if c == channels:
        return images
    if c == ADM_CHANNELS and channels == 1:
        grey = images[..., :1]
        if not (np.array_equal(grey[..., 0], images[..., 1]) and np.array_equal(grey[..., 0], images[..., 2])):
            raise UserError(f"{where}: images have 3 different channels (colour), the data has 1 channel (grey)")
        return np.ascontiguousarray(grey)
    raise UserError(f"{where}: images have {c} channel(s), the data has {channels}")


def load_samples_npz(path: str | Path, *, image_size: int | None = None, channels: int | None = None,
                     num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(images uint8 (N, H, W, C), labels (N,) or None) from an ADM-layout sample file.

    Given the data's `image_size`, `channels` and `num_classes`, the samples must match them: 3-channel
    grey images come back as 1 channel for 1-channel data. Raises UserError naming the file when it is
    unreadable (`load_adm_npz`), has no images or fewer than MIN_SAMPLES, another image size or channel
    count, labels outside [0, num_classes), or a label count that differs from the image count."""
    ref = load_adm_npz(path)
    images, labels = ref["images"], ref["labels"]
    if images is None:
        raise UserError(f"{path}: no arr_0 images")
    if len(images) < MIN_SAMPLES:
        raise UserError(f"{path}: {len(images)} image(s); metrics need at least {MIN_SAMPLES}")
    if image_size is not None and images.shape[1:3] != (image_size, image_size):
        raise UserError(f"{path}: images are {images.shape[1]}x{images.shape[2]}, the data's are "
                        f"{image_size}x{image_size}")
    if channels is not None:
        images = _to_channels(images, channels, str(path))
    if labels is not None and num_classes is not None and len(labels) and not (
            labels.min() >= 0 and labels.max() < num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise UserError(f"{path}: label {bad} (arr_1) outside the data's classes [0, {num_classes})")
    return images, labels
