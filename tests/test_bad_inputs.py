"""Every file a stage reads: a bad one is one UserError naming it (stages: one line, exit 2), nothing partial.

`CASES` is the table: case, what is broken, the entry point that reads it, the message fragment.
Each case breaks one copy of a tiny, valid workspace (2-class 32x32 grey data, fmnist-xs tokenizer and
generator exports, a small classifier) and asserts the error is a single line that starts with the
broken file's path. A few stage-level tests run the entry points (in process, and two as subprocesses)
for the exit code, the one-line stderr and the absence of any output.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from sphereard.ar import create_generator
from sphereard.config import ClassifierConfig, parse_params
from sphereard.data import ShardDataset, images_as_uint8, load_manifest, prepare_dataset
from sphereard.data.sources import parse_emoji_test
from sphereard.errors import UserError
from sphereard.eval import (adm_ref_stats, build_extractor, load_classifier, load_ref_stats, load_samples_npz,
                            save_classifier, save_ref_stats)
from sphereard.eval.classifier import SmallCNN, train_classifier
from sphereard.eval.metrics import RefStats
from sphereard.ar.export import check_fits_data, check_pair, load_generator
from sphereard.ar.task import generator_arch_for_cache
from sphereard.export import export_model
from sphereard.tokenizer.export import load_tokenizer
from sphereard.tokenizer import create_tokenizer
from sphereard.tokenizer.losses import load_lpips
from sphereard.latents import LATENTS_FILE, META_FILE, LatentCacheWriter, read_latent_cache
from sphereard.profiles import materialise
from sphereard.train.checkpoint import LATEST_FILE, STATE_FILE, latest_state, load_latest, save_checkpoint
from sphereard.utils.io import sha256_file

REPO = Path(__file__).resolve().parent.parent
SIZE, CLASSES = 32, 2
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # conv layers in torchvision vgg16.features


# --- a tiny valid workspace (built once, copied per case) --------------------------------------------

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
                          shard_rows=64)
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


def rewrite_shard(root: Path, split: str, image: bytes) -> None:
    """Replace the first image of a split's shard, keeping the manifest consistent (sha256, rows)."""
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["splits"][split]["shards"][0]
    shard = root / entry["file"]
    table = pq.read_table(shard)
    images = table.column("image").to_pylist()
    images[0] = image
    pq.write_table(table.set_column(0, "image", pa.array(images, pa.binary())), shard)
    entry["sha256"] = sha256_file(shard)
    manifest_path.write_text(json.dumps(manifest))


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


# --- the table ------------------------------------------------------------------------------------------

class Case(NamedTuple):
    name: str
    broken: str
    entry: str
    fragment: str  # regex searched in the message, which must also start with the broken file's path
    run: Callable[[Path, Path], object]  # (workspace, tmp) -> breaks a copy and calls the entry point


def _tok_meta(change):
    def run(ws, tmp):
        edit_json(copy(ws, "tok", tmp) / "model.json", change)
        return load_tokenizer(tmp / "tok")
    return run


def _clf_meta(change):
    def run(ws, tmp):
        edit_json(copy(ws, "clf", tmp) / "meta.json", change)
        return load_classifier(tmp / "clf")
    return run


def _manifest(change, read=lambda root: load_manifest(root)):
    def run(ws, tmp):
        edit_json(copy(ws, "data", tmp) / "manifest.json", change)
        return read(tmp / "data")
    return run


def _case_export_truncated_meta(ws, tmp):
    truncate(copy(ws, "tok", tmp) / "model.json")
    return load_tokenizer(tmp / "tok")


def _case_export_meta_not_object(ws, tmp):
    (copy(ws, "tok", tmp) / "model.json").write_text("[1, 2]")
    return load_tokenizer(tmp / "tok")


def _case_export_missing_weights(ws, tmp):
    (copy(ws, "gen", tmp) / "model.safetensors").unlink()
    return load_generator(tmp / "gen")


def _case_export_other_kind(ws, tmp):
    return load_tokenizer(copy(ws, "gen", tmp))


def _case_export_other_model_weights(ws, tmp):
    shutil.copy(ws / "gen" / "model.safetensors", copy(ws, "tok", tmp) / "model.safetensors")
    return load_tokenizer(tmp / "tok")


def _case_export_truncated_weights(ws, tmp):
    truncate(copy(ws, "gen", tmp) / "model.safetensors")
    return load_generator(tmp / "gen")


def _case_export_png_weights(ws, tmp):
    (copy(ws, "tok", tmp) / "model.safetensors").write_bytes(png_bytes())
    return load_tokenizer(tmp / "tok")


def _case_export_nan_weights(ws, tmp):
    nan_weights(copy(ws, "tok", tmp) / "model.safetensors")
    return load_tokenizer(tmp / "tok")


def _case_export_other_posterior(ws, tmp):
    return load_tokenizer(copy(ws, "tok", tmp), posterior="gaussian")


def _case_export_pair_mismatch(ws, tmp):
    vae16 = create_tokenizer("fmnist-xs", latent_dim=16)
    export_model(tmp / "tok16", vae16, {"kind": "tokenizer", "preset": "fmnist-xs", "overrides": {"latent_dim": 16},
                                        "posterior": "spherical", "radius": vae16.radius})
    vae, _ = load_tokenizer(tmp / "tok16")
    gen, _ = load_generator(copy(ws, "gen", tmp))
    return check_pair(vae, tmp / "tok16", gen, tmp / "gen")


def _case_export_other_data(ws, tmp):
    gen = create_generator("fmnist-xs")
    export_model(tmp / "gen10", gen, {"kind": "generator", "preset": "fmnist-xs", "overrides": {},
                                      "posterior": "spherical", "radius": 1.0, "step": 1})
    vae, _ = load_tokenizer(copy(ws, "tok", tmp))
    gen, _ = load_generator(tmp / "gen10")
    data = copy(ws, "data", tmp)
    return check_fits_data(vae, tmp / "tok", gen, tmp / "gen10", load_manifest(data), data / "manifest.json")


