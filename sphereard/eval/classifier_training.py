"""Train, save and report the in-project classifier behind the `classifier` feature extractor
(`fd_classifier`, `kid_classifier`, `is_classifier`, class consistency): DVC stage `train_classifier`.

Outputs (sphereard/layout.py): `classifier.out/model/`, `classifier.out/info.json` and the metrics
file `<metrics_dir>/classifier.json` (its test accuracy).
"""

from __future__ import annotations

import logging

from sphereard.config import Params
from sphereard.data import load_manifest, manifest_path
from sphereard.eval.classifier import check_classes, save_classifier, train_classifier
from sphereard.layout import classifier_model_dir, write_results
from sphereard.tracking import start_run
from sphereard.utils.device import default_device

log = logging.getLogger(__name__)


def train_and_save(params: Params) -> float:
    """Train on the prepared data, save the model, write metrics and info -> test accuracy.

    Raises UserError naming the manifest before a tracking run starts when the data have fewer than
    two classes; the shards themselves are verified by `train_classifier`."""
    manifest = load_manifest(params.data.out, verify=False)
    check_classes(manifest["num_classes"], manifest_path(params.data.out))
    tags = {"stage": "train_classifier", "profile": params.profile}
    with start_run(params.tracking, ".", "classifier", params={"classifier": params.classifier.model_dump()},
                   tags=tags, system_metrics=True, data_manifest=manifest_path(params.data.out)) as mlrun:
        model, accuracy = train_classifier(params.data.out, params.classifier, default_device(), seed=params.seed)
        save_classifier(model, classifier_model_dir(params), accuracy, manifest["classes"])
        mlrun.log_metrics({"classifier/test_accuracy": accuracy}, step=params.classifier.steps)
        write_results(params, "classifier", None, {"test_accuracy": float(accuracy)},
                      {"steps": params.classifier.steps})  # train_classifier always runs every step
    log.info("classifier test accuracy %.4f -> %s", accuracy, params.classifier.out)
    return accuracy
