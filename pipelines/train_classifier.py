"""DVC stage `train_classifier`: the in-project classifier behind the `classifier` feature extractor
(`fd_classifier`, `kid_classifier`, `is_classifier`, class consistency); reports its test accuracy.

    python -m pipelines.train_classifier [--params FILE]

The work is `sphereard.eval.classifier_training.train_and_save`.
"""

from __future__ import annotations

from pipelines._cli import stage_main
from sphereard.config import Params
from sphereard.eval.classifier_training import train_and_save


def run(params: Params, args) -> None:
    train_and_save(params)


if __name__ == "__main__":
    stage_main(__doc__, run)