def _case_clf_other_data(ws, tmp):
    from pipelines.evaluate import check_classifier

    save_classifier(SmallCNN(10, 1, SIZE, width=8, feature_dim=16), tmp / "clf_out" / "model")
    ext = build_extractor("classifier", classifier_path=tmp / "clf_out" / "model")
    params = SimpleNamespace(classifier=SimpleNamespace(out=str(tmp / "clf_out")))
    return check_classifier([ext], load_manifest(copy(ws, "data", tmp)), params)


def _case_clf_other_weights(ws, tmp):
    save_file({k: v.contiguous() for k, v in SmallCNN(CLASSES, 1, SIZE, width=16, feature_dim=16).state_dict().items()},
              str(copy(ws, "clf", tmp) / "model.safetensors"))
    return build_extractor("classifier", classifier_path=tmp / "clf")


def _case_clf_truncated_weights(ws, tmp):
    truncate(copy(ws, "clf", tmp) / "model.safetensors")
    return load_classifier(tmp / "clf")


def _case_clf_truncated_meta(ws, tmp):
    truncate(copy(ws, "clf", tmp) / "meta.json")
    return load_classifier(tmp / "clf")


def _case_one_class_data(ws, tmp):
    return train_classifier(copy(ws, "data1", tmp), ClassifierConfig(steps=1, batch_size=2, width=8, feature_dim=8))


def _case_manifest_truncated(ws, tmp):
    truncate(copy(ws, "data", tmp) / "manifest.json")
    return load_manifest(tmp / "data")


def _case_shard_corrupt_unverified(ws, tmp):
    root = copy(ws, "data", tmp)
    shard = root / json.loads((root / "manifest.json").read_text())["splits"]["train"]["shards"][0]["file"]
    truncate(shard)
    return images_as_uint8(root, "train", verify=False)


def _case_shard_not_an_image(ws, tmp):
    rewrite_shard(copy(ws, "data", tmp), "train", b"not a png")
    return images_as_uint8(tmp / "data", "train")


def _case_shard_wrong_size(ws, tmp):
    rewrite_shard(copy(ws, "data", tmp), "test", png_bytes(16))
    return images_as_uint8(tmp / "data", "test")


def _case_dataset_wrong_size(ws, tmp):
    rewrite_shard(copy(ws, "data", tmp), "test", png_bytes(16))
    return ShardDataset(tmp / "data", "test")[0]


def _case_folder_not_an_image(ws, tmp):
    folder = tmp / "folder"
    shutil.copytree(ws / "src2", folder)
    (folder / "train" / "a" / "notes.png").write_text("not an image")
    cfg = SimpleNamespace(source="imagefolder", path=str(folder), labels_path=None, emoji_label="group",
                          image_size=SIZE, resize="pad", channels=1, test_fraction=0.5, max_per_class=None,
                          shard_rows=64)
    return prepare_dataset(cfg, tmp / "out")


def _case_idx_corrupt_gzip(ws, tmp):
    raw = bytes(range(256)) * 64
    gz = bytearray(gzip.compress(raw))
    gz[40] ^= 0xFF
    gz[60] ^= 0xFF
    (tmp / "fm").mkdir()
    (tmp / "fm" / "train-images-idx3-ubyte.gz").write_bytes(bytes(gz))
    cfg = SimpleNamespace(source="fashion_mnist", path=str(tmp / "fm"), image_size=SIZE, resize="pad", channels=1,
                          test_fraction=0.5, max_per_class=None, shard_rows=64)
    return prepare_dataset(cfg, tmp / "out")


def _case_emoji_test_not_utf8(ws, tmp):
    (tmp / "emoji-test.txt").write_bytes("# group: Smileys\n1F600 ; fully-qualified # \xe9\n".encode("latin-1"))
    return parse_emoji_test(tmp / "emoji-test.txt", "group")


def _case_emoji_test_bad_code_point(ws, tmp):
    (tmp / "emoji-test.txt").write_text("# group: Smileys\nZZZZ ; fully-qualified # x\n")
    return parse_emoji_test(tmp / "emoji-test.txt", "group")


def _case_adm_png(ws, tmp):
    (tmp / "ref.npz").write_bytes(png_bytes())
    return adm_ref_stats(tmp / "ref.npz")


def _case_adm_truncated(ws, tmp):
    rng = np.random.default_rng(0)
    np.savez(tmp / "ref.npz", mu=rng.normal(size=64), sigma=np.eye(64))
    truncate(tmp / "ref.npz")
    return adm_ref_stats(tmp / "ref.npz")


def _case_adm_npy(ws, tmp):
    np.save(tmp / "ref.npy", np.zeros(3))
    return adm_ref_stats(tmp / "ref.npy")


def _case_adm_nan_mu(ws, tmp):
    np.savez(tmp / "ref.npz", mu=np.full(4, np.nan), sigma=np.eye(4))
    return adm_ref_stats(tmp / "ref.npz")


def _case_adm_wrong_dim(ws, tmp):
    np.savez(tmp / "ref.npz", mu=np.zeros(10), sigma=np.eye(10))
    return adm_ref_stats(tmp / "ref.npz")


def _case_inception_other_weights(ws, tmp):
    torch.save({"conv.weight": torch.zeros(1)}, tmp / "inc.pth")
    return build_extractor("inception", inception_weights=tmp / "inc.pth")


def _case_lpips_text(ws, tmp):
    (tmp / "vgg16.pth").write_text("not a checkpoint")
    return load_lpips(tmp / "vgg16.pth")


