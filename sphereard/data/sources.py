"""Raw image sources: Fashion-MNIST idx files, Noto Color Emoji, an image folder, the ImageNet tar.

`open_source(cfg)` returns a `Source`: its class list (label id = list index) and an item
iterator yielding `Item(key, load, class_name, split)` in a deterministic order. `load()` gives the
PIL image; it is a picklable partial over the raw bytes (or array, or text), so the decode can run
in another process (`prepare`'s Ray tasks) while the iteration (cheap: reading, no decoding) stays
in order in the driver. Sources without
a given train/test split assign one by a stable hash of the key (`hash_split`). A `CapSelector`
is consulted *before* an image is decoded, so capped runs (smoke profile) skip the decode cost.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import tarfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from sphereard.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
BLACK, WHITE = 0, 255
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
HASH_BITS = 64

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                       "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_UBYTE = 0x08  # idx type code for unsigned bytes

DEFAULT_EMOJI_TEST = "/usr/share/unicode/emoji/emoji-test.txt"
EMOJI_CANVAS = (136, 128)  # Noto Color Emoji bitmap strike size (w, h)
EMOJI_FONT_SIZE = 109  # the only pixel size the bitmap font accepts
EMOJI_STATUS = "fully-qualified"


class Item(NamedTuple):
    key: str
    load: Callable[[], Image.Image]  # picklable: functools.partial of a module-level function
    class_name: str
    split: str


class CapSelector:
    """Admits at most `cap` items per (class, split); cap None admits everything."""

    def __init__(self, cap: int | None = None):
        self.cap, self.counts = cap, Counter()

    def want(self, class_name: str, split: str) -> bool:
        if self.cap is not None and self.counts[class_name, split] >= self.cap:
            return False
        self.counts[class_name, split] += 1
        return True

    def done(self, class_name: str) -> bool:
        return self.cap is not None and all(self.counts[class_name, s] >= self.cap for s in SPLITS)


@dataclass
class Source:
    classes: list[str]
    iterate: Callable[[CapSelector], Iterator[Item]]
    total: int | None = None  # number of candidate items, when known cheaply
    background: int = BLACK  # grey level used to pad (resize: pad)


def hash_split(key: str, test_fraction: float) -> str:
    """Deterministic split from sha256(key) (stable across runs and Python versions)."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[: HASH_BITS // 8], "big")
    return "test" if h < test_fraction * 2**HASH_BITS else "train"


def decode_image(data: bytes, name: str) -> Image.Image:
    """Fully decode image bytes; a corrupt or truncated file is a UserError naming `name`."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except UnidentifiedImageError:
        raise UserError(f"{name}: corrupt or truncated image (no image format recognised)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"{name}: corrupt or truncated image ({e})") from e
    return img


def read_file_bytes(path: Path) -> bytes:
    """The bytes of a source file; an unreadable one is a UserError naming it."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: unreadable ({e.strerror or e})") from None


def read_text_file(path: Path, what: str) -> str:
    """A UTF-8 text file; unreadable or not UTF-8 is a UserError naming it."""
    try:
        return read_file_bytes(path).decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a UTF-8 text file ({what}): {e}") from None


def _existing(path: str | None, what: str) -> Path:
    if path is None or not Path(path).exists():
        raise UserError(f"{path if path is not None else 'path'}: does not exist ({what})")
    return Path(path)


# --- Fashion-MNIST -------------------------------------------------------------------------

