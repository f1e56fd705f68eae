"""Where the stages' small result files live, from params: the one place that names them.

Two kinds of file per stage run (a "block" is the params block the stage belongs to):
- **metrics** `<metrics_dir>/<block>/<posterior>.json` (classifier: `<metrics_dir>/classifier.json`):
  measured numbers only (flat `name -> float`), the files `dvc metrics show` and `dvc exp show`
  read. `metrics_dir` is git-tracked (DVC `cache: false`), so each `dvc exp run` commits its own.
- **info** `<block.out>/<posterior>/info.json` (classifier: `<classifier.out>/info.json`): the settings
  and counts behind those numbers (device, precision, number of images, resolved projection, ...),
  next to the stage's large outputs.

Large outputs (checkpoints, exports, latents, samples, figures) stay under each block's `out`.
"""

from __future__ import annotations

import json
from pathlib import Path

from sphereard.config import Params
from sphereard.utils.io import atomic_write_text

METRICS_BLOCKS = ("tokenizer", "generator", "sampling", "evaluation", "classifier")
INFO_FILE = "info.json"


def _check(block: str, posterior: str | None) -> None:
    assert block in METRICS_BLOCKS, f"block must be one of {METRICS_BLOCKS}, got {block!r}"
    assert (posterior is None) == (block == "classifier"), \
        "the classifier has one metrics file; every other block has one per posterior"


def metrics_file(params: Params, block: str, posterior: str | None = None) -> Path:
    """The git-tracked metrics JSON of one stage run (`block` in METRICS_BLOCKS)."""
    _check(block, posterior)
    root = Path(params.metrics_dir)
    return root / "classifier.json" if posterior is None else root / block / f"{posterior}.json"


def info_file(params: Params, block: str, posterior: str | None = None) -> Path:
    """The settings/counts JSON of one stage run, under the block's `out`."""
    _check(block, posterior)
    out = Path(getattr(params, block).out)
    return out / INFO_FILE if posterior is None else out / posterior / INFO_FILE


def tokenizer_model_dir(params: Params, posterior: str) -> Path:
    """The exported tokenizer of one posterior (`train_vae`'s `model/`: safetensors + model.json)."""
    return Path(params.tokenizer.out) / posterior / "model"


def write_results(params: Params, block: str, posterior: str | None, metrics: dict[str, float],
                  info: dict) -> tuple[Path, Path]:
    """Write one stage run's metrics and info files atomically; returns (metrics path, info path).

    Metrics must be a flat mapping of names to real numbers (bools and strings are settings: they
    belong in `info`, where DVC does not show them as metric columns)."""
    for key, value in metrics.items():
        assert isinstance(value, (int, float)) and not isinstance(value, bool), \
            f"metrics hold numbers only; {key}={value!r} is a setting: put it in info"
    paths = metrics_file(params, block, posterior), info_file(params, block, posterior)
    for path, record in zip(paths, (metrics, info)):
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return paths