def _case_lpips_code(ws, tmp):
    torch.save({"features.0.weight": Path("x")}, tmp / "vgg16.pth")  # an arbitrary object: refused
    return load_lpips(tmp / "vgg16.pth")


def _case_lpips_other_layout(ws, tmp):
    torch.save({"conv.weight": torch.zeros(1)}, tmp / "vgg16.pth")
    return load_lpips(tmp / "vgg16.pth")


def _case_lpips_wrong_shapes(ws, tmp):
    torch.save(vgg_state(), tmp / "vgg16.pth")
    return load_lpips(tmp / "vgg16.pth")


def _latent_meta(change, verify=False):
    def run(ws, tmp):
        edit_json(latent_cache(tmp) / META_FILE, change)
        return read_latent_cache(tmp / "latents", verify=verify)
    return run


def _case_latent_meta_truncated(ws, tmp):
    truncate(latent_cache(tmp) / META_FILE)
    return read_latent_cache(tmp / "latents")


def _case_latent_meta_not_object(ws, tmp):
    (latent_cache(tmp) / META_FILE).write_text("[1, 2]")
    return read_latent_cache(tmp / "latents")


def _case_latent_parquet_corrupt_unverified(ws, tmp):
    truncate(latent_cache(tmp) / LATENTS_FILE)
    return read_latent_cache(tmp / "latents", verify=False)


def _case_ref_stats_truncated(ws, tmp):
    truncate(ref_stats(tmp, features=np.zeros((3, 4), np.float32)))
    return load_ref_stats(tmp / "ref_classifier.npz")


def _ref_stats_case(**arrays):
    return lambda ws, tmp: load_ref_stats(ref_stats(tmp, **arrays))


def _case_ckpt_state_not_object(ws, tmp):
    (tiny_checkpoint(tmp) / "step-00000003" / STATE_FILE).write_text("[3]")
    return load_latest(tmp / "ckpt")


def _ckpt_record(change):
    def run(ws, tmp):
        edit_json(tiny_checkpoint(tmp) / "step-00000003" / STATE_FILE, change)
        return load_latest(tmp / "ckpt")
    return run


def _case_ckpt_latest_not_utf8(ws, tmp):
    (tiny_checkpoint(tmp) / LATEST_FILE).write_bytes(b"\xff\xfe step")
    return load_latest(tmp / "ckpt")


def _case_ckpt_latest_outside(ws, tmp):
    """`latest` names ../elsewhere, a complete checkpoint outside the checkpoint dir."""
    shutil.copytree(tiny_checkpoint(tmp) / "step-00000003", tmp / "elsewhere")
    (tmp / "ckpt" / LATEST_FILE).write_text("../elsewhere\n")
    return load_latest(tmp / "ckpt")


def _case_export_without_checkpoint(ws, tmp):
    """A training stage asked to export before any checkpoint exists (an emptied ckpt dir)."""
    (tmp / "ckpt").mkdir()
    return latest_state(tmp / "ckpt", "ema")


def _case_export_without_ema(ws, tmp):
    """The newest checkpoint holds no 'ema' state (written by another task)."""
    return latest_state(tiny_checkpoint(tmp), "ema")


def _case_generator_cache_without_classes(ws, tmp):
    """A latent cache whose meta.json lacks what the generator is checked against (num_classes)."""
    params = train_params(tmp)
    params = dataclasses.replace(params, encode=dataclasses.replace(params.encode, out=str(tmp)))
    edit_json(latent_cache(tmp).rename(tmp / "spherical") / "meta.json", _drop("num_classes"))
    return generator_arch_for_cache(params, "spherical")


def _case_ckpt_state_name_outside(ws, tmp):
    """A state named '../evil', whose file would be read from outside the step dir."""
    ckpt = tiny_checkpoint(tmp)
    shutil.copy(ckpt / "step-00000003" / "model.safetensors", ckpt / "evil.safetensors")
    return _ckpt_record(lambda r: r["structure"].update({"../evil": {}}))(ws, tmp)


def _resume_case(kind, saved_overrides, change=lambda states: None):
    """Resume the smoke preset's task from a checkpoint of a task with `saved_overrides`, edited by `change`."""
    def run(ws, tmp):
        key = "tokenizer_overrides" if kind == "tokenizer" else "generator_overrides"
        saved, _, _ = built_task(kind, train_params(tmp, **{key: saved_overrides}))
        states = saved.state_dicts()
        change(states)
        return resume_from(tmp, kind, states, train_params(tmp))
    return run


def _bad_exp_avg(states):
    """A one-step Adam state whose exp_avg for parameter 0 has another shape (same counts, same groups)."""
    first = states["optimizer"]["param_groups"][0]["params"][0]
    states["optimizer"]["state"][first] = {"step": torch.tensor(1.0), "exp_avg": torch.zeros(3),
                                           "exp_avg_sq": torch.zeros(3)}


def _case_encode_other_posterior(ws, tmp):
    """A spherical export where the gaussian tokenizer's should be: encode must not cache its latents."""
    from pipelines.encode import encode_split

    shutil.copytree(ws / "tok", tmp / "tok_out" / "gaussian" / "model")
    copy(ws, "data", tmp)
    return encode_split(train_params(tmp), "gaussian", torch.device("cpu"))


def _case_sweep_marker_truncated(ws, tmp):
    from sphereard.sweep.trial import TRAIN_CONFIG_FILE, _fresh_or_resumable

    (tmp / "trial").mkdir()
    (tmp / "trial" / TRAIN_CONFIG_FILE).write_text('{"sha256": "ab')
    return _fresh_or_resumable(tmp / "trial", {"settings": {}})


def _sweep_reports(text):
    def run(ws, tmp):
        from sphereard.sweep.trial import REPORTS_FILE, read_reports

        (tmp / REPORTS_FILE).write_text(text)
        return read_reports(tmp / REPORTS_FILE)
    return run


