"""Metric names: every key carries the feature extractor it was computed with.

Pure and import-light, so readers of the metrics (the report, the notebook) depend on the names
alone, not on the extractors' code (`sphereard.eval.extractors`) or the metrics' maths.
"""

from __future__ import annotations

LPIPS_KEY = "lpips_vgg"  # LPIPS with the VGG16 backbone (`lpips_weights_path`)
# reconstructions are measured on two decodes, keys suffixed `_<decode>`: decode(posterior mode) and
# decode(one posterior sample per token), the latents the generator learns
DECODES = ("mode", "sample")
LOWER_BETTER = ("fd_", "fid_", "kid_")
HIGHER_BETTER_GEN = ("class_consistency_", "precision_", "recall_", "is_")
METRIC_PREFIXES = (*LOWER_BETTER, "precision_", "recall_", "is_", "class_consistency_", "norm_")
HIDDEN_PREFIXES = ("kid_std_", "is_std_")  # spreads reported with kid_* / is_*, not metrics of their own
SPREAD_PREFIXES = ("kid_", "is_")  # metrics the evaluate stage reports with a std (`<prefix>std_<extractor>`)
# where a reference's mu / sigma come from (RefStats.source; evaluate info `reference_sources`): fitted on
# real images' features, or an ADM reference batch's own whole-dataset statistics (`eval.adm.adm_ref_stats`)
IMAGES_STATS, ADM_FILE_STATS = "images", "adm_file"


def metric_name(metric: str, extractor: str) -> str:
    """Key of a metric computed with an extractor tag: `fd` / `rfd` / `is` with the verified FID
    Inception become `fid_inception` / `rfid_inception` / `is_inception`; otherwise `<metric>_<tag>`."""
    if extractor == "inception" and metric in ("fd", "rfd"):
        return {"fd": "fid", "rfd": "rfid"}[metric] + "_inception"
    return f"{metric}_{extractor}"


def is_metric(column: str) -> bool:
    """A metric column of the stage outputs / sweep results (not a setting, not a reported spread)."""
    return column.startswith(METRIC_PREFIXES) and not column.startswith(HIDDEN_PREFIXES)


def decode_key(metric: str, decode: str) -> str:
    """Key of a reconstruction metric on one decode: `psnr` + `sample` -> `psnr_sample` (DECODES)."""
    assert decode in DECODES, f"decode must be one of {DECODES}"
    return f"{metric}_{decode}"
