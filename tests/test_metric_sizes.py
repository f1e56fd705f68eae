"""Generation metrics hold at any sample size (issue 11, item 5): settings that exceed the data adapt
with one warning naming them, what cannot be computed stops with one line naming the setting, and
the right values come out: IS analogue of a perfect balanced generator = C, set vs itself ~0."""

import logging

import numpy as np
import pytest
import torch

from sphereard.errors import UserError
from sphereard.eval.metrics import feature_stats, frechet_distance, inception_score, kid, precision_recall

LOGGER = "sphereard.eval.metrics"


def perfect_logits(num_classes: int, n: int, order: str, seed: int = 0) -> torch.Tensor:
    """Logits (n, C) of a perfect generator: balanced classes, (numerically) one-hot predictions."""
    labels = torch.arange(n) % num_classes  # interleaved
    if order == "sorted":
        labels = labels.sort().values
    elif order == "random":
        labels = labels[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]
    return 40.0 * torch.nn.functional.one_hot(labels, num_classes).double()


def features(n: int, dim: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("num_classes", [10, 40])
@pytest.mark.parametrize("per_class", [10, 37, 100, 500])
@pytest.mark.parametrize("order", ["sorted", "interleaved", "random"])
def test_inception_score_of_a_perfect_generator_is_the_class_count(num_classes, per_class, order):
    score, _ = inception_score(perfect_logits(num_classes, per_class * num_classes, order))
    assert abs(score - num_classes) <= 0.02 * num_classes, score


def test_inception_score_splits_adapt_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        inception_score(perfect_logits(10, 100, "sorted"), splits=10)
        inception_score(perfect_logits(10, 2000, "sorted"), splits=10)
    assert [r.getMessage() for r in caplog.records] == [
        "inception_score splits=10 > 1 for 100 samples over 10 classes (>= 50 per class per split): using 1",
        "inception_score splits=10 > 4 for 2000 samples over 10 classes (>= 50 per class per split): using 4"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        inception_score(perfect_logits(10, 5000, "sorted"), splits=10)  # 500 per split: no adjustment
    assert not caplog.records


def test_kid_subset_larger_than_data_adapts_and_a_set_vs_itself_is_near_zero(caplog):
    x = features(120)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        same, _ = kid(x, x, subset_size=500, subsets=20)
    assert [r.getMessage() for r in caplog.records] == ["evaluation.kid_subset_size=500 > 120 samples: using 120"]
    shifted, _ = kid(x + 0.5, x, subset_size=500, subsets=20)
    assert abs(same) < 0.05 * shifted, (same, shifted)


@pytest.mark.parametrize("n", [5, 120])
def test_frechet_distance_of_a_set_with_itself_is_zero(n):
    x = features(n)  # n = 5 < dim: singular covariance
    mu, sigma = feature_stats(x)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * np.trace(sigma)


@pytest.mark.parametrize("k", [119, 120, 125, 1000])
def test_precision_recall_with_k_at_least_n_never_crashes(caplog, k):
    x = features(120)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert precision_recall(x, x, k=k) == (1.0, 1.0)
    expected = [] if k < 120 else [f"evaluation.pr_neighbours={k} >= 120 samples (a k-NN radius needs "
                                   "k <= N - 1): using 119"]
    assert [r.getMessage() for r in caplog.records] == expected
    p, r = precision_recall(features(5, seed=1), x, k=k)  # the smaller set bounds k
    assert 0.0 <= p <= 1.0 and 0.0 <= r <= 1.0


@pytest.mark.parametrize("call, setting", [
    (lambda x: feature_stats(x[:1], "sampling.num_per_class"), r"^sampling\.num_per_class: the Frechet distance"),
    (lambda x: kid(x[:1], x), r"^sampling\.num_per_class .*: KID needs at least 2 samples, got 1$"),
    (lambda x: kid(x, x[:1]), r"^evaluation\.num_real: KID needs at least 2 samples, got 1$"),
    (lambda x: precision_recall(x[:1], x), r"^sampling\.num_per_class .*: precision/recall needs"),
    (lambda x: precision_recall(x, x[:1]), r"^evaluation\.num_real: precision/recall needs"),
    (lambda x: inception_score(torch.zeros(0, 10)), r"^sampling\.num_per_class .*: the Inception Score needs"),
])
def test_fewer_samples_than_a_metric_needs_is_one_line_naming_the_setting(call, setting):
    with pytest.raises(UserError, match=setting) as err:
        call(features(10))
    assert "\n" not in str(err.value)


def test_kid_matches_torch_fidelity_on_disjoint_sets():
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    fake, real = features(150, seed=2) + 0.2, features(200, seed=3)
    ref = kid_features_to_metric(fake, real, kid_subsets=30, kid_subset_size=100, rng_seed=7, verbose=False)
    ours = kid(fake, real, subset_size=100, subsets=30, seed=7)
    assert ours == pytest.approx((ref[KEY_METRIC_KID_MEAN], ref[KEY_METRIC_KID_STD]), rel=1e-10)


@pytest.mark.parametrize("n", [5, 120])
def test_kid_of_a_set_with_itself_is_zero_at_any_size(n):
    """Subsets adapt to the whole set: exactly 0 (was -2 (mean k(x,x) - mean k(x,y)) / n: -0.12 at n 120)."""
    same, std = kid(features(n), features(n), subset_size=500, subsets=10)
    assert abs(same) < 1e-12 and std < 1e-12, (same, std)  # kernel values are O(10)


def test_kid_of_overlapping_subsets_of_one_set_is_near_zero():
    x = features(400)
    same, _ = kid(x, x, subset_size=100, subsets=50)
    shifted, _ = kid(x + 0.5, x, subset_size=100, subsets=50)
    assert abs(same) < 0.02 * shifted, (same, shifted)


def test_inception_extractor_keeps_the_published_ten_splits():
    """`adapt=False` (is_inception): torch-fidelity's 10 shuffled splits, whatever the class count."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = torch.eye(10).repeat(20, 1) * 30.0  # a perfect balanced generator, N = 20 C
    fixed, _ = inception_score(logits, seed=3, adapt=False)
    expected = isc_features_to_metric(logits, 10, True, 3)["inception_score_mean"]
    assert fixed == pytest.approx(expected) and fixed < 0.9 * 10  # the protocol's known small-split bias
    assert inception_score(logits, seed=3)[0] == pytest.approx(10, rel=0.02)  # adapted: C
