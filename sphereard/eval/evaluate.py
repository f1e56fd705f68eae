"""Generation + reconstruction metrics and latent-geometry diagnostics of one posterior's models and
samples: DVC stage `evaluate@{posterior}` (`evaluate_posterior`).

Writes `<metrics_dir>/evaluation/<posterior>.json` (sphereard/layout.py): generation metrics named by
extractor (fd_classifier, kid_classifier, ...), reconstruction metrics (recon_psnr, recon_ssim,
recon_rfd_<extractor>, ...) and diagnostic summaries (norm drift, teacher-forced radial/tangential
error); and under `evaluation.out/<posterior>/`:
  info.json             number of samples evaluated
  norm_trajectory.png   token norm vs sequence position, projection sphere vs none, at several CFG scales
  norm_trajectory.csv   the same numbers (DVC plots)
  error_split.png/.csv  teacher-forced error per position, radial vs tangential (held-out images);
                        the CSV is long: position, series (radial | tangential), error
The MLflow run is nested under the AR training run it evaluates.

Every input is read and checked first: a missing, truncated or mismatched file (samples.npz whose image
size, channels, labels or label count differ from the data; exports of other models; references) is one
UserError naming it, and nothing is written.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from sphereard.ar.export import load_pair
from sphereard.ar.sampler import sampling_kwargs
from sphereard.ar.teacher_forcing import teacher_forced_predictions
from sphereard.config import Params
from sphereard.data import images_as_uint8, load_manifest, manifest_path
from sphereard.errors import UserError
from sphereard.eval.adm import load_samples_npz
from sphereard.eval.diagnostics import (
    detect_norm_drift,
    norm_trajectory,
    plot_error_split,
    plot_norm_trajectories,
    radial_tangential_error,
)
from sphereard.eval.metrics import generation_metrics
from sphereard.eval.reconstruction import reconstruction_metrics
from sphereard.eval.setup import build_extractors, load_references
from sphereard.export import META_FILE
from sphereard.layout import classifier_model_dir, evaluation_file, samples_file, write_results
from sphereard.tokenizer.inference import reconstruct, uint8_to_model
from sphereard.tokenizer.losses import load_lpips
from sphereard.tracking import start_run
from sphereard.utils.device import default_device
from sphereard.utils.io import atomic_path

log = logging.getLogger(__name__)

PROJECTIONS = ("sphere", "none")


def load_samples(params: Params, posterior: str, manifest: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """samples.npz, checked against the data: same image size, same channels (3 equal channels read as
    grey for 1-channel data), labels in the data's class range, one label per image; else UserError."""
    return load_samples_npz(samples_file(params, posterior), image_size=manifest["image_size"],
                            channels=manifest["channels"], num_classes=manifest["num_classes"])


def check_classifier(extractors: list, manifest: dict, params: Params) -> None:
    """The in-project classifier must have been trained on this data's classes (UserError naming it)."""
    for ext in extractors:
        if ext.tag == "classifier" and ext.model.config["num_classes"] != manifest["num_classes"]:
            raise UserError(f"{classifier_model_dir(params) / META_FILE}: classifier has "
                            f"{ext.model.config['num_classes']} classes, the data have {manifest['num_classes']} "
                            "(rerun train_classifier)")


def norm_diagnostics(params: Params, model, radius: float, num_classes: int, device) -> tuple[pd.DataFrame, dict]:
    """Sample with projection sphere vs none at several CFG scales; token norms before projection."""
    ev, sp = params.evaluation, params.sampling
    labels = torch.arange(ev.diagnostic_samples, device=device) % num_classes
    rows, summary, curves = [], {}, {}
    for projection in PROJECTIONS:
        for w in ev.diagnostic_cfg_scales:
            _, norms = model.sample(labels, cfg_scale=w, cfg_schedule=sp.cfg_schedule, sampler=sp.sampler,
                                    steps=ev.diagnostic_steps, final_step=sp.final_step, projection=projection,
                                    radius=radius, seed=params.seed, return_norms=True)
            label = f"{projection} cfg={w:g}"
            curves[label] = norms.cpu()
            traj = norm_trajectory(norms.cpu())
            rows += [{"series": label, "projection": projection, "cfg_scale": w, "position": k,
                      "norm_mean": float(traj["mean"][k]), "norm_q05": float(traj["q05"][k]),
                      "norm_q95": float(traj["q95"][k])} for k in range(norms.shape[1])]
            drift = detect_norm_drift(norms.cpu(), radius)
            summary[f"norm_rel_dev_{projection}_cfg{w:g}"] = drift.max_rel_deviation
    return pd.DataFrame(rows), summary, curves


