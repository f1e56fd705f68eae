"""DVC stage `sweep`: Ray Tune over CFG scale, radius R, posterior, projection, sampler (steps), head flow and
magnitude, and seeds, plus the extra grids of `sweep.arms`.

    python -m pipelines.sweep [--params FILE] [--list]

`--list` logs the expanded trials and exits (no Ray). The work, its trials, MLflow runs and outputs:
`sphereard.sweep.run` and `sphereard.sweep.trial`.
"""

from __future__ import annotations

from pipelines._cli import stage_main
from sphereard.config import Params
from sphereard.sweep.run import run_sweep


def run(params: Params, args) -> None:
    run_sweep(params, list_only=args.list)


def add_args(parser) -> None:
    parser.add_argument("--list", action="store_true", help="log the expanded trials and exit (no Ray)")


if __name__ == "__main__":
    stage_main(__doc__, run, add_args)
