"""DVC stage `import_official` (pretrained/dvc.yaml): the released SphereAR weights as the DAG's exports.

    python -m pipelines.import_official [--params pretrained/params.yaml]

The work: `sphereard.convert.stage.import_to_layout` (params: `official`, tokenizer/generator preset,
overrides and out).
"""

from __future__ import annotations

from pipelines._cli import stage_main
from sphereard.config import Params
from sphereard.convert.stage import import_to_layout


def run(params: Params, args) -> None:
    import_to_layout(params)


if __name__ == "__main__":
    stage_main(__doc__, run)
