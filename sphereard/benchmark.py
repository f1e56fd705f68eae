"""Throughput of a generator preset on this device: training tokens/s, sampling images/s, FLOP/s.

    python -m sphereard.benchmark --preset SphereAR-B --batch-size 64 --steps 20 --cfg 4.5 \
        --sampler-steps 100 --precision bf16 [--compile [--compile-mode reduce-overhead]] --out bench.json
    python -m sphereard.benchmark --preset fmnist-xs --batch-size 32 --steps 5 --sampler-steps 4
    python -m sphereard.benchmark --preset fmnist-s --compare reference --batch-size 32 --threads 2

`--compare reference` times the fast paths against the reference paths in one run and prints both
and their ratio (`sphereard/benchmark_compare.py`).

Training runs the exact update of `train_ar` (`sphereard.ar.task.train_update`: fresh posterior
sample from synthetic spherical posterior params, rectified-flow loss with diff_batch_mul copies,
AdamW, clipping, EMA) on random data. Sampling times `SphereARModel.sample` (KV-cached AR decoding,
CFG batch of 2B when cfg != 1, Euler-Maruyama + final step, projection to the sphere); the tokenizer
decode is not included. FLOPs come from `torch.utils.flop_counter.FlopCounterMode` over one eager
training update (forward + backward) and one eager sampling call (matmuls and attention; attention
counted dense, i.e. causal masking is not discounted; elementwise ops are not counted). The peak
reference is a square matmul in the same dtype measured in the same run, so `*_mfu` is achieved /
measured-matmul FLOP/s. Throughputs use the median time of the timed training steps (each synced)
and of `--sample-repeats` sampling calls: robust to a shared, noisy CPU. With --compile, training
compiles `model.loss` and sampling compiles the fast sampler's per-step velocity
(`fast_sampler.HeadPlan.velocity`, the code every integration step runs; the AR loop, the modulation
tables and the transformer stay eager), with `--compile-mode` (`reduce-overhead` = CUDA graphs on a
GPU); warm-up steps and one untimed sampling call absorb the compilation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from sphereard.ar import GENERATOR_PRESETS, count_params, create_generator, fast_sampler
from sphereard.ar.task import build_training, train_update
from sphereard.config import OptimConfig
from sphereard.errors import UserError
from sphereard.geometry import project_to_sphere
from sphereard.train.loop import StepContext, resolve_precision
from sphereard.utils.io import atomic_write_text
from sphereard.utils.logs import configure_logging

log = logging.getLogger(__name__)

USER_ERROR_EXIT = 2

MATMUL_SIZE = {"cuda": 8192, "cpu": 1024}  # square matmul for the peak reference
PEAK_MIN_SECONDS = 0.3  # time the reference matmul for at least this long
SYNTHETIC_KAPPA = 200.0  # concentration of the synthetic Power Spherical posteriors
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")  # torch.compile's
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")  # the COMPILE_MODES that capture CUDA graphs on a GPU
_aten = torch.ops.aten
# torch's FlopCounterMode has no formula for the CPU flash-attention kernels SDPA uses on CPU.
CPU_SDPA_FLOPS = {
    _aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v),
    _aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda grad, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(grad, q, k, v),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def count_flops(fn) -> int:
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as counter:
        fn()
    return counter.get_total_flops()


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of an n x n matmul (2 n^3 FLOPs) in `dtype`, timed for >= PEAK_MIN_SECONDS."""
    n = MATMUL_SIZE.get(device.type, MATMUL_SIZE["cpu"])
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up (library init, kernel choice)
    reps, elapsed = 1, 0.0
    while elapsed < PEAK_MIN_SECONDS:
        reps *= 2
        elapsed = timed(lambda reps=reps: [a @ b for _ in range(reps)], device)
    return 2 * n**3 * reps / elapsed


def compile_fn(fn, mode: str):
    """torch.compile(fn) with static shapes in `mode` (one of COMPILE_MODES)."""
    return torch.compile(fn, mode=mode, dynamic=False)


@contextlib.contextmanager
def compiled_fast_velocity(mode: str):
    """Within: `fast_sampler.HeadPlan.velocity`, the per-integration-step code of the default sampler,
    is compiled (`compile_fn`); restored on exit, so the process's other samplers stay eager."""
    eager = fast_sampler.HeadPlan.velocity
    compiled = compile_fn(eager, mode)
    if mode in CUDAGRAPH_MODES:  # a graph's output is rewritten by its next replay; Heun keeps v across two calls
        fast_sampler.HeadPlan.velocity = lambda *args: compiled(*args).clone()
    else:
        fast_sampler.HeadPlan.velocity = compiled
    try:
        yield
    finally:
        fast_sampler.HeadPlan.velocity = eager


