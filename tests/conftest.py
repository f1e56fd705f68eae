"""Test-wide settings: quiet, offline, CPU-friendly."""

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.register_assert_rewrite("bad_inputs_helpers")  # its shared checks report like test assertions

TEST_TORCH_THREADS = 1  # tiny CPU models: more intra-op threads only add contention
torch.set_num_threads(TEST_TORCH_THREADS)


@pytest.fixture(autouse=True)
def torch_threads():
    """Every test starts with TEST_TORCH_THREADS, whatever an in-process stage set before it."""
    torch.set_num_threads(TEST_TORCH_THREADS)
    yield


def cuda_available() -> bool:
    return torch.cuda.is_available()


requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip cleanly where torch sees no CUDA device (CI, laptops)."""
    if torch.cuda.is_available():
        return
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(requires_gpu)


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    """A fresh sqlite MLflow store for the module, set as $MLFLOW_TRACKING_URI while it runs."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


def _tree_state(root) -> dict:
    from pathlib import Path

    root = Path(root)
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")} if root.is_dir() else {}


@pytest.fixture(scope="session", autouse=True)
def repo_metrics_untouched():
    """No test may write into the repository's git-tracked metrics folder (tests use their own roots)."""
    from pathlib import Path

    metrics = Path(__file__).resolve().parent.parent / "metrics"
    before = _tree_state(metrics)
    yield
    assert _tree_state(metrics) == before, f"a test wrote into {metrics}: give it a metrics_dir under tmp_path"
