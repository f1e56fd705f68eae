"""Build the configured feature extractors and load their cached reference statistics."""

from __future__ import annotations

from sphereard.config import Params
from sphereard.eval.extractors import build_extractor
from sphereard.eval.metrics import RefStats, load_ref_stats
from sphereard.layout import classifier_model_dir, reference_file


def build_extractors(params: Params, device) -> list:
    """One extractor per `evaluation.extractors` entry (classifier from the train_classifier stage)."""
    ev = params.evaluation
    return [build_extractor(name, inception_weights=ev.inception_weights,
                            classifier_path=str(classifier_model_dir(params)), device=device)
            for name in ev.extractors]


def load_references(params: Params, extractors: list) -> dict[str, RefStats]:
    """{extractor tag: RefStats} from the reference stage's outputs."""
    return {ext.tag: load_ref_stats(reference_file(params, name))
            for name, ext in zip(params.evaluation.extractors, extractors, strict=True)}