def teacher_forced_diagnostics(params: Params, vae, model, images: np.ndarray, labels: np.ndarray,
                               device) -> tuple[pd.DataFrame, dict]:
    """Held-out (test split) images (N, H, W, C) -> true tokens; error of each teacher-forced prediction."""
    ev = params.evaluation
    with torch.no_grad():
        z = torch.cat([vae.encode(uint8_to_model(images[i:i + ev.batch_size], device), sample=False)
                       for i in range(0, len(images), ev.batch_size)])  # (N, L, d)
    generator = torch.Generator(device=device).manual_seed(params.seed)
    pred = teacher_forced_predictions(model, z, torch.as_tensor(labels, device=device), steps=ev.diagnostic_steps,
                                      generator=generator)
    radial, tangential = radial_tangential_error(pred.cpu(), z.cpu())  # (N, L) magnitudes
    positions = np.arange(z.shape[1])
    frame = pd.concat([pd.DataFrame({"position": positions, "series": part, "error": err.mean(0).numpy()})
                       for part, err in (("radial", radial), ("tangential", tangential))], ignore_index=True)
    summary = {"tf_radial_error": float(radial.mean()), "tf_tangential_error": float(tangential.mean()),
               "tf_radial_fraction": float((radial ** 2).sum() / ((radial ** 2) + (tangential ** 2)).sum())}
    return frame, summary, (radial, tangential)


def evaluate_posterior(params: Params, posterior: str) -> dict[str, float]:
    """Check every input, then measure, plot and write the stage's results (module docstring) -> metrics."""
    device = default_device()
    # every input is read and checked before any computation or output (one-line errors, nothing partial)
    manifest = load_manifest(params.data.out)
    fake, fake_labels = load_samples(params, posterior, manifest)
    vae, _, model, gen_meta = load_pair(params, posterior, device, manifest=manifest)
    extractors = build_extractors(params, device)
    check_classifier(extractors, manifest, params)
    references = load_references(params, extractors)
    real, _ = images_as_uint8(params.data.out, "test", limit=params.tokenizer.eval_images, verify=False)
    held_out = images_as_uint8(params.data.out, "test", limit=params.evaluation.teacher_forced_images, verify=False)
    lpips = load_lpips(params.lpips_weights_path, device) if params.lpips_weights_path else None

    metrics = generation_metrics(fake, fake_labels, references, extractors,
                                 kid_subset_size=params.evaluation.kid_subset_size,
                                 pr_neighbours=params.evaluation.pr_neighbours,
                                 batch_size=params.evaluation.batch_size, seed=params.seed)
    recon = reconstruct(vae, real, params.evaluation.batch_size, device)
    rec = reconstruction_metrics(real, recon, extractors, lpips, params.evaluation.batch_size)
    metrics.update({f"recon_{k}": v for k, v in rec.items()})
    norms_frame, norm_summary, curves = norm_diagnostics(params, model, vae.radius, model.arch.num_classes, device)
    tf_frame, tf_summary, split = teacher_forced_diagnostics(params, vae, model, *held_out, device)
    metrics.update({**norm_summary, **tf_summary})

    # drift is measured against R
    plot_norm_trajectories(curves, vae.radius, evaluation_file(params, posterior, "norm_trajectory.png"),
                           title=f"token norms, {posterior} tokenizer", posterior=posterior)
    plot_error_split({posterior: split}, evaluation_file(params, posterior, "error_split.png"))
    for name, frame in (("norm_trajectory.csv", norms_frame), ("error_split.csv", tf_frame)):
        with atomic_path(evaluation_file(params, posterior, name)) as tmp:
            frame.to_csv(tmp, index=False)
    metrics_path, _ = write_results(params, "evaluation", posterior, metrics,
                                    {"posterior": posterior, "num_samples": int(len(fake)),
                                     "reference_images": {tag: int(ref.num_images) for tag, ref in references.items()},
                                     "recon_images": int(len(real)), "teacher_forced_images": int(len(held_out[0]))})

    tags = {"stage": "evaluate", "posterior": posterior, "profile": params.profile,
            "sphereard.evaluates_run": gen_meta.get("mlflow_run_id") or ""}
    # the settings of the samples evaluated, under the sweep trials' names (cfg_scale, projection, radius, ...)
    logged = {"posterior": posterior, **sampling_kwargs(params.sampling, posterior, vae.radius),
              "num_samples": int(len(fake))}
    with start_run(params.tracking, ".", f"eval-{posterior}", params=logged, tags=tags,
                   parent_run_id=gen_meta.get("mlflow_run_id"), data_manifest=manifest_path(params.data.out),
                   data_context="evaluation") as mlrun:
        mlrun.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)}, step=gen_meta.get("step", 0))
        for path in (evaluation_file(params, posterior, "norm_trajectory.png"),
                     evaluation_file(params, posterior, "error_split.png"), metrics_path):
            mlrun.log_artifact(path)
    log.info("evaluate %s: %s", posterior, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return metrics
