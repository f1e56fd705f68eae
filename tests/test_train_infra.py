"""Training infrastructure: atomic checkpoints, AdamW groups + schedule, MLflow, Ray Train DDP + resume."""

import dataclasses
import functools
import json
import math
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import ray
import ray.cloudpickle
import ray.train
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import TensorDataset

from sphereard.config import OptimConfig, RayConfig, TrackingConfig, TrainLoopConfig
from sphereard.errors import UserError
from sphereard.tracking import NullRun, git_commit, logged_images, start_run
from sphereard.train import (
    LoopSpec,
    TrainTask,
    build_ema,
    build_optimizer,
    build_scheduler,
    fit,
    load_latest,
    load_weights,
    optimizer_step,
    save_checkpoint,
)
from sphereard.train.checkpoint import LATEST_FILE, load_optimizer_state
from sphereard.train.fingerprint import run_fingerprint
from sphereard.train.guard import NonFiniteError
from sphereard.train.launch import _root_cause, init_ray
from sphereard.train.loop import StepContext, resolve_precision
from sphereard.train.optim import param_groups

NO_DECAY_PATTERNS = (r"emb", r"^input_proj\.")


class TinyNet(nn.Module):
    """Embedding, input projection, norm, biases and a tied head: every param-group case."""

    def __init__(self, vocab=5, dim=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.input_proj = nn.Linear(3, dim)
        self.norm = nn.LayerNorm(dim)
        self.hidden = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight  # tied: shares storage with emb.weight

    def forward(self, tokens, feats):
        h = self.emb(tokens) + self.input_proj(feats)
        return self.head(torch.tanh(self.hidden(self.norm(h))))


def _train_steps(model, opt, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        tokens, feats = torch.randint(0, 5, (4,), generator=g), torch.randn(4, 3, generator=g)
        F.cross_entropy(model(tokens, feats), tokens).backward()
        opt.step()
        opt.zero_grad()


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b


def test_checkpoint_round_trip_restores_weights_and_optimizer(tmp_path):
    torch.manual_seed(0)
    model = TinyNet()
    opt = build_optimizer(model.named_parameters(), OptimConfig(lr=1e-2), NO_DECAY_PATTERNS)
    _train_steps(model, opt, 3)
    path = save_checkpoint(tmp_path, 7, {"model": model.state_dict(), "optim": opt.state_dict()}, {"note": "x"})
    assert path == tmp_path / "step-00000007"
    assert (tmp_path / LATEST_FILE).read_text().strip() == "step-00000007"

    ckpt = load_latest(tmp_path)
    assert ckpt.step == 7 and ckpt.meta == {"note": "x"}
    torch.manual_seed(1)
    model2 = TinyNet()
    opt2 = build_optimizer(model2.named_parameters(), OptimConfig(lr=1e-2), NO_DECAY_PATTERNS)
    model2.load_state_dict(ckpt.states["model"])
    opt2.load_state_dict(ckpt.states["optim"])
    _assert_same(opt2.state_dict(), opt.state_dict())  # int keys, tuples (betas), step tensors
    _assert_same(load_weights(tmp_path, "model"), model.state_dict())
    # continuing from the restored state matches continuing the original exactly
    _train_steps(model, opt, 2, seed=5)
    _train_steps(model2, opt2, 2, seed=5)
    _assert_same(model2.state_dict(), model.state_dict())


def test_failed_save_keeps_previous_checkpoint_and_prunes(tmp_path):
    weights = {"w": torch.arange(6.0).reshape(2, 3)}
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"model": weights}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST_FILE, "step-00000002", "step-00000003"]
    with pytest.raises(TypeError):  # meta is not JSON: fails after the tensors were written
        save_checkpoint(tmp_path, 4, {"model": weights}, meta={"bad": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST_FILE, "step-00000002", "step-00000003"]
    assert load_latest(tmp_path).step == 3
    assert load_latest(tmp_path / "missing") is None

    bad = tmp_path / "step-00000003" / "model.safetensors"
    bad.write_bytes(bad.read_bytes()[:20])
    with pytest.raises(UserError, match="step-00000003/model.safetensors"):
        load_latest(tmp_path)
    (tmp_path / "step-00000003" / "state.json").write_text("{not json")
    with pytest.raises(UserError, match="state.json"):
        load_latest(tmp_path)


def test_param_groups_exclude_1d_embeddings_and_input_projection():
    model = TinyNet()
    groups = {g["name"]: {id(p) for p in g["params"]} for g in param_groups(model.named_parameters(), 0.05,
                                                                            NO_DECAY_PATTERNS)}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[i] for i in groups["decay"]} == {"hidden.weight"}
    assert {names[i] for i in groups["no_decay"]} == {
        "emb.weight", "input_proj.weight", "input_proj.bias", "norm.weight", "norm.bias", "hidden.bias"}
    opt = build_optimizer(model.named_parameters(), OptimConfig(weight_decay=0.05), NO_DECAY_PATTERNS)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]


