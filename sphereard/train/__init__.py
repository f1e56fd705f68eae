"""Shared training infrastructure: Ray Train launcher, generic loop, atomic checkpoints, optim/EMA."""

from sphereard.train.checkpoint import Checkpoint, load_checkpoint, load_latest, load_weights, save_checkpoint
from sphereard.train.launch import TrainingError, fit, run_training
from sphereard.train.loop import LoopSpec, StepContext, TrainTask, train_loop_per_worker
from sphereard.train.optim import build_ema, build_optimizer, build_scheduler, clip_grad, optimizer_step

__all__ = [
    "Checkpoint", "load_checkpoint", "load_latest", "load_weights", "save_checkpoint",
    "TrainingError", "fit", "run_training",
    "LoopSpec", "StepContext", "TrainTask", "train_loop_per_worker",
    "build_ema", "build_optimizer", "build_scheduler", "clip_grad", "optimizer_step",
]
