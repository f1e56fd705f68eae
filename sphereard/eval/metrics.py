"""Generation metrics from extractor features; every key names its extractor (`metric_name`).

Per extractor tag T (classifier / effnet / inception / inception_unverified):
  fd_T           Frechet distance of Gaussian fits (Heusel et al. 2017); `fid_inception` only with
                 the verified FID Inception weights
  kid_T, kid_std_T        unbiased polynomial-kernel MMD^2 over random subsets (Binkowski et al. 2018)
  precision_T, recall_T   k-NN manifold precision / recall (Kynkaanniemi et al. 2019)
  is_T, is_std_T          Inception Score from the extractor's logits (classifier and inception only;
                          `is_classifier` is the in-project analogue, not the Inception Score)
  class_consistency_T     fraction of class-conditional samples the classifier assigns to their label
                          (classifier only, when labels are given)
KID and precision/recall need reference features; statistics-only references (ADM mu/sigma) give
fd only. The maths is torch-fidelity 0.4's (`metric_fid`, `metric_kid`, `metric_prc`, `metric_isc`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

from sphereard.errors import UserError
from sphereard.eval.extractors import extract_features, metric_name
from sphereard.utils.io import atomic_path

log = logging.getLogger(__name__)

KID_SUBSETS = 100
IS_SPLITS = 10
PR_BATCH = 1000  # rows of the k-NN distance matrix held at once
IS_TAGS = ("classifier", "inception", "inception_unverified")


@dataclass
class RefStats:
    """Reference statistics of real images for one extractor tag: Gaussian fit (+ features for KID/PR)."""

    tag: str
    mu: np.ndarray  # (D,) float64
    sigma: np.ndarray  # (D, D) float64
    features: np.ndarray | None = None  # (N, D) float32
    num_images: int = 0


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) -> mean (D,) and unbiased covariance (D, D), float64."""
    f = np.asarray(features, dtype=np.float64)
    assert f.ndim == 2 and len(f) > 1, "need at least two feature rows (N, D)"
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}); trace of the root from eigenvalues of S1 S2."""
    s1 = {"mu": np.asarray(mu1, np.float64), "sigma": np.asarray(sigma1, np.float64)}
    s2 = {"mu": np.asarray(mu2, np.float64), "sigma": np.asarray(sigma2, np.float64)}
    if s1["mu"].shape != s2["mu"].shape:
        raise UserError(f"reference stats: feature dim {s2['mu'].shape} != samples' {s1['mu'].shape}")
    return fid_statistics_to_metric(s1, s2, verbose=False)[KEY_METRIC_FID]


def kid(fake: torch.Tensor, real: torch.Tensor, subset_size: int = 500, subsets: int = KID_SUBSETS,
        seed: int = 0) -> tuple[float, float]:
    """KID mean and std over subsets; subset_size is capped by the smaller set."""
    size = min(subset_size, len(fake), len(real))
    if size < subset_size:
        log.info("KID subset size capped at %d (fewer samples than %d)", size, subset_size)
    # float64: torch-fidelity computes the kernels in the features' dtype, float32 cancels badly
    out = kid_features_to_metric(fake.double(), real.double(), kid_subsets=subsets, kid_subset_size=size, rng_seed=seed,
                                 verbose=False)
    return out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD]


def precision_recall(fake: torch.Tensor, real: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Precision: fraction of fakes inside some real k-NN ball; recall: reals inside some fake ball."""
    out = prc_features_to_metric(fake, real, prc_neighborhood=k, prc_batch_size=PR_BATCH, save_cpu_ram=True,
                                 verbose=False)
    return out[KEY_METRIC_PRECISION], out[KEY_METRIC_RECALL]


def inception_score(logits: torch.Tensor, splits: int = IS_SPLITS, seed: int = 0) -> tuple[float, float]:
    """exp E_x KL(p(y|x) || p(y)) over splits (Salimans et al. 2016), from any classifier's logits."""
    out = isc_features_to_metric(logits, max(1, min(splits, len(logits))), True, seed)
    return out[KEY_METRIC_ISC_MEAN], out[KEY_METRIC_ISC_STD]