def _samples_case(**kwargs):
    channels = kwargs.pop("channels", 1)
    return lambda ws, tmp: load_data_samples(samples(tmp, **kwargs), channels)


def _drop(*keys):
    def change(data):
        for key in keys:
            del data[key]
    return change


def _set(key, value):
    return lambda data: data.__setitem__(key, value)


def _first_shard_drop(key):
    return lambda m: m["splits"]["train"]["shards"][0].pop(key)


GREY = np.zeros((4, SIZE, SIZE, 1), np.uint8)
COLOUR = np.stack([np.zeros((4, SIZE, SIZE), np.uint8), np.ones((4, SIZE, SIZE), np.uint8),
                   np.zeros((4, SIZE, SIZE), np.uint8)], axis=-1)

CASES = [
    # exported models (model.json + model.safetensors): sample, evaluate, encode, sweep
    Case("export-truncated-meta", "model.json cut in half", "load_tokenizer", r"model\.json: not valid JSON",
         _case_export_truncated_meta),
    Case("export-meta-not-object", "model.json holds a list", "load_tokenizer", r"model\.json: .*JSON object",
         _case_export_meta_not_object),
    Case("export-meta-missing-key", "model.json lacks 'preset'", "load_tokenizer",
         r"model\.json: key 'preset' missing", _tok_meta(_drop("preset"))),
    Case("export-meta-wrong-type", "radius is a string", "load_tokenizer",
         r"model\.json: key 'radius' must be number, got 'big'", _tok_meta(_set("radius", "big"))),
    Case("export-meta-bad-radius", "radius is negative", "load_tokenizer",
         r"model\.json: key 'radius' must be a positive finite number", _tok_meta(_set("radius", -1.0))),
    Case("export-meta-unknown-preset", "preset names no preset", "load_tokenizer",
         r"model\.json: tokenizer\.preset='nope': unknown preset", _tok_meta(_set("preset", "nope"))),
    Case("export-meta-unknown-override", "overrides has an unknown key", "load_tokenizer",
         r"model\.json: .*bogus", _tok_meta(_set("overrides", {"bogus": 1}))),
    Case("export-missing-weights", "model.safetensors deleted", "load_generator",
         r"model\.safetensors: exported model file missing", _case_export_missing_weights),
    Case("export-other-kind", "a generator export where a tokenizer is read", "load_tokenizer",
         r"model\.json: key 'kind' is 'generator'.*expected a tokenizer", _case_export_other_kind),
    Case("export-other-model-weights", "generator weights beside tokenizer metadata", "load_tokenizer",
         r"model\.safetensors: weights of a different model: no tensor '.+' \(.*\), which the HybridVAE needs",
         _case_export_other_model_weights),
    Case("export-wrong-shape", "model.json says latent_dim 16, weights have 8", "load_tokenizer",
         r"model\.safetensors: weights of a different model: tensor '.+' has shape \(.+\) in the file but \(.+\)",
         _tok_meta(_set("overrides", {"latent_dim": 16}))),
    Case("export-truncated-weights", "model.safetensors cut in half", "load_generator",
         r"model\.safetensors: cannot read exported weights: truncated, corrupt", _case_export_truncated_weights),
    Case("export-png-weights", "a PNG as model.safetensors", "load_tokenizer",
         r"model\.safetensors: cannot read exported weights", _case_export_png_weights),
    Case("export-nan-weights", "a weight tensor is all NaN", "load_tokenizer",
         r"model\.safetensors: tensor '.+' holds NaN or inf", _case_export_nan_weights),
    Case("export-other-posterior", "the spherical export read as the gaussian one", "load_tokenizer",
         r"model\.json: key 'posterior' is 'spherical', expected 'gaussian'", _case_export_other_posterior),
    Case("export-pair-mismatch", "a tokenizer with d=16 beside a generator for d=8", "check_pair (sample, evaluate)",
         r"tok16: tokenizer latents \(d=16, grid 8\) do not fit the generator in .*gen \(d=8, grid 8\)",
         _case_export_pair_mismatch),
    Case("export-other-data", "a generator of 10 classes for 2-class data", "check_fits_data (evaluate)",
         r"gen10: generator has 10 classes, the data in .*manifest\.json have 2", _case_export_other_data),
    # in-project classifier (meta.json + model.safetensors): reference, evaluate, sweep
    Case("classifier-truncated-meta", "meta.json cut in half", "load_classifier", r"meta\.json: not valid JSON",
         _case_clf_truncated_meta),
    Case("classifier-meta-missing-key", "meta.json lacks 'width'", "load_classifier",
         r"meta\.json: key 'width' missing", _clf_meta(_drop("width"))),
    Case("classifier-meta-one-class", "meta.json says 1 class", "load_classifier",
         r"meta\.json: key 'num_classes': 1 class", _clf_meta(_set("num_classes", 1))),
    Case("classifier-other-weights", "weights of a wider network", "build_extractor('classifier')",
         r"model\.safetensors: weights of a different model: tensor '.+' has shape", _case_clf_other_weights),
    Case("classifier-truncated-weights", "model.safetensors cut in half", "load_classifier",
         r"model\.safetensors: cannot read classifier weights", _case_clf_truncated_weights),
    Case("classifier-other-data", "a 10-class classifier for 2-class data", "check_classifier (evaluate)",
         r"clf_out/model/meta\.json: classifier has 10 classes, the data have 2", _case_clf_other_data),
    Case("classifier-one-class-data", "a one-class dataset reaches the classifier", "train_classifier",
         r"manifest\.json: 1 class\(es\); the classifier needs at least 2", _case_one_class_data),
    # prepared data (manifest.json + Parquet shards): every stage after prepare
    Case("manifest-truncated", "manifest.json cut in half", "load_manifest", r"manifest\.json: not valid JSON",
         _case_manifest_truncated),
    Case("manifest-missing-key", "manifest.json lacks 'channels'", "images_as_uint8",
         r"manifest\.json: key 'channels' missing", _manifest(_drop("channels"),
                                                              lambda root: images_as_uint8(root, "test"))),
    Case("manifest-wrong-type", "image_size is a string", "load_manifest",
         r"manifest\.json: key 'image_size' must be int, got '32'", _manifest(_set("image_size", "32"))),
    Case("manifest-shard-entry", "a shard entry lacks sha256", "load_manifest",
         r"manifest\.json: key 'splits\.train\.shards\[0\]\.sha256' missing", _manifest(_first_shard_drop("sha256"))),
    Case("manifest-empty-split", "the test split lists no shards", "images_as_uint8",
         r"manifest\.json: split 'test' has no images",
         _manifest(lambda m: m["splits"]["test"].update(shards=[]), lambda root: images_as_uint8(root, "test"))),
    Case("manifest-fewer-classes", "num_classes 1 but shards hold label 1", "images_as_uint8",
         r"manifest\.json: split 'train' has labels outside \[0, 1\)",
         _manifest(lambda m: m.update(num_classes=1, classes=["a"]), lambda root: images_as_uint8(root, "train"))),
    Case("shard-corrupt-unverified", "a shard cut in half, read without verification", "images_as_uint8",
         r"train-00000\.parquet: not a readable shard", _case_shard_corrupt_unverified),
    Case("shard-not-an-image", "a shard row holds non-image bytes", "images_as_uint8",
         r"train-00000\.parquet row 0: not a decodable image", _case_shard_not_an_image),
    Case("shard-wrong-size", "a shard row holds a 16x16 image", "images_as_uint8",
         r"test-00000\.parquet row 0: image is \(16, 16, 1\), manifest\.json says \(32, 32, 1\)",
         _case_shard_wrong_size),
    Case("dataset-row-wrong-size", "a 16x16 image read through the training Dataset", "ShardDataset",
         r"test-00000\.parquet row 0: image is \(16, 16, 1\)", _case_dataset_wrong_size),
    # raw sources (prepare)
    Case("folder-not-an-image", "a text file named .png in an image folder", "prepare_dataset",
         r"notes\.png: corrupt or truncated image", _case_folder_not_an_image),
    Case("idx-corrupt-gzip", "a Fashion-MNIST .gz with corrupt deflate data", "prepare_dataset",
         r"train-images-idx3-ubyte\.gz: corrupt or truncated", _case_idx_corrupt_gzip),
    Case("emoji-test-not-utf8", "emoji-test.txt in latin-1", "parse_emoji_test",
         r"emoji-test\.txt: not a UTF-8 text file", _case_emoji_test_not_utf8),
    Case("emoji-test-bad-code-point", "a code point that is not hex", "parse_emoji_test",
         r"emoji-test\.txt: line .*ZZZZ.*: code points must be hex", _case_emoji_test_bad_code_point),
    # ADM reference batch (evaluation.adm_reference): reference
    Case("adm-png", "a PNG given as the ADM reference", "adm_ref_stats",
         r"ref\.npz: not a \.npz archive .*begins with b'\\x89PNG", _case_adm_png),
    Case("adm-truncated", "the reference .npz cut in half", "adm_ref_stats",
         r"ref\.npz: ADM \.npz file truncated or corrupt", _case_adm_truncated),
    Case("adm-npy", "a single .npy array as the reference", "adm_ref_stats",
         r"ref\.npy: not a \.npz archive .*single \.npy array", _case_adm_npy),
    Case("adm-nan-mu", "mu holds NaN", "adm_ref_stats", r"ref\.npz: mu must be finite", _case_adm_nan_mu),
    Case("adm-wrong-dim", "10-d statistics, not Inception pool3", "adm_ref_stats",
         r"ref\.npz: mu has dim 10, expected 2048", _case_adm_wrong_dim),
    # samples.npz (sampling.out/<posterior>/): evaluate, with the data's size / channels / classes
    Case("samples-wrong-size", "16x16 samples for 32x32 data", "load_samples_npz (evaluate)",
         r"samples\.npz: images are 16x16, the data's are 32x32",
         _samples_case(images=np.zeros((4, 16, 16, 3), np.uint8))),
    Case("samples-colour-for-grey", "3 different channels for 1-channel data", "load_samples_npz (evaluate)",
         r"samples\.npz: images have 3 different channels \(colour\), the data has 1", _samples_case(images=COLOUR)),
    Case("samples-grey-for-rgb", "1-channel samples for 3-channel data", "load_samples_npz (evaluate)",
         r"samples\.npz: images have 1 channel\(s\), the data has 3", _samples_case(images=GREY, channels=3)),
    Case("samples-label-out-of-range", "label 5 with 2 classes", "load_samples_npz (evaluate)",
         r"samples\.npz: label 5 \(arr_1\) outside the data's classes \[0, 2\)",
         _samples_case(labels=np.array([0, 1, 5, 1]))),
    Case("samples-negative-label", "label -1", "load_samples_npz (evaluate)",
         r"samples\.npz: label -1 \(arr_1\) outside", _samples_case(labels=np.array([0, -1, 0, 1]))),
    Case("samples-label-count", "3 labels for 4 images", "load_samples_npz (evaluate)",
         r"samples\.npz: 3 labels \(arr_1\) for 4 images \(arr_0\)", _samples_case(labels=np.array([0, 1, 0]))),
    Case("samples-float-labels", "labels stored as floats", "load_samples_npz (evaluate)",
         r"samples\.npz: arr_1 \(labels\) must be integers", _samples_case(labels=np.zeros(4))),
    Case("samples-float-images", "images stored as float32", "load_samples_npz (evaluate)",
         r"samples\.npz: arr_0 must be uint8", _samples_case(images=np.zeros((4, SIZE, SIZE, 3), np.float32))),
    Case("samples-no-images", "only latents, no arr_0", "load_samples_npz (evaluate)",
         r"samples\.npz: has neither arr_0", _samples_case(images=False, labels=False, latents=np.zeros((4, 2)))),
    Case("samples-one-image", "a single sample", "load_samples_npz (evaluate)",
         r"samples\.npz: 1 image\(s\); metrics need at least 2", _samples_case(images=GREY[:1], labels=False)),
    # local FID Inception weights (evaluation.inception_weights): reference, evaluate
    Case("inception-other-weights", "a state dict of some other network", "build_extractor('inception')",
         r"inc\.pth: not torch-fidelity Inception-v3 weights \(no tensor 'Conv2d_1a_3x3\.conv\.weight'",
         _case_inception_other_weights),
    # local VGG16 weights for LPIPS (evaluation.lpips_weights_path, tokenizer training)
    Case("lpips-text", "a text file as VGG16 weights", "load_lpips",
         r"vgg16\.pth: cannot read VGG16 weights .*not a tensors-only torch\.save file", _case_lpips_text),
    Case("lpips-code", "a pickle carrying an arbitrary object", "load_lpips",
         r"vgg16\.pth: .*refused by weights-only loading", _case_lpips_code),
    Case("lpips-other-layout", "a state dict of some other network", "load_lpips",
         r"vgg16\.pth: not a torchvision vgg16 state dict \(missing features\.0\.weight\)", _case_lpips_other_layout),
    Case("lpips-wrong-shapes", "vgg16 keys with the wrong shapes", "load_lpips",
         r"vgg16\.pth: weights of a different model: tensor 'slice1\.0\.weight' has shape \(1,\) in the file",
         _case_lpips_wrong_shapes),
    # reference statistics (evaluation.out/reference/<extractor>.npz): evaluate, sweep
    Case("ref-stats-truncated", "the reference .npz cut in half", "load_ref_stats",
         r"ref_classifier\.npz: reference statistics file truncated or corrupt", _case_ref_stats_truncated),
    Case("ref-stats-nan-sigma", "sigma holds NaN", "load_ref_stats", r"ref_classifier\.npz: sigma must be finite",
         _ref_stats_case(sigma=np.full((4, 4), np.nan))),
    Case("ref-stats-scalar-mu", "mu is a 0-d array", "load_ref_stats",
         r"ref_classifier\.npz: mu \(\) / sigma \(1, 1\) shapes do not match",
         _ref_stats_case(mu=np.array(0.0), sigma=np.eye(1))),
    Case("ref-stats-features-dim", "5-d feature rows beside 4-d statistics", "load_ref_stats",
         r"ref_classifier\.npz: features \(3, 5\) do not match mu \(4,\)",
         _ref_stats_case(features=np.zeros((3, 5), np.float32))),
    # latent cache (encode.out/<posterior>/meta.json + latents.parquet): train_ar, sweep
    Case("latent-meta-truncated", "meta.json cut in half", "read_latent_cache", r"meta\.json: not valid JSON",
         _case_latent_meta_truncated),
    Case("latent-meta-not-object", "meta.json holds a list", "read_latent_cache",
         r"meta\.json: latent cache metadata must hold a JSON object", _case_latent_meta_not_object),
    Case("latent-meta-missing-sha256", "meta.json lacks 'sha256'", "read_latent_cache",
         r"meta\.json: key 'sha256' missing", _latent_meta(_drop("sha256"), verify=True)),
    Case("latent-meta-missing-num-tokens", "meta.json lacks 'num_tokens' (read unverified)", "read_latent_cache",
         r"meta\.json: key 'num_tokens' missing", _latent_meta(_drop("num_tokens"))),
    Case("latent-meta-wrong-type", "params_dim is a string", "read_latent_cache",
         r"meta\.json: key 'params_dim' must be int, got '3'", _latent_meta(_set("params_dim", "3"))),
    Case("latent-meta-bad-log-channels", "log_channels names channel 7 of 3", "read_latent_cache",
         r"meta\.json: key 'log_channels' must list channels in \[0, 3\), got \[7\]",
         _latent_meta(_set("log_channels", [7]))),
    Case("latent-parquet-corrupt-unverified", "latents.parquet cut in half, read without verification",
         "read_latent_cache", r"latents\.parquet: not a readable latent cache",
         _case_latent_parquet_corrupt_unverified),
    Case("latent-rows-mismatch", "meta.json says 5 rows, the file holds 4", "read_latent_cache",
         r"latents\.parquet: holds 4 rows, .*meta\.json says 5", _latent_meta(_set("rows", 5))),
    Case("latent-width-mismatch", "meta.json says 2 tokens per row, the file holds 4", "read_latent_cache",
         r"latents\.parquet: column 'params' holds .*meta\.json says 2 tokens x 3 floats per row",
         _latent_meta(_set("num_tokens", 2))),
    # training checkpoints (<stage out>/<posterior>/ckpt): train_vae, train_ar (resume, export), sweep
    Case("ckpt-state-not-object", "state.json holds a list", "load_latest",
         r"state\.json: checkpoint state must hold a JSON object", _case_ckpt_state_not_object),
    Case("ckpt-state-missing-step", "state.json lacks 'step'", "load_latest", r"state\.json: key 'step' missing",
         _ckpt_record(_drop("step"))),
    Case("ckpt-state-bad-structure", "a tensor placeholder holds a list", "load_latest",
         r"model\.safetensors: does not match its structure in state\.json",
         _ckpt_record(lambda r: r["structure"].update(model={"weight": {"__tensor__": ["weight"]}}))),
    Case("ckpt-state-name-outside", "a state named '../evil'", "load_latest",
         r"state\.json: state name '\.\./evil' in 'structure' is not a plain name", _case_ckpt_state_name_outside),
    Case("ckpt-latest-not-utf8", "latest holds non-UTF-8 bytes", "load_latest",
         r"ckpt/latest: not a text file naming a step dir", _case_ckpt_latest_not_utf8),
    Case("ckpt-latest-outside", "latest names ../elsewhere (a checkpoint outside the dir)", "load_latest",
         r"ckpt/latest: names '\.\./elsewhere', not a step dir of", _case_ckpt_latest_outside),
    Case("export-no-checkpoint", "export asked for with an empty checkpoint dir", "latest_state (train_vae, train_ar)",
         r"ckpt: no checkpoint to read", _case_export_without_checkpoint),
    Case("export-no-ema-state", "the newest checkpoint has no 'ema' state", "latest_state (train_vae, train_ar)",
         r"ckpt/step-00000003: state 'ema': missing from the checkpoint", _case_export_without_ema),
    Case("generator-cache-meta-no-classes", "latent meta.json lacks num_classes", "generator_arch_for_cache (train_ar)",
         r"meta\.json: key 'num_classes' missing", _case_generator_cache_without_classes),
    Case("resume-tokenizer-other-preset", "a checkpoint of mlp_hidden 96 resumed with 64", "_resume (train_vae)",
         r"ckpt/step-00000001: state 'model': weights of a different model: tensor '.+' has shape \(.+\) in the file "
         r"but \(.+\) in the HybridVAE.*; remove .*ckpt to start over",
         _resume_case("tokenizer", {"mlp_hidden": 96})),
    Case("resume-generator-other-preset", "a checkpoint of 3 classes resumed with 10", "_resume (train_ar)",
         r"ckpt/step-00000001: state 'model': weights of a different model: tensor '.+' has shape",
         _resume_case("generator", {"num_classes": 3})),
    Case("resume-missing-ema", "a checkpoint without the 'ema' state", "_resume (train_vae)",
         r"ckpt/step-00000001: state 'ema': missing from the checkpoint",
         _resume_case("tokenizer", {}, lambda states: states.pop("ema"))),
    Case("resume-missing-optimizer", "a checkpoint without the 'optimizer' state", "_resume (train_ar)",
         r"ckpt/step-00000001: state 'optimizer': missing from the checkpoint",
         _resume_case("generator", {}, lambda states: states.pop("optimizer"))),
    Case("resume-optimizer-wrong-shape", "Adam's exp_avg of another shape", "_resume (train_vae)",
         r"ckpt/step-00000001: state 'optimizer': optimizer state of a different model: 'exp_avg' of parameter 0 "
         r"\(group 0\) has shape \(3,\)", _resume_case("tokenizer", {}, _bad_exp_avg)),
    # the encode stage's tokenizer export (tokenizer.out/<posterior>/model)
    Case("encode-other-posterior", "the spherical export where the gaussian one should be", "encode_split",
         r"tok_out/gaussian/model/model\.json: key 'posterior' is 'spherical', expected 'gaussian'",
         _case_encode_other_posterior),
    # sweep training trials (sweep.out/trials/<trial>/): the config marker and the AR loss reports
    Case("sweep-marker-truncated", "train_config.json cut short", "_fresh_or_resumable (sweep trial)",
         r"train_config\.json: not valid JSON .*; delete it", _case_sweep_marker_truncated),
    Case("sweep-reports-truncated", "ar_reports.json cut short", "read_reports (sweep trial)",
         r"ar_reports\.json: not valid JSON", _sweep_reports('{"5": 0.3')),
    Case("sweep-reports-not-number", "a report holds a string", "read_reports (sweep trial)",
         r"ar_reports\.json: key '5' must be number or NoneType, got 'x'", _sweep_reports('{"5": "x"}')),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_naming_the_file(case, ws, tmp_path):
    with pytest.raises(UserError) as info:
        case.run(ws, tmp_path)
    message = str(info.value)
    assert "\n" not in message, f"{case.name}: not one line: {message!r}"
    assert message.startswith(str(tmp_path)), f"{case.name}: does not start with the file: {message}"
    assert re.search(case.fragment, message), f"{case.name}: {message!r} lacks /{case.fragment}/"
    assert not (tmp_path / "out").exists(), f"{case.name}: partial output left"


def test_case_table_is_unique_and_complete():
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))
    assert all(c.broken and c.entry and c.fragment for c in CASES)


