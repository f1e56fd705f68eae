"""Bad data files: prepared manifests and Parquet shards, raw sources, latent caches.

`CASES` is the table: case, what is broken, the entry point that reads it, the message fragment. Each case
breaks a copy of the tiny workspace of tests/bad_inputs_helpers.py; `check_case` asserts the error is one
line starting with the broken file's path. The other tables: tests/test_bad_inputs_models.py (exports,
classifier, weights, checkpoints, resume), tests/test_bad_inputs_eval.py (ADM reference, reference
statistics, samples.npz, sweep files); stage-level tests in tests/test_bad_inputs_stages.py.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import bad_inputs_helpers
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bad_inputs_helpers import (
    SIZE,
    Case,
    check_case,
    copy,
    drop,
    edit_json,
    latent_cache,
    png_bytes,
    set_key,
    train_params,
    truncate,
)

from sphereard.ar.task import generator_arch_for_cache
from sphereard.data import ShardDataset, images_as_uint8, load_manifest, prepare_dataset
from sphereard.data.sources import parse_emoji_test
from sphereard.latents import LATENTS_FILE, META_FILE, read_latent_cache
from sphereard.layout import latent_cache_dir
from sphereard.utils.io import sha256_file

ws = bad_inputs_helpers.ws  # the module-scoped workspace fixture


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


def _first_shard_drop(key):
    return lambda m: m["splits"]["train"]["shards"][0].pop(key)


def _manifest(change, read=lambda root: load_manifest(root)):
    def run(ws, tmp):
        edit_json(copy(ws, "data", tmp) / "manifest.json", change)
        return read(tmp / "data")
    return run


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
                          shard_rows=64, row_group_rows=16, store_size=None, workers=0, interleave=1)
    return prepare_dataset(cfg, tmp / "out")


def _case_idx_corrupt_gzip(ws, tmp):
    raw = bytes(range(256)) * 64
    gz = bytearray(gzip.compress(raw))
    gz[40] ^= 0xFF
    gz[60] ^= 0xFF
    (tmp / "fm").mkdir()
    (tmp / "fm" / "train-images-idx3-ubyte.gz").write_bytes(bytes(gz))
    cfg = SimpleNamespace(source="fashion_mnist", path=str(tmp / "fm"), image_size=SIZE, resize="pad", channels=1,
                          test_fraction=0.5, max_per_class=None, shard_rows=64, row_group_rows=16,
                          store_size=None, workers=0, interleave=1)
    return prepare_dataset(cfg, tmp / "out")


def _case_emoji_test_not_utf8(ws, tmp):
    (tmp / "emoji-test.txt").write_bytes("# group: Smileys\n1F600 ; fully-qualified # \xe9\n".encode("latin-1"))
    return parse_emoji_test(tmp / "emoji-test.txt", "group")


def _case_emoji_test_bad_code_point(ws, tmp):
    (tmp / "emoji-test.txt").write_text("# group: Smileys\nZZZZ ; fully-qualified # x\n")
    return parse_emoji_test(tmp / "emoji-test.txt", "group")


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


def _case_generator_cache_without_classes(ws, tmp):
    """A latent cache whose cache.json lacks what the generator is checked against (num_classes)."""
    params = train_params(tmp)
    params = params.model_copy(update={"encode": params.encode.model_copy(update={"out": str(tmp)})})
    cache = latent_cache_dir(params, "spherical")  # tmp/spherical/seed0
    cache.parent.mkdir(parents=True)
    edit_json(latent_cache(tmp).rename(cache) / "cache.json", drop("num_classes"))
    return generator_arch_for_cache(params, "spherical")


CASES = [
    # prepared data (manifest.json + Parquet shards): every stage after prepare
    Case("manifest-truncated", "manifest.json cut in half", "load_manifest", r"manifest\.json: not valid JSON",
         _case_manifest_truncated),
    Case("manifest-missing-key", "manifest.json lacks 'channels'", "images_as_uint8",
         r"manifest\.json: key 'channels' missing", _manifest(drop("channels"),
                                                              lambda root: images_as_uint8(root, "test"))),
    Case("manifest-wrong-type", "image_size is a string", "load_manifest",
         r"manifest\.json: key 'image_size' must be int, got '32'", _manifest(set_key("image_size", "32"))),
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
    # latent cache (encode.out/<posterior>/cache.json + latents.parquet): train_ar, sweep
    Case("latent-meta-truncated", "cache.json cut in half", "read_latent_cache", r"cache\.json: not valid JSON",
         _case_latent_meta_truncated),
    Case("latent-meta-not-object", "cache.json holds a list", "read_latent_cache",
         r"cache\.json: latent cache metadata must hold a JSON object", _case_latent_meta_not_object),
    Case("latent-meta-missing-sha256", "cache.json lacks 'sha256'", "read_latent_cache",
         r"cache\.json: key 'sha256' missing", _latent_meta(drop("sha256"), verify=True)),
    Case("latent-meta-missing-num-tokens", "cache.json lacks 'num_tokens' (read unverified)", "read_latent_cache",
         r"cache\.json: key 'num_tokens' missing", _latent_meta(drop("num_tokens"))),
    Case("latent-meta-wrong-type", "moments_dim is a string", "read_latent_cache",
         r"cache\.json: key 'moments_dim' must be int, got '3'", _latent_meta(set_key("moments_dim", "3"))),
    Case("latent-meta-bad-log-channels", "log_channels names channel 7 of 3", "read_latent_cache",
         r"cache\.json: key 'log_channels' must list channels in \[0, 3\), got \[7\]",
         _latent_meta(set_key("log_channels", [7]))),
    Case("latent-parquet-corrupt-unverified", "latents.parquet cut in half, read without verification",
         "read_latent_cache", r"latents\.parquet: not a readable latent cache",
         _case_latent_parquet_corrupt_unverified),
    Case("latent-rows-mismatch", "cache.json says 5 rows, the file holds 4", "read_latent_cache",
         r"latents\.parquet: holds 4 rows, .*cache\.json says 5", _latent_meta(set_key("rows", 5))),
    Case("latent-width-mismatch", "cache.json says 2 tokens per row, the file holds 4", "read_latent_cache",
         r"latents\.parquet: column 'moments' holds .*cache\.json says 2 tokens x 3 floats per row",
         _latent_meta(set_key("num_tokens", 2))),
    Case("generator-cache-meta-no-classes", "cache.json lacks num_classes", "generator_arch_for_cache (train_ar)",
         r"cache\.json: key 'num_classes' missing", _case_generator_cache_without_classes),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_naming_the_file(case, ws, tmp_path):
    check_case(case, ws, tmp_path)
