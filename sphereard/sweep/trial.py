"""One sweep trial, run by Ray Tune (`run_trial`): (train ->) sample -> generation metrics -> report.

Sample trials reuse the DAG's exported models of their posterior; training trials run the DAG's own
code path inside the trial: tokenizer and generator through the stages' own `fit_tokenizer` /
`fit_generator` (a Ray Train TorchTrainer: Train V2 runs a trainer inside a Tune trial function),
encode between them, each exported, all under `sweep.out/models/<model name>/` (`grid.model_name`:
trained once, under a file lock, and shared by the trials that differ only in sampling settings); a
head arm (`reuse_tokenizer`: another flow or magnitude option) trains only the generator, on the DAG's
tokenizer and latents of its seed. A trained tokenizer is measured like train_vae's (reconstruction
of the held-out split), and every trial records its tokenizer's numbers as `recon_<metric>`. Then
`sweep.num_per_class` class-balanced samples per class with the
trial's CFG scale / projection / steps / seed, decoded and scored against the cached reference
statistics, plus the token-norm deviation from R (SphereAR Sec. 3.3, the drift argument):
  norm_rel_dev_mean   mean over samples and positions of | ||z_k|| - R | / R   (norms after CFG,
  norm_rel_dev_max    max over positions of | mean_n ||z_k|| - R | / R          before projection)
Each trial is an MLflow child run of the sweep's parent run (the `mlflow.parentRunId` tag), with the
data manifest as its dataset input (context `evaluation`); a training trial's tokenizer and generator
runs are its children (system metrics, the manifest as a `training` input). Under ASHA each AR loss
reported to Tune is also the trial run's metric `asha/ar_loss` at the AR step it was measured at.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from ray import tune

from sphereard.ar.export import load_pair
from sphereard.ar.sample_set import class_balanced_labels, generate_all
from sphereard.ar.sampler import sampling_kwargs
from sphereard.ar.train import export_generator, fit_generator
from sphereard.config import Params
from sphereard.data import manifest_path
from sphereard.errors import UserError
from sphereard.eval import detect_norm_drift, generation_metrics
from sphereard.eval.figures import read_class_names, save_class_grid
from sphereard.eval.setup import build_extractors, load_references
from sphereard.export import META_FILE, read_export
from sphereard.latents import meta_path, read_latent_meta
from sphereard.layout import (
    MODEL_FILES,
    TRIAL_METRICS_DIR,
    TRIAL_OUTPUTS,
    checkpoint_dir,
    export_dir,
    latent_cache_dir,
    metrics_file,
    sweep_model_dir,
    trial_dir,
    trial_file,
    write_results,
)
from sphereard.sweep.grid import (
    TrialSettings,
    model_name,
    scaled_steps,
    segment_ends,
    settings_of,
    training_run_name,
)
from sphereard.tokenizer.encode import encode_split
from sphereard.tokenizer.train import evaluate_reconstruction, export_tokenizer, fit_tokenizer
from sphereard.tracking import TRACKING_URI_ENV, Run, start_run
from sphereard.train.checkpoint import STEP_DIR_RE, latest_step_dir
from sphereard.train.fingerprint import code_fingerprint
from sphereard.utils.device import default_device
from sphereard.utils.io import atomic_write_text, read_json_object, require_fields
from sphereard.utils.logs import configure_logging

log = logging.getLogger(__name__)

GRID_MAX_CLASSES = 10  # samples.png: at most this many classes (evenly spaced), one row each
GRID_PER_CLASS = 8
ASHA_METRIC = "ar_loss"  # AR training loss over the last logging window (lower is better)
ASHA_CURVE_METRIC = "asha/ar_loss"  # the trial run's metric: each report's ASHA_METRIC at its AR step
# The `sampling` keys a trial inherits from params (it sets cfg_scale, projection, steps, seed and
# num_per_class itself, see trial_sampling): the sweep stage's only `sampling` params in dvc.yaml.
INHERITED_SAMPLING_KEYS = ("cfg_schedule", "sampler", "final_step", "use_ema", "batch_size", "cfg_unit_weight")
DONE_KEY = "num_images"  # present only in a trial's final (evaluated) report
RECON_PREFIXES = ("psnr_", "ssim_", "lpips_")  # the tokenizer's reconstruction metrics a trial records


@dataclass(frozen=True)
class SweepContext:
    """What every trial needs from the driver (sent once through Ray's object store)."""

    params: Params  # data/output paths absolute
    repo_root: str
    tracking_uri: str | None  # resolved on the driver: the same store from every node
    parent_run_id: str | None
    tags: dict = field(default_factory=dict)  # git commit, profile, sweep name
    manifest_sha256: str | None = None  # of the data manifest (a trial's training config includes it)
    report_segments: bool = False  # asha: report the AR loss after each training segment


def norm_deviation(norms: np.ndarray, radius: float) -> dict[str, float]:
    """Token norms (N, L) after CFG, before projection -> deviation from R (module docstring)."""
    rel = np.abs(norms.astype(np.float64) - radius) / radius
    drift = detect_norm_drift(norms, radius)
    return {"norm_mean": float(norms.mean()), "norm_rel_dev_mean": float(rel.mean()),
            "norm_rel_dev_max": drift.max_rel_deviation, "norm_rel_slope": drift.rel_slope}


def trial_sampling(params: Params, t: TrialSettings):
    """The `sampling` block of this trial: its CFG scale, projection, steps and seed."""
    return params.sampling.model_copy(update=dict(cfg_scale=t.cfg_scale, projection=t.projection, steps=t.sampler_steps,
                                                  sampler=t.sampler, seed=t.seed,
                                                  num_per_class=params.sweep.num_per_class))


def overview_grid(images: np.ndarray, labels: np.ndarray, path: Path,
                  class_names: list[str] | None = None) -> Path:
    """Up to GRID_MAX_CLASSES evenly spaced classes x GRID_PER_CLASS samples, one row per class, the class
    name (`class_names[label]`, else `class <id>`) left of each row (sphereard/eval/figures.py)."""
    return save_class_grid(images, labels, path, GRID_MAX_CLASSES, GRID_PER_CLASS, class_names)


def sample_and_evaluate(params: Params, t: TrialSettings, device: torch.device) -> dict:
    """Sample with the trial's settings from the models `params` point at; generation metrics + norms."""
    cfg = trial_sampling(params, t)
    vae, _, model, meta = load_pair(params, t.posterior, device, use_ema=cfg.use_ema)
    labels = class_balanced_labels(model.arch.num_classes, cfg.num_per_class)
    res = generate_all(model, vae, labels, cfg.batch_size, sampling_kwargs(cfg, t.posterior, t.radius), t.seed, device)
    extractors = build_extractors(params, device)
    ev = params.evaluation
    metrics = generation_metrics(res["images"], labels, load_references(params, extractors), extractors,
                                 kid_subset_size=ev.kid_subset_size, pr_neighbours=ev.pr_neighbours,
                                 batch_size=ev.batch_size, seed=t.seed)
    metrics.update(norm_deviation(res["norms"], t.radius))
    metrics.update(tokenizer_metrics(params, t.posterior))
    total_s = res["generate_s"] + res["decode_s"]
    metrics.update({DONE_KEY: len(labels), "images_per_s": len(labels) / total_s, "sample_s": total_s,
                    "generator_step": meta.get("step", 0)})
    class_names = read_class_names(params.data.out, model.arch.num_classes)
    overview_grid(res["images"], labels, trial_file(params, t.name, "grid"), class_names)
    return metrics


def tokenizer_metrics(params: Params, posterior: str) -> dict[str, float]:
    """The reconstruction metrics of the tokenizer `params` point at (its train_vae metrics file, or a
    training trial's), as `recon_<metric>` (psnr / ssim / lpips of decode(mode) and decode(sample)); {}
    when the file is absent."""
    path = metrics_file(params, "tokenizer", posterior)
    if not path.is_file():
        return {}
    found = read_json_object(path, "tokenizer metrics")
    return {f"recon_{k}": float(v) for k, v in found.items()
            if k.startswith(RECON_PREFIXES) and isinstance(v, int | float) and not isinstance(v, bool)}


def _scaled_loop(loop, fraction: float, ray_storage: str, **extra):
    """Training steps (and warmup, GAN start) scaled by `fraction`; at least one Ray Train worker:
    Ray Train's in-process mode (num_workers 0) cannot run inside a Tune trial."""
    optim = loop.optim.model_copy(update={"warmup_steps": round(loop.optim.warmup_steps * fraction)})
    ray_cfg = loop.ray.model_copy(update={"num_workers": max(1, loop.ray.num_workers), "storage": ray_storage})
    return loop.model_copy(update=dict(steps=scaled_steps(loop.steps, fraction), optim=optim, ray=ray_cfg, **extra))


def training_params(params: Params, t: TrialSettings, out: Path) -> Params:
    """The DAG's params redirected into the model dir `out`, with the trial's R, seed, flow, magnitude and
    scaled steps. With `reuse_tokenizer` the tokenizer and latents stay the DAG's run of the trial's seed
    (`Params.for_run`): only the generator trains (its steps unscaled, like the DAG generator it is
    compared with)."""
    f, tok, gen = params.sweep.train_steps_fraction, params.tokenizer, params.generator
    storage = str(Path(gen.train.ray.storage).resolve())
    gen_fraction = 1.0 if t.reuse_tokenizer else f
    generator = gen.model_copy(update=dict(out=str(out / TRIAL_OUTPUTS["generator"]), flow=t.flow,
                                           magnitude=t.magnitude, train=_scaled_loop(gen.train, gen_fraction, storage)))
    if t.reuse_tokenizer:
        return params.for_run(t.seed).model_copy(update=dict(generator=generator))  # its metrics: the DAG's
    tok_train = _scaled_loop(tok.train, f, storage, disc_start=round(tok.train.disc_start * f))
    return params.model_copy(update=dict(
        seed=t.seed, metrics_dir=str(out / TRIAL_METRICS_DIR),
        tokenizer=tok.model_copy(update=dict(radius=t.radius, posteriors=[t.posterior],
                                             out=str(out / TRIAL_OUTPUTS["tokenizer"]), train=tok_train)),
        encode=params.encode.model_copy(update={"out": str(out / TRIAL_OUTPUTS["encode"])}),
        generator=generator))


def _fresh_or_resumable(out: Path, config: dict) -> None:
    """Keep a sweep model's checkpoints (an interrupted or earlier training) only if they were trained with
    exactly this config (settings, blocks, data manifest, code fingerprint, and for a head arm the DAG
    latents' sha256); else delete its outputs and reports.

    Raises UserError naming train_config.json when it is not a JSON object (truncated, corrupt):
    whether the checkpoints beside it may be resumed is then unknown."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    marker = out / MODEL_FILES["train_config"]
    if marker.is_file() and _read_marker(marker).get("sha256") != digest:
        log.info("%s: trained with another config; starting over", out)
        for sub in (*TRIAL_OUTPUTS.values(), TRIAL_METRICS_DIR):
            shutil.rmtree(out / sub, ignore_errors=True)
        (out / MODEL_FILES["reports"]).unlink(missing_ok=True)
    atomic_write_text(marker, json.dumps({"sha256": digest, "config": config}, indent=2, default=str))


def _read_marker(marker: Path) -> dict:
    """train_config.json of an interrupted trial; UserError naming it when it is not a JSON object."""
    try:
        return read_json_object(marker, "trial training marker")
    except UserError as err:
        raise UserError(f"{err}; delete it (or the model dir {marker.parent}) to retrain the model") from None


def read_reports(path: Path) -> dict[str, float | None]:
    """{segment end step (a decimal string): AR loss or None} of ar_reports.json; {} when absent.

    Raises UserError naming the file when it is not a JSON object (truncated, corrupt), a key is
    not a step number, or a value is neither a number nor null."""
    if not path.is_file():
        return {}
    reports = read_json_object(path, "AR loss reports")
    for key in reports:
        if not key.isascii() or not key.isdigit():
            raise UserError(f"{path}: key {key!r} is not a step number")
    return require_fields(path, reports, {key: (float, type(None)) for key in reports})


def _latest_step(ckpt_dir: Path) -> int:
    step_dir = latest_step_dir(ckpt_dir)
    return 0 if step_dir is None else int(STEP_DIR_RE.match(step_dir.name).group(1))


def report_segment(trial_run: Run, end: int, loss: float | None, final: bool) -> None:
    """ASHA: the AR loss after the training segment ending at step `end`, as the trial run's metric
    ASHA_CURVE_METRIC at that step (the curve ASHA decided on; a missing or non-finite loss is left out)
    and, unless it is the `final` segment's (reported with the trial's metrics), reported to Tune."""
    if loss is not None and np.isfinite(loss):
        trial_run.log_metrics({ASHA_CURVE_METRIC: loss}, step=end)
    if not final:
        tune.report({ASHA_METRIC: _nan_if_none(loss), "ar_step": end, "mlflow_run_id": trial_run.run_id})


MODEL_SETTINGS = ("posterior", "radius", "flow", "magnitude", "seed", "reuse_tokenizer")  # what a model depends on
TRAINING_MODULE = __name__  # its code closure: the stages' training, encoding and export code (fingerprinted)


def train_models(params: Params, t: TrialSettings, ctx: SweepContext, trial_run: Run,
                 device: torch.device) -> tuple[Params, float | None]:
    """(Tokenizer -> encode ->) generator of the trial's `model_name` under `sweep.out/models/`, trained
    once and shared by the trials that sample from it (a file lock serialises concurrent trials);
    returns the params pointing at it and its final AR loss.

    With `ctx.report_segments` the generator trains in `sweep.train_reports` resumable segments,
    each reported to Tune (ASHA may stop the trial between them)."""
    out = sweep_model_dir(params, model_name(t))
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{out}.lock"):
        return _train_models(params, t, out, ctx, trial_run, device)


def _train_models(params: Params, t: TrialSettings, out: Path, ctx: SweepContext, trial_run: Run,
                  device: torch.device) -> tuple[Params, float | None]:
    tp, p = training_params(params, t, out), t.posterior
    settings = {k: v for k, v in t.as_dict().items() if k in MODEL_SETTINGS}
    inputs = {"data_manifest": ctx.manifest_sha256, "code": code_fingerprint([TRAINING_MODULE])}
    if t.reuse_tokenizer:  # trained on the DAG's latents: retrain when they change
        inputs["latents"] = read_latent_meta(latent_cache_dir(tp, p), verify=False)["sha256"]
    _fresh_or_resumable(out, {"settings": settings, "tokenizer": tp.tokenizer.model_dump(),
                              "generator": tp.generator.model_dump(), "encode": tp.encode.model_dump(),
                              "lpips_weights_path": tp.lpips_weights_path, **inputs})
    tags = {**ctx.tags, "stage": "sweep_train", "posterior": p}
    training = {"tags": tags, "parent_run_id": trial_run.run_id, "system_metrics": True,
                "data_manifest": manifest_path(tp.data.out)}
    if t.reuse_tokenizer:  # the DAG's run of this seed (config: sweep.seeds within seeds)
        radius = float(read_export(export_dir(tp, "tokenizer", p))[1]["radius"])
    else:
        radius = _train_tokenizer(tp, t, ctx, training, device)
    reports_path = out / MODEL_FILES["reports"]
    reports = read_reports(reports_path)
    total = tp.generator.train.steps
    ends = segment_ends(total, tp.sweep.train_reports) if ctx.report_segments else [total]
    gen_ckpt, ar_name = checkpoint_dir(tp, "generator", p), training_run_name(t, "train_ar")
    if _latest_step(gen_ckpt) < total or not (export_dir(tp, "generator", p) / META_FILE).is_file():
        with start_run(tp.tracking, ctx.repo_root, ar_name, params={"generator": tp.generator.model_dump()},
                       **training) as run:
            for end in ends:
                done = _latest_step(gen_ckpt)
                if done < end:
                    result = fit_generator(tp, p, run, f"sweep-{ar_name}", stop_after=end - done)
                    reports[str(end)] = (result.metrics or {}).get("train/loss")
                    atomic_write_text(reports_path, json.dumps(reports, indent=2))
                if ctx.report_segments:
                    report_segment(trial_run, end, reports.get(str(end)), final=end == total)
            export_generator(tp, p, radius, run.run_id)
    elif ctx.report_segments:  # trained by an earlier trial: its reports
        for end in ends:
            report_segment(trial_run, end, reports.get(str(end)), final=end == total)
    return tp, reports.get(str(total))


def _train_tokenizer(tp: Params, t: TrialSettings, ctx: SweepContext, training: dict, device: torch.device) -> float:
    """Train (or resume), export and measure the model's tokenizer, then encode its latents; each step
    skipped when its output exists. Returns the tokenizer's R."""
    p = t.posterior
    tok_ckpt, vae_name = checkpoint_dir(tp, "tokenizer", p), training_run_name(t, "train_vae")
    cache_done = meta_path(latent_cache_dir(tp, p)).is_file()
    if _latest_step(tok_ckpt) < tp.tokenizer.train.steps or not metrics_file(tp, "tokenizer", p).is_file():
        with start_run(tp.tracking, ctx.repo_root, vae_name, params={"tokenizer": tp.tokenizer.model_dump(),
                                                               "lpips_weights_path": tp.lpips_weights_path},
                       **training) as run:
            if _latest_step(tok_ckpt) < tp.tokenizer.train.steps:  # else resumed after it finished
                fit_tokenizer(tp, p, run, f"sweep-{vae_name}")  # tp.seed is the trial's seed
            vae = export_tokenizer(tp, p, run.run_id)
            metrics, images = evaluate_reconstruction(tp, vae, p, run)
            write_results(tp, "tokenizer", p, metrics, {"posterior": p, "eval_images": images})
        cache_done = False  # a new export: encode again
    if not cache_done:
        encode_split(tp, p, device)
    return float(read_export(export_dir(tp, "tokenizer", p))[1]["radius"])


