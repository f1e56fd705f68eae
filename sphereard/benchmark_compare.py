"""`python -m sphereard.benchmark --compare reference`: the fast paths against the reference, in one run.

    python -m sphereard.benchmark --preset fmnist-s --compare reference [--setting 8:25:3 --setting 64:100:4.5]
        [--batch-size 32] [--repeats 5] [--precision fp32] [--out compare.json]

Sampling: `SphereARModel.sample(impl="reference")` (`ar/sampler.py`, the oracle) against the default
`impl="fast"` (`ar/fast_sampler.py`) for each setting `images:steps:cfg` (Euler-Maruyama, linear CFG,
projection to the sphere, the same seed), timed alternately (reference first on even repeats, fast
first on odd ones) after one untimed warm-up each; `ratio` = median reference time / median fast
time. `max_abs_diff` is max |z_fast - z_reference| over the tokens of one call (same seed).
`ceiling_ratio` bounds what the fast path could reach: the reference's median time over the fast
path's FLOPs (counted by `FlopCounterMode`, matmuls only) at the matmul peak measured in the same run
(one large square matmul). `pair_ratio_min/max`: the spread of the per-repeat ratios. The sampled model
is the preset with every weight perturbed (`sampling_model`): a fresh one predicts v = 0.

Training: the reference step (`ar.task.train_update` with eager `model.loss`, the optimizer of
`build_training`) against the fast step (the same update with `torch.compile(model.loss)` and
`AdamW(fused=True)`), two copies of one initialisation, alternating steps after warm-up (which
absorbs compilation); median step times. `ceiling_ratio`: as for sampling, the reference's step time over
one step's matmul FLOPs (forward and backward, counted on the reference step) at the measured peak.

Memory: peak resident memory of one sampling call / of the training steps above the model's own
(Linux VmHWM reset through /proc/self/clear_refs, in a fresh process per measurement, since CPU
allocations have no allocator statistics); on CUDA, `torch.cuda.max_memory_allocated`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass

import torch

from sphereard.ar import create_generator
from sphereard.ar.task import build_training, train_update
from sphereard.config import OptimConfig
from sphereard.errors import UserError
from sphereard.train.loop import StepContext
from sphereard.train.optim import build_scheduler

log = logging.getLogger(__name__)

DEFAULT_SETTINGS = ("8:25:3", "64:100:4.5")
PROBE_TIMEOUT_S = 900  # issue 18: small, and the paper's 100 steps at CFG 4.5
MIB = 2**20


@dataclass(frozen=True)
class Setting:
    images: int
    steps: int
    cfg: float

    @classmethod
    def parse(cls, text: str) -> Setting:
        try:
            images, steps, cfg = text.split(":")
            setting = cls(int(images), int(steps), float(cfg))
        except ValueError:
            raise UserError(f"--setting {text!r}: expected images:steps:cfg, e.g. 64:100:4.5") from None
        if setting.images < 1 or setting.steps < 1 or not (math.isfinite(setting.cfg) and setting.cfg >= 0):
            raise UserError(f"--setting {text!r}: images and steps must be >= 1, cfg a finite number >= 0")
        return setting

    def kwargs(self, seed: int) -> dict:
        return dict(cfg_scale=self.cfg, cfg_schedule="linear", sampler="euler_maruyama", steps=self.steps,
                    projection="sphere", seed=seed)

    def __str__(self) -> str:
        return f"{self.images} img / {self.steps} steps / cfg {self.cfg:g}"


def alternate(fns: dict, repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Time each function `repeats` times (`benchmark.timed`), alternating which runs first; name -> seconds."""
    from sphereard.benchmark import timed

    names, times = list(fns), {name: [] for name in fns}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(timed(fns[name], device))
    return times


def sample_labels(setting: Setting, num_classes: int, device) -> torch.Tensor:
    return torch.arange(setting.images, device=device) % num_classes  # class-balanced


def compare_sampling(model, setting: Setting, args, device, autocast, peak: float) -> dict:
    from sphereard.benchmark import count_flops

    labels, kwargs = sample_labels(setting, model.arch.num_classes, device), setting.kwargs(args.seed)

    def run(impl: str):
        with autocast, torch.no_grad():
            return model.sample(labels, impl=impl, **kwargs)

    outputs = {impl: run(impl) for impl in ("reference", "fast")}  # warm-up, and the equality check
    flops = count_flops(lambda: run("fast"))
    times = alternate({impl: lambda impl=impl: run(impl) for impl in ("reference", "fast")}, args.repeats, device)
    ref, fast = statistics.median(times["reference"]), statistics.median(times["fast"])
    pairs = [r / f for r, f in zip(times["reference"], times["fast"], strict=True)]
    return {"pair_ratio_min": min(pairs), "pair_ratio_max": max(pairs),
            "setting": str(setting), "images": setting.images, "steps": setting.steps, "cfg": setting.cfg,
            "reference_s": ref, "fast_s": fast, "ratio": ref / fast,
            "reference_images_per_s": setting.images / ref, "fast_images_per_s": setting.images / fast,
            "fast_flops": flops, "ceiling_ratio": ref / (flops / peak),
            "max_abs_diff": (outputs["fast"].float() - outputs["reference"].float()).abs().max().item(),
            "times": times}


