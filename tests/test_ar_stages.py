"""AR stages: GeneratorTask in the generic loop (learning, resume, media), benchmark, and (slow) the
whole chain prepare -> train_vae -> encode -> train_ar -> sample on the smoke profile."""

import dataclasses
import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sphereard.ar import create_generator
from sphereard.ar.task import NO_DECAY_PATTERNS, GeneratorTask, generator_arch_for_cache
from sphereard.benchmark import parse_args, run_benchmark
from sphereard.config import (
    EncodeConfig,
    GeneratorConfig,
    GeneratorTrainConfig,
    OptimConfig,
    Params,
    RayConfig,
    SamplingConfig,
    TokenizerConfig,
)
from sphereard.errors import UserError
from sphereard.eval.adm import load_samples_npz
from sphereard.export import export_model
from sphereard.latents import LatentCacheWriter
from sphereard.layout import export_dir, latent_cache_dir
from sphereard.tokenizer import create_tokenizer
from sphereard.tokenizer.task import tokenizer_meta
from sphereard.train import LoopSpec, fit, load_latest
from sphereard.train.optim import param_groups

REPO = Path(__file__).resolve().parent.parent
D, GRID, CLASSES, ROWS = 8, 8, 10, 64  # fmnist-xs generator: token_dim 8, 8x8 grid, 10 classes
KAPPA = 500.0  # concentrated posteriors: tokens are nearly a function of (class, position)
STEPS = 40


class FileRun:
    """A tracking run that appends metrics and image-grid shapes to a JSONL file (picklable)."""

    enabled = True
    run_id = "file"

    def __init__(self, path):
        self.path = str(path)

    def _write(self, record):
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def log_metrics(self, metrics, step):
        self._write({"step": step, **metrics})

    def log_image_grid(self, images, name, step, nrow=None, value_range=(0.0, 1.0)):
        self._write({"step": step, "image": name, "shape": list(images.shape), "nrow": nrow})

    def log_image(self, image, name, step):
        self._write({"step": step, "image": name, "size": list(image.size)})

    def log_params(self, params): ...
    def set_tags(self, tags): ...
    def log_artifact(self, path, artifact_path=None): ...


def write_synthetic_cache(out_dir, rows=ROWS, num_classes=CLASSES):
    """Spherical posterior params whose mean direction depends on (class, position) only."""
    g = torch.Generator().manual_seed(0)
    means = torch.nn.functional.normalize(torch.randn(num_classes, GRID * GRID, D, generator=g), dim=-1)
    labels = torch.arange(rows) % num_classes
    mu = means[labels]  # (N, L, d)
    params = torch.cat([mu, torch.full((rows, GRID * GRID, 1), KAPPA)], dim=-1).numpy()
    meta = {"posterior": "spherical", "radius": math.sqrt(D), "on_sphere": True, "latent_dim": D, "grid_size": GRID,
            "num_classes": num_classes, "tokenizer": {}}
    with LatentCacheWriter(out_dir, meta, "float32") as cache:
        cache.write(params, labels.numpy(), params)


def tiny_params(tmp_path, **generator_overrides) -> Params:
    loop = GeneratorTrainConfig(steps=STEPS, batch_size=16, log_every=10, sample_every=1000, ckpt_every=20,
                           optim=OptimConfig(lr=2e-2, warmup_steps=2, ema_decay=0.9),
                           ray=RayConfig(num_workers=0, storage=str(tmp_path / "ray")))
    params = Params(seed=1, tokenizer=TokenizerConfig(preset="fmnist-xs", out=str(tmp_path / "tok")),
                    encode=EncodeConfig(out=str(tmp_path / "latents")),
                    generator=GeneratorConfig(preset="fmnist-xs", out=str(tmp_path / "gen"), train=loop),
                    sampling=SamplingConfig(steps=2, cfg_scale=2.0))
    # model_copy does not validate: the overrides may break the cross-block rules, as a test wants
    generator = params.generator.model_copy(update={"overrides": generator_overrides})
    return params.model_copy(update={"generator": generator})


def test_param_groups_match_the_paper_partition():
    model = create_generator("fmnist-xs")
    ours = param_groups(model.named_parameters(), 0.05, NO_DECAY_PATTERNS)
    embeddings = (model.transformer.class_embed, model.transformer.proj_in, model.head.pos_embed)
    exempt = {id(p) for m in embeddings for p in m.parameters()}
    paper = [{id(p) for p in model.parameters() if p.ndim >= 2 and id(p) not in exempt},
             {id(p) for p in model.parameters() if p.ndim < 2 or id(p) in exempt}]
    assert [{id(p) for p in g["params"]} for g in ours] == paper
    no_decay = {n for n, p in model.named_parameters() if id(p) in {id(q) for q in ours[1]["params"]}}
    assert {"transformer.class_embed.weight", "transformer.proj_in.weight", "head.pos_embed.weight"} <= no_decay


