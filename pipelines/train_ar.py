"""DVC stage `train_ar@{posterior}-{seed}`: train the SphereAR generator on one tokenizer's latent cache with
Ray Train, export its EMA weights and write a small, honest metrics file.

    python -m pipelines.train_ar --posterior spherical [--seed K] [--params FILE] [--stop-after N]

The work, its outputs and the metrics' definitions: `sphereard.ar.train`.
"""

from __future__ import annotations

from pipelines._cli import add_training_args, stage_main
from sphereard.ar.train import train_and_export
from sphereard.config import Params


def run(params: Params, args) -> None:
    train_and_export(params, args.posterior, args.stop_after)


if __name__ == "__main__":
    stage_main(__doc__, run, add_training_args)
