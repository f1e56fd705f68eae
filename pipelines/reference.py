"""DVC stage `reference`: reference statistics of real train images, once per feature extractor.

    python -m pipelines.reference [--params FILE]

`evaluation.num_real` seeded train images, or the ADM reference batch for inception with
`evaluation.adm_reference`; the work is `sphereard.eval.reference.write_references`.
"""

from __future__ import annotations

from pipelines._cli import stage_main
from sphereard.config import Params
from sphereard.eval.reference import write_references


def run(params: Params, args) -> None:
    write_references(params)


if __name__ == "__main__":
    stage_main(__doc__, run)