def test_cache_mismatch_names_the_generator_key(tmp_path):
    write_synthetic_cache(latent_cache_dir(tiny_params(tmp_path), "spherical"), rows=12, num_classes=12)
    with pytest.raises(UserError, match=r"generator.preset / generator.overrides.num_classes: num_classes=10"):
        generator_arch_for_cache(tiny_params(tmp_path), "spherical")
    arch, meta = generator_arch_for_cache(tiny_params(tmp_path, num_classes=12), "spherical")
    assert arch.num_classes == 12 and meta["latent_dim"] == D
    with pytest.raises(UserError, match="overrides.token_dim"):
        generator_arch_for_cache(tiny_params(tmp_path, num_classes=12, token_dim=16), "spherical")


def test_generator_task_learns_resumes_and_logs_samples(tmp_path):
    params = tiny_params(tmp_path)
    write_synthetic_cache(latent_cache_dir(params, "spherical"))
    with torch.device("cpu"):  # a random tokenizer is enough to decode the media grid
        vae = create_tokenizer("fmnist-xs", posterior="spherical")
    tok_dir = export_dir(params, "tokenizer", "spherical")
    export_model(tok_dir, vae, tokenizer_meta(params, "spherical", vae.radius))
    log = tmp_path / "run.jsonl"
    spec = LoopSpec(task_factory=functools.partial(GeneratorTask, params, "spherical"), loop=params.generator.train,
                    ckpt_dir=str(tmp_path / "ckpt"), seed=params.seed, run=FileRun(log), stop_after=20)
    assert fit(spec, "ar-test").metrics["step"] == 20 and load_latest(spec.ckpt_dir).step == 20
    result = fit(dataclasses.replace(spec, stop_after=None), "ar-test")
    assert result.metrics["step"] == STEPS and load_latest(spec.ckpt_dir).step == STEPS

    records = [json.loads(line) for line in log.read_text().splitlines()]
    metrics = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in metrics] == [10, 20, 30, 40], "the rerun must resume at step 20, not restart"
    assert {"train/loss", "train/lr", "train/grad_norm", "perf/items_per_s"} <= set(metrics[0])
    # velocity MSE of the zero-initialised head is (R^2 + d) / d = 2; 40 tiny steps take it to ~1.6
    assert 1.9 < metrics[0]["train/loss"] < 2.1 and metrics[-1]["train/loss"] < 0.9 * metrics[0]["train/loss"]
    assert metrics[-1]["perf/items_per_s"] > 0
    images = [r for r in records if "image" in r]
    assert [(r["step"], r["image"]) for r in images] == [(STEPS, "generated")]
    assert images[0]["size"][1] == 2 + 10 * (64 + 2), "one row per class (10), 32 px tiles shown at 64 px"


def test_items_per_batch_counts_tokens():
    views, labels = torch.zeros(5, 2, GRID * GRID, D + 1), torch.zeros(5, dtype=torch.long)  # (B, V, L, P)
    assert GeneratorTask(None, "spherical").items_per_batch((views, labels)) == 5 * GRID * GRID


def test_benchmark_on_cpu_reports_positive_throughput(tmp_path):
    out = tmp_path / "bench.json"
    args = parse_args(["--preset", "fmnist-xs", "--batch-size", "4", "--steps", "2", "--warmup", "1",
                       "--sampler-steps", "2", "--sample-batch-size", "2", "--cfg", "2.0", "--device", "cpu",
                       "--precision", "fp32", "--out", str(out)])
    result = run_benchmark(args)
    for key in ("train_tokens_per_s", "sample_images_per_s", "train_flop_per_s", "sample_flop_per_s",
                "matmul_peak_flop_per_s"):
        assert result[key] > 0, key
    # 6 N flops per token is a lower bound for the counted training matmuls (plus attention, diff_batch_mul)
    assert result["train_flops_per_step"] > 2 * result["params"] * 4 * 64
    assert result["num_tokens"] == 64 and result["device"].startswith("cpu")


def test_benchmark_compile_reaches_the_loss_and_the_fast_samplers_step(monkeypatch):
    """--compile must wrap what runs: the training loss and `fast_sampler.HeadPlan.velocity` (the default
    sampler never calls `head.velocity`), in --compile-mode, and restore the sampler afterwards."""
    import sphereard.benchmark as bench
    from sphereard.ar import fast_sampler

    calls: dict[str, int] = {}

    def spy_compile(fn, mode):  # stands in for torch.compile: counts the calls of what it was given
        name = fn.__name__

        def wrapped(*args, **kwargs):
            calls[(name, mode)] = calls.get((name, mode), 0) + 1
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(bench, "compile_fn", spy_compile)
    eager = fast_sampler.HeadPlan.velocity
    args = parse_args(["--preset", "fmnist-xs", "--batch-size", "2", "--steps", "1", "--warmup", "1",
                       "--sampler-steps", "2", "--sample-batch-size", "2", "--cfg", "2.0", "--device", "cpu",
                       "--precision", "fp32", "--compile", "--compile-mode", "max-autotune-no-cudagraphs"])
    result = run_benchmark(args)
    mode = "max-autotune-no-cudagraphs"
    assert calls[("loss", mode)] == 2, "warm-up + timed training steps go through the compiled loss"
    # (1 compiling + 1 timed sampling call) x 64 tokens x (2 EM steps + the final step); CFG: one call a step
    assert calls[("velocity", mode)] == 2 * 64 * 3
    assert fast_sampler.HeadPlan.velocity is eager and result["compile"] == mode
    with pytest.raises(SystemExit):
        parse_args(["--compile-mode", "reduce-overhead"])  # without --compile


