"""sphereard.tracking on MLflow 3.17's own APIs, against a sqlite store in tmp_path.

Images are MLflow's time-stepped images (`log_image(key=, step=)`, the UI's step slider); training runs
record system metrics (MLflow's SystemMetricsMonitor, stopped before the run ends); the data manifest
is a dataset input of the run; params and metrics go to `log_batch` unsplit (the client splits them);
under ASHA each interim AR loss is a step metric of the trial run.
"""

import json
import math
import pickle
import threading
import time

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from sphereard.config import TrackingConfig
from sphereard.tracking import (
    DATASET_DIGEST_CHARS,
    SYSTEM_METRICS_INTERVAL_S,
    NullRun,
    TrackedRun,
    logged_images,
    start_run,
)
from sphereard.utils.io import sha256_file

CFG = TrackingConfig(experiment="mlflow-api")
MONITOR_THREAD = "SystemMetricsMonitor"  # the thread name mlflow's monitor gives its sampler
CPU_METRIC = "system/cpu_utilization_percentage"


def write_manifest(root):
    """data.out/manifest.json as `prepare` writes it (shards listed, not read)."""
    path = root / "data" / "manifest.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({
        "format_version": 1, "source": "fashion_mnist", "image_size": 32, "channels": 1, "num_classes": 2,
        "classes": ["T-shirt/top", "Trouser"],
        "splits": {"train": {"rows": 40, "shards": []}, "test": {"rows": 4, "shards": []}}}, indent=2))
    return path


def monitor_threads():
    return [t for t in threading.enumerate() if t.name == MONITOR_THREAD and t.is_alive()]


@pytest.fixture
def fast_system_metrics():
    """System metrics sampled every 0.1 s, through MLflow's public setter (reset afterwards)."""
    mlflow.set_system_metrics_sampling_interval(0.1)
    yield
    mlflow.set_system_metrics_sampling_interval(None)


def test_images_are_logged_under_their_key_and_step(tmp_path, mlflow_uri):
    with start_run(CFG, tmp_path, "images") as run:
        for step in (10, 20):
            run.log_image_grid(torch.rand(4, 1, 8, 8) * 2 - 1, "reconstructions", step, value_range=(-1.0, 1.0))
        run.log_image(Image.new("RGB", (6, 6)), "generated", 5)
    client = MlflowClient(mlflow_uri)
    assert logged_images(client, run.run_id) == {"reconstructions": [10, 20], "generated": [5]}
    files = [f.path for f in client.list_artifacts(run.run_id, "images")]
    assert len(files) == 6 and sum(f.endswith("+compressed.webp") for f in files) == 3  # thumbnails for the UI
    assert client.get_run(run.run_id).data.tags["mlflow.loggedImages"] == "True"
    assert not client.list_artifacts(run.run_id, "samples"), "no hand-made samples/<name>/step-*.png any more"


def test_a_training_run_records_system_metrics_and_leaves_no_thread(tmp_path, mlflow_uri, fast_system_metrics):
    assert SYSTEM_METRICS_INTERVAL_S == 10.0  # the stages' interval (docs/mlflow.md); the fixture shortens it
    before = monitor_threads()
    with start_run(CFG, tmp_path, "vae-spherical", system_metrics=True) as run:
        assert len(monitor_threads()) == len(before) + 1
        time.sleep(0.6)
    assert monitor_threads() == before, "the monitor's thread is joined when the run ends"
    client = MlflowClient(mlflow_uri)
    data = client.get_run(run.run_id)
    assert data.info.status == "FINISHED"
    assert CPU_METRIC in data.data.metrics and "system/system_memory_usage_megabytes" in data.data.metrics
    logged = len(client.get_metric_history(run.run_id, CPU_METRIC))
    time.sleep(0.3)
    assert len(client.get_metric_history(run.run_id, CPU_METRIC)) == logged >= 1, "nothing written after the end"

    with start_run(CFG, tmp_path, "sample-spherical") as plain:  # off unless asked for
        time.sleep(0.3)
    assert not [k for k in client.get_run(plain.run_id).data.metrics if k.startswith("system/")]


def test_a_failing_run_stops_its_monitor_too(tmp_path, mlflow_uri, fast_system_metrics):
    before = monitor_threads()
    with pytest.raises(RuntimeError, match="boom"), start_run(CFG, tmp_path, "ar-gaussian", system_metrics=True) as run:
        raise RuntimeError("boom")
    assert monitor_threads() == before
    assert MlflowClient(mlflow_uri).get_run(run.run_id).info.status == "FAILED"


