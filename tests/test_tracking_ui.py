"""The MLflow experiment is set up so the UI opens on the runs table with the headline columns.

What the UI reads is pinned in sphereard/tracking.py (checked against the UI bundled with the installed
mlflow; docs/mlflow.md): the `mlflow.experimentKind` tag, and a saved view in the experiment tag
`mlflow.sharedViewState.<id>` opened by `#/experiments/<id>/runs?workflowType=...&viewStateShareKey=<id>`.
"""

import json
import re
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from sphereard import tracking
from sphereard.config import TrackingConfig
from sphereard.tracking import ensure_experiment, start_run

KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
VIEW_PREFIX = "mlflow.sharedViewState."
# State keys the UI's saved-view loader takes (search facets + table state); it drops the per-user keys.
UI_FACET_KEYS = {"searchFilter", "orderByKey", "orderByAsc", "startTime", "lifecycleFilter", "modelVersionFilter",
                 "datasetsFilter"}
UI_TABLE_KEYS = {"selectedColumns", "columnOrder", "columnWidths", "runsHiddenMode", "compareRunCharts",
                 "compareRunSections", "viewMaximized", "runListHidden", "isAccordionReordered", "groupBy",
                 "groupsExpanded", "useGroupedValuesInCharts", "hideEmptyCharts", "globalLineChartConfig",
                 "chartsSearchFilter"}
UI_JS = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"


def saved_views(tags: dict) -> dict[str, dict]:
    """{view id: envelope with its state parsed}, read as the UI reads them (name, createdAt, state)."""
    views = {}
    for key, value in tags.items():
        if key.startswith(VIEW_PREFIX):
            envelope = json.loads(value)
            assert isinstance(envelope["name"], str) and isinstance(envelope["createdAt"], int)
            assert len(value) <= 20000, "MLflow and the UI cap an experiment tag / saved view at 20000 chars"
            views[key.removeprefix(VIEW_PREFIX)] = {**envelope, "state": json.loads(envelope["state"])}
    return views


def assert_set_up_for_the_ui(tags: dict) -> dict:
    assert tags.get(KIND_TAG) == KIND
    views = saved_views(tags)
    assert list(views) == [tracking.RUNS_VIEW_ID]
    state = views[tracking.RUNS_VIEW_ID]["state"]
    assert set(state) <= UI_FACET_KEYS | UI_TABLE_KEYS, set(state) - UI_FACET_KEYS - UI_TABLE_KEYS
    columns = state["selectedColumns"]
    for column in ("tags.`posterior`", "params.`cfg_scale`", "params.`projection`", "metrics.`fd_classifier`",
                   "metrics.`recon/psnr_sample`", "metrics.`train/loss`", "metrics.`classifier/test_accuracy`"):
        assert column in columns
    assert state["columnOrder"][0] == "attributes.`Run Name`" and set(columns) <= set(state["columnOrder"])
    # the UI nests child runs (collapsed) when sorting by start time: the eval runs' metrics would hide
    assert "end_time" in state["orderByKey"] and state["searchFilter"] == ""
    return views


def test_a_new_experiment_is_set_up_to_open_on_the_runs_view(tmp_path, mlflow_uri):
    with start_run(TrackingConfig(experiment="ui-new"), tmp_path, "vae-spherical") as run:
        pass
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment(client.get_run(run.run_id).info.experiment_id)
    assert_set_up_for_the_ui(experiment.tags)
    url = tracking.ui_url(experiment.experiment_id, "http://127.0.0.1:5000/")
    assert url == (f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs"
                   f"?workflowType=machine_learning&viewStateShareKey={tracking.RUNS_VIEW_ID}")


def test_an_existing_experiment_is_upgraded_once_and_keeps_its_other_tags(mlflow_uri):
    client = MlflowClient(mlflow_uri)
    old_id = client.create_experiment("ui-old", tags={"owner": "me"})  # as made before the UI set-up
    stale = json.dumps({"name": "edited", "createdAt": 1, "updatedAt": 1, "state": json.dumps({"searchFilter": ""})})
    client.set_experiment_tag(old_id, VIEW_PREFIX + tracking.RUNS_VIEW_ID, stale)
    client.set_experiment_tag(old_id, VIEW_PREFIX + "mine", stale)  # a view a user saved: left alone
    assert ensure_experiment("ui-old", mlflow_uri) == old_id
    tags = client.get_experiment(old_id).tags
    assert tags["owner"] == "me" and tags[VIEW_PREFIX + "mine"] == stale
    views = assert_set_up_for_the_ui({k: v for k, v in tags.items() if k != VIEW_PREFIX + "mine"})
    assert ensure_experiment("ui-old", mlflow_uri) == old_id  # already current: nothing rewritten
    again = saved_views(client.get_experiment(old_id).tags)[tracking.RUNS_VIEW_ID]
    assert again["createdAt"] == views[tracking.RUNS_VIEW_ID]["createdAt"]


def test_make_ui_entry_point_sets_up_the_store_and_prints_the_url(tmp_path, mlflow_uri, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("tracking:\n  experiment: ui-make\n", encoding="utf-8")
    tracking.main(["--params", str(params), "--base", "http://127.0.0.1:5000"])
    out, err = capsys.readouterr()
    assert out == f"{mlflow_uri}\n"  # `make ui` serves exactly this store
    experiment = MlflowClient(mlflow_uri).get_experiment_by_name("ui-make")
    assert tracking.ui_url(experiment.experiment_id) in err
    assert_set_up_for_the_ui(experiment.tags)


@pytest.mark.skipif(not UI_JS.is_dir(), reason="this mlflow install has no built UI")
def test_the_bundled_mlflow_ui_still_reads_these_names():
    """Guards an mlflow upgrade: the built UI must still know the tag, prefix and URL parameters used here."""
    text = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in UI_JS.glob("*.js"))
    for name in ('"mlflow.experimentKind"', f'"{VIEW_PREFIX}"', '"viewStateShareKey"', '"workflowType"',
                 f'"{KIND}"', '"machine_learning"', '"runDateAndNestInfo"'):
        assert name in text, name
    assert re.search(r'"selectedColumns","columnOrder","columnWidths"', text)
