"""Fault tolerance: a training worker process dies (SIGKILL) mid-run; Ray Train's FailureConfig
(`ray.max_failures`) restarts the worker group, which resumes from our last checkpoint and finishes.

2 local CPU workers (gloo DDP), the real TokenizerTask on smoke data.
"""

import functools
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import ray
import ray.cloudpickle
import ray.train
from smoke_helpers import two_worker_tokenizer_params

from sphereard.tokenizer.task import TokenizerTask
from sphereard.train import LoopSpec, fit, load_latest
from sphereard.train.launch import init_ray
from sphereard.train.loop import RAY_POINTER_FILE

pytestmark = pytest.mark.slow

STEPS, CKPT_EVERY, KILL_AT, KILLED_RANK = 8, 3, 4, 1  # checkpoints at 3, 6, 8; dies in step 4 -> resume at 3
KILL_MARKER = "killed.json"
REPORT_TIMEOUT_S = 60
TEST_TIMEOUT_S = 300


class DyingTokenizerTask(TokenizerTask):
    """TokenizerTask whose rank KILLED_RANK SIGKILLs its own process at step KILL_AT, once per test.

    Every rank appends one line per start (pid, Ray's restored checkpoint) and per finished step."""

    def __init__(self, params, posterior, out_dir: str):
        super().__init__(params, posterior)
        self.out = Path(out_dir)

    def _append(self, name: str, record: dict) -> None:
        with open(self.out / f"{name}-rank{self.ctx.rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def build(self, ctx):
        super().build(ctx)
        restored, ray_step = ray.train.get_checkpoint(), None
        if restored is not None:  # only after a restart by FailureConfig
            with restored.as_directory() as d:
                ray_step = json.loads((Path(d) / RAY_POINTER_FILE).read_text())["step"]
        self._append("starts", {"pid": os.getpid(), "ray_checkpoint_step": ray_step})

    def train_step(self, batch, step):
        marker = self.out / KILL_MARKER
        if step == KILL_AT and self.ctx.rank == KILLED_RANK and not marker.exists():
            # die only once Ray's controller has registered every reported checkpoint (it polls the
            # workers, so a death right after a report could otherwise beat the bookkeeping)
            reported = ray.train.get_all_reported_checkpoints(timeout_s=REPORT_TIMEOUT_S)
            marker.write_text(json.dumps({"pid": os.getpid(), "reported": [r.metrics["step"] for r in reported]}))
            os.kill(os.getpid(), signal.SIGKILL)  # marker first: the restarted group must not die again
        metrics = super().train_step(batch, step)
        self._append("steps", {"step": step, "pid": os.getpid()})
        return metrics


@pytest.fixture()
def smoke_params(tmp_path):
    return two_worker_tokenizer_params(tmp_path, STEPS, CKPT_EVERY, max_failures=1)


@pytest.fixture()
def local_ray(monkeypatch):
    """A fresh local Ray instance (never a cluster named by RAY_ADDRESS), shut down afterwards."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if ray.is_initialized():
        ray.shutdown()
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    try:
        init_ray(num_cpus_needed=2)
        yield
    finally:
        ray.shutdown()


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.timeout(TEST_TIMEOUT_S)  # a hang fails the test; the fixture still shuts Ray down
def test_killed_worker_is_restarted_and_resumes_from_last_checkpoint(smoke_params, local_ray, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    ckpt_dir = tmp_path / "ckpt"
    spec = LoopSpec(task_factory=functools.partial(DyingTokenizerTask, smoke_params, "spherical", str(out)),
                    loop=smoke_params.tokenizer.train, ckpt_dir=str(ckpt_dir), seed=0, keep_checkpoints=2)
    result = fit(spec, "test-fault-tolerance")

    killed = json.loads((out / KILL_MARKER).read_text())
    resumed = (KILL_AT // CKPT_EVERY) * CKPT_EVERY  # the last checkpoint before the failure: step 3
    assert killed["reported"] == [resumed], "Ray knew of exactly one checkpoint when the worker died"
    for rank in (0, 1):
        starts = _records(out / f"starts-rank{rank}.jsonl")
        assert [s["ray_checkpoint_step"] for s in starts] == [None, resumed], "one restart, from Ray's pointer"
        assert starts[0]["pid"] != starts[1]["pid"], "the restarted group runs in new processes"
        steps = _records(out / f"steps-rank{rank}.jsonl")
        # steps 0..3 finished, step 4 never did (rank 1 died in it, rank 0 waited on its all-reduce);
        # after the restart: steps 3..7, from the checkpoint at step 3
        assert [s["step"] for s in steps] == list(range(KILL_AT)) + list(range(resumed, STEPS))
        assert {s["pid"] for s in steps[KILL_AT:]} == {starts[1]["pid"]}
    assert killed["pid"] == _records(out / f"starts-rank{KILLED_RANK}.jsonl")[0]["pid"]
    with pytest.raises(ProcessLookupError):
        os.kill(killed["pid"], 0)  # really dead
    assert result.metrics["step"] == STEPS
    final = load_latest(ckpt_dir)
    assert final.step == STEPS and final.meta["world_size"] == 2
    assert sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir()) == ["step-00000006", "step-00000008"]
