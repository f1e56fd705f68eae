"""Generation metrics from extractor features; every key names its extractor (`metric_name`).

Per extractor tag T (classifier / effnet / inception / inception_unverified):
  fd_T           Frechet distance of Gaussian fits (Heusel et al. 2017); `fid_inception` only with
                 the verified FID Inception weights
  kid_T, kid_std_T        unbiased polynomial-kernel MMD^2 over random subsets (Binkowski et al. 2018);
                          rows present in both sets are one sample, not an independent pair (`kid`)
  precision_T, recall_T   k-NN manifold precision / recall (Kynkaanniemi et al. 2019)
  is_T, is_std_T          Inception Score from the extractor's logits (classifier and inception only;
                          `is_classifier` is the in-project analogue, not the Inception Score)
  class_consistency_T     fraction of class-conditional samples the classifier assigns to their label
                          (classifier only, when labels are given)
KID and precision/recall need reference features; statistics-only references (ADM mu/sigma) give
fd only. The maths is torch-fidelity 0.4's (`metric_fid`, `metric_kid`, `metric_prc`, `metric_isc`).

Any sample size: a setting that exceeds the data adapts with one warning naming it
(`evaluation.kid_subset_size=500 > 120 samples: using 120`, `evaluation.pr_neighbours`, the
Inception-Score splits); what no setting can repair (FD, KID or PR of fewer than 2 samples) is one
UserError naming the setting that controls the sample count.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
from torch_fidelity.metric_kid import kernel_poly
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

from sphereard.errors import UserError
from sphereard.eval.extractors import extract_features
from sphereard.eval.names import ADM_FILE_STATS, IMAGES_STATS, metric_name
from sphereard.utils.io import atomic_path, read_npz

log = logging.getLogger(__name__)

KID_SUBSETS = 100
IS_SPLITS = 10
# Inception-Score splits hold >= this many samples per class of the logits: a random split of n
# samples from a perfect balanced generator over C classes scores about C exp(-(C - 1) / (2n)),
# so n >= 50 C keeps it within 1% of C (10 splits of 5000 Inception samples: ~10% low)
IS_MIN_PER_CLASS_PER_SPLIT = 50
FAKE_COUNT_SETTING = "sampling.num_per_class (sweep.num_per_class in sweeps)"
REAL_COUNT_SETTING = "evaluation.num_real"
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
    source: str = IMAGES_STATS  # where mu/sigma come from: IMAGES_STATS (fitted on features) | ADM_FILE_STATS


def _require_samples(n: int, minimum: int, metric: str, setting: str) -> None:
    """UserError (one line naming `setting`) when a metric gets fewer than `minimum` samples."""
    if n < minimum:
        raise UserError(f"{setting}: {metric} needs at least {minimum} samples, got {n}")


def _adapt(value: int, limit: int, setting: str, reason: str) -> int:
    """min(value, limit), with one warning naming the setting when it adapts."""
    if value <= limit:
        return value
    log.warning("%s=%d %s: using %d", setting, value, reason, limit)
    return limit


def feature_stats(features, setting: str = "feature rows") -> tuple[np.ndarray, np.ndarray]:
    """(N, D) -> mean (D,) and unbiased covariance (D, D), float64; UserError naming `setting` if N < 2."""
    f = np.asarray(features, dtype=np.float64)
    assert f.ndim == 2, "features must be (N, D)"
    _require_samples(len(f), 2, "the Frechet distance (a covariance)", setting)
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}); trace of the root from eigenvalues of S1 S2."""
    s1 = {"mu": np.asarray(mu1, np.float64), "sigma": np.asarray(sigma1, np.float64)}
    s2 = {"mu": np.asarray(mu2, np.float64), "sigma": np.asarray(sigma2, np.float64)}
    if s1["mu"].shape != s2["mu"].shape:
        raise UserError(f"reference stats: feature dim {s2['mu'].shape} != samples' {s1['mu'].shape}")
    return fid_statistics_to_metric(s1, s2, verbose=False)[KEY_METRIC_FID]


