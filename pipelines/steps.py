"""DVC stage `steps`: FD against sampler steps for Euler-Maruyama, Euler and Heun (issue 18).

    python -m pipelines.steps [--params FILE]

The work, its settings and outputs (points.csv, fd_vs_steps.csv / .png, summary.json, the metrics file):
`sphereard.eval.steps_study`.
"""

from __future__ import annotations

from pipelines._cli import stage_main
from sphereard.config import Params
from sphereard.eval.steps_study import steps_study


def run(params: Params, args) -> None:
    steps_study(params)


if __name__ == "__main__":
    stage_main(__doc__, run)
