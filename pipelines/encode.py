"""DVC stage `encode@{posterior}-{seed}`: cache the posterior parameters of every train image (and of its
horizontal flip with `encode.hflip`), so AR training draws a fresh posterior sample at every step
(SphereAR Sec. 4.1).

    python -m pipelines.encode --posterior spherical [--seed K] [--params FILE]

The work is `sphereard.tokenizer.encode.encode_split`.
"""

from __future__ import annotations

from pipelines._cli import add_posterior_arg, stage_main
from sphereard.config import Params
from sphereard.tokenizer.encode import encode_split
from sphereard.utils.device import default_device


def run(params: Params, args) -> None:
    encode_split(params, args.posterior, default_device())


if __name__ == "__main__":
    stage_main(__doc__, run, add_posterior_arg)