# --- the good inputs still load (the workspace is valid; ADM grey samples read either way) -------------

def test_workspace_is_valid_and_grey_rgb_samples_read_back_as_grey(ws, tmp_path):
    vae, _ = load_tokenizer(ws / "tok", posterior="spherical")
    gen, meta = load_generator(ws / "gen", posterior="spherical")
    assert gen.arch.num_classes == CLASSES and meta["step"] == 1 and vae.arch.image_size == SIZE
    load_classifier(ws / "clf")
    images, labels = load_data_samples(samples(tmp_path))  # 3 equal channels -> the data's 1 channel
    assert images.shape == (4, SIZE, SIZE, 1) and labels.tolist() == [0, 1, 0, 1]
    images, _ = load_samples_npz(samples(tmp_path, images=GREY), image_size=SIZE, channels=1, num_classes=CLASSES)
    assert images.shape == (4, SIZE, SIZE, 1)


# --- stages: exit 2, one line on stderr, nothing written ------------------------------------------------

def stage_params(root: Path, **changes) -> Path:
    """Smoke params with every input / output under `root` (relative paths), tracking off."""
    from sphereard.profiles import materialise

    data = materialise("smoke")
    outs = {"data": "data", "tokenizer": "tok_out", "encode": "latents", "generator": "gen_out",
            "sampling": "samples", "classifier": "clf_out", "evaluation": "metrics", "sweep": "sweep"}
    for block, out in outs.items():
        data[block]["out"] = out
    data["tracking"]["enabled"] = False
    for dotted, value in changes.items():
        block, key = dotted.split(".")
        data[block][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(data))
    return root / "params.yaml"


