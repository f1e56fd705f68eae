"""FD against sampler steps: how few integration steps keep the paper's quality (`steps` stage, issue 18).

For every sampler (Euler-Maruyama, Euler, Heun; `ar/flow.py`) x steps x sampling seed of the
`steps_study` block, the generator of (`posterior`, first of `seeds`) draws `num_per_class` images per
class with the fast sampler and the `sampling` block's CFG settings; each set is scored against the
reference statistics (`fd_<extractor>` of every extractor; the first extractor's is the study's FD).
Per (sampler, steps): mean, std and t-interval of the FD over the sampling seeds, NFE (velocity
evaluations per token, `flow.evaluations`) and the fast path's images/s (generation only, no decoding,
median over seeds).

Matched quality: the fewest steps of each sampler from which on the mean FD stays <= (1 + tolerance) x
the mean FD of Euler-Maruyama at the most steps (the paper's protocol, 100 steps; the first sampler studied when the
head cannot use Euler-Maruyama: samplers a head cannot use, `config.head_conflict`, are left out).
The speed-up there over the reference sampler (`impl="reference"`) at the target = the implementation
ratio (fast / reference at the target setting, back to back on one batch of `sampling.batch_size`
images) x the step ratio (the fast path at the matched point / at the target, from the study's runs).
With 3 seeds the t-intervals are wide: the report prints them beside the means.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from sphereard.ar.export import load_pair
from sphereard.ar.flow import evaluations
from sphereard.ar.sample_set import class_balanced_labels, generate_all
from sphereard.ar.sampler import sampling_kwargs
from sphereard.config import Params, head_conflict
from sphereard.errors import UserError
from sphereard.eval.diagnostics import FIG_DPI, FIG_SIZE
from sphereard.eval.metrics import generation_metrics, metric_name
from sphereard.eval.setup import build_extractors, load_references
from sphereard.layout import mlflow_run
from sphereard.tracking import start_run
from sphereard.utils.device import default_device
from sphereard.utils.io import atomic_path, atomic_write_text
from sphereard.utils.stats import half_width

log = logging.getLogger(__name__)

TARGET_SAMPLER = "euler_maruyama"  # the paper's sampler; its most-steps FD is the quality target
BAND_ALPHA = 0.15
STEPS_FILES = {"points": "points.csv", "summary": "summary.json", "table": "fd_vs_steps.csv",
               "figure": "fd_vs_steps.png"}  # the stage's outputs under steps_study.out (the DVC plot: table)


def steps_file(params: Params, name: str) -> Path:
    """One of the steps stage's outputs (`name` a key of STEPS_FILES)."""
    assert name in STEPS_FILES, f"name must be one of {sorted(STEPS_FILES)}, got {name!r}"
    return Path(params.steps_study.out) / STEPS_FILES[name]


def steps_metrics_file(params: Params) -> Path:
    """The git-tracked metrics JSON of the steps stage."""
    return Path(params.metrics_dir) / "steps.json"



def study_posterior(params: Params) -> str:
    """`steps_study.posterior`, null meaning the first of tokenizer.posteriors."""
    return params.steps_study.posterior or params.tokenizer.posteriors[0]


def study_samplers(params: Params, posterior: str) -> list[str]:
    """The study's samplers that the generator's head can use (the others logged and left out)."""
    g, kept = params.generator, []
    for sampler in params.steps_study.samplers:
        conflict = head_conflict(g.flow, g.magnitude, posterior, sampler)
        if conflict:
            log.info("steps study: %s left out: %s", sampler, conflict[1])
        else:
            kept.append(sampler)
    if not kept:
        raise UserError(f"steps_study.samplers={params.steps_study.samplers}: none fits generator.flow={g.flow!r}")
    return kept


def point_sampling(params: Params, sampler: str, steps: int, seed: int):
    """The `sampling` block with this point's sampler, steps, seed and the study's images per class."""
    return params.sampling.model_copy(update=dict(sampler=sampler, steps=steps, seed=seed,
                                                  num_per_class=params.steps_study.num_per_class))


def run_points(params: Params, samplers: list[str], posterior: str, model, vae, radius: float, device, extractors,
               refs) -> pd.DataFrame:
    """One row per (sampler, steps, seed): fd_<extractor> of every extractor, images_per_s, generate_s."""
    study, ev = params.steps_study, params.evaluation
    labels = class_balanced_labels(model.arch.num_classes, study.num_per_class)
    rows = []
    for sampler in samplers:
        for steps in sorted(study.steps):
            for seed in study.sampling_seeds:
                cfg = point_sampling(params, sampler, steps, seed)
                res = generate_all(model, vae, labels, cfg.batch_size, sampling_kwargs(cfg, posterior, radius),
                                   seed, device)
                metrics = generation_metrics(res["images"], labels, refs, extractors,
                                             kid_subset_size=ev.kid_subset_size, pr_neighbours=ev.pr_neighbours,
                                             batch_size=ev.batch_size, seed=seed)
                fds = {k: v for k, v in metrics.items() if k.startswith("fd_")}
                rows.append({"sampler": sampler, "steps": steps, "seed": seed,
                             "nfe": evaluations(sampler, steps, params.sampling.final_step),
                             "images_per_s": len(labels) / res["generate_s"], "generate_s": res["generate_s"], **fds})
                log.info("%s, %d steps, seed %d: %s, %.3g images/s", sampler, steps, seed,
                         ", ".join(f"{k} {v:.4g}" for k, v in fds.items()), rows[-1]["images_per_s"])
    return pd.DataFrame(rows)


