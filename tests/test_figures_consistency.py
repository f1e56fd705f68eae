"""Figures follow the shared conventions of sphereard/eval/figures.py: the AR training media grid logged
to MLflow has one row per class labelled with the class name (from the prepared data's manifest), and
the tracked run can log such a ready-made image next to its other sample grids."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

import sphereard.tokenizer.export
from sphereard.ar.task import MEDIA_PER_CLASS, GeneratorTask, media_grid, media_labels
from sphereard.config import DataConfig, Params, TokenizerConfig
from sphereard.eval.figures import GRID_PAD_PX, MIN_TILE_PX, class_grid
from sphereard.tracking import NullRun, TrackedRun

NAMES = ["T-shirt/top", "Trouser", "Pullover"]
SIZE = 8  # tile side (px) of the fake decoded images


def fake_images(labels: torch.Tensor) -> torch.Tensor:
    """(N, 1, SIZE, SIZE) in [-1, 1]: image n is a flat grey whose level encodes its class and index."""
    level = (labels.float() * 0.5 + torch.arange(len(labels)) * 0.01 - 1.0).clamp(-1, 1)
    return level[:, None, None, None].expand(-1, 1, SIZE, SIZE).clone()


def expected_grid(images: torch.Tensor, labels: torch.Tensor, names) -> Image.Image:
    """The grid built by hand: rows = classes in order, each row that class's images as uint8 (H, W, 1)."""
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    classes = list(dict.fromkeys(labels.tolist()))
    return class_grid([pixels[labels.numpy() == c] for c in classes], names)


def same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def test_media_grid_labels_each_class_row_with_its_name():
    labels = media_labels(len(NAMES), "cpu")  # (3 * MEDIA_PER_CLASS,), class-major
    images = fake_images(labels)
    grid = media_grid(images, labels, NAMES)
    assert same(grid, expected_grid(images, labels, NAMES)), "one row per class, its name as the row label"
    unnamed = media_grid(images, labels, None)
    assert same(unnamed, expected_grid(images, labels, [f"class {c}" for c in range(len(NAMES))]))
    assert not same(grid, unnamed), "the row labels must be the class names, not `class <id>`"
    # the label column is drawn: the grid is wider than the tiles alone and the label area is not blank
    tiles = MEDIA_PER_CLASS * (MIN_TILE_PX + GRID_PAD_PX)  # 8 px tiles are enlarged to MIN_TILE_PX
    assert grid.width > tiles and grid.height == GRID_PAD_PX + len(NAMES) * (MIN_TILE_PX + GRID_PAD_PX)
    label_area = np.asarray(grid)[:, : grid.width - tiles]
    assert (label_area == 0).all(axis=-1).any(), "black label text left of the rows"


def test_media_grid_groups_unsorted_labels_by_class():
    labels = torch.tensor([2, 0, 2, 0])
    images = fake_images(labels)
    grid = media_grid(images, labels, NAMES)
    rows = [images[labels == c] for c in (2, 0)]
    pixels = [((r + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy() for r in rows]
    assert same(grid, class_grid(pixels, ["Pullover", "T-shirt/top"]))


class RecordingRun:
    """A tracking run that keeps what it is asked to log."""

    enabled = True

    def __init__(self):
        self.images = []

    def log_image(self, image, name, step):
        self.images.append((image, name, step))

    def log_image_grid(self, *args, **kwargs):
        raise AssertionError("the AR media grid is logged as a class-labelled image (log_image)")


def write_manifest(root: Path, names) -> None:
    """data.out/manifest.json as `prepare` writes it (shards listed, not read: names are all we need)."""
    split = {"rows": len(names), "class_counts": [1] * len(names),
             "shards": [{"file": "train-00000.parquet", "rows": len(names), "sha256": "0" * 64}]}
    root.mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({
        "format_version": 1, "source": "fashion_mnist", "image_size": SIZE, "channels": 1, "classes": list(names),
        "num_classes": len(names), "splits": {"train": split, "test": split}}))


def test_log_media_logs_the_grid_with_the_manifest_class_names(tmp_path, monkeypatch):
    """GeneratorTask.log_media (sampler and tokenizer stubbed): one class-labelled image per call."""
    params = Params(data=DataConfig(out=str(tmp_path / "data")), tokenizer=TokenizerConfig(out=str(tmp_path / "tok")))
    write_manifest(tmp_path / "data", NAMES)
    tokenizer = SimpleNamespace(decode=lambda z: fake_images(z[:, 0, 0].round().long()))

    class Sampler:  # the EMA model: "samples" tokens that carry their class label
        def eval(self):
            return self

        def sample(self, labels, seed, **kwargs):
            return labels.float()[:, None, None].expand(-1, 4, 2).clone()  # (N, L, d)

    loaded = []
    monkeypatch.setattr(sphereard.tokenizer.export, "load_tokenizer",
                        lambda path, device: loaded.append(Path(path)) or (tokenizer, {}))
    task = GeneratorTask(params, "spherical")
    task.arch, task.radius = SimpleNamespace(num_classes=len(NAMES)), 1.0
    task.gen = SimpleNamespace(flow="euclidean")  # the trained model's flow picks the media sampler
    task.ctx, task.ema = SimpleNamespace(device="cpu"), SimpleNamespace(module=Sampler())
    run = RecordingRun()
    task.log_media(40, run)
    task.log_media(80, run)
    assert loaded == [tmp_path / "tok" / "spherical" / "seed0" / "model"], "tokenizer (and class names) read once"
    assert [(name, step) for _, name, step in run.images] == [("generated", 40), ("generated", 80)]
    labels = media_labels(len(NAMES), "cpu")
    assert same(run.images[0][0], expected_grid(fake_images(labels), labels, NAMES))
    task.log_media(120, NullRun())  # tracking off: nothing sampled, nothing logged


def test_tracked_run_logs_an_image_where_the_sample_grids_go():
    calls = []
    run = TrackedRun("sqlite:///unused.db", "run-1")
    run.__dict__["client"] = SimpleNamespace(log_image=lambda *args, **kwargs: calls.append((args, kwargs)))
    image = Image.new("RGB", (4, 4))
    run.log_image(image, "generated", 7)
    assert calls == [(("run-1", image), {"key": "generated", "step": 7})]  # MLflow's time-stepped image
    NullRun().log_image(image, "generated", 7)  # tracking off: a no-op
