"""MLflow tracking: a sqlite store in the repo unless MLFLOW_TRACKING_URI is set.

The driver opens a run with `start_run(...)` (experiment created first, with its artifacts under
`<repo>/mlartifacts`, tagged with the git commit) and hands the yielded `TrackedRun` (tracking
URI + run id: picklable) to Ray workers, which log into the same run. With tracking disabled
`start_run` yields a `NullRun` whose methods do nothing, so callers never branch.

What goes where, through MLflow 3.17's own APIs (docs/mlflow.md has the list per run):
- images: `MlflowClient.log_image(run_id, image, key=<name>, step=<step>)`, the time-stepped form whose
  files the UI's image step slider reads (`images/<key>+step+<step>+timestamp+...png` and a `.webp`);
- system metrics (`start_run(system_metrics=True)`, the training runs): MLflow's `SystemMetricsMonitor`
  for that run id, sampling every `SYSTEM_METRICS_INTERVAL_S` (`system/cpu_utilization_percentage`,
  memory, disk, network; GPU with pynvml), stopped and flushed before the run is terminated;
- the data manifest (`start_run(data_manifest=..., data_context=...)`): a dataset input of the run
  (`MlflowClient.log_inputs`), context `training` or `evaluation`, digest from the manifest's sha256;
- params and metrics go through `MlflowClient.log_batch`, which splits into MLflow's per-request limits
  itself; the store truncates over-long param values (MLFLOW_TRUNCATE_LONG_VALUES, on by default).

The experiment is also set up for the MLflow UI (`setup_experiment_ui`, applied whenever a run
starts, so an experiment created before this existed is upgraded by the next stage): it is tagged as
a model-training experiment and carries a saved runs-table view with the headline metrics and the
settings that distinguish runs as columns. `ui_url` is the address that opens it (`make ui` prints it);
docs/mlflow.md explains what MLflow 3.17's UI reads and why a URL is still needed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from sphereard.config import TrackingConfig

# mlflow is imported where used: Ray workers that never log (rank > 0, tracking off) skip its import.

log = logging.getLogger(__name__)

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
GIT_TIMEOUT_S = 10
# System metrics of training runs: one sample every 10 s (MLflow's default) gives a few dozen points for
# a minutes-long CPU run; MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL (mlflow.set_system_metrics_sampling_interval)
# overrides it.
SYSTEM_METRICS_INTERVAL_S = 10.0
# A dataset digest is at most 36 characters in MLflow's store (MAX_DATASET_DIGEST_SIZE): the manifest's
# sha256 cut to 16 hex digits; the whole sha256 is the dataset input's tag `sha256`.
DATASET_DIGEST_CHARS = 16
DATA_CONTEXTS = ("training", "evaluation")

# MLflow UI set-up, checked against the UI bundled with mlflow 3.17 (mlflow/server/js/build/static/js;
# docs/mlflow.md has the details). The experiment kind its experiment-type selector writes: MLflow 3.x UIs
# without the GenAI / Model-training switch open a "custom_model_development" experiment on its Runs tab.
# 3.17's UI has the switch (per browser, GenAI unless chosen) and lands where it points instead.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# A saved runs-table view is the experiment tag `mlflow.sharedViewState.<id>` holding the JSON envelope
# {name, createdAt, updatedAt, state}, `state` being the JSON of the view's search facets and table state;
# the UI lists it under "Views" and opens it from `#/experiments/<id>/runs?viewStateShareKey=<id>`.
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
RUNS_VIEW_ID = "sphereard-headline"
RUNS_VIEW_NAME = "sphereard: headline metrics and settings"
# The URL parameter that sets 3.17's switch to Model training for the page it opens.
WORKFLOW_TYPE_PARAM = "workflowType=machine_learning"
# Runs-table columns, left to right, with widths (px): the settings that tell runs apart, the headline
# metrics, then the less telling settings (docs/mlflow.md lists which run family logs which).
# `posterior` and `seed` (the run of `seeds`) are tags on every per-run stage's run.
VIEW_COLUMNS = (
    ("tags", "posterior", 110), ("tags", "seed", 50),
    ("params", "cfg_scale", 80), ("params", "projection", 85),  # sweep trials, sample- and eval-<posterior>-seed<k>
    ("metrics", "fd_classifier", 110),  # eval-<posterior>-seed<k>, sweep trials
    ("metrics", "precision_classifier", 105), ("metrics", "recall_classifier", 105),
    ("metrics", "class_consistency_classifier", 110),
    ("metrics", "recon/psnr_sample", 115), ("metrics", "recon/ssim_sample", 115),  # vae-*: decode(sample)
    ("metrics", "train/loss", 95),  # vae-, ar-<posterior>-seed<k>
    ("metrics", "final/ema_loss", 110),  # ar-<posterior>-seed<k>
    ("metrics", "classifier/test_accuracy", 125),  # classifier
    ("params", "radius", 70),  # sweep trials, sample-, eval-<posterior>-seed<k>
)
# ids and widths of the runs table's fixed columns (run name: wide enough for a trial's)
FIXED_COLUMNS = {"attributes.`Run Name`": 260, "runDateAndNestInfo": 130, "duration": 75}


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
    """Experiment id of `name`, creating it (artifacts at `artifacts`) if needed; safe under races.
    Also sets it up for the UI (`setup_experiment_ui`), upgrading an experiment made before that existed."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    client = mlflow_client(uri)
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            experiment_id = client.create_experiment(name, artifact_location=artifacts)
        except MlflowException as err:
            if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
            found = client.get_experiment_by_name(name)
        else:
            found = client.get_experiment(experiment_id)
    setup_experiment_ui(client, found)
    return found.experiment_id