def summarise(points: pd.DataFrame, fd_key: str) -> pd.DataFrame:
    """Per (sampler, steps): fd mean / std / t-interval half-width over seeds, n, nfe, median images/s."""
    groups = points.groupby(["sampler", "steps"], sort=False)
    out = groups.agg(fd_mean=(fd_key, "mean"), fd_std=(fd_key, "std"), n=(fd_key, "size"), nfe=("nfe", "first"),
                     images_per_s=("images_per_s", "median")).reset_index()
    out["fd_ci"] = [half_width(sd, n) for sd, n in zip(out["fd_std"], out["n"], strict=True)]
    return out


def matched_quality(summary: pd.DataFrame, tolerance: float, implementation_ratio: float,
                    target_sampler: str) -> dict:
    """Per sampler: the fewest steps from which on every larger step count keeps the mean FD <=
    (1 + tolerance) x target (a noise dip below the bar followed by a miss does not count; None if none).
    Target: `target_sampler` at its most steps. Speed-up over the reference sampler at the target =
    `implementation_ratio` (fast / reference images/s at the target setting, timed back to back on one
    batch) x the step ratio (the fast path's images/s at the matched point / at the target, both from
    the study's own runs)."""
    target_row = summary[summary["sampler"] == target_sampler].sort_values("steps").iloc[-1]
    target, target_rate = float(target_row["fd_mean"]), float(target_row["images_per_s"])
    result = {"target_sampler": target_sampler, "target_fd": target, "target_steps": int(target_row["steps"]),
              "target_fd_ci": float(target_row["fd_ci"]), "tolerance": tolerance,
              "implementation_ratio": implementation_ratio, "samplers": {}}
    for sampler, rows in summary.groupby("sampler", sort=False):
        rows = rows.sort_values("steps")
        within = (rows["fd_mean"] <= (1 + tolerance) * target).to_numpy()
        from_here = [bool(within[i:].all()) for i in range(len(rows))]
        if not any(from_here):
            result["samplers"][sampler] = None
            continue
        best = rows.iloc[from_here.index(True)]
        step_ratio = float(best["images_per_s"]) / target_rate
        result["samplers"][sampler] = {
            "steps": int(best["steps"]), "nfe": int(best["nfe"]), "fd_mean": float(best["fd_mean"]),
            "fd_ci": float(best["fd_ci"]), "images_per_s": float(best["images_per_s"]), "step_ratio": step_ratio,
            "speedup_vs_reference": implementation_ratio * step_ratio}
    return result


