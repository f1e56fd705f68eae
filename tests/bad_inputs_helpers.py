"""Shared by the tests/test_bad_inputs_*.py tables: a tiny valid workspace, ways to break its files, the check.

The workspace: 2-class 32x32 grey data, a 1-class copy, fmnist-xs tokenizer and generator exports
(spherical) and a small classifier. `ws` is a module-scoped fixture: a test module imports it by name
(`ws = bad_inputs_helpers.ws`) and builds the workspace once. `check_case` is the assertion every
table row gets: one UserError, one line, starting with the broken file's path, nothing partial left.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from sphereard.ar import create_generator
from sphereard.config import parse_params
from sphereard.data import prepare_dataset
from sphereard.errors import UserError
from sphereard.eval import load_samples_npz, save_classifier, save_ref_stats
from sphereard.eval.classifier import SmallCNN
from sphereard.eval.metrics import RefStats
from sphereard.export import export_model
from sphereard.latents import LatentCacheWriter
from sphereard.profiles import materialise
from sphereard.tokenizer import create_tokenizer
from sphereard.train.checkpoint import save_checkpoint

SIZE, CLASSES = 32, 2
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # conv layers in torchvision vgg16.features
GREY = np.zeros((4, SIZE, SIZE, 1), np.uint8)
COLOUR = np.stack([np.zeros((4, SIZE, SIZE), np.uint8), np.ones((4, SIZE, SIZE), np.uint8),
                   np.zeros((4, SIZE, SIZE), np.uint8)], axis=-1)


# --- a tiny valid workspace (built once per test module, copied per case) ----------------------------

def _png(path: Path, value: int, size: int = 20) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)


def _prepare(folder: Path, out: Path, classes) -> None:
    for split, n in (("train", 3), ("val", 2)):
        for c, name in enumerate(classes):
            for i in range(n):
                _png(folder / split / name / f"{i}.png", 40 * c + 10 * i)
    cfg = SimpleNamespace(source="imagefolder", path=str(folder), labels_path=None, emoji_label="group",
                          image_size=SIZE, resize="pad", channels=1, test_fraction=0.5, max_per_class=None,
                          shard_rows=64, row_group_rows=16, store_size=None, workers=0, interleave=1)
    prepare_dataset(cfg, out)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """data/ (2 classes), data1/ (1 class), tok/ + gen/ exports (spherical), clf/ classifier."""
    root = tmp_path_factory.mktemp("bad_inputs")
    _prepare(root / "src2", root / "data", ["a", "b"])
    _prepare(root / "src1", root / "data1", ["only"])
    torch.manual_seed(0)
    vae = create_tokenizer("fmnist-xs", posterior="spherical")
    export_model(root / "tok", vae, {"kind": "tokenizer", "preset": "fmnist-xs", "overrides": {},
                                     "posterior": "spherical", "radius": vae.radius, "step": 1})
    gen = create_generator("fmnist-xs", num_classes=CLASSES)
    export_model(root / "gen", gen, {"kind": "generator", "preset": "fmnist-xs", "overrides": {"num_classes": CLASSES},
                                     "posterior": "spherical", "radius": vae.radius, "step": 1})
    save_classifier(SmallCNN(CLASSES, 1, SIZE, width=8, feature_dim=16), root / "clf", accuracy=0.5)
    return root


def copy(ws: Path, name: str, tmp: Path) -> Path:
    shutil.copytree(ws / name, tmp / name)
    return tmp / name


def edit_json(path: Path, change: Callable[[dict], None]) -> Path:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def png_bytes(size: int = 4) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((size, size), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def samples(tmp: Path, images=None, labels=None, **extra) -> Path:
    """samples.npz with `images` (default: 4 grey 32x32, 3 equal channels) and `labels` (default 0, 1, 0, 1)."""
    images = np.zeros((4, SIZE, SIZE, 3), np.uint8) if images is None else images
    arrays = {"arr_0": images, **extra} if images is not False else dict(extra)
    if labels is not False:
        arrays["arr_1"] = np.arange(len(images)) % CLASSES if labels is None else labels
    np.savez(tmp / "samples.npz", **arrays)
    return tmp / "samples.npz"


def load_data_samples(path: Path, channels: int = 1):
    """The checks `evaluate` applies: the data's image size, channels and class count."""
    return load_samples_npz(path, image_size=SIZE, channels=channels, num_classes=CLASSES)


def nan_weights(path: Path) -> None:
    state = load_file(str(path))
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, str(path))


def vgg_state(shape=(1,)) -> dict:
    """torchvision vgg16 `features.*` keys, each with a tensor of `shape` (a stand-in of the wrong shapes)."""
    return {f"features.{i}.{p}": torch.zeros(shape) for i in VGG16_CONV_INDICES for p in ("weight", "bias")}