@pytest.mark.parametrize("context", ["training", "evaluation"])
def test_the_data_manifest_is_the_runs_dataset_input(tmp_path, mlflow_uri, context):
    manifest = write_manifest(tmp_path)
    sha = sha256_file(manifest)
    with start_run(CFG, tmp_path, f"run-{context}", data_manifest=manifest, data_context=context) as run:
        pass
    data = MlflowClient(mlflow_uri).get_run(run.run_id)
    (data_input,) = data.inputs.dataset_inputs
    dataset = data_input.dataset
    assert (dataset.name, dataset.digest) == ("fashion_mnist", sha[:DATASET_DIGEST_CHARS])
    assert dataset.source_type == "local"
    # MLflow keeps one dataset per (name, digest) in an experiment: its source is where it was first logged
    assert json.loads(dataset.source)["uri"].endswith("/data/manifest.json")
    assert json.loads(dataset.profile) == {"image_size": 32, "channels": 1, "num_classes": 2,
                                           "rows": {"train": 40, "test": 4}}
    assert {t.key: t.value for t in data_input.tags} == {"mlflow.data.context": context, "sha256": sha}
    assert not any("manifest" in key for key in data.data.tags), "a dataset input, no longer a run tag"


def test_a_missing_manifest_leaves_the_run_without_input(tmp_path, mlflow_uri, caplog):
    missing = tmp_path / "nowhere" / "manifest.json"
    with start_run(CFG, tmp_path, "no-data", data_manifest=missing) as run:
        pass
    assert not MlflowClient(mlflow_uri).get_run(run.run_id).inputs.dataset_inputs
    assert any(str(missing) in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def test_tracking_off_ignores_the_extras(tmp_path, fast_system_metrics):
    before = monitor_threads()
    with start_run(CFG, tmp_path, "off", enabled=False, system_metrics=True,
                   data_manifest=write_manifest(tmp_path)) as run:
        assert isinstance(run, NullRun) and monitor_threads() == before
        run.log_image(Image.new("RGB", (2, 2)), "generated", 1)
        run.log_image_grid(torch.rand(2, 1, 4, 4), "reconstructions", 1)
    assert not (tmp_path / "mlflow.db").exists()


def test_log_batch_splits_and_truncates_itself(tmp_path, mlflow_uri):
    """One log_batch call per log_metrics / log_params: MLflow's client splits beyond its per-request
    limits (1000 metrics, 100 params) and its store cuts param values to 6000 characters."""
    metrics = {f"m/{i}": float(i) for i in range(2500)}
    params = {"group": {f"p{i}": i for i in range(250)}, "long": "x" * 7000}
    with start_run(CFG, tmp_path, "batch", params=params) as run:
        run.log_metrics(metrics, step=3)
        restored = pickle.loads(pickle.dumps(run))  # what a Ray worker gets: uri + run id
        restored.log_metrics({"worker/loss": 0.5}, step=4)
    assert isinstance(restored, TrackedRun) and "client" not in pickle.loads(pickle.dumps(run)).__dict__
    data = MlflowClient(mlflow_uri).get_run(run.run_id).data
    assert {k: v for k, v in data.metrics.items() if k.startswith("m/")} == metrics
    assert data.metrics["worker/loss"] == 0.5
    assert len(data.params) == 251 and data.params["group.p249"] == "249"
    assert data.params["long"] == "x" * 6000


class Recorder:
    """A run recording (metrics, step) like TrackedRun.log_metrics."""

    enabled, run_id = True, "trial-1"

    def __init__(self):
        self.logged = []

    def log_metrics(self, metrics, step):
        self.logged.append((metrics, step))


def test_asha_reports_are_step_metrics_of_the_trial_run(tmp_path, mlflow_uri, monkeypatch):
    from sphereard.sweep import trial

    reported = []
    monkeypatch.setattr(trial.tune, "report", lambda metrics: reported.append(metrics))
    run = Recorder()
    for end, loss in ((10, 2.5), (20, None), (30, float("nan")), (40, 1.25)):
        trial.report_segment(run, end, loss, final=end == 40)
    assert run.logged == [({trial.ASHA_CURVE_METRIC: 2.5}, 10), ({trial.ASHA_CURVE_METRIC: 1.25}, 40)]
    assert [r["ar_step"] for r in reported] == [10, 20, 30], "the final loss goes to Tune with the trial's metrics"
    assert reported[0] == {trial.ASHA_METRIC: 2.5, "ar_step": 10, "mlflow_run_id": "trial-1"}
    assert all(math.isnan(r[trial.ASHA_METRIC]) for r in reported[1:])

    reported.clear()
    with start_run(CFG, tmp_path, "trial") as tracked:
        trial.report_segment(tracked, 15, 3.0, final=False)
        trial.report_segment(tracked, 30, 2.0, final=True)
    history = MlflowClient(mlflow_uri).get_metric_history(tracked.run_id, trial.ASHA_CURVE_METRIC)
    assert [(m.step, m.value) for m in history] == [(15, 3.0), (30, 2.0)]
    assert reported == [{trial.ASHA_METRIC: 3.0, "ar_step": 15, "mlflow_run_id": tracked.run_id}]
    trial.report_segment(NullRun(), 15, 3.0, final=True)  # tracking off: nothing logged, no branch
