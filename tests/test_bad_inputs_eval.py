"""Bad evaluation files: the ADM reference batch, reference statistics, samples.npz, sweep trial files.

`CASES` is the table: case, what is broken, the entry point that reads it, the message fragment. Each case
writes a broken file (the workspace of tests/bad_inputs_helpers.py is there for uniformity); `check_case`
asserts the error is one line starting with the broken file's path. The other tables:
tests/test_bad_inputs_models.py (exports, classifier, weights, checkpoints, resume),
tests/test_bad_inputs_data.py (manifests, shards, sources, latent caches); stage-level tests in
tests/test_bad_inputs_stages.py.
"""

from __future__ import annotations

import bad_inputs_helpers
import numpy as np
import pytest
from bad_inputs_helpers import (
    COLOUR,
    GREY,
    SIZE,
    Case,
    check_case,
    load_data_samples,
    png_bytes,
    ref_stats,
    samples,
    truncate,
)

from sphereard.eval import adm_ref_stats, load_ref_stats

ws = bad_inputs_helpers.ws  # the module-scoped workspace fixture


def _case_adm_png(ws, tmp):
    (tmp / "ref.npz").write_bytes(png_bytes())
    return adm_ref_stats(tmp / "ref.npz")


def _case_adm_truncated(ws, tmp):
    rng = np.random.default_rng(0)
    np.savez(tmp / "ref.npz", mu=rng.normal(size=64), sigma=np.eye(64))
    truncate(tmp / "ref.npz")
    return adm_ref_stats(tmp / "ref.npz")


def _case_adm_npy(ws, tmp):
    np.save(tmp / "ref.npy", np.zeros(3))
    return adm_ref_stats(tmp / "ref.npy")


def _case_adm_nan_mu(ws, tmp):
    np.savez(tmp / "ref.npz", mu=np.full(4, np.nan), sigma=np.eye(4))
    return adm_ref_stats(tmp / "ref.npz")


def _case_adm_wrong_dim(ws, tmp):
    np.savez(tmp / "ref.npz", mu=np.zeros(10), sigma=np.eye(10))
    return adm_ref_stats(tmp / "ref.npz")


def _case_ref_stats_truncated(ws, tmp):
    truncate(ref_stats(tmp, features=np.zeros((3, 4), np.float32)))
    return load_ref_stats(tmp / "ref_classifier.npz")


def _ref_stats_case(**arrays):
    return lambda ws, tmp: load_ref_stats(ref_stats(tmp, **arrays))


def _case_sweep_marker_truncated(ws, tmp):
    from sphereard.config import Params
    from sphereard.layout import sweep_model_dir, sweep_model_file
    from sphereard.sweep.trial import _fresh_or_resumable

    params = Params().model_copy(update={"sweep": Params().sweep.model_copy(update={"out": str(tmp)})})
    sweep_model_dir(params, "model").mkdir(parents=True)
    sweep_model_file(params, "model", "train_config").write_text('{"sha256": "ab')
    return _fresh_or_resumable(sweep_model_dir(params, "model"), {"settings": {}})


def _sweep_reports(text):
    def run(ws, tmp):
        from sphereard.layout import MODEL_FILES
        from sphereard.sweep.trial import read_reports

        (tmp / MODEL_FILES["reports"]).write_text(text)
        return read_reports(tmp / MODEL_FILES["reports"])
    return run


def _samples_case(**kwargs):
    channels = kwargs.pop("channels", 1)
    return lambda ws, tmp: load_data_samples(samples(tmp, **kwargs), channels)