def _column(kind: str, key: str) -> str:
    """The UI's column id: `metrics.`fd_classifier`` (its makeCanonicalSortKey)."""
    return f"{kind}.`{key}`"


def runs_view_state() -> dict:
    """The saved view's state (the UI's search facets + table state; keys left out keep its defaults).

    Sorted by end time, newest first: the UI nests child runs (eval under ar, trials under the sweep)
    only when sorting by start time, and collapsed children would hide the evaluation metrics."""
    columns = {_column(kind, key): width for kind, key, width in VIEW_COLUMNS}
    return {"searchFilter": "", "orderByKey": _column("attributes", "end_time"), "orderByAsc": False,
            "startTime": "ALL", "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
            "selectedColumns": list(columns), "columnOrder": [*FIXED_COLUMNS, *columns],
            "columnWidths": {**FIXED_COLUMNS, **columns}}


def _view_tag_value(created_ms: int) -> str:
    return json.dumps({"name": RUNS_VIEW_NAME, "createdAt": created_ms, "updatedAt": created_ms,
                       "state": json.dumps(runs_view_state())})


def _view_is_current(value: str | None) -> bool:
    try:
        envelope = json.loads(value or "")
        return envelope["name"] == RUNS_VIEW_NAME and json.loads(envelope["state"]) == runs_view_state()
    except (ValueError, KeyError, TypeError):
        return False


def setup_experiment_ui(client, experiment) -> None:
    """Tag `experiment` (an mlflow Experiment) for the UI: model-training kind and the saved runs view.

    Idempotent: writes only tags that are missing or differ, so an experiment made before this existed
    is upgraded on the next run, and an edited copy of the view is put back (save a new view to keep
    one of your own)."""
    if experiment.lifecycle_stage != "active":  # MLflow refuses tags on a deleted experiment
        return
    tags = experiment.tags or {}
    if tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    view_tag = VIEW_TAG_PREFIX + RUNS_VIEW_ID
    if not _view_is_current(tags.get(view_tag)):
        client.set_experiment_tag(experiment.experiment_id, view_tag, _view_tag_value(int(time.time() * 1000)))