# Std of the noise added to every weight of the sampled model: the init std (0.02). Larger noise makes
# the dim-192 preset chaotic: a 1e-6 rounding difference then doubles with every token, so even the
# reference run on 1 and on 2 threads ends up 1.3 apart (measured at 0.05; 7e-7 at 0.02).
WEIGHT_NOISE = 0.02


@torch.no_grad()
def sampling_model(preset: str, seed: int, device) -> torch.nn.Module:
    """The preset with every weight perturbed by N(0, WEIGHT_NOISE^2), in eval mode: a fresh model's
    zero-initialised adaLN and output layers give v = 0, so its samples would not test the head."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = create_generator(preset)
    for p in model.parameters():
        p.add_(WEIGHT_NOISE * torch.randn_like(p))
    return model.eval()


def fast_optimizer(model, cfg: OptimConfig, total: int, device):
    """The AdamW of `build_training` (same groups and hyper-parameters) with fused kernels."""
    opt, _, ema = build_training(model, cfg, total)
    groups = [{**{k: v for k, v in g.items() if k not in ("fused", "foreach")}, "fused": True}
              for g in opt.param_groups]
    fused = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=True)
    assert all(g["fused"] for g in fused.param_groups), "every param group must use the fused AdamW kernel"
    return fused, build_scheduler(fused, cfg, total), ema


def training_run(impl: str, args, device, cfg: OptimConfig, total: int):
    """(step function, arch) of one training path on a fresh model (seeded: both paths start equal)."""
    from sphereard.benchmark import synthetic_posterior

    torch.manual_seed(args.seed)
    with torch.device(device):
        model = create_generator(args.preset)
    opt, sched, ema = (build_training(model, cfg, total) if impl == "reference"
                       else fast_optimizer(model, cfg, total, device))
    forward = model.loss if impl == "reference" else torch.compile(model.loss)
    ctx = StepContext(device=device, rank=0, world_size=1, local_batch_size=args.batch_size, total_steps=total,
                      optim=cfg, precision=args.precision_resolved)
    arch = model.arch
    g = torch.Generator(device=device).manual_seed(args.seed)
    moments = synthetic_posterior(args.batch_size, arch.num_tokens, arch.token_dim, device, g)
    labels = torch.randint(0, arch.num_classes, (args.batch_size,), device=device, generator=g)
    counter = iter(range(total))

    def step():
        train_update(model, forward, opt, sched, ema, moments, labels, next(counter), "spherical",
                     math.sqrt(arch.token_dim), ctx)

    return step, arch


def compare_training(args, device, peak: float) -> dict:
    from sphereard.benchmark import count_flops

    total = args.warmup + 2 * args.steps + 3
    cfg = OptimConfig(warmup_steps=0)  # throughput does not depend on the lr
    steps = {}
    for impl in ("reference", "fast"):
        steps[impl], arch = training_run(impl, args, device, cfg, total)
    for _ in range(args.warmup):  # absorbs compilation
        steps["reference"](), steps["fast"]()
    flops = count_flops(steps["reference"])  # forward + backward matmuls of one step (the fast one does the same math)
    times = alternate(steps, args.steps, device)
    ref, fast = statistics.median(times["reference"]), statistics.median(times["fast"])
    pairs = [r / f for r, f in zip(times["reference"], times["fast"], strict=True)]
    return {"pair_ratio_min": min(pairs), "pair_ratio_max": max(pairs), "step_flops": flops,
            "ceiling_ratio": ref / (flops / peak),
            "batch": args.batch_size, "reference_step_s": ref, "fast_step_s": fast, "ratio": ref / fast,
            "reference_tokens_per_s": args.batch_size * arch.num_tokens / ref,
            "fast_tokens_per_s": args.batch_size * arch.num_tokens / fast, "times": times}


def _reset_peak_rss() -> int:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    return _status_kib("VmRSS")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def memory_probe(spec: dict) -> float:
    """Peak memory (MiB) of one sampling call (`kind` sample) or the training steps (`kind` train) above
    the model's own, measured in this process (run it in a fresh one: `--memory-probe JSON`)."""
    device = torch.device(spec["device"])
    model = sampling_model(spec["preset"], spec["seed"], device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec["precision"] == "bf16")
    if spec["kind"] == "sample":
        setting = Setting(*spec["setting"])
        labels = sample_labels(setting, model.arch.num_classes, device)
        model.eval()

        def work():
            with autocast, torch.no_grad():
                model.sample(labels, impl=spec["impl"], **setting.kwargs(spec["seed"]))
    else:  # two steps of the reference training path (the fast one differs by compilation's own memory)
        from types import SimpleNamespace

        args = SimpleNamespace(preset=spec["preset"], seed=spec["seed"], batch_size=spec["batch"],
                               precision_resolved=spec["precision"])
        del model
        step, _ = training_run("reference", args, device, OptimConfig(warmup_steps=0), 2)  # model + data first

        def work():  # activations, gradients, AdamW and EMA states: above the model's own weights
            step(), step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        work()
        return (torch.cuda.max_memory_allocated(device) - base) / MIB
    base = _reset_peak_rss()
    work()
    return (_status_kib("VmHWM") - base) / 1024