def run_stage_in_process(module, argv, monkeypatch, capsys) -> tuple[int, str]:
    from pipelines._cli import stage_main

    monkeypatch.setenv("SPHEREARD_CPU_THREADS", "1")
    monkeypatch.setattr(sys, "argv", [module.__name__, *argv])
    add_args = getattr(module, "add_posterior_arg", None) if "--posterior" in argv else None
    with pytest.raises(SystemExit) as exit_info:
        stage_main(module.__doc__, module.run, add_args)
    return exit_info.value.code, capsys.readouterr().err


def run_stage_subprocess(stage: str, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "SPHEREARD_CPU_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", f"pipelines.{stage}", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_evaluate_rejects_samples_of_another_size(ws, tmp_path, monkeypatch, capsys):
    import pipelines.evaluate as evaluate

    copy(ws, "data", tmp_path)
    (tmp_path / "samples" / "spherical").mkdir(parents=True)
    samples(tmp_path / "samples" / "spherical", images=np.zeros((4, 16, 16, 1), np.uint8))
    stage_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, err = run_stage_in_process(evaluate, ["--posterior", "spherical"], monkeypatch, capsys)
    assert code == 2
    assert error_lines(err) == [f"error: {Path('samples/spherical/samples.npz')}: images are 16x16, the data's "
                                "are 32x32"]
    assert "Traceback" not in err and not (tmp_path / "metrics").exists()


def test_reference_writes_nothing_when_the_adm_reference_is_not_npz(ws, tmp_path, monkeypatch):
    """The classifier statistics are computed first, but not written when the ADM reference then fails."""
    import pipelines.reference as reference
    from sphereard.config import load_params

    copy(ws, "data", tmp_path)
    (tmp_path / "ref.npz").write_bytes(png_bytes())
    params = load_params(stage_params(tmp_path, **{"evaluation.extractors": ["classifier", "inception"],
                                                   "evaluation.adm_reference": str(tmp_path / "ref.npz"),
                                                   "evaluation.num_real": 4}))
    clf = SmallCNN(CLASSES, 1, SIZE, width=8, feature_dim=16)
    standin = build_extractor("classifier", classifier=clf)
    monkeypatch.setattr(reference, "build_extractors", lambda params, device: [standin, standin])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"ref\.npz: not a \.npz archive"):
        reference.run(params, SimpleNamespace())
    assert not (tmp_path / "metrics").exists(), "no reference file of the failed run"


