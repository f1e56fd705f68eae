"""DVC stage `evaluate@{posterior}-{seed}`: generation + reconstruction metrics and latent-geometry diagnostics.

    python -m pipelines.evaluate --posterior spherical [--seed K] [--params FILE]

Every input is read and checked first: a bad one is one line naming it, exit 2, and nothing is
written. The work, its metrics and its outputs: `sphereard.eval.evaluate`.
"""

from __future__ import annotations

from pipelines._cli import add_posterior_arg, stage_main
from sphereard.config import Params
from sphereard.eval.evaluate import evaluate_posterior


def run(params: Params, args) -> None:
    evaluate_posterior(params, args.posterior)


if __name__ == "__main__":
    stage_main(__doc__, run, add_posterior_arg)