def latent_cache(tmp: Path, rows: int = 4) -> Path:
    """A valid spherical latent cache at tmp/latents: rows x 4 tokens x (d=2 + kappa), with flips."""
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(2, rows, 4, 2))
    mu /= np.linalg.norm(mu, axis=-1, keepdims=True)
    params = np.concatenate([mu, np.full((2, rows, 4, 1), 5.0)], axis=-1).astype(np.float32)
    meta = {"posterior": "spherical", "radius": 1.0, "latent_dim": 2, "grid_size": 2, "num_classes": CLASSES}
    with LatentCacheWriter(tmp / "latents", meta) as cache:
        cache.write(params[0], np.arange(rows) % CLASSES, params[1])
    return tmp / "latents"


def ref_stats(tmp: Path, mu=None, sigma=None, features=None) -> Path:
    """tmp/ref_classifier.npz as `save_ref_stats` writes it (default: 4-d, identity covariance, no features)."""
    mu = np.zeros(4) if mu is None else mu
    sigma = np.eye(4) if sigma is None else sigma
    return save_ref_stats(tmp / "ref_classifier.npz", RefStats("classifier", mu, sigma, features, 3))


def tiny_checkpoint(tmp: Path) -> Path:
    """tmp/ckpt with one step (3) of a Linear model and its Adam state (one step taken)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    save_checkpoint(tmp / "ckpt", 3, {"model": model.state_dict(), "optimizer": opt.state_dict()})
    return tmp / "ckpt"


def train_params(tmp: Path, tokenizer_overrides=None, generator_overrides=None):
    """Smoke params with outputs under `tmp`, no LPIPS / discriminator (no weights to fetch)."""
    data = materialise("smoke")
    for block, out in (("data", "data"), ("tokenizer", "tok_out"), ("encode", "out"), ("generator", "gen_out")):
        data[block]["out"] = str(tmp / out)
    data["tokenizer"]["train"].update(lpips_weight=0.0, disc_weight=0.0)
    data["tokenizer"]["overrides"] = tokenizer_overrides or {}
    data["generator"]["overrides"] = generator_overrides or {}
    return parse_params(data)


def built_task(kind: str, params):
    """A TokenizerTask / GeneratorTask built on CPU as the training loop builds it (no DDP wrapper)."""
    from sphereard.ar.task import GeneratorTask
    from sphereard.tokenizer.task import TokenizerTask
    from sphereard.train.loop import StepContext

    block = params.tokenizer if kind == "tokenizer" else params.generator
    task = (TokenizerTask if kind == "tokenizer" else GeneratorTask)(params, "spherical")
    ctx = StepContext(device=torch.device("cpu"), rank=0, world_size=1, local_batch_size=2, total_steps=10,
                      optim=block.train.optim, precision="fp32")
    ctx.prepare_model = lambda model, **kwargs: model
    task.build(ctx)
    return task, ctx, block.train


def resume_from(tmp: Path, kind: str, states: dict, params) -> int:
    """Save `states` as tmp/ckpt step 1, then resume a fresh task of `params` from it (the loop's `_resume`)."""
    from unittest import mock

    import ray.train

    from sphereard.train.loop import LoopSpec, _resume

    save_checkpoint(tmp / "ckpt", 1, states)
    task, ctx, loop = built_task(kind, params)
    spec = LoopSpec(task_factory=None, loop=loop, ckpt_dir=str(tmp / "ckpt"))
    with mock.patch.object(ray.train, "get_checkpoint", lambda: None):  # no Ray Train session here
        return _resume(spec, task, ctx)


# --- the table row and its check -------------------------------------------------------------------------

class Case(NamedTuple):
    name: str
    broken: str
    entry: str
    fragment: str  # regex searched in the message, which must also start with the broken file's path
    run: Callable[[Path, Path], object]  # (workspace, tmp) -> breaks a copy and calls the entry point


def check_case(case: Case, ws: Path, tmp_path: Path) -> None:
    """The case's entry point raises one UserError: one line, starting with the broken file, nothing partial."""
    with pytest.raises(UserError) as info:
        case.run(ws, tmp_path)
    message = str(info.value)
    assert "\n" not in message, f"{case.name}: not one line: {message!r}"
    assert message.startswith(str(tmp_path)), f"{case.name}: does not start with the file: {message}"
    assert re.search(case.fragment, message), f"{case.name}: {message!r} lacks /{case.fragment}/"
    assert not (tmp_path / "out").exists(), f"{case.name}: partial output left"


# --- edits for edit_json --------------------------------------------------------------------------------

def drop(*keys):
    def change(data):
        for key in keys:
            del data[key]
    return change


def set_key(key, value):
    return lambda data: data.__setitem__(key, value)
