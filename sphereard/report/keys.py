"""Metric-name conventions of the stage outputs: which keys are metrics, which extractor they belong
to, and the evaluate stage's per-setting norm keys. Metric names are never renamed: a key carries its
feature extractor (`fd_classifier`, `kid_effnet`, `fid_inception` only with the verified weights)."""

from __future__ import annotations

import re

from sphereard.eval.names import (  # noqa: F401 (re-exported: the report's metric-key conventions)
    DECODES,
    HIDDEN_PREFIXES,
    HIGHER_BETTER_GEN,
    LOWER_BETTER,
    METRIC_PREFIXES,
    SPREAD_PREFIXES,
    decode_key,
    is_metric,
    metric_name,
)

GEN_METRICS = ("fd", "kid", "precision", "recall", "is", "class_consistency")
RECON_PREFIX = "recon_"  # evaluate's reconstruction metrics: recon_psnr_mode, recon_rfd_<tag>_sample, ...
RECON_FD_KEY = re.compile(rf"^{RECON_PREFIX}(?P<key>rfi?d_[a-z0-9_]+)_(?:{'|'.join(DECODES)})$")
RANKING_DECODE = "sample"  # tokenizers are ranked on decode(posterior sample): the latents the generator learns
TF_PARTS = ("radial", "tangential")
TF_KEYS = ("tf_radial_error", "tf_radial_floor", "tf_radial_excess", "tf_tangential_error", "tf_tangential_floor",
           "tf_tangential_excess", "tf_radial_fraction")  # evaluate's teacher-forced summary, in table order
NORM_KEY = re.compile(r"^norm_rel_dev_(?P<projection>[a-z]+)_cfg(?P<cfg>[0-9.eE+-]+)$")
NORM_GENERIC = "norm_rel_dev_<projection>_cfg<w>"


def generation_keys(ev: dict[str, dict]) -> list[str]:
    """Generation metric keys present in any posterior's evaluate metrics, grouped per extractor tag."""
    present = {k for m in ev.values() for k in m}
    tags = dict.fromkeys("inception" if k == "fid_inception" else k[3:] for m in ev.values() for k in m
                         if k.startswith("fd_") or k == "fid_inception")
    return [metric_name(m, t) for t in tags for m in GEN_METRICS if metric_name(m, t) in present]


def recon_fd_keys(ev: dict[str, dict]) -> list[str]:
    """rfd_<tag> / rfid_inception keys, without the evaluate stage's `recon_` prefix and `_<decode>` suffix."""
    return list(dict.fromkeys(m["key"] for metrics in ev.values() for k in metrics if (m := RECON_FD_KEY.match(k))))


def recon_value(tokenizer: dict | None, evaluation: dict | None, key: str):
    """A reconstruction metric (`psnr_sample`, ...): train_vae's value, else evaluate's `recon_<key>`, else None."""
    tokenizer, evaluation = tokenizer or {}, evaluation or {}
    return tokenizer[key] if key in tokenizer else evaluation.get(RECON_PREFIX + key)


def norm_key(projection: str, cfg_scale: float) -> str:
    """The evaluate stage's key for one diagnostic setting: `norm_rel_dev_<projection>_cfg<w>`."""
    return f"norm_rel_dev_{projection}_cfg{cfg_scale:g}"


def norm_devs(metrics: dict) -> dict[tuple[str, float], float]:
    """{(projection, cfg_scale): max relative norm deviation} from `norm_rel_dev_<proj>_cfg<w>` keys."""
    out = {}
    for key, value in metrics.items():
        if m := NORM_KEY.match(key):
            out[(m["projection"], float(m["cfg"]))] = value
    return out
