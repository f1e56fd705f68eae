"""DVC stage `sample@{posterior}-{seed}`: class-balanced samples of the trained generator, decoded by its tokenizer.

    python -m pipelines.sample --posterior spherical [--seed K] [--params FILE]

The work, its settings and its outputs (samples.npz, grids/, info.json, the metrics file):
`sphereard.ar.sample_set`.
"""

from __future__ import annotations

from pipelines._cli import add_posterior_arg, stage_main
from sphereard.ar.sample_set import sample_set
from sphereard.config import Params


def run(params: Params, args) -> None:
    sample_set(params, args.posterior)


if __name__ == "__main__":
    stage_main(__doc__, run, add_posterior_arg)
