"""Build the configured feature extractors and load their cached reference statistics."""

from __future__ import annotations

from pathlib import Path

from sphereard.config import Params
from sphereard.eval.extractors import build_extractor
from sphereard.eval.metrics import RefStats, load_ref_stats

REFERENCE_DIR = "reference"


def classifier_model_dir(params: Params) -> Path:
    return Path(params.classifier.out) / "model"


def reference_path(params: Params, extractor: str) -> Path:
    return Path(params.evaluation.out) / REFERENCE_DIR / f"{extractor}.npz"


def build_extractors(params: Params, device) -> list:
    """One extractor per `evaluation.extractors` entry (classifier from the train_classifier stage)."""
    ev = params.evaluation
    return [build_extractor(name, inception_weights=ev.inception_weights,
                            classifier_path=str(classifier_model_dir(params)), device=device)
            for name in ev.extractors]


def load_references(params: Params, extractors: list) -> dict[str, RefStats]:
    """{extractor tag: RefStats} from the reference stage's outputs."""
    return {ext.tag: load_ref_stats(reference_path(params, name))
            for name, ext in zip(params.evaluation.extractors, extractors)}
