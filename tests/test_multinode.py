"""Multi-node Ray Train: a real two-node cluster on this machine over loopback runs a 2-worker tokenizer fit.

Head on 127.0.0.2, worker node on 127.0.0.3 (127.0.0.1 would be rewritten), one logical CPU each, so
the two 1-CPU training workers must land on different nodes. The driver joins through RAY_ADDRESS,
exactly as `dvc repro` does on a real cluster. Token auth (Ray 2.60) is on in every process.
"""

import ctypes
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ray
import ray.cloudpickle
from ray._raylet import Config as RayCoreConfig
from smoke_helpers import two_worker_tokenizer_params

from sphereard.tokenizer.task import TokenizerTask
from sphereard.train import LoopSpec, fit, load_latest

pytestmark = pytest.mark.slow

RAY_CLI = str(Path(sys.executable).with_name("ray"))
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
NODE_OBJECT_STORE_BYTES = 100 * 1024**2  # each node would otherwise reserve ~30% of RAM
NODE_START_TIMEOUT_S = 120
NODE_STOP_TIMEOUT_S = 5
STARTED_LINE = "Ray runtime started."
PR_SET_PDEATHSIG = 1  # linux/prctl.h
TEST_TIMEOUT_S = 300
STEPS = 4
AUTH_MODE_ENV = "RAY_AUTH_MODE"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def stop_with_parent() -> None:
    """In the child: SIGTERM it (a clean node shutdown) if pytest dies without tearing down."""
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def node_ports() -> list[str]:
    """Every port a node binds, picked free: other Ray instances may run on this machine."""
    names = ("node-manager-port", "object-manager-port", "metrics-export-port", "dashboard-agent-listen-port",
             "dashboard-agent-grpc-port", "runtime-env-agent-port")
    return [f"--{name}={free_port()}" for name in names]


class LoopbackCluster:
    """`ray start --block` per node, each in its own session; stop() ends exactly those sessions."""

    def __init__(self, root: Path, env: dict):
        self.root, self.env = root, env
        self.nodes: list[tuple[subprocess.Popen, Path]] = []
        self.gcs_port = free_port()
        self.address = f"{HEAD_IP}:{self.gcs_port}"

    def start_node(self, name: str, args: list[str]) -> None:
        log_path = self.root / f"{name}.log"
        with open(log_path, "w") as log_file:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                [RAY_CLI, "start", *args, f"--temp-dir={self.root / name}", "--num-cpus=1",
                 f"--object-store-memory={NODE_OBJECT_STORE_BYTES}", "--disable-usage-stats", "--block",
                 *node_ports()],
                env=self.env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=stop_with_parent)
        self.nodes.append((proc, log_path))
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        while STARTED_LINE not in log_path.read_text():
            assert proc.poll() is None, f"ray start ({name}) exited {proc.returncode}:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"ray start ({name}) not up in {NODE_START_TIMEOUT_S}s"
            time.sleep(0.5)

    def start(self) -> None:
        self.start_node("head", ["--head", f"--node-ip-address={HEAD_IP}", f"--port={self.gcs_port}",
                                 "--include-dashboard=false", f"--dashboard-port={free_port()}",
                                 f"--ray-client-server-port={free_port()}"])
        self.start_node("worker", [f"--address={self.address}", f"--node-ip-address={WORKER_IP}"])

    def stop(self) -> None:
        """SIGTERM each `ray start --block` (it stops its node), then SIGKILL whatever is left in its session."""
        for proc, _ in self.nodes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + NODE_STOP_TIMEOUT_S
        for proc, _ in self.nodes:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:  # a node drains for up to 30 s: no need in a test
                proc.kill()
                proc.wait()
            for pid in session_members(proc.pid):  # raylet, GCS, agents, Ray workers left behind
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def session_members(sid: int) -> list[int]:
    """Pids of live processes in session `sid`, leader excluded (our `ray start`, already reaped)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != sid:
            try:
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                pass
    return pids


def set_auth_mode_env(mode: str | None) -> None:
    """Set RAY_AUTH_MODE in this process and refresh Ray's cached config (as `ray.init` itself does)."""
    if mode is None:
        os.environ.pop(AUTH_MODE_ENV, None)
    else:
        os.environ[AUTH_MODE_ENV] = mode
    RayCoreConfig.initialize("")


