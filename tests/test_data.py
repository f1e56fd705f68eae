"""Data layer: sources -> parquet shards + manifest -> Dataset, on small real and synthetic data."""

import gzip
import io
import json
import logging
import re
import shutil
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from sphereard.data import ShardDataset, hash_split, images_as_uint8, load_manifest, prepare_dataset
from sphereard.data.sources import parse_emoji_test
from sphereard.data.transforms import center_crop_resize, pad_to_square_size, random_hflip_batch, to_channels
from sphereard.errors import UserError

FASHION = Path("/usr/share/datasets/fashion-mnist")
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
CAP = 20


def make_cfg(**kw):
    base = dict(source="imagefolder", path=None, labels_path=None, emoji_label="group",
                image_size=32, resize="pad", channels=1, test_fraction=0.25,
                max_per_class=None, shard_rows=64, row_group_rows=16, store_size=None, workers=0,
                interleave=1)
    base.update(kw)
    return SimpleNamespace(**base)


def read_idx_gz(path):
    data = gzip.open(path).read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def save_png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


# --- Fashion-MNIST (real data) ------------------------------------------------------------

@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    if not FASHION.is_dir():
        pytest.skip("dataset-fashion-mnist not installed")
    out = tmp_path_factory.mktemp("fm") / "prepared"
    cfg = make_cfg(source="fashion_mnist", path=str(FASHION), max_per_class=CAP, shard_rows=64)
    return out, prepare_dataset(cfg, out)


def test_fashion_manifest_counts(fashion):
    out, manifest = fashion
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["num_classes"] == 10 and manifest["classes"][9] == "Ankle boot"
    assert (manifest["image_size"], manifest["channels"]) == (32, 1)
    for split in ("train", "test"):
        info = manifest["splits"][split]
        assert info["rows"] == 10 * CAP and info["class_counts"] == [CAP] * 10
        assert [s["rows"] for s in info["shards"]] == [64, 64, 64, 8]
        assert [s["file"] for s in info["shards"]] == [f"{split}-{i:05d}.parquet" for i in range(4)]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json"] + [f"{s}-{i:05d}.parquet" for s in ("train", "test") for i in range(4)])
    assert load_manifest(out) == manifest


def test_fashion_pixels_centred_and_equal_to_idx(fashion):
    out, _ = fashion
    idx_images = read_idx_gz(FASHION / "train-images-idx3-ubyte.gz")
    idx_labels = read_idx_gz(FASHION / "train-labels-idx1-ubyte.gz")
    images, labels = images_as_uint8(out, "train")
    assert images.shape == (10 * CAP, 32, 32, 1) and images.dtype == np.uint8
    keys = pq.read_table(out / "train-00000.parquet", columns=["key", "split"]).to_pydict()
    assert keys["key"][0] == "train-00000" and set(keys["split"]) == {"train"}
    assert np.array_equal(images[0, 2:30, 2:30, 0], idx_images[0])
    assert labels[0] == idx_labels[0]
    border = images[0, :, :, 0].copy()
    border[2:30, 2:30] = 0
    assert border.max() == 0, "padding must be background (0)"
    # the kept rows are the first CAP of each class in file order, all pixel-identical
    all_keys = [k for i in range(4) for k in pq.read_table(out / f"train-{i:05d}.parquet").column("key").to_pylist()]
    rows = [int(k.split("-")[1]) for k in all_keys]
    assert len(rows) == 10 * CAP
    for r, i in enumerate(rows):
        assert np.array_equal(images[r, 2:30, 2:30, 0], idx_images[i]) and labels[r] == idx_labels[i]


def test_shard_dataset_tensor_and_flip(fashion):
    out, _ = fashion
    ds = ShardDataset(out, "test")
    images, labels = images_as_uint8(out, "test", limit=5)
    assert len(ds) == 10 * CAP and images.shape[0] == 5
    x, y = ds[3]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    expect = torch.from_numpy(images[3]).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.allclose(x, expect) and y == labels[3]
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(ds[3][0], x), "deterministic per index: flips happen in the training step"
    batch = torch.stack([expect] * 64)  # (B, C, H, W)
    torch.manual_seed(0)
    flipped = random_hflip_batch(batch)
    n_flip = sum(torch.equal(o, expect.flip(-1)) for o in flipped)
    assert sum(torch.equal(o, expect) for o in flipped) + n_flip == 64 and 10 < n_flip < 54
    with pytest.raises(UserError, match="split"):
        ShardDataset(out, "val")


def test_tampered_or_missing_shard_fails(fashion, tmp_path):
    src, _ = fashion
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    shard = out / "train-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError, match="train-00001.parquet"):
        load_manifest(out)
    load_manifest(out, verify=False)  # verification is what catches it
    shard.unlink()
    with pytest.raises(UserError, match="train-00001.parquet.*missing"):
        ShardDataset(out, "train")
    m = json.loads((src / "manifest.json").read_text())
    m["splits"]["test"]["shards"][0]["rows"] += 1
    (out / "manifest.json").write_text(json.dumps(m))
    shutil.copy(src / "train-00001.parquet", out)
    with pytest.raises(UserError, match="test-00000.parquet.*rows"):
        load_manifest(out)