def class_consistency(logits: torch.Tensor, labels) -> float:
    """Fraction of samples whose argmax class equals their conditioning label."""
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    assert len(labels) == len(logits), "one label per sample"
    return (logits.argmax(-1) == labels).float().mean().item()


def compute_ref_stats(real_uint8: np.ndarray, extractor, batch_size: int = 250,
                      keep_features: bool = True) -> RefStats:
    """Reference statistics of real uint8 (N, H, W, C) images under `extractor`."""
    feats = extract_features(extractor, real_uint8, batch_size)[extractor.FD_LAYER]
    mu, sigma = feature_stats(feats)
    return RefStats(extractor.tag, mu, sigma, feats.numpy().astype(np.float32) if keep_features else None,
                    len(feats))


def save_ref_stats(path: str | Path, stats: RefStats) -> Path:
    """Write one extractor's reference statistics as .npz (atomically)."""
    arrays = dict(tag=np.array(stats.tag), mu=stats.mu, sigma=stats.sigma, num_images=np.array(stats.num_images))
    if stats.features is not None:
        arrays["features"] = stats.features
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return Path(path)


def load_ref_stats(path: str | Path) -> RefStats:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: reference statistics file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            features = z["features"] if "features" in z.files else None
            stats = RefStats(str(z["tag"]), z["mu"].astype(np.float64), z["sigma"].astype(np.float64),
                             features, int(z["num_images"]))
    except (KeyError, ValueError, OSError) as e:
        raise UserError(f"{path}: not a reference statistics file ({e})") from e
    d = stats.mu.shape[0]
    if stats.mu.ndim != 1 or stats.sigma.shape != (d, d):
        raise UserError(f"{path}: mu {stats.mu.shape} / sigma {stats.sigma.shape} shapes do not match")
    return stats


def generation_metric_keys(tags, with_labels: bool = True, with_ref_features: bool = True) -> list[str]:
    """The keys `generation_metrics` returns for these extractor tags."""
    keys = []
    for t in tags:
        keys.append(metric_name("fd", t))
        if with_ref_features:
            keys += [metric_name(m, t) for m in ("kid", "kid_std", "precision", "recall")]
        if t in IS_TAGS:
            keys += [metric_name("is", t), metric_name("is_std", t)]
        if t == "classifier" and with_labels:
            keys.append(metric_name("class_consistency", t))
    return keys


def generation_metrics(fake_uint8: np.ndarray, fake_labels, ref, extractors, *, kid_subset_size: int = 500,
                       pr_neighbours: int = 3, batch_size: int = 250, seed: int = 0) -> dict[str, float]:
    """Metrics of generated uint8 (N, H, W, C) samples against `ref`: real uint8 images, or a dict
    {tag: RefStats}. `extractors`: built with `build_extractor`. Keys: `generation_metric_keys`."""
    out = {}
    for ext in extractors:
        tag = ext.tag
        if isinstance(ref, dict):
            if tag not in ref:
                raise UserError(f"reference stats: none for extractor {tag!r} (have {sorted(ref)})")
            r = ref[tag]
        else:
            r = compute_ref_stats(ref, ext, batch_size)
        if r.tag != tag:
            raise UserError(f"reference stats: computed with {r.tag!r}, samples with {tag!r}")
        feats = extract_features(ext, fake_uint8, batch_size)
        fake = feats[ext.FD_LAYER]
        out[metric_name("fd", tag)] = frechet_distance(*feature_stats(fake), r.mu, r.sigma)
        if r.features is not None:
            real = torch.from_numpy(r.features)
            out[metric_name("kid", tag)], out[metric_name("kid_std", tag)] = kid(fake, real, kid_subset_size,
                                                                                   seed=seed)
            out[metric_name("precision", tag)], out[metric_name("recall", tag)] = precision_recall(
                fake, real, pr_neighbours)
        if tag in IS_TAGS:
            out[metric_name("is", tag)], out[metric_name("is_std", tag)] = inception_score(
                feats[ext.LOGITS_LAYER], seed=seed)
        if tag == "classifier" and fake_labels is not None:
            out[metric_name("class_consistency", tag)] = class_consistency(feats[ext.LOGITS_LAYER], fake_labels)
        log.info("%s: %s", tag, ", ".join(f"{k}={v:.4g}" for k, v in out.items() if k.endswith(tag)))
    return out