def _row_ids(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One integer per row of a (N, D) and b (M, D), equal exactly for identical rows (in either set)."""
    ids: dict[bytes, int] = {}
    return tuple(np.array([ids.setdefault(row.tobytes(), len(ids)) for row in x], dtype=np.int64) for x in (a, b))


def mmd2_shared_units(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray, same: np.ndarray) -> float:
    """Unbiased MMD^2 from kernel blocks (m, m) of two subsets that may share samples: the within-set
    sums leave out i = j, and the cross sum leaves out the pairs `same` (m, m) of one shared sample.
    Our extension of the unbiased estimator of Binkowski et al. (2018), who define the disjoint case:
    with no shared pair it is torch-fidelity's `mmd2(..., mmd_est="unbiased")` exactly; a set vs
    itself scores 0 (not -2 (mean k(x,x) - mean k(x,y)) / m). A deliberate deviation: a generator that
    reproduces reference images exactly is scored on its other pairs only."""
    m = k_xx.shape[0]
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    cross = k_xy[~same].sum() / max(int((~same).sum()), 1)
    return float(within - 2.0 * cross)


def kid(fake: torch.Tensor, real: torch.Tensor, subset_size: int = 500, subsets: int = KID_SUBSETS,
        seed: int = 0) -> tuple[float, float]:
    """KID mean and std over `subsets` random subsets of fake (N, D) and real (M, D) (torch-fidelity 0.4's
    sampling, polynomial kernel (x.y / D + 1)^3, float64). subset_size adapts to min(N, M) (one warning);
    the unbiased MMD^2 needs >= 2 samples (UserError naming the count setting). A row found in both
    sets is one sample: its pair is left out of the cross term (`mmd2_shared_units`), so a set scores
    ~0 against itself or an overlapping set, at any size."""
    _require_samples(len(fake), 2, "KID", FAKE_COUNT_SETTING)
    _require_samples(len(real), 2, "KID", REAL_COUNT_SETTING)
    size = _adapt(subset_size, min(len(fake), len(real)), "evaluation.kid_subset_size",
                  f"> {min(len(fake), len(real))} samples")
    # float64: kernels in float32 cancel badly
    f1, f2 = fake.double().cpu().numpy(), real.double().cpu().numpy()
    ids1, ids2 = _row_ids(f1, f2)
    rng = np.random.RandomState(seed)
    mmds = np.zeros(subsets)
    for i in range(subsets):
        a, b = rng.choice(len(f1), size, replace=False), rng.choice(len(f2), size, replace=False)  # (size,) each
        x, y = f1[a], f2[b]
        mmds[i] = mmd2_shared_units(kernel_poly(x, x), kernel_poly(y, y), kernel_poly(x, y),
                                    ids1[a][:, None] == ids2[b][None, :])
    return float(mmds.mean()), float(mmds.std())


def precision_recall(fake: torch.Tensor, real: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Precision: fraction of fakes inside some real k-NN ball; recall: reals inside some fake ball.

    The k-th neighbour other than the point itself exists for k <= N - 1 in both sets: k adapts to
    that (one warning); fewer than 2 samples in a set is a UserError naming its count setting."""
    _require_samples(len(fake), 2, "precision/recall", FAKE_COUNT_SETTING)
    _require_samples(len(real), 2, "precision/recall", REAL_COUNT_SETTING)
    n = min(len(fake), len(real))
    k = _adapt(k, n - 1, "evaluation.pr_neighbours", f">= {n} samples (a k-NN radius needs k <= N - 1)")
    out = prc_features_to_metric(fake, real, prc_neighborhood=k, prc_batch_size=PR_BATCH, save_cpu_ram=True,
                                 verbose=False)
    return out[KEY_METRIC_PRECISION], out[KEY_METRIC_RECALL]


def inception_score_splits(num_samples: int, num_classes: int, splits: int = IS_SPLITS) -> int:
    """Splits of >= IS_MIN_PER_CLASS_PER_SPLIT samples per class, at most `splits`, at least 1 (warns when fewer)."""
    limit = max(1, num_samples // (IS_MIN_PER_CLASS_PER_SPLIT * num_classes))
    return _adapt(splits, limit, "inception_score splits",
                  f"> {limit} for {num_samples} samples over {num_classes} classes "
                  f"(>= {IS_MIN_PER_CLASS_PER_SPLIT} per class per split)")


def inception_score(logits: torch.Tensor, splits: int = IS_SPLITS, seed: int = 0,
                    adapt: bool = True) -> tuple[float, float]:
    """exp E_x KL(p(y|x) || p(y)) (Salimans et al. 2016) from any classifier's logits (N, C): mean and
    std over splits of the samples shuffled with `seed` (torch-fidelity's protocol), so the order of
    the samples does not matter. Splits adapt (`inception_score_splits`) so that each split's class
    marginal is estimated from enough samples: a perfect balanced generator scores C within 1%,
    for any N >= 10 C (one split below 50 C samples per split). `adapt=False` keeps `splits` as
    given (at most N): the published Inception Score protocol, 10 splits of the 50k samples, which
    scores even a perfect 1000-class generator about 9% below 1000."""
    assert logits.dim() == 2, "logits must be (N, C)"
    _require_samples(len(logits), 1, "the Inception Score", FAKE_COUNT_SETTING)
    n_splits = inception_score_splits(*logits.shape, splits) if adapt else min(splits, len(logits))
    out = isc_features_to_metric(logits, n_splits, True, seed)
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
    mu, sigma = feature_stats(feats, REAL_COUNT_SETTING)
    return RefStats(extractor.tag, mu, sigma, feats.numpy().astype(np.float32) if keep_features else None,
                    len(feats))


def save_ref_stats(path: str | Path, stats: RefStats) -> Path:
    """Write one extractor's reference statistics as .npz (atomically)."""
    arrays = dict(tag=np.array(stats.tag), mu=stats.mu, sigma=stats.sigma, num_images=np.array(stats.num_images),
                  source=np.array(stats.source))
    if stats.features is not None:
        arrays["features"] = stats.features
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return Path(path)


REF_STATS_WHAT = "reference statistics file"
REF_STATS_REQUIRED = ("tag", "mu", "sigma", "num_images")  # + optional "features"


def check_stats(mu: np.ndarray, sigma: np.ndarray, where: str | Path) -> None:
    """Raises UserError naming `where` unless mu is (D,) and sigma (D, D), both finite real numbers."""
    d = mu.shape[0] if mu.ndim == 1 else None
    if d is None or sigma.shape != (d, d):
        raise UserError(f"{where}: mu {mu.shape} / sigma {sigma.shape} shapes do not match (expected (D,) / (D, D))")
    _check_finite_numbers(mu, "mu", where)
    _check_finite_numbers(sigma, "sigma", where)


def _check_finite_numbers(values: np.ndarray, name: str, where: str | Path) -> None:
    """Raises UserError naming `where` and `name` unless `values` are finite integers or floats."""
    if values.dtype.kind not in "iuf":
        raise UserError(f"{where}: {name} must hold numbers, got dtype {values.dtype}")
    if not np.isfinite(values).all():
        raise UserError(f"{where}: {name} must be finite, it holds NaN or inf")


def _check_scalar(value: np.ndarray, name: str, kinds: str, what: str, where: Path) -> None:
    """Raises UserError naming `where` unless `value` is a 0-d array of a dtype kind in `kinds`."""
    if value.shape != () or value.dtype.kind not in kinds:
        raise UserError(f"{where}: {name!r} must be {what}, got dtype {value.dtype} shape {value.shape}")


def load_ref_stats(path: str | Path) -> RefStats:
    """One extractor's reference statistics, as `save_ref_stats` wrote them.

    Raises UserError naming the file when it is missing, not a .npz (truncated, corrupt, another
    format), lacks one of tag / mu / sigma / num_images, or holds a tag that is not a string, a
    negative or non-integer image count, statistics that are not finite numbers shaped mu (D,) and
    sigma (D, D), or features that are not finite (N, D) rows."""
    path = Path(path)
    arrays = read_npz(path, (*REF_STATS_REQUIRED, "features", "source"), REF_STATS_WHAT)
    for name in REF_STATS_REQUIRED:
        if arrays[name] is None:
            raise UserError(f"{path}: {REF_STATS_WHAT} has no {name!r} array (re-run the reference stage)")
    _check_scalar(arrays["tag"], "tag", "U", "a string", path)
    _check_scalar(arrays["num_images"], "num_images", "iu", "an integer", path)
    if int(arrays["num_images"]) < 0:
        raise UserError(f"{path}: 'num_images' must be >= 0, got {int(arrays['num_images'])}")
    mu, sigma, features = arrays["mu"], arrays["sigma"], arrays["features"]
    check_stats(mu, sigma, path)
    if features is not None:
        if features.ndim != 2 or features.shape[1] != mu.shape[0]:
            raise UserError(f"{path}: features {features.shape} do not match mu {mu.shape} "
                            f"(expected (N, {mu.shape[0]}))")
        _check_finite_numbers(features, "features", path)
    source = IMAGES_STATS  # files written before `source` existed were all fitted on images
    if arrays["source"] is not None:
        _check_scalar(arrays["source"], "source", "U", "a string", path)
        source = str(arrays["source"])
        if source not in (IMAGES_STATS, ADM_FILE_STATS):
            raise UserError(f"{path}: 'source' must be {IMAGES_STATS!r} or {ADM_FILE_STATS!r}, got {source!r}")
    return RefStats(str(arrays["tag"]), mu.astype(np.float64), sigma.astype(np.float64), features,
                    int(arrays["num_images"]), source)


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
        out[metric_name("fd", tag)] = frechet_distance(*feature_stats(fake, FAKE_COUNT_SETTING), r.mu, r.sigma)
        if r.features is not None:
            real = torch.from_numpy(r.features)
            out[metric_name("kid", tag)], out[metric_name("kid_std", tag)] = kid(fake, real, kid_subset_size,
                                                                                   seed=seed)
            out[metric_name("precision", tag)], out[metric_name("recall", tag)] = precision_recall(
                fake, real, pr_neighbours)
        if tag in IS_TAGS:
            out[metric_name("is", tag)], out[metric_name("is_std", tag)] = inception_score(
                feats[ext.LOGITS_LAYER], seed=seed, adapt=not tag.startswith("inception"))  # published protocol
        if tag == "classifier" and fake_labels is not None:
            out[metric_name("class_consistency", tag)] = class_consistency(feats[ext.LOGITS_LAYER], fake_labels)
        log.info("%s: %s", tag, ", ".join(f"{k}={v:.4g}" for k, v in out.items() if k.endswith(tag)))
    return out