def synthetic_posterior(batch: int, num_tokens: int, d: int, device, generator) -> torch.Tensor:
    """Cached-style spherical posterior params (B, L, d + 1) = [unit mu | kappa]."""
    mu = project_to_sphere(torch.randn(batch, num_tokens, d, device=device, generator=generator), 1.0)
    return torch.cat([mu, torch.full((batch, num_tokens, 1), SYNTHETIC_KAPPA, device=device)], dim=-1)


def bench_training(args, model, device: torch.device, precision: str) -> dict:
    arch, B = model.arch, args.batch_size
    total = args.warmup + args.steps + 1
    cfg = OptimConfig(warmup_steps=0)  # throughput does not depend on the lr
    opt, sched, ema = build_training(model, cfg, total)
    ctx = StepContext(device=device, rank=0, world_size=1, local_batch_size=B, total_steps=total, optim=cfg,
                      precision=precision)
    g = torch.Generator(device=device).manual_seed(args.seed)
    params = synthetic_posterior(B, arch.num_tokens, arch.token_dim, device, g)
    labels = torch.randint(0, arch.num_classes, (B,), device=device, generator=g)
    radius = math.sqrt(arch.token_dim)
    forward = compile_fn(model.loss, args.compile_mode) if args.compile else model.loss

    def step(i: int, fwd=forward):
        return train_update(model, fwd, opt, sched, ema, params, labels, i, "spherical", radius, ctx)

    flops = count_flops(lambda: step(0, model.loss))  # eager: the counter sees every matmul
    for i in range(1, 1 + args.warmup):
        step(i)
    start = 1 + args.warmup
    times = [timed(lambda i=i: step(i), device) for i in range(start, start + args.steps)]
    seconds = statistics.median(times)
    return {"train_batch": B, "train_steps": args.steps, "train_step_s_median": seconds, "train_s_total": sum(times),
            "train_tokens_per_s": B * arch.num_tokens / seconds, "train_steps_per_s": 1 / seconds,
            "train_flops_per_step": flops, "train_flop_per_s": flops / seconds}


@torch.no_grad()
def bench_sampling(args, model, device: torch.device, precision: str) -> dict:
    model.eval()
    B, arch = args.sample_batch_size or args.batch_size, model.arch
    labels = torch.arange(B, device=device) % arch.num_classes  # class-balanced
    kwargs = dict(cfg_scale=args.cfg, cfg_schedule="linear", sampler="euler_maruyama", steps=args.sampler_steps,
                  projection="sphere", seed=args.seed)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def sample():
        with autocast:
            return model.sample(labels, **kwargs)

    flops = count_flops(sample)  # eager, doubles as a warm-up
    with compiled_fast_velocity(args.compile_mode) if args.compile else contextlib.nullcontext():
        if args.compile:
            sample()  # compiles (and, with CUDA graphs, records)
        seconds = statistics.median(timed(sample, device) for _ in range(args.sample_repeats))
    return {"sample_batch": B, "sampler_steps": args.sampler_steps, "cfg": args.cfg, "sample_s_median": seconds,
            "sample_images_per_s": B / seconds, "sample_tokens_per_s": B * arch.num_tokens / seconds,
            "sample_flops_per_batch": flops, "sample_flop_per_s": flops / seconds}


def resolve_run(args) -> tuple[torch.device, str, str]:
    """(device, precision, device description) of `args`; UserError naming --preset / --device."""
    if args.preset not in GENERATOR_PRESETS:
        raise UserError(f"--preset {args.preset!r}: unknown generator preset (known: {', '.join(GENERATOR_PRESETS)})")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device available")
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"cpu (torch threads: {torch.get_num_threads()})")
    return device, resolve_precision(args.precision, device), name


def run_benchmark(args) -> dict:
    device, precision, name = resolve_run(args)
    torch.manual_seed(args.seed)
    with torch.device(device):
        model = create_generator(args.preset)
    result = {"preset": args.preset, "params": count_params(model), "num_tokens": model.arch.num_tokens, "device": name,
              "precision": precision, "compile": args.compile_mode if args.compile else False,
              "torch": torch.__version__}
    result.update(bench_training(args, model, device, precision))
    result.update(bench_sampling(args, model, device, precision))
    # Measured after the model timings, so its large buffers cannot perturb them.
    result["matmul_peak_flop_per_s"] = peak = matmul_peak(device, DTYPES[precision])
    result["train_mfu"] = result["train_flop_per_s"] / peak
    result["sample_mfu"] = result["sample_flop_per_s"] / peak
    return result


