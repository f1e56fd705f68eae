"""Image transforms: pure functions used when preparing shards and when reading them.

Preparation (PIL in, PIL out): `to_channels` -> `pad_to_square_size` or `center_crop_resize`.
Reading (uint8 array in, tensor out): `to_unit_tensor`. Training-time augmentation runs on the
batch inside the training step (`random_hflip_batch`), under the step's seed, so it is part of the
exactly resumable random stream (`sphereard/train/loop.py`).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

WHITE = 255  # grey level of the background that transparent pixels are composited onto
CHANNEL_MODES = {1: "L", 3: "RGB"}
UINT8_HALF_RANGE = 127.5  # uint8 [0, 255] -> [-1, 1]
FLIP_PROB = 0.5


def has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info)


def to_channels(img: Image.Image, channels: int, background: int = WHITE) -> Image.Image:
    """Composite any alpha onto a flat `background` grey level, then convert to L (1) or RGB (3)."""
    assert channels in CHANNEL_MODES, "channels must be 1 or 3"
    if has_alpha(img):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (background, background, background, 255))
        img = Image.alpha_composite(bg, rgba)
    return img.convert(CHANNEL_MODES[channels])


def pad_to_square_size(img: Image.Image, size: int, fill: int = 0) -> Image.Image:
    """Centre `img` on a size x size canvas of grey level `fill` (e.g. Fashion-MNIST 28 -> 32).

    Raises ValueError if the image is larger than `size` on either side (no silent cropping)."""
    w, h = img.size
    if w > size or h > size:
        raise ValueError(f"image is {w}x{h}, larger than image_size {size}")
    if (w, h) == (size, size):
        return img.copy()
    bands = len(img.getbands())
    canvas = Image.new(img.mode, (size, size), fill if bands == 1 else (fill,) * bands)
    canvas.paste(img, ((size - w) // 2, (size - h) // 2))
    return canvas


def center_crop_resize(img: Image.Image, size: int) -> Image.Image:
    """ADM-style centre crop (Dhariwal & Nichol 2021, `center_crop_arr`), as used for ImageNet
    in SphereAR / LlamaGen: halve with BOX filtering while the short side is >= 2*size, resize
    with BICUBIC so the short side equals `size`, then crop the central size x size square."""
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.Resampling.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.Resampling.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def to_unit_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, C) array -> float32 (C, H, W) tensor in [-1, 1]."""
    assert arr.dtype == np.uint8 and arr.ndim == 3, "expected a uint8 (H, W, C) array"
    x = torch.as_tensor(np.array(arr, copy=not arr.flags.writeable)).permute(2, 0, 1)  # (C, H, W)
    return x.float() / UINT8_HALF_RANGE - 1.0


def random_hflip_batch(x: torch.Tensor, p: float = FLIP_PROB,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image of a (B, ..., H, W) batch left-right with probability p.

    Draws exactly B uniforms, whatever the outcome, so the RNG stream is the same for every batch
    of a given size: from `generator` on its device, else from the global torch RNG on x's device."""
    device = generator.device if generator is not None else x.device
    flip = (torch.rand(x.shape[0], generator=generator, device=device) < p).to(x.device)  # (B,)
    return torch.where(flip.view(-1, *([1] * (x.ndim - 1))), x.flip(-1), x)
