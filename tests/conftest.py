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


def cuda_available() -> bool:
    return torch.cuda.is_available()


requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