def probe_in_subprocess(spec: dict) -> float | None:
    """`memory_probe(spec)` in a fresh interpreter (same threads); None, with a warning, where it cannot
    be measured (no writable /proc/self/clear_refs, a failed or timed-out probe): timings are kept."""
    if spec["device"] == "cpu" and not os.access("/proc/self/clear_refs", os.W_OK):
        log.warning("memory not measured: /proc/self/clear_refs is not writable here")
        return None
    cmd = [sys.executable, "-m", "sphereard.benchmark", "--threads", str(torch.get_num_threads()),
           "--memory-probe", json.dumps(spec)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=PROBE_TIMEOUT_S)
        if out.returncode != 0:
            raise RuntimeError(out.stderr.strip().splitlines()[-1:] or f"exit {out.returncode}")
        return float(out.stdout.strip().splitlines()[-1])
    except (RuntimeError, ValueError, IndexError, subprocess.TimeoutExpired) as err:
        log.warning("memory not measured for %s: %s", spec, err)
        return None


def run_compare(args, device: torch.device, precision: str) -> dict:
    from sphereard.benchmark import DTYPES, matmul_peak

    settings = [Setting.parse(s) for s in (args.setting or DEFAULT_SETTINGS)]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    peak = matmul_peak(device, DTYPES[precision])
    model = sampling_model(args.preset, args.seed, device)
    result = {"matmul_peak_flop_per_s": peak,
              "sampling": [compare_sampling(model, s, args, device, autocast, peak) for s in settings]}
    del model
    args.precision_resolved = precision
    result["training"] = compare_training(args, device, peak)
    if args.memory:
        base = {"preset": args.preset, "seed": args.seed, "device": str(device), "precision": precision}
        for row, s in zip(result["sampling"], settings, strict=True):
            for impl in ("reference", "fast"):
                mib = probe_in_subprocess({**base, "kind": "sample", "impl": impl,
                                           "setting": [s.images, s.steps, s.cfg]})
                row[f"{impl}_peak_mib_per_image"] = None if mib is None else mib / s.images
        result["training"]["peak_mib"] = probe_in_subprocess({**base, "kind": "train", "batch": args.batch_size})
    return result


def format_compare(r: dict) -> str:
    head = (f"{r['preset']} ({r['params'] / 1e6:.2f}M params) on {r['device']}, {r['precision']}; "
            f"matmul peak {r['matmul_peak_flop_per_s'] / 1e9:.1f} GFLOP/s; medians of {r['repeats']} alternated runs")
    lines = [head, "sampling (euler_maruyama, linear CFG, sphere)   reference      fast   ratio (pairs)      "
             "ceiling  max|dz|  peak MiB/img ref/fast"]
    for s in r["sampling"]:
        mem = (f"{s['reference_peak_mib_per_image']:.2f} / {s['fast_peak_mib_per_image']:.2f}"
               if s.get("fast_peak_mib_per_image") is not None else "-")
        lines.append(f"  {s['setting']:<44} {s['reference_s']:8.3f} s {s['fast_s']:7.3f} s {s['ratio']:6.2f}x "
                     f"({s['pair_ratio_min']:.2f}-{s['pair_ratio_max']:.2f})  {s['ceiling_ratio']:5.2f}x "
                     f"{s['max_abs_diff']:8.1e}  {mem}")
    t = r["training"]
    mem = f"{t['peak_mib']:.0f} MiB" if t.get("peak_mib") is not None else "-"
    lines.append(f"training step, batch {t['batch']:<29} {t['reference_step_s']:8.3f} s {t['fast_step_s']:7.3f} s "
                 f"{t['ratio']:6.2f}x ({t['pair_ratio_min']:.2f}-{t['pair_ratio_max']:.2f})  "
                 f"{t['ceiling_ratio']:5.2f}x  (compiled loss + fused AdamW; peak {mem} above the weights)")
    return "\n".join(lines)