@torch.no_grad()
def reference_images_per_s(model, params: Params, posterior: str, sampler: str, radius: float, steps: int,
                           device) -> dict:
    """Images/s of the reference and the fast sampler at `sampler` with `steps` steps on one batch of
    sampling.batch_size class-balanced labels (same seed), generation only."""
    cfg = point_sampling(params, sampler, steps, params.steps_study.sampling_seeds[0])
    kwargs = sampling_kwargs(cfg, posterior, radius)
    labels = torch.from_numpy(class_balanced_labels(model.arch.num_classes, cfg.num_per_class)[:cfg.batch_size])
    labels = labels.to(device)
    rates = {}
    for impl in ("reference", "fast"):
        model.sample(labels[:2], impl=impl, seed=cfg.seed, num_tokens=1, **kwargs)  # warm-up: kernels, allocator
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model.sample(labels, impl=impl, seed=cfg.seed, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rates[impl] = len(labels) / (time.perf_counter() - start)
    return rates


def plot_fd_vs_steps(summary: pd.DataFrame, matched: dict, fd_key: str, path: Path) -> None:
    """FD mean vs steps per sampler (log x), the t-interval over seeds as a band, the matched-quality band."""
    fig = Figure(figsize=FIG_SIZE)
    ax = fig.add_subplot()
    for sampler, rows in summary.groupby("sampler", sort=False):
        rows = rows.sort_values("steps")
        mean, ci = rows["fd_mean"].to_numpy(float), rows["fd_ci"].to_numpy(float)
        line = ax.errorbar(rows["steps"], mean, yerr=ci, capsize=3, marker="o", label=sampler)
        ax.fill_between(rows["steps"], mean - ci, mean + ci, alpha=BAND_ALPHA, color=line[0].get_color(), linewidth=0)
    target, tol = matched["target_fd"], matched["tolerance"]
    ax.axhspan(target * (1 - tol), target * (1 + tol), color="grey", alpha=0.2,
               label=f"{matched['target_sampler']} @ {matched['target_steps']} steps +- {tol:.0%}")
    ax.set_xscale("log")
    ax.set_xticks(sorted(summary["steps"].unique()), [str(s) for s in sorted(summary["steps"].unique())])
    n = int(summary["n"].max())
    ax.set(xlabel="sampler steps", ylabel=fd_key, title=f"{fd_key} vs sampler steps (mean, 95% t-interval, {n} seeds)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=FIG_DPI)


def summary_rows(summary: pd.DataFrame) -> list[dict]:
    """The long-format rows of the DVC plot (x = steps, y = fd_mean, series = sampler)."""
    return [{"series": r.sampler, "steps": int(r.steps), "nfe": int(r.nfe), "fd_mean": float(r.fd_mean),
             "fd_std": float(r.fd_std) if np.isfinite(r.fd_std) else None, "fd_ci": float(r.fd_ci),
             "images_per_s": float(r.images_per_s)} for r in summary.itertuples()]


def steps_study(params: Params) -> dict:
    """Run the study of `params.steps_study` and write its outputs under `steps_study.out` (points.csv,
    fd_vs_steps.csv (the DVC plot), fd_vs_steps.png, summary.json) and `<metrics_dir>/steps.json`;
    returns the metrics. UserError naming the file for missing or mismatched exports (`load_pair`)."""
    study, device = params.steps_study, default_device()
    if not study.enabled:
        return write_disabled(params)
    run_params, posterior = params.for_run(params.seeds[0]), study_posterior(params)
    samplers = study_samplers(params, posterior)
    target_sampler = TARGET_SAMPLER if TARGET_SAMPLER in samplers else samplers[0]
    vae, _, model, meta = load_pair(run_params, posterior, device, use_ema=params.sampling.use_ema)
    radius = float(meta["radius"])
    extractors = build_extractors(params, device)
    fd_key = metric_name("fd", extractors[0].tag)
    name, tags = mlflow_run(run_params, "steps", posterior, "steps")
    with start_run(params.tracking, ".", name, params={"steps_study": study.model_dump(), "generator": meta},
                   tags=tags) as run:
        rates = reference_images_per_s(model, params, posterior, target_sampler, radius, max(study.steps), device)
        points = run_points(params, samplers, posterior, model, vae, radius, device, extractors,
                            load_references(params, extractors))
        summary = summarise(points, fd_key)
        matched = matched_quality(summary, study.tolerance, rates["fast"] / rates["reference"], target_sampler)
        metrics = {"target_reference_images_per_s": rates["reference"], "target_fast_images_per_s": rates["fast"],
                   "implementation_ratio": rates["fast"] / rates["reference"],
                   "target_fd": matched["target_fd"]}
        for sampler, best in matched["samplers"].items():
            if best is not None:
                metrics.update({f"{sampler}_matched_steps": best["steps"], f"{sampler}_matched_fd": best["fd_mean"],
                                f"{sampler}_matched_images_per_s": best["images_per_s"],
                                f"{sampler}_matched_speedup": best["speedup_vs_reference"]})
        atomic_write_text(steps_file(params, "points"), points.to_csv(index=False))
        atomic_write_text(steps_file(params, "table"), pd.DataFrame(summary_rows(summary)).to_csv(index=False))
        atomic_write_text(steps_file(params, "summary"), json.dumps({"fd_key": fd_key, "matched": matched,
                                                                     "rates": rates}, indent=2) + "\n")
        with atomic_path(steps_file(params, "figure")) as tmp:
            plot_fd_vs_steps(summary, matched, fd_key, tmp)
        run.log_metrics({f"steps/{k}": v for k, v in metrics.items()}, step=0)
        run.log_artifact(steps_file(params, "figure"))
        atomic_write_text(steps_metrics_file(params), json.dumps(metrics, indent=2) + "\n")
    for sampler, best in matched["samplers"].items():
        log.info("%s: %s", sampler, "never within tolerance" if best is None else
                 f"{best['steps']} steps (NFE {best['nfe']}), {fd_key} {best['fd_mean']:.4g}, "
                 f"{best['images_per_s']:.3g} images/s = {best['speedup_vs_reference']:.2f}x the reference at "
                 f"{target_sampler} {matched['target_steps']} steps")
    return metrics


def write_disabled(params: Params) -> dict:
    """`steps_study.enabled: false`: the stage's outputs exist (DVC needs them) and hold no point."""
    log.info("steps_study.enabled=false: no points; writing empty tables to %s", params.steps_study.out)
    atomic_write_text(steps_file(params, "points"), "sampler,steps,seed,nfe,images_per_s,generate_s\n")
    atomic_write_text(steps_file(params, "table"), "series,steps,nfe,fd_mean,fd_std,fd_ci,images_per_s\n")
    atomic_write_text(steps_file(params, "summary"), json.dumps({"enabled": False}) + "\n")
    fig = Figure(figsize=FIG_SIZE)
    fig.text(0.5, 0.5, "steps_study.enabled: false", ha="center", va="center")
    with atomic_path(steps_file(params, "figure")) as tmp:
        fig.savefig(tmp, dpi=FIG_DPI, format="png")
    atomic_write_text(steps_metrics_file(params), "{}\n")
    return {}