def _nan_if_none(value) -> float:
    return float("nan") if value is None else float(value)


def run_trial(config: dict, context: SweepContext) -> None:
    """Ray Tune function trainable (module-level so Ray workers can import it)."""
    configure_logging()
    if context.tracking_uri:  # the driver's store, also on nodes that do not share its environment
        os.environ[TRACKING_URI_ENV] = context.tracking_uri
    t, params = settings_of(config), context.params
    out = trial_dir(params, t.name)
    out.mkdir(parents=True, exist_ok=True)
    device = default_device()
    kind = "train" if t.train else "sample"
    logged = {**t.as_dict(), "kind": kind, "num_per_class": params.sweep.num_per_class,
              "sampling": {k: v for k, v in params.sampling.model_dump().items() if k in INHERITED_SAMPLING_KEYS},
              "extractors": params.evaluation.extractors}
    tags = {**context.tags, "stage": "sweep_trial", "posterior": t.posterior, "trial_kind": kind}
    with start_run(params.tracking, context.repo_root, t.name, params=logged, tags=tags,
                   parent_run_id=context.parent_run_id, data_manifest=manifest_path(params.data.out),
                   data_context="evaluation") as run:
        ar_loss = None
        if t.train:
            params, ar_loss = train_models(params, t, context, run, device)
        else:  # the DAG's run of this seed (config: sweep.seeds within seeds)
            params = params.for_run(t.seed)
        metrics = sample_and_evaluate(params, t, device)
        if t.train:
            metrics[ASHA_METRIC] = _nan_if_none(ar_loss)
        run.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)}, step=0)
        run.log_artifact(trial_file(params, t.name, "grid"))
        record = {"trial": t.name, **t.as_dict(), **metrics}
        atomic_write_text(trial_file(params, t.name, "metrics"), json.dumps(record, indent=2))
        log.info("%s: %s", t.name, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        tune.report({**metrics, "mlflow_run_id": run.run_id})
