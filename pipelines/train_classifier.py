"""DVC stage `train_classifier`: the in-project classifier behind the `classifier` feature extractor
(`fd_classifier`, `kid_classifier`, `is_classifier`, class consistency); reports its test accuracy.

    python -m pipelines.train_classifier [--params FILE]
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipelines._cli import stage_main
from sphereard.config import Params, as_dict
from sphereard.data import MANIFEST_NAME, load_manifest
from sphereard.eval import save_classifier, train_classifier
from sphereard.eval.classifier import check_classes
from sphereard.eval.setup import classifier_model_dir
from sphereard.layout import write_results
from sphereard.tracking import start_run
from sphereard.utils.device import default_device

log = logging.getLogger("pipelines.train_classifier")


def run(params: Params, args) -> None:
    out = Path(params.classifier.out)
    # classes checked before a tracking run starts (UserError: one line); train_classifier verifies the shards
    manifest = load_manifest(params.data.out, verify=False)
    check_classes(manifest["num_classes"], Path(params.data.out) / MANIFEST_NAME)
    tags = {"stage": "train_classifier", "profile": params.profile}
    with start_run(params.tracking, ".", "classifier", params={"classifier": as_dict(params.classifier)},
                   tags=tags) as mlrun:
        model, accuracy = train_classifier(params.data.out, params.classifier, default_device(), seed=params.seed)
        save_classifier(model, classifier_model_dir(params), accuracy, manifest["classes"])
        mlrun.log_metrics({"classifier/test_accuracy": accuracy}, step=params.classifier.steps)
        write_results(params, "classifier", None, {"test_accuracy": float(accuracy)},
                      {"steps": params.classifier.steps})  # train_classifier always runs every step
    log.info("classifier test accuracy %.4f -> %s", accuracy, out)


if __name__ == "__main__":
    stage_main(__doc__, run)
