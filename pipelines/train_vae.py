"""DVC stage `train_vae@{posterior}-{seed}`: train one tokenizer with Ray Train, export its EMA weights,
and measure reconstruction (PSNR, SSIM, LPIPS when its weights are local) on the held-out split.

    python -m pipelines.train_vae --posterior spherical [--seed K] [--params FILE] [--stop-after N]

The work is `sphereard.tokenizer.train.train_and_export`.
"""

from __future__ import annotations

from pipelines._cli import add_training_args, stage_main
from sphereard.config import Params
from sphereard.tokenizer.train import train_and_export


def run(params: Params, args) -> None:
    train_and_export(params, args.posterior, args.stop_after)


if __name__ == "__main__":
    stage_main(__doc__, run, add_training_args)
