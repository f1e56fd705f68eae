"""Ray Tune sweeps over SphereAR's ablation axes (`sweep` stage): grid expansion and trial names
(`grid`), the trial function Ray runs (`trial`), result tables and plots (`results`)."""

from sphereard.sweep.grid import (SETTING_COLUMNS, TrialSettings, expand_grid, format_cfg, format_radius,
                                  search_space, segment_ends, trial_name)
from sphereard.sweep.results import aggregate_over_seeds, main_metrics, results_frame, write_outputs

__all__ = [
    "SETTING_COLUMNS", "TrialSettings", "aggregate_over_seeds", "expand_grid", "format_cfg", "format_radius",
    "main_metrics", "results_frame", "search_space", "segment_ends", "trial_name", "write_outputs",
]