def test_train_classifier_stage_rejects_one_class_data(ws, tmp_path):
    copy(ws, "data1", tmp_path)
    stage_params(tmp_path, **{"data.out": "data1"})
    proc = run_stage_subprocess("train_classifier", [], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert error_lines(proc.stderr) == [f"error: {Path('data1/manifest.json')}: 1 class(es); the classifier needs "
                                        "at least 2 (a one-class dataset has nothing to classify)"]
    assert "Traceback" not in proc.stderr and not (tmp_path / "clf_out").exists()


def test_sample_stage_rejects_a_truncated_model_json(ws, tmp_path):
    shutil.copytree(ws / "gen", tmp_path / "gen_out" / "spherical" / "model")
    truncate(tmp_path / "gen_out" / "spherical" / "model" / "model.json")
    stage_params(tmp_path)
    proc = run_stage_subprocess("sample", ["--posterior", "spherical"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: {Path('gen_out/spherical/model/model.json')}: "
                                                   "not valid JSON"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "samples").exists()


def test_evaluate_runs_on_adm_rgb_samples_of_grey_data(ws, tmp_path, monkeypatch):
    """The valid counterpart: 3-channel grey samples (the ADM default) pass every check and are evaluated."""
    import pipelines.evaluate as evaluate
    import pipelines.reference as reference
    from sphereard.config import load_params
    from sphereard.eval import save_samples_npz

    copy(ws, "data", tmp_path)
    shutil.copytree(ws / "tok", tmp_path / "tok_out" / "spherical" / "model")
    shutil.copytree(ws / "gen", tmp_path / "gen_out" / "spherical" / "model")
    shutil.copytree(ws / "clf", tmp_path / "clf_out" / "model")
    params = load_params(stage_params(tmp_path, **{
        "evaluation.num_real": 8, "evaluation.kid_subset_size": 4, "evaluation.teacher_forced_images": 4,
        "evaluation.diagnostic_samples": 2, "evaluation.diagnostic_steps": 1, "evaluation.diagnostic_cfg_scales": [1.0],
        "tokenizer.eval_images": 4}))
    grey = np.random.default_rng(0).integers(0, 256, (6, SIZE, SIZE, 1), dtype=np.uint8)
    save_samples_npz(tmp_path / "samples" / "spherical" / "samples.npz", grey, np.arange(6) % CLASSES)
    monkeypatch.chdir(tmp_path)
    reference.run(params, SimpleNamespace())
    evaluate.run(params, SimpleNamespace(posterior="spherical"))
    metrics = json.loads((tmp_path / "metrics" / "spherical" / "metrics.json").read_text())
    assert metrics["num_samples"] == 6 and np.isfinite(metrics["fd_classifier"])


def test_stage_main_prints_any_user_error_on_one_line(tmp_path, monkeypatch, capsys):
    from pipelines._cli import stage_main

    def run(params, args):
        raise UserError("outputs/x.npz: first line\n  second line")

    monkeypatch.setenv("SPHEREARD_CPU_THREADS", "1")
    monkeypatch.setattr(sys, "argv", ["stage", "--params", str(stage_params(tmp_path))])
    with pytest.raises(SystemExit) as exit_info:
        stage_main("a stage", run)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: outputs/x.npz: first line second line\n"
