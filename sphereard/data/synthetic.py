"""Synthetic image sources for tests and benchmarks: what ImageNet looks like to `prepare`, made locally.

- `write_image_folder(root, ...)`: root/<class>/<i>.png of uniform noise (PNG cannot compress noise,
  so a split's bytes are ~ H x W x C per image: memory tests can tell holding a split from streaming it).
- `write_imagenet_tar(path, ...)`: the ILSVRC2012 train tar layout (an outer tar of nXXXXXXXX.tar, each a
  tar of JPEGs) with photo-sized JPEGs (default 500 x 375, ImageNet's most common size), for the
  `imagenet_tar` source and prepare's images/s.
Deterministic per seed.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

IMAGENET_TYPICAL_SIZE = (500, 375)  # (w, h)
JPEG_QUALITY = 90


def noise_image(rng: np.random.Generator, size: tuple[int, int], channels: int) -> Image.Image:
    """Uniform uint8 noise, (w, h) = size."""
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(arr[..., 0] if channels == 1 else arr, "L" if channels == 1 else "RGB")


def photo_like(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A smooth colour field plus mild noise: JPEG-compresses like a photograph (tens of kB at 500 x 375)."""
    w, h = size
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse, "RGB").resize((w, h), Image.Resampling.BICUBIC), np.int16)
    noisy = base + rng.integers(-12, 13, base.shape, dtype=np.int16)
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8), "RGB")


def write_image_folder(root: str | Path, num_classes: int, per_class: int, size: int = 32, channels: int = 3,
                       seed: int = 0) -> Path:
    """root/class{c:03d}/{i:05d}.png of noise; returns root."""
    root, rng = Path(root), np.random.default_rng(seed)
    for c in range(num_classes):
        (root / f"class{c:03d}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise_image(rng, (size, size), channels).save(root / f"class{c:03d}" / f"{i:05d}.png")
    return root


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_imagenet_tar(path: str | Path, num_classes: int, per_class: int,
                       size: tuple[int, int] = IMAGENET_TYPICAL_SIZE, seed: int = 0) -> Path:
    """An ILSVRC2012-train-style tar of `num_classes` inner tars of `per_class` JPEGs; returns path."""
    path, rng = Path(path), np.random.default_rng(seed)
    with tarfile.open(path, "w") as outer:
        for c in range(num_classes):
            synset = f"n{c:08d}"
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as tar:
                for i in range(per_class):
                    buf = io.BytesIO()
                    photo_like(rng, size).save(buf, format="JPEG", quality=JPEG_QUALITY)
                    _tar_add(tar, f"{synset}_{i}.JPEG", buf.getvalue())
            _tar_add(outer, f"{synset}.tar", inner.getvalue())
    return path
