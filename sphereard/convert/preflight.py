"""Check a pretrained-DAG params file before `dvc repro pretrained/dvc.yaml` touches anything.

DVC deletes a stage's outputs before running it, and a stage validates its params only when it runs:
a typo found by the sample stage costs the previous samples (~50 GPU minutes at SphereAR-B). And a
null or missing file among the stages' deps stops DVC itself with its own message. So `make pretrained`
runs this first: the whole params file is validated (`sphereard.config`), then every local file the
DAG reads must exist. One line naming the key and the file, exit 2, nothing touched.

    python -m sphereard.convert preflight [--params pretrained/params.yaml]
"""

from __future__ import annotations

import os
from pathlib import Path

from sphereard.config import Params
from sphereard.errors import UserError

PRETRAINED_PARAMS = "pretrained/params.yaml"
HINT = "docs/official-checkpoints.md and README \"The paper's released models\" list the files"


def require_file(path: str | None, key: str) -> Path:
    """`path` as a Path; UserError naming `key` when it is unset or not an existing file."""
    if path is None or not os.path.isfile(path):
        raise UserError(f"{key}={path!r}: no such file ({HINT})")
    return Path(path)


def required_files(params: Params) -> dict[str, str | None]:
    """{params key: path} of every local file the pretrained DAG reads (its DVC deps and the weights)."""
    if params.official is None:
        raise UserError("official: not set; the pretrained DAG needs official.generator and official.vae")
    ev = params.evaluation
    return {"official.generator": params.official.generator, "official.vae": params.official.vae,
            "evaluation.inception_weights": ev.inception_weights, "evaluation.adm_reference": ev.adm_reference}


def preflight(params: Params) -> list[Path]:
    """The checked files, in order; UserError (one line naming key and file) at the first one missing,
    or when `data.path` (the source `prepare` reads) does not exist."""
    files = [require_file(path, key) for key, path in required_files(params).items()]
    if not os.path.exists(params.data.path):
        raise UserError(f"data.path={params.data.path!r}: not found (the source the prepare stage reads)")
    return files
