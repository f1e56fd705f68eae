"""DVC stage `report`: `reports/report.md` + `reports/figures/`, regenerated from the stage outputs.

    python -m pipelines.report [--params FILE] [--out reports]

The analysis lives in `sphereard.report` (what it reads: `sphereard.report.inputs`; the comparison
rule: `sphereard.report.compare`); the folder is built in a temporary sibling and renamed onto `--out`
only when complete. A missing required metrics file is a UserError naming it (exit code 2).
Params read (the report stage's `params` in dvc.yaml): profile, seed, seeds, metrics_dir, data.{source,image_size,out},
tokenizer.{preset,posteriors,out,train.{batch_size,steps,kappa_init,export,optim.{schedule,lr,min_lr,
warmup_steps}}}, encode.{out,max_images}, generator.{out,train.batch_size},
sampling.{num_per_class,cfg_scale,cfg_schedule,sampler,steps,projection,seed,out}, classifier.{out,steps},
evaluation.{out,extractors,kid_subset_size,pr_neighbours,diagnostic_samples,diagnostic_steps}, sweep.{enabled,out}.
"""

from __future__ import annotations

from pathlib import Path

from pipelines._cli import stage_main
from sphereard.config import Params
from sphereard.report.build import write_report


def run(params: Params, args) -> None:
    write_report(params, Path(args.out))


def add_args(parser) -> None:
    parser.add_argument("--out", default="reports", help="report folder (default: %(default)s)")


if __name__ == "__main__":
    stage_main(__doc__, run, add_args)
