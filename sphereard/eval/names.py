"""Metric names: every key carries the feature extractor it was computed with.

Pure and import-light, so readers of the metrics (the report, the notebook) depend on the names
alone, not on the extractors' code (`sphereard.eval.extractors`) or the metrics' maths.
"""

from __future__ import annotations

LPIPS_KEY = "lpips_vgg"  # LPIPS with the VGG16 backbone (`lpips_weights_path`)


def metric_name(metric: str, extractor: str) -> str:
    """Key of a metric computed with an extractor tag: `fd` / `rfd` / `is` with the verified FID
    Inception become `fid_inception` / `rfid_inception` / `is_inception`; otherwise `<metric>_<tag>`."""
    if extractor == "inception" and metric in ("fd", "rfd"):
        return {"fd": "fid", "rfd": "rfid"}[metric] + "_inception"
    return f"{metric}_{extractor}"