def ui_url(experiment_id: str, base: str = "http://127.0.0.1:5000") -> str:
    """The MLflow UI address of the experiment's runs table in the saved headline view."""
    return (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?{WORKFLOW_TYPE_PARAM}&viewStateShareKey={RUNS_VIEW_ID}")


def git_commit(repo_root: str | Path) -> str | None:
    """HEAD's commit hash, or None outside a git repo / before the first commit."""
    try:
        out = subprocess.run(["git", "-C", str(repo_root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=GIT_TIMEOUT_S, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"} (MLflow's store cuts over-long values to its limit)."""
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


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
        """One `log_batch` call: the client splits it into MLflow's per-request limits."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, float(value), now, step)
                                                    for key, value in metrics.items()])

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in flatten_params(params).items()])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_image_grid(self, images: torch.Tensor, name: str, step: int, nrow: int | None = None,
                       value_range: tuple[float, float] = (0.0, 1.0)) -> None:
        """(B, C, H, W) images in `value_range` -> one grid, logged as the image `name` at `step`."""
        self.log_image(image_grid(images, nrow, value_range), name, step)

    def log_image(self, image, name: str, step: int) -> None:
        """A PIL image (e.g. a class-labelled grid) -> MLflow's time-stepped image `name` at `step`
        (`images/<name>+step+<step>+...png` in the run's artifacts: the UI's image step slider)."""
        self.client.log_image(self.run_id, image, key=name, step=step)


# The full-size file `MlflowClient.log_image(key=, step=)` writes (mlflow/tracking/client.py, 3.17): "/" in the
# key is written "~"; beside it a "+compressed.webp" copy for the UI's thumbnails.
IMAGE_FILE_RE = re.compile(r"(?P<key>.+)\+step\+(?P<step>\d+)\+timestamp\+\d+\+[0-9a-f-]+\.png")


def logged_images(client, run_id: str) -> dict[str, list[int]]:
    """{image key: sorted steps} of the time-stepped images of a run (its `images/` artifacts)."""
    found: dict[str, list[int]] = {}
    for item in client.list_artifacts(run_id, "images"):
        if match := IMAGE_FILE_RE.fullmatch(Path(item.path).name):
            found.setdefault(match["key"].replace("~", "/"), []).append(int(match["step"]))
    return {key: sorted(steps) for key, steps in found.items()}


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
    def log_image(self, image, name: str, step: int) -> None: ...


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


def manifest_dataset_input(path: str | Path, context: str):
    """The data manifest `path` (`data.out/manifest.json`) as an MLflow DatasetInput with `context`
    (its `mlflow.data.context` tag): a MetaDataset named after the manifest's `source` whose source is the
    manifest file, digest its sha256 (cut to DATASET_DIGEST_CHARS; the whole one is the input tag `sha256`),
    profile the manifest's counts."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    from sphereard.utils.io import sha256_file

    assert context in DATA_CONTEXTS, context
    path = Path(path).resolve()
    sha256 = sha256_file(path)
    try:
        manifest = json.loads(path.read_text())
        profile = {key: manifest[key] for key in ("image_size", "channels", "num_classes") if key in manifest}
        profile["rows"] = {split: info.get("rows") for split, info in (manifest.get("splits") or {}).items()}
        name = str(manifest.get("source") or path.parent.name)
    except (ValueError, AttributeError, TypeError):  # not the JSON object `prepare` writes: name and hash only
        profile, name = None, path.parent.name
    meta = MetaDataset(LocalArtifactDatasetSource(str(path)), name=name, digest=sha256[:DATASET_DIGEST_CHARS])
    dataset = Dataset(**meta.to_dict(), profile=json.dumps(profile) if profile else None)
    return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context), InputTag("sha256", sha256)])


def start_system_metrics(run_id: str, uri: str):
    """MLflow's SystemMetricsMonitor for `run_id` in `uri`, started (a daemon thread that samples every
    SYSTEM_METRICS_INTERVAL_S, or MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL); None, with a warning, when
    it cannot start (psutil missing). Stop it with `.finish()` (joins the thread, flushes) before the
    run is terminated. It is what `mlflow.start_run(log_system_metrics=True)` starts, given the run id
    and store instead of the fluent API's active run."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, tracking_uri=uri)
        monitor.start()
    except Exception as err:  # noqa: BLE001 - system metrics are an extra; the run goes on without them
        log.warning("MLflow system metrics not logged for run %s: %s", run_id, err)
        return None
    return monitor


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
              enabled: bool = True, system_metrics: bool = False, data_manifest: str | Path | None = None,
              data_context: str = "training") -> Iterator[Run]:
    """Open an MLflow run on the driver; it ends FINISHED, or FAILED if the block raises.

    Pass the yielded run to workers (it pickles as uri + run_id). `parent_run_id` nests it (sweeps,
    evaluation under training) when that run exists in the same store and experiment; otherwise the
    run is logged un-nested with one warning naming the missing id. `system_metrics` samples CPU,
    memory, disk, network (and GPU) metrics of this machine into the run while it is open (the training
    runs). `data_manifest` (the prepared data's manifest.json) is logged as the run's dataset input
    with `data_context` ("training" or "evaluation"); a missing file is skipped with a warning."""
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
    monitor = start_system_metrics(info.run_id, uri) if system_metrics else None
    try:
        if params:
            run.log_params(params)
        if data_manifest is not None:
            if Path(data_manifest).is_file():
                client.log_inputs(info.run_id, datasets=[manifest_dataset_input(data_manifest, data_context)])
            else:
                log.warning("%s: data manifest missing; run %s has no dataset input", data_manifest, run_name)
        yield run
        status = RunStatus.to_string(RunStatus.FINISHED)
    except KeyboardInterrupt:
        status = RunStatus.to_string(RunStatus.KILLED)
        raise
    finally:
        if monitor is not None:  # its thread is joined and its last samples flushed while the run is open
            monitor.finish()
        client.set_terminated(info.run_id, status)


def main(argv: list[str] | None = None) -> None:
    """`python -m sphereard.tracking`: set up the experiment of the params file's `tracking` block in its
    store (created if missing, upgraded otherwise); print the UI address of its runs view on stderr and
    the store URI on stdout (`make ui` starts the UI on that URI)."""
    import argparse
    import sys

    from sphereard.config import DEFAULT_PARAMS_FILE, read_yaml
    from sphereard.config_errors import validated

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--params", default=DEFAULT_PARAMS_FILE)
    parser.add_argument("--base", default="http://127.0.0.1:5000", help="where the UI is served")
    args = parser.parse_args(argv)
    cfg = validated(TrackingConfig, read_yaml(args.params).get("tracking") or {}, "tracking")
    repo_root = Path(args.params).resolve().parent
    uri = tracking_uri(cfg, repo_root)
    experiment_id = ensure_experiment(cfg.experiment, uri, artifact_location(cfg, repo_root))
    print(f"MLflow experiment {cfg.experiment!r} (id {experiment_id}) in {uri}.\n"
          f"Open its runs table with the headline metrics and settings (docs/mlflow.md) once the UI is up:\n"
          f"  {ui_url(experiment_id, args.base)}", file=sys.stderr)
    print(uri)


if __name__ == "__main__":
    main()