def test_scheduler_warmup_cosine_and_constant():
    lr, min_lr, warmup, total = 1e-3, 1e-5, 10, 110
    cfg = OptimConfig(lr=lr, min_lr=min_lr, warmup_steps=warmup)
    opt = build_optimizer([("w", nn.Parameter(torch.zeros(2, 2))), ("b", nn.Parameter(torch.zeros(2)))], cfg)
    sched = build_scheduler(opt, cfg, total)

    def lr_at(step):
        sched.step_update(step)
        lrs = {g["lr"] for g in opt.param_groups}
        assert len(lrs) == 1, "all groups share the schedule"
        return lrs.pop()

    def cosine(s):
        return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))

    assert lr_at(0) == 0.0
    assert lr_at(4) == pytest.approx(lr * 4 / warmup)
    assert lr_at(warmup) == pytest.approx(lr)
    assert lr_at(37) == pytest.approx(cosine(37))
    assert lr_at(60) == pytest.approx((lr + min_lr) / 2)
    assert lr_at(total) == pytest.approx(min_lr)
    assert lr_at(total + 50) == pytest.approx(min_lr)

    const = OptimConfig(lr=lr, warmup_steps=warmup, schedule="constant")
    opt = build_optimizer([("w", nn.Parameter(torch.zeros(2, 2)))], const)
    sched = build_scheduler(opt, const, total)
    assert [lr_at(s) for s in (0, 5, warmup, 60, total)] == pytest.approx([0.0, lr / 2, lr, lr, lr])


def test_precision_auto_is_fp32_on_cpu_and_bf16_autocasts():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    a = torch.randn(4, 4)
    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        ctx = StepContext(device=cpu, rank=0, world_size=1, local_batch_size=4, total_steps=1,
                          optim=OptimConfig(), precision=precision)
        with ctx.autocast():
            assert (a @ a).dtype == dtype


# ---------------------------------------------------------------- MLflow + Ray Train (one Ray instance)

def test_tracking_logs_metrics_and_image_grid(tmp_path, mlflow_uri):
    cfg = TrackingConfig(experiment="infra-test")
    with start_run(cfg, tmp_path, "unit", params={"optim": {"lr": 0.1}}, tags={"stage": "test"}) as run:
        run.log_metrics({"train/loss": 2.0}, step=1)
        run.log_metrics({"train/loss": 1.0}, step=2)
        run.log_image_grid(torch.rand(6, 3, 8, 8) * 2 - 1, "recon", step=2, value_range=(-1.0, 1.0))
    client = MlflowClient(mlflow_uri)
    data = client.get_run(run.run_id)
    assert data.info.status == "FINISHED"
    assert data.data.params == {"optim.lr": "0.1"} and data.data.tags["stage"] == "test"
    assert data.data.tags.get("mlflow.source.git.commit") == git_commit(tmp_path)
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "train/loss")] == [(1, 2.0), (2, 1.0)]
    assert logged_images(client, run.run_id) == {"recon": [2]}  # MLflow's time-stepped image `recon` at step 2
    assert Path(data.info.artifact_uri.removeprefix("file://")).is_relative_to(tmp_path / "mlartifacts")
    with start_run(cfg, tmp_path, "off", enabled=False) as off:
        assert isinstance(off, NullRun)
        off.log_metrics({"x": 1.0}, step=1)
        off.log_image_grid(torch.rand(2, 3, 4, 4), "x", step=1)


