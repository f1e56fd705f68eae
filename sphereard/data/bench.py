"""Throughput of `prepare` and `encode` at 0 (in-process), 1 and 2 Ray workers, projected to ImageNet.

    python -m sphereard.data.bench [--images 1024] [--workers 0 1 2] [--encode-images 128] [--out bench.json]

prepare: a synthetic ILSVRC2012-style train tar (`synthetic.write_imagenet_tar`: 500 x 375 JPEGs, ImageNet's
typical size) through the `imagenet_tar` source with the paper profile's settings (centre crop, stored
squares of 320 for 256 crops, RGB PNG); `read_only` is the driver alone reading the tar (no decode), the
ceiling of any parallel prepare. encode: an untrained tokenizer of `--tokenizer` (default the paper's S-VAE,
256 px) over the prepared images, with the encode stage's code path. Every run writes to a temporary
directory; the outputs of the runs are compared (byte-identical, or the benchmark fails).

The projection for 1.28M images assumes throughput linear in workers up to the cluster's cores (the head of
cluster.yaml: a p4d.24xlarge, 96 vCPUs; the profile's data.workers: 32), capped by the driver's read rate:
a model, not a measurement; it says so in its output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from sphereard.config import DataConfig, Params
from sphereard.data.shards import prepare_dataset
from sphereard.data.sources import CapSelector, open_source
from sphereard.data.synthetic import write_imagenet_tar
from sphereard.utils.io import atomic_write_text

IMAGENET_TRAIN_IMAGES = 1_281_167
CLUSTER_CPUS = 96  # cluster.yaml head: p4d.24xlarge
PROFILE_PREPARE_WORKERS = 32  # profiles/imagenet256-sphereAR-*.yaml data.workers
log = logging.getLogger(__name__)


def tree_digest(root: Path) -> str:
    """sha256 over every file's relative path and bytes under root."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def read_rate(cfg: DataConfig) -> float:
    """Images/s of the driver alone iterating the source (no decode)."""
    start, n = time.perf_counter(), 0
    for _ in open_source(cfg).iterate(CapSelector(None)):
        n += 1
    return n / (time.perf_counter() - start)


def bench_prepare(tar: Path, tmp: Path, workers: list[int]) -> dict:
    out = {}
    for w in workers:
        cfg = DataConfig(source="imagenet_tar", path=str(tar), image_size=256, store_size=320, resize="center_crop",
                         channels=3, test_fraction=0.05, shard_rows=512, row_group_rows=128, workers=w)
        start = time.perf_counter()
        manifest = prepare_dataset(cfg, tmp / f"prepared-{w}")
        seconds = time.perf_counter() - start
        images = sum(s["rows"] for s in manifest["splits"].values())
        out[w] = {"images": images, "seconds": seconds, "images_per_s": images / seconds,
                  "digest": tree_digest(tmp / f"prepared-{w}")}
    return out


def bench_encode(data_dir: Path, tmp: Path, workers: list[int], tokenizer: str, images: int) -> dict:
    from sphereard.export import export_model
    from sphereard.layout import export_dir
    from sphereard.tokenizer.encode import encode_split
    from sphereard.tokenizer.task import tokenizer_meta
    from sphereard.tokenizer.vae import create_tokenizer

    params = Params.model_validate({
        "data": {"out": str(data_dir), "image_size": 256, "store_size": 320, "channels": 3, "resize": "center_crop"},
        "tokenizer": {"preset": tokenizer, "posteriors": ["spherical"], "out": str(tmp / "tok")},
        "generator": {"preset": "SphereAR-B"}, "encode": {"max_images": images, "batch_size": 32},
    }).for_run(0)
    torch.manual_seed(0)
    vae = create_tokenizer(tokenizer, posterior="spherical")
    export_model(export_dir(params, "tokenizer", "spherical"), vae, tokenizer_meta(params, "spherical", vae.radius))
    out = {}
    for w in workers:
        run = params.model_copy(update={"encode": params.encode.model_copy(update={"workers": w,
                                                                                   "out": str(tmp / f"lat-{w}")})})
        start = time.perf_counter()
        meta = encode_split(run, "spherical", torch.device("cpu"))
        seconds = time.perf_counter() - start
        out[w] = {"images": meta["rows"], "seconds": seconds, "images_per_s": meta["rows"] / seconds,
                  "digest": meta["sha256"]}
    return out


def projection(rates: dict, read: float | None) -> dict | None:
    """Hours for 1.28M images: the best measured per-worker rate x workers (linear model), capped by `read`;
    None when no run used Ray workers (`--workers 0` alone measures no per-worker rate)."""
    measured = [r["images_per_s"] / int(w) for w, r in rates.items() if int(w) >= 1]
    if not measured:
        return None
    per_worker = max(measured)
    out = {}
    for workers in (PROFILE_PREPARE_WORKERS, CLUSTER_CPUS):
        rate = per_worker * workers if read is None else min(per_worker * workers, read)
        out[f"{workers}_workers_hours"] = IMAGENET_TRAIN_IMAGES / rate / 3600
    return {"per_worker_images_per_s": per_worker, **out,
            "model": "linear in workers (per-worker rate measured here at 1-2 workers), capped by the driver's "
                     "source read rate; not measured on the cluster"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024, help="synthetic tar size (images)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--encode-images", type=int, default=128)
    parser.add_argument("--tokenizer", default="svae-paper", help="a tokenizer preset for 256 px RGB images")
    parser.add_argument("--out", default=None, help="JSON results (also printed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        classes = 8
        tar = write_imagenet_tar(tmp / "train.tar", classes, args.images // classes)
        cfg = DataConfig(source="imagenet_tar", path=str(tar), image_size=256, resize="center_crop", channels=3)
        read = read_rate(cfg)
        prepare = bench_prepare(tar, tmp, args.workers)
        encode = bench_encode(tmp / f"prepared-{args.workers[0]}", tmp, args.workers, args.tokenizer,
                              args.encode_images)
    for name, runs in (("prepare", prepare), ("encode", encode)):
        assert len({r["digest"] for r in runs.values()}) == 1, f"{name}: outputs differ between worker counts"
    result = {"date": time.strftime("%Y-%m-%d"), "cpus": torch.get_num_threads(), "tar_read_images_per_s": read,
              "prepare": prepare, "encode": encode,
              "prepare_projection_1.28M": projection(prepare, read),
              "encode_projection_1.28M_cpu": projection(encode, None)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
