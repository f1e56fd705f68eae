"""Shared entry-point plumbing: parse --params, validate the whole file first, one-line errors."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from sphereard.config import DEFAULT_PARAMS_FILE, POSTERIORS, Params, load_params
from sphereard.errors import UserError, one_line
from sphereard.utils.logs import configure_logging

USER_ERROR_EXIT = 2
CPU_THREADS_ENV = "SPHEREARD_CPU_THREADS"


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and `taskset` narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def configure_cpu_threads() -> None:
    """Intra-op threads for single-process CPU work: $SPHEREARD_CPU_THREADS, default every available CPU.

    Set it to 1 when other heavy jobs share the machine: oversubscribed intra-op threads spin-wait
    (sampling ran 17x slower with 2 threads on a 2-core machine that was also running the tests)."""
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(int(os.environ.get(CPU_THREADS_ENV, available_cpus())))


def add_posterior_arg(parser: argparse.ArgumentParser) -> None:
    """`--posterior` and `--seed`, for the stages DVC runs once per posterior and seed (`matrix`)."""

    parser.add_argument("--posterior", required=True, choices=POSTERIORS)
    parser.add_argument("--seed", type=int, default=None,
                        help="the run's seed, one of `seeds` (default: the first); Params.for_run")


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """`--posterior` and `--stop-after` for the training stages."""
    add_posterior_arg(parser)
    parser.add_argument("--stop-after", type=int, default=None,
                        help="end after this many steps (checkpointed); a rerun resumes")


def stage_main(description: str, run: Callable[[Params, argparse.Namespace], None],
               add_args: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """Run one stage: validate params.yaml (or --params) as a whole, then call `run(params, args)`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default=DEFAULT_PARAMS_FILE, help="params file (default: %(default)s)")
    if add_args:
        add_args(parser)
    args = parser.parse_args()
    configure_logging()
    configure_cpu_threads()
    try:
        params = load_params(args.params)
        if hasattr(args, "seed"):  # a per-run stage: the params of run `--seed`
            params = params.for_run(params.seeds[0] if args.seed is None else args.seed)
        run(params, args)
    except UserError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
