"""Image transforms: pure functions used when preparing shards and when reading them.

Preparation (PIL in, PIL out): `to_channels` -> `pad_to_square_size` or `center_crop_resize`.
Reading (uint8 array in, tensor out): `to_unit_tensor`, `resize_square` (a stored square larger than
image_size to image_size). Training-time augmentation runs on the batch inside the training step
(`random_hflip_batch`, the paper's `random_crop_batch` with its `crop_probability` schedule), under
the step's seed, so it is part of the exactly resumable random stream (`sphereard/train/loop.py`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
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


def unit_tensor_to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (C, H, W) in [-1, 1] -> uint8 (H, W, C), rounded: the inverse of `to_unit_tensor`."""
    return ((x + 1.0) * UINT8_HALF_RANGE).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a batch of squares (B, C, S, S) in [-1, 1] to (B, C, size, size): bicubic, antialiased when
    shrinking (torch's `interpolate`, as torchvision's Resize on tensors), clamped to [-1, 1]; the identity
    when S == size."""
    if x.shape[-1] == size:
        return x
    out = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return out.clamp(-1.0, 1.0)  # bicubic overshoots; images live in [-1, 1]


def crop_probability(epoch: int, decay_start: int | None, decay_end: int | None) -> float:
    """The paper's crop schedule (official training, reference-facts): 1 until epoch `decay_start`,
    then linear to 0 at `decay_end`, 0 after; always 1 when `decay_start` is None.
    E.g. (350, 375): epoch 350 -> 1.0, 360 -> 0.6, 375 -> 0.0."""
    if decay_start is None or epoch <= decay_start:
        return 1.0
    assert decay_end is not None and decay_end > decay_start, "decay_end must follow decay_start"
    return max(0.0, 1.0 - (epoch - decay_start) / (decay_end - decay_start))


def crop_sizes(size: int, min_fraction: float) -> tuple[int, int]:
    """(smallest, largest) side the short side is resized to before a random `size` crop:
    [size, ceil(size / min_fraction)] (paper: 256 and 0.8 -> [256, 320])."""
    return size, math.ceil(size / min_fraction - 1e-9)


def random_crop_batch(x: torch.Tensor, size: int, min_fraction: float, prob: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """The paper's random crop on a batch of stored squares (B, C, S, S) -> (B, C, size, size).

    Each image, with probability `prob`: resized to s x s, s uniform in `crop_sizes(size, min_fraction)`
    (integers, at most S: a crop never upsamples the stored square beyond itself), then cropped at a
    uniform offset; else resized whole to size (the centre view). Draws exactly 4 B uniforms, whatever
    `prob`, from `generator` on its device, else from the global torch RNG on x's device, so the training
    step's random stream is fixed (it runs under the step seed: `train/loop.py`)."""
    b, stored = x.shape[0], x.shape[-1]
    lo, hi = crop_sizes(size, min_fraction)
    hi = max(lo, min(hi, stored))
    device = generator.device if generator is not None else x.device
    u = torch.rand(b, 4, generator=generator, device=device).cpu()  # (B, 4): apply, side, top, left
    out = []
    for i in range(b):
        if u[i, 0] >= prob:
            out.append(resize_square(x[i:i + 1], size))
            continue
        side = lo + min(int(u[i, 1] * (hi - lo + 1)), hi - lo)
        scaled = resize_square(x[i:i + 1], side)  # (1, C, side, side)
        top = min(int(u[i, 2] * (side - size + 1)), side - size)
        left = min(int(u[i, 3] * (side - size + 1)), side - size)
        out.append(scaled[..., top:top + size, left:left + size])
    return torch.cat(out)  # (B, C, size, size)


def augment(x: torch.Tensor, size: int, crop, epoch: int) -> torch.Tensor:
    """The training augmentation of a batch (B, C, S, S) -> (B, C, size, size): the paper's random crop
    when `crop.enabled` (a `config.CropConfig`; probability `crop_probability` at `epoch`), then the
    horizontal flip. Under the global RNG (the step seed)."""
    if crop.enabled:
        prob = crop_probability(epoch, crop.decay_start_epoch, crop.decay_end_epoch)
        x = random_crop_batch(x, size, crop.min_fraction, prob)
    return random_hflip_batch(x)
