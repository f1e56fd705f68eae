"""Ray Tune sweeps over SphereAR's ablation axes (`sweep` stage): grid expansion and trial names
(`grid`), the trial function Ray runs (`trial`), the stage's driver (`run`), result tables
(`results`) and the files it writes (`outputs`)."""

from sphereard.utils.lazy import lazy_exports

_EXPORTS = {  # public name -> submodule defining it (imported on first use)
    "SETTING_COLUMNS": "grid", "TrialSettings": "grid", "expand_grid": "grid", "format_cfg": "grid",
    "radius_label": "grid", "search_space": "grid", "segment_ends": "grid", "trial_name": "grid",
    "aggregate_over_seeds": "results", "main_metrics": "results", "results_frame": "results",
    "write_outputs": "outputs",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