def test_fashion_truncated_idx(tmp_path):
    if not FASHION.is_dir():
        pytest.skip("dataset-fashion-mnist not installed")
    bad = tmp_path / "fm"
    bad.mkdir()
    (bad / "train-images-idx3-ubyte.gz").write_bytes((FASHION / "train-images-idx3-ubyte.gz").read_bytes()[:5000])
    with pytest.raises(UserError, match="train-images-idx3-ubyte.gz"):
        prepare_dataset(make_cfg(source="fashion_mnist", path=str(bad)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- Emoji (real font) ---------------------------------------------------------------------

def test_emoji_groups_rgb(tmp_path, caplog):
    if not (EMOJI_FONT.is_file() and EMOJI_TEST.is_file()):
        pytest.skip("fonts-noto-color-emoji / unicode-data not installed")
    n_fq = sum("; fully-qualified" in line for line in EMOJI_TEST.read_text(encoding="utf-8").splitlines())
    assert len(parse_emoji_test(EMOJI_TEST, "group")) == n_fq  # 3655 in Unicode 15
    assert len({c for _, _, c in parse_emoji_test(EMOJI_TEST, "subgroup")}) == 99
    cfg = make_cfg(source="emoji", path=str(EMOJI_FONT), labels_path=str(EMOJI_TEST),
                   resize="center_crop", channels=3, max_per_class=2, test_fraction=0.3)
    with caplog.at_level(logging.INFO):
        m = prepare_dataset(cfg, tmp_path / "emoji")
    assert "images/s" in caplog.text
    assert m["classes"] == ["Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink",
                            "Travel & Places", "Activities", "Objects", "Symbols", "Flags"]
    assert m["splits"]["train"]["class_counts"] == [2] * 9 == m["splits"]["test"]["class_counts"]
    images, labels = images_as_uint8(tmp_path / "emoji", "train")
    assert images.shape == (18, 32, 32, 3) and labels.tolist() == sorted(labels.tolist())
    keys = pq.read_table(tmp_path / "emoji" / "train-00000.parquet").column("key").to_pylist()
    assert keys[0] == next(k for k, _, _ in parse_emoji_test(EMOJI_TEST, "group")
                           if hash_split(k, 0.3) == "train")
    for img in images.astype(int):
        assert img.std() > 10, "emoji must be rendered, not blank"
        assert np.abs(img[..., 0] - img[..., 2]).max() > 30, "colour emoji expected"
        assert img[0, 0].tolist() == [255, 255, 255] or img[-1, -1].tolist() == [255, 255, 255]


# --- image folder (synthetic) --------------------------------------------------------------

@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "folder"
    for c in ("emu", "cat", "dog"):
        for i in range(8):
            save_png(root / c / f"{i}.png", rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    return root


def test_imagefolder_hash_split(folder, tmp_path):
    cfg = make_cfg(path=str(folder), image_size=16, resize="center_crop", channels=3)
    m = prepare_dataset(cfg, tmp_path / "a")
    assert m["classes"] == ["cat", "dog", "emu"]
    tr, te = m["splits"]["train"], m["splits"]["test"]
    assert [a + b for a, b in zip(tr["class_counts"], te["class_counts"], strict=True)] == [8, 8, 8]
    assert tr["rows"] > 0 and te["rows"] > 0
    table = pq.read_table(tmp_path / "a" / "test-00000.parquet").to_pydict()
    for key, split, label in zip(table["key"], table["split"], table["label"], strict=True):
        assert split == "test" == hash_split(key, 0.25) and m["classes"][label] == key.split("/")[0]
    want = np.asarray(center_crop_resize(Image.open(folder / table["key"][0]), 16))
    assert np.array_equal(images_as_uint8(tmp_path / "a", "test", limit=1)[0][0], want)
    m2 = prepare_dataset(cfg, tmp_path / "b")  # deterministic, byte for byte
    assert m2["splits"] == m["splits"]


def test_imagefolder_split_subdirs(tmp_path):
    root = tmp_path / "split"
    for split, n in (("train", 3), ("val", 2)):
        for c in ("a", "b"):
            for i in range(n):
                save_png(root / split / c / f"{i}.png", np.full((10, 12), 100 + i, np.uint8))
    m = prepare_dataset(make_cfg(path=str(root), image_size=16), tmp_path / "out")
    assert m["classes"] == ["a", "b"]
    assert m["splits"]["train"]["class_counts"] == [3, 3] and m["splits"]["test"]["class_counts"] == [2, 2]
    images, labels = images_as_uint8(tmp_path / "out", "test")
    assert images.shape == (4, 16, 16, 1) and labels.tolist() == [0, 0, 1, 1]
    assert images[0, 3:13, 2:14, 0].min() == 100 and images[0, 0, 0, 0] == 0
    assert pq.read_table(tmp_path / "out" / "test-00000.parquet").column("key")[0].as_py() == "val/a/0.png"


# --- ImageNet nested tar (synthetic) -------------------------------------------------------

def _jpeg(seed):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_imagenet_tar(path, synsets, n=4, corrupt=None):
    with tarfile.open(path, "w") as outer:
        for s, syn in enumerate(synsets):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for i in range(n):
                    data = _jpeg(10 * s + i)
                    _add(inner, f"{syn}_{i}.JPEG", truncated(data) if (syn, i) == corrupt else data)
            _add(outer, f"{syn}.tar", buf.getvalue())


def test_imagenet_tar_streamed(tmp_path):
    tar = tmp_path / "ILSVRC2012_img_train.tar"
    make_imagenet_tar(tar, ["n00000002", "n00000001"])
    cfg = make_cfg(source="imagenet_tar", path=str(tar), image_size=16, resize="center_crop",
                   channels=3, test_fraction=0.5)
    m = prepare_dataset(cfg, tmp_path / "out")
    assert m["classes"] == ["n00000001", "n00000002"]
    assert m["splits"]["train"]["rows"] + m["splits"]["test"]["rows"] == 8
    keys, labels = [], []
    for split in ("train", "test"):
        for sh in m["splits"][split]["shards"]:
            t = pq.read_table(tmp_path / "out" / sh["file"]).to_pydict()
            keys += t["key"]
            labels += t["label"]
    assert sorted(keys) == sorted(f"n0000000{s}/n0000000{s}_{i}.JPEG" for s in (1, 2) for i in range(4))
    assert all(m["classes"][y] == k.split("/")[0] for k, y in zip(keys, labels, strict=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == [tar.name, "out"], "nothing unpacked"
    assert ShardDataset(tmp_path / "out", "train")[0][0].shape == (3, 16, 16)


def test_imagenet_tar_corrupt_member(tmp_path):
    tar = tmp_path / "train.tar"
    make_imagenet_tar(tar, ["n00000001", "n00000003"], n=3, corrupt=("n00000003", 1))
    cfg = make_cfg(source="imagenet_tar", path=str(tar), image_size=16, resize="center_crop")
    with pytest.raises(UserError, match=r"n00000003\.tar.*n00000003_1\.JPEG"):
        prepare_dataset(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- bad inputs ----------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["fashion_mnist", "imagefolder", "imagenet_tar", "emoji"])
def test_missing_path(tmp_path, source):
    missing = tmp_path / "nope"
    with pytest.raises(UserError, match=f"^{re.escape(str(missing))}: does not exist"):
        prepare_dataset(make_cfg(source=source, path=str(missing)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_empty_folder_and_bad_cfg(tmp_path):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(UserError, match=f"^{re.escape(str(tmp_path / 'empty'))}: no image files"):
        prepare_dataset(make_cfg(path=str(tmp_path / "empty")), tmp_path / "out")
    with pytest.raises(UserError, match="^channels"):
        prepare_dataset(make_cfg(path=str(tmp_path / "empty"), channels=2), tmp_path / "out")
    with pytest.raises(UserError, match="^source"):
        prepare_dataset(make_cfg(source="cifar"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_pad_rejects_larger_image(folder, tmp_path):
    with pytest.raises(UserError, match="^resize: .*larger than image_size 16"):
        prepare_dataset(make_cfg(path=str(folder), image_size=16), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_keeps_previous_output(folder, tmp_path, fmt):
    out = tmp_path / "out"
    cfg = make_cfg(path=str(folder), image_size=16, resize="center_crop", channels=3)
    good = prepare_dataset(cfg, out)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, fmt)
    bad = folder / "dog" / f"broken.{fmt.lower()}"
    bad.write_bytes(truncated(buf.getvalue()))
    with pytest.raises(UserError, match=f"^{re.escape(str(bad))}: corrupt or truncated"):
        prepare_dataset(cfg, out)
    assert load_manifest(out) == good, "a failed re-run must leave the previous output intact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "out"], "no temp leftovers"
    with pytest.raises(UserError, match=re.escape(str(bad))):
        prepare_dataset(cfg, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()


# --- transforms ----------------------------------------------------------------------------

def test_transforms():
    img = Image.fromarray(np.arange(6 * 4, dtype=np.uint8).reshape(6, 4))
    padded = np.asarray(pad_to_square_size(img, 8, fill=7))
    assert padded.shape == (8, 8) and np.array_equal(padded[1:7, 2:6], np.asarray(img)) and padded[0, 0] == 7
    with pytest.raises(ValueError, match="larger"):
        pad_to_square_size(img, 5)
    assert center_crop_resize(Image.new("RGB", (300, 200)), 64).size == (64, 64)
    clear = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert np.asarray(to_channels(clear, 3)).min() == 255 and to_channels(clear, 1).mode == "L"
    x = torch.arange(12.0).reshape(2, 1, 2, 3)
    assert torch.equal(random_hflip_batch(x, p=1.0), x.flip(-1)) and torch.equal(random_hflip_batch(x, p=0.0), x)