CASES = [
    # ADM reference batch (evaluation.adm_reference): reference
    Case("adm-png", "a PNG given as the ADM reference", "adm_ref_stats",
         r"ref\.npz: not a \.npz archive .*begins with b'\\x89PNG", _case_adm_png),
    Case("adm-truncated", "the reference .npz cut in half", "adm_ref_stats",
         r"ref\.npz: ADM \.npz file truncated or corrupt", _case_adm_truncated),
    Case("adm-npy", "a single .npy array as the reference", "adm_ref_stats",
         r"ref\.npy: not a \.npz archive .*single \.npy array", _case_adm_npy),
    Case("adm-nan-mu", "mu holds NaN", "adm_ref_stats", r"ref\.npz: mu must be finite", _case_adm_nan_mu),
    Case("adm-wrong-dim", "10-d statistics, not Inception pool3", "adm_ref_stats",
         r"ref\.npz: mu has dim 10, expected 2048", _case_adm_wrong_dim),
    # samples.npz (sampling.out/<posterior>/): evaluate, with the data's size / channels / classes
    Case("samples-wrong-size", "16x16 samples for 32x32 data", "load_samples_npz (evaluate)",
         r"samples\.npz: images are 16x16, the data's are 32x32",
         _samples_case(images=np.zeros((4, 16, 16, 3), np.uint8))),
    Case("samples-colour-for-grey", "3 different channels for 1-channel data", "load_samples_npz (evaluate)",
         r"samples\.npz: images have 3 different channels \(colour\), the data has 1", _samples_case(images=COLOUR)),
    Case("samples-grey-for-rgb", "1-channel samples for 3-channel data", "load_samples_npz (evaluate)",
         r"samples\.npz: images have 1 channel\(s\), the data has 3", _samples_case(images=GREY, channels=3)),
    Case("samples-label-out-of-range", "label 5 with 2 classes", "load_samples_npz (evaluate)",
         r"samples\.npz: label 5 \(arr_1\) outside the data's classes \[0, 2\)",
         _samples_case(labels=np.array([0, 1, 5, 1]))),
    Case("samples-negative-label", "label -1", "load_samples_npz (evaluate)",
         r"samples\.npz: label -1 \(arr_1\) outside", _samples_case(labels=np.array([0, -1, 0, 1]))),
    Case("samples-label-count", "3 labels for 4 images", "load_samples_npz (evaluate)",
         r"samples\.npz: 3 labels \(arr_1\) for 4 images \(arr_0\)", _samples_case(labels=np.array([0, 1, 0]))),
    Case("samples-float-labels", "labels stored as floats", "load_samples_npz (evaluate)",
         r"samples\.npz: arr_1 \(labels\) must be integers", _samples_case(labels=np.zeros(4))),
    Case("samples-float-images", "images stored as float32", "load_samples_npz (evaluate)",
         r"samples\.npz: arr_0 must be uint8", _samples_case(images=np.zeros((4, SIZE, SIZE, 3), np.float32))),
    Case("samples-no-images", "only latents, no arr_0", "load_samples_npz (evaluate)",
         r"samples\.npz: has neither arr_0", _samples_case(images=False, labels=False, latents=np.zeros((4, 2)))),
    Case("samples-one-image", "a single sample", "load_samples_npz (evaluate)",
         r"samples\.npz: 1 image\(s\); metrics need at least 2", _samples_case(images=GREY[:1], labels=False)),
    # reference statistics (evaluation.out/reference/<extractor>.npz): evaluate, sweep
    Case("ref-stats-truncated", "the reference .npz cut in half", "load_ref_stats",
         r"ref_classifier\.npz: reference statistics file truncated or corrupt", _case_ref_stats_truncated),
    Case("ref-stats-nan-sigma", "sigma holds NaN", "load_ref_stats", r"ref_classifier\.npz: sigma must be finite",
         _ref_stats_case(sigma=np.full((4, 4), np.nan))),
    Case("ref-stats-scalar-mu", "mu is a 0-d array", "load_ref_stats",
         r"ref_classifier\.npz: mu \(\) / sigma \(1, 1\) shapes do not match",
         _ref_stats_case(mu=np.array(0.0), sigma=np.eye(1))),
    Case("ref-stats-features-dim", "5-d feature rows beside 4-d statistics", "load_ref_stats",
         r"ref_classifier\.npz: features \(3, 5\) do not match mu \(4,\)",
         _ref_stats_case(features=np.zeros((3, 5), np.float32))),
    # sweep training trials (sweep.out/trials/<trial>/): the config marker and the AR loss reports
    Case("sweep-marker-truncated", "train_config.json cut short", "_fresh_or_resumable (sweep trial)",
         r"train_config\.json: not valid JSON .*; delete it", _case_sweep_marker_truncated),
    Case("sweep-reports-truncated", "ar_reports.json cut short", "read_reports (sweep trial)",
         r"ar_reports\.json: not valid JSON", _sweep_reports('{"5": 0.3')),
    Case("sweep-reports-not-number", "a report holds a string", "read_reports (sweep trial)",
         r"ar_reports\.json: key '5' must be number or NoneType, got 'x'", _sweep_reports('{"5": "x"}')),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_naming_the_file(case, ws, tmp_path):
    check_case(case, ws, tmp_path)
