"""Evaluation: feature extractors (torch-fidelity), generation / reconstruction metrics, ADM interop,
latent-geometry diagnostics. Metric keys always carry their feature extractor (`metric_name`)."""

from sphereard.utils.lazy import lazy_exports

_EXPORTS = {  # public name -> submodule defining it (imported on first use)
    "adm_ref_stats": "adm", "load_adm_npz": "adm", "load_samples_npz": "adm", "save_samples_npz": "adm",
    "SmallCNN": "classifier", "load_classifier": "classifier", "save_classifier": "classifier",
    "train_classifier": "classifier",
    "NormDrift": "diagnostics", "detect_norm_drift": "diagnostics", "norm_trajectory": "diagnostics",
    "plot_error_split": "diagnostics",
    "plot_norm_trajectories": "diagnostics", "radial_fraction": "diagnostics",
    "radial_tangential_error": "diagnostics", "radial_tangential_floor": "diagnostics",
    "EXTRACTORS": "extractors", "INCEPTION_WEIGHTS_ENV": "extractors", "build_extractor": "extractors",
    "extract_features": "extractors", "metric_name": "names",
    "RefStats": "metrics", "compute_ref_stats": "metrics", "frechet_distance": "metrics",
    "generation_metric_keys": "metrics", "generation_metrics": "metrics", "load_ref_stats": "metrics",
    "save_ref_stats": "metrics",
    "psnr": "reconstruction", "reconstruction_metrics": "reconstruction",
    "reconstruction_metrics_by_decode": "reconstruction", "ssim": "reconstruction",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