def read_idx(path: Path) -> np.ndarray:
    """Read an idx ubyte file (optionally gzipped) as a uint8 array of its declared shape."""
    try:
        data = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path}: corrupt or truncated ({e})") from e
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != IDX_UBYTE:
        raise UserError(f"{path}: not an idx ubyte file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise UserError(f"{path}: truncated idx file ({len(data) - offset} bytes for shape {shape})")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise UserError(f"{root / (stem + '.gz')}: does not exist (Fashion-MNIST idx file)")


def fashion_mnist(cfg) -> Source:
    root = _existing(cfg.path, "Fashion-MNIST directory")
    arrays = {}
    for split, (img_stem, lbl_stem) in FASHION_MNIST_FILES.items():
        images, labels = read_idx(_find_idx(root, img_stem)), read_idx(_find_idx(root, lbl_stem))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UserError(f"{root / img_stem}: shape {images.shape} does not match labels {labels.shape}")
        if len(labels) == 0:
            raise UserError(f"{root / lbl_stem}: holds no labels")
        if labels.max() >= len(FASHION_MNIST_CLASSES):
            raise UserError(f"{root / lbl_stem}: label {labels.max()} out of range")
        arrays[split] = images, labels

    def iterate(select: CapSelector) -> Iterator[Item]:
        for split, (images, labels) in arrays.items():
            for i, y in enumerate(labels):
                name = FASHION_MNIST_CLASSES[y]
                if select.want(name, split):
                    yield Item(f"{split}-{i:05d}", partial(Image.fromarray, images[i], "L"), name, split)

    return Source(FASHION_MNIST_CLASSES, iterate, sum(len(a[1]) for a in arrays.values()), BLACK)


# --- Noto Color Emoji ----------------------------------------------------------------------

def parse_emoji_test(path: Path, level: str) -> list[tuple[str, str, str]]:
    """(key, text, class) for each fully-qualified emoji in emoji-test.txt, in file order.
    key: code points joined by '_'; class: the enclosing `# group:` or `# subgroup:` header."""
    if level not in ("group", "subgroup"):
        raise UserError(f"emoji_label: must be 'group' or 'subgroup', got {level!r}")
    header, current, out = f"# {level}:", None, []
    for line in read_text_file(path, "emoji-test.txt").splitlines():
        if line.startswith(header):
            current = line[len(header):].strip()
        elif line and not line.startswith("#") and ";" in line:
            codes, rest = line.split(";", 1)
            if rest.split("#", 1)[0].strip() != EMOJI_STATUS:
                continue
            cps = codes.split()
            try:
                text = "".join(chr(int(c, 16)) for c in cps)
            except (ValueError, OverflowError):
                raise UserError(f"{path}: line {line!r}: code points must be hex numbers") from None
            out.append(("_".join(cps), text, current))
    if not out:
        raise UserError(f"{path}: no {EMOJI_STATUS} emoji found (expected emoji-test.txt)")
    return out


def render_emoji(text: str, font: ImageFont.FreeTypeFont) -> Image.Image:
    """Render one emoji (sequence) onto a transparent 136x128 RGBA canvas."""
    img = Image.new("RGBA", EMOJI_CANVAS, (0, 0, 0, 0))
    ImageDraw.Draw(img).text((0, 0), text, font=font, embedded_color=True)
    return img


@lru_cache(maxsize=4)
def _emoji_font(font_path: str) -> ImageFont.FreeTypeFont:
    """The bitmap font at its one size, loaded once per process; UserError naming the file."""
    try:
        return ImageFont.truetype(font_path, EMOJI_FONT_SIZE)
    except OSError as e:
        raise UserError(f"{font_path}: cannot load as a bitmap colour font at size {EMOJI_FONT_SIZE} ({e})") from e


def _render_emoji_from(text: str, font_path: str) -> Image.Image:
    return render_emoji(text, _emoji_font(font_path))


def emoji(cfg) -> Source:
    font_path = _existing(cfg.path, "Noto Color Emoji font")
    labels_path = _existing(cfg.labels_path or DEFAULT_EMOJI_TEST, "emoji-test.txt")
    font = _emoji_font(str(font_path))
    entries = parse_emoji_test(labels_path, cfg.emoji_label)
    classes = list(dict.fromkeys(c for _, _, c in entries))  # file order of first appearance

    def iterate(select: CapSelector) -> Iterator[Item]:
        wide = 0
        for key, text, name in entries:
            split = hash_split(key, cfg.test_fraction)
            if select.want(name, split):
                wide += font.getbbox(text)[2] > EMOJI_CANVAS[0]  # sequence not ligated: clipped
                yield Item(key, partial(_render_emoji_from, text, str(font_path)), name, split)
        if wide:
            log.warning("%s: %d emoji sequences rendered wider than one glyph (no ligature)", font_path, wide)

    return Source(classes, iterate, len(entries), WHITE)


# --- image folder --------------------------------------------------------------------------

def _class_files(root: Path) -> dict[str, list[Path]]:
    out = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        out[d.name] = sorted(f for f in d.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    return out


def image_folder(cfg) -> Source:
    """root/<class>/*.png, or root/train/<class>/... with root/val/ (preferred) or root/test/."""
    root = _existing(cfg.path, "image folder")
    if not root.is_dir():
        raise UserError(f"{root}: not a directory (image folder)")
    held_out = next((root / s for s in ("val", "test") if (root / "train").is_dir() and (root / s).is_dir()), None)
    if held_out is not None:
        log.info("%s: using split subdirs train/ and %s/", root, held_out.name)
        per_split = {"train": _class_files(root / "train"), "test": _class_files(held_out)}
    else:
        per_split = {None: _class_files(root)}
    classes = sorted({c for files in per_split.values() for c, fs in files.items() if fs})
    total = sum(len(fs) for files in per_split.values() for fs in files.values())
    if total == 0:
        raise UserError(f"{root}: no image files found (expected <class>/*{{.png,.jpg,...}})")

    def iterate(select: CapSelector) -> Iterator[Item]:
        for given, files in per_split.items():
            for name, paths in files.items():
                for f in paths:
                    if select.done(name):
                        break
                    key = f.relative_to(root).as_posix()
                    split = given or hash_split(key, cfg.test_fraction)
                    if select.want(name, split):
                        yield Item(key, partial(decode_image, read_file_bytes(f), str(f)), name, split)

    return Source(classes, iterate, total, BLACK)


# --- ImageNet train tar (tar of per-synset tars), streamed -----------------------------------

def imagenet_tar(cfg) -> Source:
    """ILSVRC2012 train tar: outer members nXXXXXXXX.tar, each a tar of JPEGs; never unpacked."""
    path = _existing(cfg.path, "ImageNet train tar")
    try:
        with tarfile.open(path, "r:*") as outer:  # seekable: listing skips over member data
            inner = {Path(m.name).stem: m.name for m in outer if m.isfile() and m.name.endswith(".tar")}
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(f"{path}: not a readable tar ({e})") from e
    if not inner:
        raise UserError(f"{path}: no per-class inner tars (nXXXXXXXX.tar) found")
    classes = sorted(inner)

    def iterate(select: CapSelector) -> Iterator[Item]:
        with tarfile.open(path, "r:*") as outer:
            for syn in classes:
                if select.done(syn):
                    continue
                name = f"{path}[{inner[syn]}]"
                try:
                    with tarfile.open(fileobj=outer.extractfile(inner[syn]), mode="r|*") as tar:
                        for m in tar:
                            if not m.isfile() or Path(m.name).suffix.lower() not in IMAGE_SUFFIXES:
                                continue
                            key = f"{syn}/{Path(m.name).name}"
                            split = hash_split(key, cfg.test_fraction)
                            if select.want(syn, split):
                                data = tar.extractfile(m).read()
                                yield Item(key, partial(decode_image, data, f"{name}:{m.name}"), syn, split)
                            if select.done(syn):
                                break
                except (tarfile.TarError, OSError, EOFError) as e:
                    raise UserError(f"{name}: corrupt or truncated inner tar ({e})") from e

    return Source(classes, iterate, None, BLACK)


SOURCES = {"fashion_mnist": fashion_mnist, "emoji": emoji,
           "imagefolder": image_folder, "imagenet_tar": imagenet_tar}


def open_source(cfg) -> Source:
    if cfg.source not in SOURCES:
        raise UserError(f"source: unknown source {cfg.source!r} (choose from {sorted(SOURCES)})")
    return SOURCES[cfg.source](cfg)
