"""DVC stage `evaluate@{posterior}`: generation + reconstruction metrics and latent-geometry diagnostics.

    python -m pipelines.evaluate --posterior spherical [--params FILE]

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
line naming it, exit 2, and nothing is written.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipelines._cli import add_posterior_arg, stage_main
from sphereard.ar.export import check_fits_data, check_pair, load_generator
from sphereard.ar.sampler import sampling_kwargs
from sphereard.ar.teacher_forcing import teacher_forced_predictions
from sphereard.config import Params
from sphereard.data import MANIFEST_NAME, images_as_uint8, load_manifest
from sphereard.errors import UserError
from sphereard.eval import (detect_norm_drift, generation_metrics, load_samples_npz, norm_trajectory,
                            plot_error_split, plot_norm_trajectories, radial_tangential_error, reconstruction_metrics)
from sphereard.eval.classifier import META_NAME
from sphereard.eval.setup import build_extractors, classifier_model_dir, load_references
from sphereard.layout import write_results
from sphereard.tokenizer import load_lpips
from sphereard.tokenizer.export import load_tokenizer
from sphereard.tokenizer.inference import reconstruct, uint8_to_model
from sphereard.tracking import start_run
from sphereard.utils.device import default_device
from sphereard.utils.io import atomic_path

log = logging.getLogger("pipelines.evaluate")

PROJECTIONS = ("sphere", "none")
SAMPLES_FILE = "samples.npz"


def eval_dir(params: Params, posterior: str) -> Path:
    return Path(params.evaluation.out) / posterior


def samples_path(params: Params, posterior: str) -> Path:
    return Path(params.sampling.out) / posterior / SAMPLES_FILE


def load_samples(params: Params, posterior: str, manifest: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """samples.npz, checked against the data: same image size, same channels (3 equal channels read as
    grey for 1-channel data), labels in the data's class range, one label per image; else UserError."""
    return load_samples_npz(samples_path(params, posterior), image_size=manifest["image_size"],
                            channels=manifest["channels"], num_classes=manifest["num_classes"])


def load_models(params: Params, posterior: str, device, manifest: dict):
    """Tokenizer + generator exports of `posterior`, checked against each other and the data (UserError)."""
    tok_dir = Path(params.tokenizer.out) / posterior / "model"
    gen_dir = Path(params.generator.out) / posterior / "model"
    vae, tok_meta = load_tokenizer(tok_dir, device, posterior=posterior)
    model, gen_meta = load_generator(gen_dir, device, posterior=posterior)
    check_pair(vae, tok_dir, model, gen_dir)
    check_fits_data(vae, tok_dir, model, gen_dir, manifest, Path(params.data.out) / MANIFEST_NAME)
    return vae, tok_meta, model, gen_meta


def check_classifier(extractors: list, manifest: dict, params: Params) -> None:
    """The in-project classifier must have been trained on this data's classes (UserError naming it)."""
    for ext in extractors:
        if ext.tag == "classifier" and ext.model.config["num_classes"] != manifest["num_classes"]:
            raise UserError(f"{classifier_model_dir(params) / META_NAME}: classifier has "
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


def run(params: Params, args) -> None:
    posterior, device = args.posterior, default_device()
    out = eval_dir(params, posterior)
    # every input is read and checked before any computation or output (one-line errors, nothing partial)
    manifest = load_manifest(params.data.out)
    fake, fake_labels = load_samples(params, posterior, manifest)
    vae, tok_meta, model, gen_meta = load_models(params, posterior, device, manifest)
    extractors = build_extractors(params, device)
    check_classifier(extractors, manifest, params)
    references = load_references(params, extractors)
    real, _ = images_as_uint8(params.data.out, "test", limit=params.tokenizer.eval_images, verify=False)
    held_out = images_as_uint8(params.data.out, "test", limit=params.evaluation.teacher_forced_images, verify=False)
    lpips = load_lpips(params.evaluation.lpips_weights_path, device) if params.evaluation.lpips_weights_path else None

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

    plot_norm_trajectories(curves, vae.radius, out / "norm_trajectory.png",  # drift is measured against R
                           title=f"token norms, {posterior} tokenizer", posterior=posterior)
    plot_error_split({posterior: split}, out / "error_split.png")
    for name, frame in (("norm_trajectory.csv", norms_frame), ("error_split.csv", tf_frame)):
        with atomic_path(out / name) as tmp:
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
                   parent_run_id=gen_meta.get("mlflow_run_id")) as mlrun:
        mlrun.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)}, step=gen_meta.get("step", 0))
        for path in (out / "norm_trajectory.png", out / "error_split.png", metrics_path):
            mlrun.log_artifact(path)
    log.info("evaluate %s: %s", posterior, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))


if __name__ == "__main__":
    stage_main(__doc__, run, add_posterior_arg)