@pytest.fixture()
def loopback_cluster(monkeypatch):
    """A two-node cluster; RAY_ADDRESS points at it while the test runs. Always torn down."""
    if ray.is_initialized():
        ray.shutdown()  # init_ray keeps an existing connection: this test must join the new cluster
    # Ray 2.60: a token in ~/.ray/auth_token (what a local ray.init creates) turns token auth on for
    # `ray start --head` but not for nodes/drivers joining an explicit address: force it everywhere.
    subprocess.run([RAY_CLI, "get-auth-token", "--generate"], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)  # creates a token only if none exists
    env = {**os.environ, AUTH_MODE_ENV: "token", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    root = Path(tempfile.mkdtemp(prefix="rmn", dir="/tmp"))  # short: Ray's unix socket paths live under it
    cluster = LoopbackCluster(root, env)
    auth_mode_before = os.environ.get(AUTH_MODE_ENV)
    try:
        cluster.start()
        set_auth_mode_env("token")
        monkeypatch.setenv("RAY_ADDRESS", cluster.address)
        yield cluster
    finally:
        ray.shutdown()
        set_auth_mode_env(auth_mode_before)
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


class NodeRecordingTokenizerTask(TokenizerTask):
    """TokenizerTask that writes the node each rank runs on, and the steps it trains."""

    def __init__(self, params, posterior, out_dir: str):
        super().__init__(params, posterior)
        self.out = Path(out_dir)

    def build(self, ctx):
        super().build(ctx)
        node = {"ip": ray.util.get_node_ip_address(), "node_id": ray.get_runtime_context().get_node_id(),
                "world_size": ctx.world_size}
        (self.out / f"node-rank{ctx.rank}.json").write_text(json.dumps(node))

    def train_step(self, batch, step):
        metrics = super().train_step(batch, step)
        with open(self.out / f"steps-rank{self.ctx.rank}.txt", "a") as f:
            f.write(f"{step}\n")
        return metrics


@pytest.fixture()
def smoke_params(tmp_path):
    return two_worker_tokenizer_params(tmp_path, STEPS, 2)


@pytest.mark.timeout(TEST_TIMEOUT_S)  # a hang fails the test; the fixture still stops the cluster
def test_two_node_cluster_runs_one_worker_per_node(loopback_cluster, smoke_params, tmp_path):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # cluster workers cannot import tests/
    out = tmp_path / "out"
    out.mkdir()
    ckpt_dir = tmp_path / "ckpt"
    spec = LoopSpec(task_factory=functools.partial(NodeRecordingTokenizerTask, smoke_params, "spherical", str(out)),
                    loop=smoke_params.tokenizer.train, ckpt_dir=str(ckpt_dir), seed=0)
    result = fit(spec, "test-multinode")

    # the driver joined our cluster (RAY_ADDRESS), not a fresh local instance
    nodes = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
    assert sorted(nodes.values()) == [HEAD_IP, WORKER_IP]
    placed = [json.loads((out / f"node-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert sorted(p["ip"] for p in placed) == [HEAD_IP, WORKER_IP], placed
    assert all(nodes[p["node_id"]] == p["ip"] and p["world_size"] == 2 for p in placed), (placed, nodes)
    for rank in (0, 1):  # both ranks trained every step once, in lock-step (DDP across the nodes)
        assert (out / f"steps-rank{rank}.txt").read_text().split() == [str(s) for s in range(STEPS)]
    assert result.metrics["step"] == STEPS
    final = load_latest(ckpt_dir)
    assert final.step == STEPS and final.meta["world_size"] == 2
    assert {"model", "ema", "optimizer"} <= set(final.states)