def _flop_rate(x: float) -> str:
    return f"{x / 1e12:.3g} TFLOP/s" if x >= 1e11 else f"{x / 1e9:.3g} GFLOP/s"


def format_table(r: dict) -> str:
    rows = [("preset", f"{r['preset']} ({r['params'] / 1e6:.2f}M params, {r['num_tokens']} tokens)"),
            ("device", f"{r['device']}, {r['precision']}" + (f", compiled ({r['compile']})" if r["compile"] else "")),
            ("matmul peak", _flop_rate(r['matmul_peak_flop_per_s'])),
            ("train", f"{r['train_tokens_per_s']:.4g} tokens/s, {r['train_steps_per_s']:.3g} steps/s "
                      f"(batch {r['train_batch']})"),
            ("train FLOP/s", f"{_flop_rate(r['train_flop_per_s'])} ({100 * r['train_mfu']:.1f}% of matmul peak)"),
            ("sample", f"{r['sample_images_per_s']:.4g} images/s, {r['sample_tokens_per_s']:.4g} tokens/s "
                       f"(batch {r['sample_batch']}, {r['sampler_steps']} steps, cfg {r['cfg']})"),
            ("sample FLOP/s", f"{_flop_rate(r['sample_flop_per_s'])} ({100 * r['sample_mfu']:.1f}% of matmul peak)")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Training tokens/s, sampling images/s and FLOP/s of a generator preset.")
    p.add_argument("--preset", default="SphereAR-B", help="generator preset (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="training batch per device (paper: 512 / 8 GPUs = 64)")
    p.add_argument("--sample-batch-size", type=int, default=None, help="sampling batch (default: --batch-size)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed training steps before timing")
    p.add_argument("--sample-repeats", type=int, default=1, help="timed sampling calls (median reported)")
    p.add_argument("--cfg", type=float, default=4.5, help="CFG scale (1 = no guidance stream)")
    p.add_argument("--sampler-steps", type=int, default=100, help="Euler-Maruyama steps per token (paper: 100)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"), help="auto: bf16 on CUDA")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the training loss and the fast sampler's per-step velocity")
    p.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                   help="torch.compile mode with --compile (reduce-overhead: CUDA graphs on a GPU; "
                        "default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--compare", choices=("reference",), default=None,
                   help="time the fast sampling and training paths against the reference ones, alternating")
    p.add_argument("--setting", action="append", default=None, metavar="IMAGES:STEPS:CFG",
                   help="a sampling setting for --compare (repeatable; default: 8:25:3 and 64:100:4.5)")
    p.add_argument("--repeats", type=int, default=5, help="--compare: timed runs of each path (median reported)")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                   help="--compare: measure peak memory (one fresh process per measurement)")
    p.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)  # internal: one memory measurement
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    if args.compile_mode != "default" and not args.compile:
        p.error("--compile-mode applies with --compile only")
    if args.setting and not args.compare:
        p.error("--setting applies to --compare only (without it: --sample-batch-size, --sampler-steps, --cfg)")
    for text in args.setting or ():
        from sphereard.benchmark_compare import Setting

        try:
            Setting.parse(text)
        except UserError as err:
            p.error(str(err))
    for name in ("batch_size", "steps", "sampler_steps", "sample_repeats", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def run_comparison(args) -> dict:
    from sphereard.benchmark_compare import run_compare

    device, precision, name = resolve_run(args)
    with torch.device("meta"):
        params = count_params(create_generator(args.preset))
    return {"preset": args.preset, "params": params, "device": name, "precision": precision, "torch": torch.__version__,
            "repeats": args.repeats, "train_steps": args.steps, **run_compare(args, device, precision)}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory_probe is not None:
        from sphereard.benchmark_compare import memory_probe

        print(memory_probe(json.loads(args.memory_probe)))
        return
    configure_logging()
    try:
        result = run_comparison(args) if args.compare else run_benchmark(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
    if args.compare:
        from sphereard.benchmark_compare import format_compare

        print(format_compare(result))
    else:
        print(format_table(result))
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
