"""Generation + reconstruction metrics and latent-geometry diagnostics of one posterior's models and
samples: DVC stage `evaluate@{posterior}-{seed}` (`evaluate_posterior`).

Writes `<metrics_dir>/evaluation/<posterior>/seed<k>.json` (sphereard/layout.py): generation metrics named by
extractor (fd_classifier, kid_classifier, ...), reconstruction metrics of decode(posterior mode) and
decode(posterior sample, seeded by `seed`) (recon_psnr_mode, recon_psnr_sample, recon_ssim_*,
recon_rfd_<extractor>_*, ...) and diagnostic summaries (norm drift; teacher-forced radial/tangential
error on posterior samples, its floor and the excess over it: tf_radial_error, tf_radial_floor,
tf_radial_excess, ...); and under `evaluation.out/<posterior>/seed<k>/`:
  info.json             number of samples evaluated
  norm_trajectory.png   token norm vs sequence position, projection sphere vs none, at several CFG scales
  norm_trajectory.csv   the same numbers (DVC plots)
  error_split.png/.csv  teacher-forced error per position, radial vs tangential, and its floor (held-out
                        images); the CSV is long: position, series (radial | tangential | radial floor |
                        tangential floor), error
The MLflow run is nested under the AR training run it evaluates.

Every input is read and checked first: a missing, truncated or mismatched file (samples.npz whose image
size, channels, labels or label count differ from the data; exports of other models; references) is one
UserError naming it, and nothing is written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

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
    radial_fraction,
    radial_tangential_error,
    radial_tangential_floor,
)
from sphereard.eval.figures import SPLIT_SERIES
from sphereard.eval.metrics import generation_metrics
from sphereard.eval.reconstruction import reconstruction_metrics_by_decode
from sphereard.eval.setup import build_extractors, load_references
from sphereard.export import META_FILE
from sphereard.layout import classifier_model_dir, evaluation_file, mlflow_run, samples_file, write_results
from sphereard.tokenizer.inference import encode_moments, reconstruct_decodes
from sphereard.tokenizer.losses import load_lpips
from sphereard.tracking import start_run
from sphereard.utils.device import default_device
from sphereard.utils.io import atomic_path
from sphereard.utils.rng import seeded_global_rng

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


def posterior_draws(sample: Callable[[torch.Tensor], torch.Tensor], moments: torch.Tensor, count: int,
                    seed: int) -> list[torch.Tensor]:
    """`count` independent posterior samples (N, L, d) of the moments (N, L, P), drawn in order from torch's
    global RNG seeded with `seed` (forked: the caller's RNG state is untouched)."""
    with seeded_global_rng(seed, moments.device):
        return [sample(moments) for _ in range(count)]


def teacher_forced_split(predict: Callable[[torch.Tensor], torch.Tensor], z_ctx: torch.Tensor, z_tgt: torch.Tensor,
                         z_a: torch.Tensor, z_b: torch.Tensor) -> dict[str, torch.Tensor]:
    """The teacher-forced error split next to its floor, {series (SPLIT_SERIES): magnitudes (N, L)}.

    z_ctx, z_tgt, z_a, z_b (N, L, d): independent posterior samples of the same tokens. error = predict(z_ctx)
    - z_tgt, split w.r.t. z_tgt; floor = z_a - z_b split w.r.t. z_b (`radial_tangential_floor`). As in
    training, the prediction of token k sees a posterior sample of the tokens < k and is scored against a
    posterior sample of token k; the posterior factorises over tokens, so a target drawn apart from the
    context is distributed as the context's own token k, which the causal model never sees."""
    pred = predict(z_ctx)  # (N, L, d)
    radial, tangential = radial_tangential_error(pred.cpu(), z_tgt.cpu())
    radial_floor, tangential_floor = radial_tangential_floor(z_a.cpu(), z_b.cpu())
    return dict(zip(SPLIT_SERIES, (radial, tangential, radial_floor, tangential_floor), strict=True))


def split_frame(split: dict[str, torch.Tensor]) -> pd.DataFrame:
    """{series: magnitudes (N, L)} -> long frame (position, series, error): the mean over images per position."""
    return pd.concat([pd.DataFrame({"position": np.arange(err.shape[1]), "series": series,
                                    "error": err.double().mean(0).numpy()}) for series, err in split.items()],
                     ignore_index=True)


def split_summary(split: dict[str, torch.Tensor]) -> dict[str, float]:
    """Means over images and positions (latent units): tf_<part>_error, tf_<part>_floor and tf_<part>_excess =
    error - floor for part radial | tangential, and tf_radial_fraction of the error."""
    out = {"tf_radial_fraction": radial_fraction(split["radial"], split["tangential"])}
    for part in ("radial", "tangential"):
        error, floor = float(split[part].double().mean()), float(split[f"{part} floor"].double().mean())
        out.update({f"tf_{part}_error": error, f"tf_{part}_floor": floor, f"tf_{part}_excess": error - floor})
    return out


def teacher_forced_diagnostics(params: Params, vae, model, images: np.ndarray, labels: np.ndarray,
                               device) -> tuple[pd.DataFrame, dict, dict[str, torch.Tensor]]:
    """Held-out (test split) images (N, H, W, C), labels (N,) -> (per-position frame, summary, split).

    The posterior is encoded once; context, target and the floor's two samples are independent posterior
    samples drawn from `params.seed`; the flow head's noise from its own generator (same seed)."""
    ev = params.evaluation
    moments = encode_moments(vae, images, ev.batch_size, device)  # (N, L, P)
    z_ctx, z_tgt, z_a, z_b = posterior_draws(vae.sample, moments, 4, params.seed)  # (N, L, d) each
    generator = torch.Generator(device=device).manual_seed(params.seed)
    label_tensor = torch.as_tensor(labels, device=device)

    def predict(z: torch.Tensor) -> torch.Tensor:
        return teacher_forced_predictions(model, z, label_tensor, steps=ev.diagnostic_steps, generator=generator)

    split = teacher_forced_split(predict, z_ctx, z_tgt, z_a, z_b)
    return split_frame(split), split_summary(split), split


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
    recons = reconstruct_decodes(vae, real, params.evaluation.batch_size, device, seed=params.seed)
    rec = reconstruction_metrics_by_decode(real, recons, extractors, lpips, params.evaluation.batch_size)
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
                                     "reference_sources": {tag: ref.source for tag, ref in references.items()},
                                     "recon_images": int(len(real)), "teacher_forced_images": int(len(held_out[0]))})

    name, tags = mlflow_run(params, "eval", posterior, "evaluate")
    tags["sphereard.evaluates_run"] = gen_meta.get("mlflow_run_id") or ""
    # the settings of the samples evaluated, under the sweep trials' names (cfg_scale, projection, radius, ...)
    logged = {"posterior": posterior, **sampling_kwargs(params.sampling, posterior, vae.radius),
              "num_samples": int(len(fake))}
    with start_run(params.tracking, ".", name, params=logged, tags=tags,
                   parent_run_id=gen_meta.get("mlflow_run_id"), data_manifest=manifest_path(params.data.out),
                   data_context="evaluation") as mlrun:
        mlrun.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)}, step=gen_meta.get("step", 0))
        for path in (evaluation_file(params, posterior, "norm_trajectory.png"),
                     evaluation_file(params, posterior, "error_split.png"), metrics_path):
            mlrun.log_artifact(path)
    log.info("evaluate %s: %s", posterior, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return metrics