def test_a_run_nests_only_under_a_parent_in_its_own_experiment_and_store(tmp_path, mlflow_uri, caplog):
    parent_tag = "mlflow.parentRunId"
    with start_run(TrackingConfig(experiment="infra-train"), tmp_path, "train") as train:
        pass
    with start_run(TrackingConfig(experiment="infra-train"), tmp_path, "eval", parent_run_id=train.run_id) as ev:
        pass
    client = MlflowClient(mlflow_uri)
    assert client.get_run(ev.run_id).data.tags[parent_tag] == train.run_id
    caplog.clear()
    with start_run(TrackingConfig(experiment="infra-other"), tmp_path, "eval", parent_run_id=train.run_id) as other:
        pass
    with start_run(TrackingConfig(experiment="infra-train"), tmp_path, "eval", parent_run_id="0" * 32) as missing:
        pass
    for run in (other, missing):
        assert parent_tag not in client.get_run(run.run_id).data.tags
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "un-nested" in r.getMessage()]
    assert len(warnings) == 2 and train.run_id in warnings[0] and "0" * 32 in warnings[1]


class RegressionTask(TrainTask):
    """y = x . w* + noise with a small MLP; records every step's loss per rank; can fail once at a step."""

    def __init__(self, out_dir: str, fail_at: int | None = None):
        self.out, self.fail_at = Path(out_dir), fail_at

    def dataset(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(256, 8, generator=g)
        return TensorDataset(x, x @ torch.linspace(-1, 1, 8) + 0.01 * torch.randn(256, generator=g))

    def build(self, ctx):
        self.ctx = ctx
        self.model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1)).to(ctx.device)
        self.ddp = ctx.prepare_model(self.model)
        self.opt = build_optimizer(self.model.named_parameters(), ctx.optim)
        self.sched = build_scheduler(self.opt, ctx.optim, ctx.total_steps)
        self.ema = build_ema(self.model, ctx.optim)

    def train_step(self, batch, step):
        marker = self.out / f"failed-rank{self.ctx.rank}"
        if step == self.fail_at and not marker.exists():
            marker.touch()
            raise RuntimeError(f"injected failure at step {step}")
        x, y = batch
        with self.ctx.autocast():
            loss = F.mse_loss(self.ddp(x).squeeze(-1), y)
        out = optimizer_step(loss, self.opt, self.sched, step, self.model, self.ctx.optim.grad_clip)
        self.ema.update(self.model, step=step + 1)
        with open(self.out / f"rank{self.ctx.rank}.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "loss": loss.item()}) + "\n")
        if step + 1 == self.ctx.total_steps:
            save_file(self.model.state_dict(), str(self.out / f"final-rank{self.ctx.rank}.safetensors"))
        return {"loss": loss.detach(), **out}

    def log_media(self, step, run):
        run.log_image_grid(self.ema.module[0].weight.detach()[None, None], "pred", step, value_range=(-1.0, 1.0))

    def state_dicts(self):
        return {"model": self.model.state_dict(), "ema": self.ema.module.state_dict(), "optim": self.opt.state_dict()}

    def load_state_dicts(self, states):
        self.model.load_state_dict(states["model"])
        self.ema.module.load_state_dict(states["ema"])
        self.opt.load_state_dict(states["optim"])


class DivergingRegressionTask(RegressionTask):
    """RegressionTask whose worker `bad_rank` reports a NaN probe metric from step `bad_from` on (its
    gradients stay finite: only the guard's all-reduce can stop the other worker); counts attempts."""

    def __init__(self, out_dir: str, bad_rank: int, bad_from: int):
        super().__init__(out_dir)
        self.bad_rank, self.bad_from = bad_rank, bad_from

    def build(self, ctx):
        with open(self.out / f"attempts-rank{ctx.rank}", "a") as f:
            f.write("x")
        super().build(ctx)

    def train_step(self, batch, step):
        metrics = super().train_step(batch, step)
        bad = self.ctx.rank == self.bad_rank and step >= self.bad_from
        return {**metrics, "probe": torch.tensor(float("nan") if bad else 0.0)}


class OverflowingRegressionTask(RegressionTask):
    """Finite loss and gradient norm at every step, but the weights become inf after update `at` (the
    last one: no later step's metrics can reveal it, only the check of the states being saved)."""

    def __init__(self, out_dir: str, at: int):
        super().__init__(out_dir)
        self.at = at

    def train_step(self, batch, step):
        metrics = super().train_step(batch, step)
        if step == self.at:
            with torch.no_grad():
                self.model[2].bias.fill_(float("inf"))
        return metrics


def test_weights_that_overflow_are_never_checkpointed(tmp_path):
    spec = LoopSpec(task_factory=functools.partial(OverflowingRegressionTask, str(tmp_path), at=19),
                    loop=_loop(tmp_path, steps=20, num_workers=0), ckpt_dir=str(tmp_path / "ckpt"))
    with pytest.raises(NonFiniteError, match=r"diverged at step 20: (model|ema|optim)\.\S+ holds NaN or Inf"):
        fit(spec, "infra-overflow")
    assert load_latest(tmp_path / "ckpt").step == 10


def test_divergence_on_one_ray_worker_stops_both_once_without_retries(tmp_path, ray_local):
    """2 workers, max_failures=2: NaN on rank 1 only stops both at the same check, in one attempt."""
    out = tmp_path / "out"
    out.mkdir()
    spec = LoopSpec(task_factory=functools.partial(DivergingRegressionTask, str(out), bad_rank=1, bad_from=12),
                    loop=_loop(tmp_path, steps=30, num_workers=2, max_failures=2), ckpt_dir=str(tmp_path / "ckpt"))
    with pytest.raises(NonFiniteError, match=r"^training diverged at step 13: probe=nan on worker 1 is not finite"):
        fit(spec, "infra-diverge")
    assert [(out / f"attempts-rank{r}").read_text() for r in (0, 1)] == ["x", "x"], "Ray must not retry"
    assert load_latest(tmp_path / "ckpt").step == 10
    assert max(r["step"] for r in _records(out / "rank0.jsonl")) == 14  # stopped at the check after step 15


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _loop(tmp_path, steps, num_workers, **kw):
    """num_workers 0 = Ray Train local mode (in-process); workers get 1 CPU each (2 on a 2-core CI box)."""
    return TrainLoopConfig(steps=steps, batch_size=32, log_every=5, sample_every=steps, ckpt_every=10,
                           optim=OptimConfig(lr=3e-2, warmup_steps=4, ema_decay=0.9),
                           ray=RayConfig(**{"num_workers": num_workers, "cpus_per_worker": 1,
                                            "storage": str(tmp_path / "ray"), **kw}))


def test_stop_after_then_resume_matches_uninterrupted_run(tmp_path, mlflow_uri):
    """In-process (Ray Train local mode): 10 steps, stop, rerun to 20 == 20 steps straight."""
    loop = _loop(tmp_path, steps=20, num_workers=0)
    runs = {}
    for name, stop_after in (("split", 10), ("straight", None)):
        out = tmp_path / name
        out.mkdir()
        with start_run(TrackingConfig(experiment="infra-loop"), tmp_path, name) as run:
            spec = LoopSpec(task_factory=functools.partial(RegressionTask, str(out)), loop=loop,
                            ckpt_dir=str(out / "ckpt"), seed=3, run=run, stop_after=stop_after,
                            config_snapshot={"k": 1})
            result = fit(spec, "infra-local")
            if stop_after:
                assert result.metrics["step"] == 10 and load_latest(spec.ckpt_dir).step == 10
                result = fit(dataclasses.replace(spec, stop_after=None), "infra-local")
            assert result.metrics["step"] == 20
        runs[name] = (out, run)
    (split, split_run), (straight, _) = runs["split"], runs["straight"]
    assert [r["step"] for r in _records(split / "rank0.jsonl")] == list(range(20))
    assert _records(split / "rank0.jsonl") == _records(straight / "rank0.jsonl"), "resume must be exact"
    ckpt = load_latest(split / "ckpt")
    assert ckpt.step == 20 and ckpt.meta["config"] == {"k": 1} and ckpt.meta["seed"] == 3
    _assert_same(ckpt.states, load_latest(straight / "ckpt").states)  # model, EMA and optimizer
    assert fit(spec, "infra-local").metrics["step"] == 20  # already finished: nothing to do

    client = MlflowClient(mlflow_uri)
    history = client.get_metric_history(split_run.run_id, "train/loss")
    assert [m.step for m in history] == [5, 10, 15, 20]
    metrics = client.get_run(split_run.run_id).data.metrics
    assert {"train/loss", "train/lr", "train/grad_norm", "perf/items_per_s"} <= set(metrics)
    assert metrics["perf/items_per_s"] > 0 and history[-1].value < history[0].value
    assert logged_images(client, split_run.run_id) == {"pred": [20]}


def test_a_finished_run_is_reused_only_with_the_same_settings_and_code(tmp_path, caplog):
    """DVC reruns a training stage when its params or code change; the persisted checkpoint of the
    old run must then not be exported as the new result: training starts over (one warning)."""
    loop = _loop(tmp_path, steps=12, num_workers=0)
    spec = LoopSpec(task_factory=functools.partial(RegressionTask, str(tmp_path)), loop=loop,
                    ckpt_dir=str(tmp_path / "ckpt"), seed=3, config_snapshot={"lr": 1})
    fit(spec, "infra-fp")
    fit(spec, "infra-fp")  # same settings and code: nothing to do
    assert [r["step"] for r in _records(tmp_path / "rank0.jsonl")] == list(range(12))
    caplog.clear()
    fit(dataclasses.replace(spec, config_snapshot={"lr": 2}), "infra-fp")  # a params change
    assert [r["step"] for r in _records(tmp_path / "rank0.jsonl")] == list(range(12)) * 2
    assert any("written by other settings or code" in r.getMessage() and "removed" in r.getMessage()
               for r in caplog.records)
    ckpt = load_latest(spec.ckpt_dir)
    assert ckpt.step == 12 and ckpt.meta["config"] == {"lr": 2}
    assert ckpt.meta["fingerprint"] == run_fingerprint({"lr": 2}, 3, spec.task_factory)


def test_code_fingerprint_covers_the_task_and_loop_code_and_nothing_else(tmp_path, monkeypatch):
    """An edit to a module the task can run changes it; an edit elsewhere (the report) does not."""
    from sphereard.tokenizer.task import TokenizerTask
    from sphereard.train import fingerprint

    repo = tmp_path / "repo"
    shutil.copytree(fingerprint.REPO / "sphereard", repo / "sphereard")
    shutil.copytree(fingerprint.REPO / "pipelines", repo / "pipelines")
    monkeypatch.setattr(fingerprint, "REPO", repo)
    monkeypatch.setattr(fingerprint, "code_closure", functools.partial(fingerprint.code_closure, root=repo))
    factory = functools.partial(TokenizerTask, None, "spherical")
    before = fingerprint.run_fingerprint({"a": 1}, 0, factory)
    assert fingerprint.code_fingerprint(["sphereard.train.launch"]) != fingerprint.code_fingerprint(
        ["sphereard.train.launch", "sphereard.tokenizer.task"])
    with open(repo / "pipelines" / "report.py", "a") as f:  # not run by training
        f.write("# edit\n")
    assert fingerprint.run_fingerprint({"a": 1}, 0, factory) == before
    with open(repo / "sphereard" / "distributions" / "power_spherical.py", "a") as f:  # run by the tokenizer
        f.write("# edit\n")
    assert fingerprint.run_fingerprint({"a": 1}, 0, factory) != before
    assert fingerprint.run_fingerprint({"a": 1}, 1, factory) != fingerprint.run_fingerprint({"a": 2}, 1, factory)


def test_worker_user_error_reaches_driver_as_user_error(tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    (ckpt_dir / LATEST_FILE).write_text("step-00000005\n")  # names a checkpoint that is not there
    spec = LoopSpec(task_factory=functools.partial(RegressionTask, str(tmp_path)),
                    loop=_loop(tmp_path, steps=4, num_workers=0), ckpt_dir=str(ckpt_dir))
    with pytest.raises(UserError, match="latest: names step-00000005"):
        fit(spec, "infra-bad")
    # with Ray workers, the worker's exception arrives inside a WorkerGroupError
    wrapped = ray.train.WorkerGroupError("failed", {0: RuntimeError("x"), 1: UserError("params: bad")})
    assert isinstance(_root_cause(wrapped), UserError)


def test_resume_user_error_names_the_first_mismatched_tensor_and_both_shapes(tmp_path):
    """A task that loads with plain `load_state_dict` (a RuntimeError whose first line is only a header):
    the one-line UserError still names the tensor and both shapes."""
    other = nn.Sequential(nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = build_optimizer(other.named_parameters(), OptimConfig())
    save_checkpoint(tmp_path / "ckpt", 2, {"model": other.state_dict(), "ema": other.state_dict(),
                                           "optim": opt.state_dict()},
                    meta={"fingerprint": run_fingerprint({}, 0, RegressionTask)})  # claims to be this run
    spec = LoopSpec(task_factory=functools.partial(RegressionTask, str(tmp_path)),
                    loop=_loop(tmp_path, steps=4, num_workers=0), ckpt_dir=str(tmp_path / "ckpt"))
    with pytest.raises(UserError) as info:
        fit(spec, "infra-other-model")
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "ckpt" / "step-00000002"))
    assert re.search(r"does not fit the current model \(RuntimeError: Error\(s\) in loading state_dict for "
                     r"Sequential: size mismatch for 0\.weight: copying a param with shape torch\.Size\(\[4, 8\]\)"
                     r".*remove .*ckpt to start over$", message), message


def test_resume_reads_a_bad_ray_pointer_as_one_warning(tmp_path, caplog):
    """The pointer Ray restores is for the log only: unreadable, it is one warning line, never a traceback."""
    from sphereard.train.loop import RAY_POINTER_FILE, _ray_pointer_step

    (tmp_path / RAY_POINTER_FILE).write_text(json.dumps({"ckpt_dir": "x", "step": 12}))
    assert _ray_pointer_step(tmp_path) == 12
    for text in ('{"ckpt_dir": "x", "st', "[12]", '{"ckpt_dir": "x"}'):
        (tmp_path / RAY_POINTER_FILE).write_text(text)
        caplog.clear()
        assert _ray_pointer_step(tmp_path) is None
        [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert warning.startswith(str(tmp_path / RAY_POINTER_FILE)) and "\n" not in warning


def test_checkpoint_optimizer_state_of_another_model_is_one_user_error():
    """`load_optimizer_state` (the tasks' resume): groups, sizes and per-parameter shapes must fit."""
    model = TinyNet()
    opt = build_optimizer(model.named_parameters(), OptimConfig(lr=1e-2), NO_DECAY_PATTERNS)
    _train_steps(model, opt, 1)
    state = opt.state_dict()
    fewer = {**state, "param_groups": [{**state["param_groups"][0], "params": state["param_groups"][0]["params"][1:]},
                                       *state["param_groups"][1:]]}
    with pytest.raises(UserError, match=r"^state 'optimizer': optimizer state of a different model: parameter group 0 "
                                        r"holds \d+ parameters in the checkpoint, \d+ now$"):
        load_optimizer_state(opt, fewer, "state 'optimizer'")
    with pytest.raises(UserError, match=r"1 parameter group\(s\) in the checkpoint, 2 in the optimizer now"):
        load_optimizer_state(opt, {**state, "param_groups": state["param_groups"][:1]}, "state 'optimizer'")
    with pytest.raises(UserError, match=r"not an optimizer state"):
        load_optimizer_state(opt, {"weight": torch.zeros(1)}, "state 'optimizer'")
    load_optimizer_state(opt, state, "state 'optimizer'")  # its own state fits


@pytest.fixture(scope="module")
def ray_local():
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    init_ray(num_cpus_needed=2)
    yield
    ray.shutdown()


def test_ray_ddp_two_workers_recover_from_failure(tmp_path, ray_local):
    """2 CPU workers (gloo DDP); both fail at step 33; Ray restarts them; they resume at 30 exactly."""
    out = tmp_path / "out"
    out.mkdir()
    spec = LoopSpec(task_factory=functools.partial(RegressionTask, str(out), fail_at=33),
                    loop=_loop(tmp_path, steps=40, num_workers=2, max_failures=1),
                    ckpt_dir=str(tmp_path / "ckpt"), seed=3, keep_checkpoints=2)
    assert fit(spec, "infra-ddp").metrics["step"] == 40

    records = _records(out / "rank0.jsonl")
    assert [r["step"] for r in records] == list(range(0, 33)) + list(range(30, 40))
    losses = [r["loss"] for r in records]
    assert losses[30:33] == losses[33:36], "steps redone after the restart must reproduce the same losses"
    assert sum(losses[-5:]) < 0.2 * sum(losses[:5]), "training should lower the loss"
    final = [load_file(str(out / f"final-rank{r}.safetensors")) for r in (0, 1)]
    _assert_same(final[0], final[1])  # DDP kept both workers' models identical
    _assert_same(load_weights(tmp_path / "ckpt", "model"), final[0])
    ckpt = load_latest(tmp_path / "ckpt")
    assert ckpt.step == 40 and ckpt.meta["world_size"] == 2
    assert sorted(p.name for p in ckpt.path.parent.iterdir() if p.is_dir()) == ["step-00000030", "step-00000040"]


def test_worker_group_larger_than_local_ray_fails_fast(tmp_path, ray_local, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    too_many = int(ray.cluster_resources()["CPU"])  # 2 workers x all CPUs: twice what the instance has
    spec = LoopSpec(task_factory=functools.partial(RegressionTask, str(tmp_path)),
                    loop=_loop(tmp_path, steps=4, num_workers=2, cpus_per_worker=too_many),
                    ckpt_dir=str(tmp_path / "ckpt"))
    needs = rf"ray.num_workers=2 x ray.cpus_per_worker={too_many} needs {2 * too_many} CPUs"
    with pytest.raises(UserError, match=needs):
        fit(spec, "infra-too-big")


def ray_session_listeners() -> list[tuple[str, int, str]]:
    """(address, port, process) of every listening socket of this process and the local Ray instance's."""
    import psutil

    session = ray._private.worker._global_node.get_session_dir_path()
    pids = {psutil.Process().pid} | {c.pid for c in psutil.Process().children(recursive=True)}
    pids |= {p.pid for p in psutil.process_iter(["cmdline"]) if any(session in a for a in p.info["cmdline"] or [])}
    return [(c.laddr.ip, c.laddr.port, psutil.Process(c.pid).name())
            for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]


def test_local_ray_listens_on_loopback_only(ray_local):
    import ipaddress

    listeners = ray_session_listeners()
    names = {name for _, _, name in listeners}
    assert {"gcs_server", "raylet"} <= names, names  # the instance's own servers were found
    exposed = [entry for entry in listeners
               if not ipaddress.ip_address(entry[0].removeprefix("::ffff:")).is_loopback]
    assert not exposed, f"listening beyond loopback: {exposed}"
    # the switch was only on while the instance started: later cluster joins in this process are unaffected
    from ray._private import ray_constants

    from sphereard.train.launch import LOOPBACK_ONLY_ENV
    assert LOOPBACK_ONLY_ENV not in os.environ and ray_constants.ENABLE_RAY_CLUSTER