@pytest.mark.parametrize("mode", ["default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune"])
def test_cuda_graph_modes_hand_out_a_copy_of_the_step_output(monkeypatch, mode):
    """A CUDA graph rewrites its output buffer at the next replay: in the graph modes the compiled step's
    output is cloned (Heun keeps v across two calls), in the others it is passed through."""
    import sphereard.benchmark as bench
    from sphereard.ar import fast_sampler

    buffer = torch.ones(3)
    monkeypatch.setattr(bench, "compile_fn", lambda fn, mode: lambda *args: buffer)  # a graph's static output
    with bench.compiled_fast_velocity(mode):
        v = fast_sampler.HeadPlan.velocity(None, None, None)
    assert torch.equal(v, buffer)
    assert (v.data_ptr() != buffer.data_ptr()) == (mode in bench.CUDAGRAPH_MODES)


# ------------------------------------------------------------------ end to end (slow)

SMOKE_SPEEDUPS = {  # on top of the smoke profile: fewer steps, in-process Ray Train
    "tokenizer": {"eval_images": 40, "train": {"steps": 4, "log_every": 2, "sample_every": 4, "ckpt_every": 4,
                                               "ray": {"num_workers": 0}}},
    "generator": {"train": {"steps": 10, "log_every": 5, "sample_every": 10, "ckpt_every": 5,
                            "ray": {"num_workers": 0}}},
    "sampling": {"num_per_class": 2, "steps": 4},
}


def _merge(base, overlay):
    for key, value in overlay.items():
        base[key] = _merge(base[key], value) if isinstance(value, dict) else value
    return base


@pytest.mark.slow
def test_smoke_chain_spherical(tmp_path):
    from sphereard.profiles import materialise

    params = _merge(materialise("smoke"), SMOKE_SPEEDUPS)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    for stage in ("prepare", "train_vae", "encode", "train_ar", "sample"):
        args = [] if stage == "prepare" else ["--posterior", "spherical"]
        proc = subprocess.run([sys.executable, "-m", f"pipelines.{stage}", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"{stage} failed:\n{proc.stderr[-3000:]}"

    gen = json.loads((tmp_path / "metrics/generator/spherical/seed0.json").read_text())
    assert gen["ema_loss"] > 0 and gen["train_tokens_per_s"] > 0
    assert json.loads((tmp_path / "outputs/generator/spherical/seed0/info.json").read_text())["steps"] == 10
    assert json.loads((tmp_path / "outputs/generator/spherical/seed0/model/model.json").read_text())["step"] == 10
    out = tmp_path / "outputs/samples/spherical/seed0"  # run seed0: the stages' default `--seed`
    images, labels = load_samples_npz(out / "samples.npz", channels=1)  # the ADM reader accepts our file
    with np.load(out / "samples.npz") as z:
        assert set(z.files) == {"arr_0", "arr_1", "latents", "norms"}
        assert z["arr_0"].shape == (20, 32, 32, 3), "grey samples stored as RGB for the ADM evaluator"
        latents, norms = z["latents"], z["norms"]
    assert images.shape == (20, 32, 32, 1) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [2] * 10, "class-balanced"
    assert latents.shape == (20, 64, 8) and norms.shape == (20, 64)
    np.testing.assert_allclose(np.linalg.norm(latents, axis=-1), math.sqrt(8), rtol=1e-4)  # projection: sphere
    assert np.isfinite(norms).all() and (norms > 0).all()
    grids = sorted(p.name for p in (out / "grids").iterdir())
    assert grids == [f"class_{c:02d}.png" for c in range(10)] + ["overview.png"]
    stats = json.loads((tmp_path / "metrics/sampling/spherical/seed0.json").read_text())
    info = json.loads((out / "info.json").read_text())
    assert stats["images_per_s"] > 0 and stats["tokens_per_s"] > 0 and info["num_images"] == 20
    assert info["settings"]["projection"] == "sphere" and info["precision"] == "fp32"
    assert all(isinstance(v, float) for v in stats.values()), "metrics files hold numbers only"
