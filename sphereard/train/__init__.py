"""Shared training infrastructure: Ray Train launcher, generic loop, atomic checkpoints, optim/EMA."""

from sphereard.utils.lazy import lazy_exports

_EXPORTS = {  # public name -> submodule defining it (imported on first use)
    "Checkpoint": "checkpoint", "load_checkpoint": "checkpoint", "load_latest": "checkpoint",
    "load_weights": "checkpoint", "save_checkpoint": "checkpoint",
    "TrainingError": "launch", "fit": "launch", "run_training": "launch",
    "LoopSpec": "loop", "StepContext": "loop", "TrainTask": "loop", "train_loop_per_worker": "loop",
    "build_ema": "optim", "build_optimizer": "optim", "build_scheduler": "optim", "clip_grad": "optim",
    "optimizer_step": "optim",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
