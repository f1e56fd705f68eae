"""Evaluation: feature extractors (torch-fidelity), generation / reconstruction metrics, ADM interop,
latent-geometry diagnostics. Metric keys always carry their feature extractor (`metric_name`)."""

from sphereard.eval.adm import adm_ref_stats, load_adm_npz, load_samples_npz, save_samples_npz
from sphereard.eval.classifier import SmallCNN, load_classifier, save_classifier, train_classifier
from sphereard.eval.diagnostics import (NormDrift, detect_norm_drift, norm_trajectory, plot_error_split,
                                        plot_metric_vs_cfg, plot_norm_trajectories, radial_tangential_error)
from sphereard.eval.extractors import (EXTRACTORS, INCEPTION_WEIGHTS_ENV, build_extractor, extract_features,
                                       metric_name)
from sphereard.eval.metrics import (RefStats, compute_ref_stats, frechet_distance, generation_metric_keys,
                                    generation_metrics, load_ref_stats, save_ref_stats)
from sphereard.eval.reconstruction import psnr, reconstruction_metrics, ssim

__all__ = [
    "EXTRACTORS", "INCEPTION_WEIGHTS_ENV", "NormDrift", "RefStats", "SmallCNN", "adm_ref_stats",
    "build_extractor", "compute_ref_stats", "detect_norm_drift", "extract_features", "frechet_distance",
    "generation_metric_keys", "generation_metrics", "load_adm_npz", "load_classifier", "load_ref_stats",
    "load_samples_npz", "metric_name", "norm_trajectory", "plot_error_split", "plot_metric_vs_cfg",
    "plot_norm_trajectories", "psnr", "radial_tangential_error", "reconstruction_metrics", "save_classifier",
    "save_ref_stats", "save_samples_npz", "ssim", "train_classifier",
]
