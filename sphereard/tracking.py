"""MLflow tracking: a sqlite store in the repo unless MLFLOW_TRACKING_URI is set.

The driver opens a run with `start_run(...)` (experiment created first, with its artifacts under
`<repo>/mlartifacts`, tagged with the git commit) and hands the yielded `TrackedRun` (tracking
URI + run id: picklable) to Ray workers, which log into the same run. With tracking disabled
`start_run` yields a `NullRun` whose methods do nothing, so callers never branch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from sphereard.config import TrackingConfig

# mlflow is imported where used: Ray workers that never log (rank > 0, tracking off) skip its import.

log = logging.getLogger(__name__)

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
MAX_PARAMS_PER_BATCH = 100  # MLflow's log_batch limits
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_VALUE_CHARS = 6000
GIT_TIMEOUT_S = 10


def tracking_uri(cfg: TrackingConfig, repo_root: str | Path) -> str:
    """$MLFLOW_TRACKING_URI if set, else sqlite:///<abs repo>/<cfg.store>."""
    if os.environ.get(TRACKING_URI_ENV):
        return os.environ[TRACKING_URI_ENV]
    return f"sqlite:///{(Path(repo_root) / cfg.store).resolve()}"


def artifact_location(cfg: TrackingConfig, repo_root: str | Path) -> str:
    return (Path(repo_root) / cfg.artifacts).resolve().as_uri()


def mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def ensure_experiment(name: str, uri: str, artifacts: str | None = None) -> str:
    """Experiment id of `name`, creating it (artifacts at `artifacts`) if needed; safe under races."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    client = mlflow_client(uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifacts)
    except MlflowException as err:
        if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
        return client.get_experiment_by_name(name).experiment_id


def git_commit(repo_root: str | Path) -> str | None:
    """HEAD's commit hash, or None outside a git repo / before the first commit."""
    try:
        out = subprocess.run(["git", "-C", str(repo_root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=GIT_TIMEOUT_S, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}, values cut to MLflow's length limit."""
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_VALUE_CHARS]
    return flat


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


@dataclass(frozen=True)
class TrackedRun:
    """Handle on one MLflow run, usable from any process that can reach `uri`."""

    uri: str
    run_id: str
    enabled = True

    @cached_property
    def client(self):
        return mlflow_client(self.uri)

    def __getstate__(self) -> dict:  # the cached client stays behind when sent to Ray workers
        return {"uri": self.uri, "run_id": self.run_id}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        for chunk in _chunks(rows, MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=chunk)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        rows = [Param(k, v) for k, v in flatten_params(params).items()]
        for chunk in _chunks(rows, MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=chunk)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_image_grid(self, images: torch.Tensor, name: str, step: int, nrow: int | None = None,
                       value_range: tuple[float, float] = (0.0, 1.0)) -> None:
        """(B, C, H, W) images in `value_range` -> one PNG grid at `samples/<name>/step-XXXXXXXX.png`."""
        self.client.log_image(self.run_id, image_grid(images, nrow, value_range),
                              artifact_file=f"samples/{name}/step-{step:08d}.png")


class NullRun:
    """Tracking disabled: every logging call is a no-op."""

    enabled = False
    run_id = None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_image_grid(self, images: torch.Tensor, name: str, step: int, nrow: int | None = None,
                       value_range: tuple[float, float] = (0.0, 1.0)) -> None: ...


Run = TrackedRun | NullRun


def image_grid(images: torch.Tensor, nrow: int | None = None, value_range: tuple[float, float] = (0.0, 1.0)):
    """torchvision `make_grid` of (B, C, H, W) images -> a PIL image (uint8, values clamped)."""
    from torchvision.transforms.functional import to_pil_image
    from torchvision.utils import make_grid

    assert images.ndim == 4, "images must be (B, C, H, W)"
    images = images.detach().float().cpu()
    nrow = nrow or max(1, round(images.shape[0] ** 0.5))
    grid = make_grid(images, nrow=nrow, normalize=True, value_range=value_range)  # (C, H', W') in [0, 1]
    return to_pil_image(grid.clamp(0, 1))


def parent_in(client, run_id: str, experiment_id: str, uri: str) -> bool:
    """Whether `run_id` exists in this store and experiment (a run can only nest under such a parent);
    otherwise one warning naming the missing run id."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.get_run(run_id).info.experiment_id == experiment_id
    except MlflowException:
        found = False
    if not found:
        log.warning("MLflow parent run %s is not in experiment %s of %s: logging this run un-nested",
                    run_id, experiment_id, uri)
    return found


@contextlib.contextmanager
def start_run(cfg: TrackingConfig, repo_root: str | Path, run_name: str, params: Mapping[str, Any] | None = None,
              tags: Mapping[str, str] | None = None, parent_run_id: str | None = None,
              enabled: bool = True) -> Iterator[Run]:
    """Open an MLflow run on the driver; it ends FINISHED, or FAILED if the block raises.

    Pass the yielded run to workers (it pickles as uri + run_id). `parent_run_id` nests it (sweeps,
    evaluation under training) when that run exists in the same store and experiment; otherwise the
    run is logged un-nested with one warning naming the missing id."""
    from mlflow.entities import RunStatus
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID

    if not (enabled and cfg.enabled):
        yield NullRun()
        return
    uri = tracking_uri(cfg, repo_root)
    experiment_id = ensure_experiment(cfg.experiment, uri, artifact_location(cfg, repo_root))
    all_tags = dict(tags or {})
    if commit := git_commit(repo_root):
        all_tags[MLFLOW_GIT_COMMIT] = commit
    client = mlflow_client(uri)
    if parent_run_id and parent_in(client, parent_run_id, experiment_id, uri):
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    info = client.create_run(experiment_id, run_name=run_name, tags=all_tags).info
    run = TrackedRun(uri, info.run_id)
    log.info("MLflow run %s (%s) in %s", run_name, info.run_id, uri)
    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        if params:
            run.log_params(params)
        yield run
        status = RunStatus.to_string(RunStatus.FINISHED)
    except KeyboardInterrupt:
        status = RunStatus.to_string(RunStatus.KILLED)
        raise
    finally:
        client.set_terminated(info.run_id, status)
