"""Figure conventions shared by every stage: one colour per tokenizer, reference lines, class-labelled grids.

Colours. A tokenizer (posterior) has the same colour in every figure (evaluate's diagnostics, the
sweep plots, the report's overviews): `posterior_colour(label)` looks the label's first word up in
`POSTERIOR_COLOURS` (Okabe-Ito colour-blind-safe hues); other names get a fixed colour of
`OTHER_COLOURS` (disjoint from the tokenizers', chosen by a hash of the name, so also stable across
figures). Several lines of one tokenizer in one axes (sweep settings, projection x CFG scale) keep
its colour and differ in line style, marker or opacity (`series_styles`, `norm_series_style`).

Reference lines. A figure that compares a quantity with a target draws the target with
`reference_line` (black, dotted), e.g. the radius R in every token-norm plot.

Sample grids. `class_grid` draws one row per class with the class name as the row label (PIL; the
bundled scalable font), `save_class_grid` picks evenly spaced classes, writes the PNG atomically.
Class names come from the data manifest (`read_class_names`); without one, rows say `class <id>`.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sphereard.utils.io import atomic_path

log = logging.getLogger(__name__)

POSTERIOR_COLOURS = {"spherical": "#0072B2", "gaussian_norm": "#E69F00", "gaussian": "#009E73"}
OTHER_COLOURS = ("#CC79A7", "#D55E00", "#56B4E9", "#999999", "#000000")  # unknown names; none is a tokenizer's
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v")
REFERENCE_STYLE = {"color": "k", "ls": ":", "lw": 1.2}  # target lines (R for token norms)
PROJECTION_LINESTYLE = {"sphere": "-", "none": "--"}  # token-norm plots: dashed = no projection
MIN_ALPHA = 0.35  # token-norm plots: opacity of the lowest CFG scale (the highest is opaque)
# teacher-forced error split (evaluate's error_split.csv `series`): the error's parts, then their floors
SPLIT_SERIES = ("radial", "tangential", "radial floor", "tangential floor")
SPLIT_RADIAL_ALPHA = 0.55  # error-split plots: radial lines fainter than tangential ones
NORM_SERIES = re.compile(r"^(?P<projection>[a-z]+) cfg=(?P<cfg>[0-9.eE+-]+)$")  # evaluate's series labels

GRID_PAD_PX = 2
MIN_TILE_PX = 48  # tiles smaller than this are enlarged (nearest neighbour) so row labels stay legible
FONT_PX = (10, 28)  # row-label font size range; tile height / 4 within it
LABEL_MAX_CHARS = 28
GRID_BACKGROUND, LABEL_COLOUR = (224, 224, 224), (0, 0, 0)


# ---- colours and styles ----

def posterior_of(label: str) -> str:
    """The tokenizer a series label starts with: 'spherical, radius=4' / 'gaussian R4 proj_none' -> its first word."""
    return re.split(r"[\s,]+", str(label).strip(), maxsplit=1)[0]


def posterior_colour(label: str) -> str:
    """The colour of the tokenizer `label` names (first word); a fixed other colour for unknown names."""
    name = posterior_of(label)
    if name in POSTERIOR_COLOURS:
        return POSTERIOR_COLOURS[name]
    return OTHER_COLOURS[zlib.crc32(name.encode()) % len(OTHER_COLOURS)]


def series_styles(labels: Sequence[str]) -> dict[str, dict]:
    """{label: matplotlib kwargs}: the tokenizer's colour; the k-th line of one tokenizer gets the k-th
    line style and marker, so lines of different settings stay apart without a new colour."""
    seen: dict[str, int] = {}
    out = {}
    for label in labels:
        k = seen[posterior_of(label)] = seen.get(posterior_of(label), -1) + 1
        out[label] = {"color": posterior_colour(label), "ls": LINESTYLES[k % len(LINESTYLES)],
                      "marker": MARKERS[k % len(MARKERS)]}
    return out


def norm_series_style(posterior: str, projection: str, rank: int, count: int) -> dict:
    """Token-norm line of `posterior`: its colour, solid with projection to the sphere / dashed without,
    opacity rising with the CFG scale (`rank` of `count` scales, 0 = lowest)."""
    alpha = 1.0 if count <= 1 else MIN_ALPHA + (1.0 - MIN_ALPHA) * rank / (count - 1)
    return {"color": posterior_colour(posterior), "ls": PROJECTION_LINESTYLE.get(projection, ":"), "alpha": alpha}


def split_series_style(posterior: str, series: str) -> dict:
    """Teacher-forced error-split line of `posterior` (`series` in SPLIT_SERIES): its colour, solid for the
    error and dashed for its floor, radial fainter than tangential."""
    return {"color": posterior_colour(posterior), "ls": "--" if series.endswith("floor") else "-",
            "alpha": SPLIT_RADIAL_ALPHA if series.startswith("radial") else 1.0}


def reference_line(ax, value: float, label: str) -> None:
    """A horizontal target line (e.g. `R = 4`) in the shared reference style."""
    ax.axhline(value, label=label, **REFERENCE_STYLE)


# ---- class-labelled sample grids ----

def evenly_spaced(num: int, keep: int) -> np.ndarray:
    """At most `keep` evenly spaced indices of range(num), first and last included: (k,) int64."""
    assert num >= 1 and keep >= 1, "need at least one item and one kept"
    return np.unique(np.linspace(0, num - 1, min(num, keep)).round().astype(np.int64))


def class_label(class_id: int, names: Sequence[str] | None) -> str:
    """Row label: the class name (shortened to LABEL_MAX_CHARS), or `class <id>` without names."""
    if names is None or not 0 <= class_id < len(names):
        return f"class {class_id}"
    name = str(names[class_id])
    return name if len(name) <= LABEL_MAX_CHARS else name[:LABEL_MAX_CHARS - 1] + "…"


def _rgb(image: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1) or (H, W, 3) uint8 -> (H, W, 3) uint8."""
    image = np.asarray(image, np.uint8)
    image = image[..., None] if image.ndim == 2 else image
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]


def class_grid(rows: Sequence[np.ndarray], row_labels: Sequence[str], pad: int = GRID_PAD_PX) -> Image.Image:
    """One row of images per entry of `rows` ((k, H, W, C) uint8, rows may differ in k), its label
    left of it -> an RGB PIL image. Tiles under MIN_TILE_PX high are enlarged by an integer factor."""
    assert len(rows) == len(row_labels) and len(rows) > 0, "one label per row, at least one row"
    h, w = np.asarray(rows[0]).shape[1:3]
    scale = max(1, -(-MIN_TILE_PX // h))
    th, tw = h * scale, w * scale
    font = ImageFont.load_default(size=int(np.clip(th // 4, *FONT_PX)))
    text_w = max((font.getbbox(t)[2] for t in row_labels if t), default=0)
    left = pad + (text_w + 2 * pad if text_w else 0)
    cols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (left + cols * (tw + pad), pad + len(rows) * (th + pad)), GRID_BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for i, (row, text) in enumerate(zip(rows, row_labels, strict=True)):
        y = pad + i * (th + pad)
        if text:
            draw.text((pad, y + th // 2), text, fill=LABEL_COLOUR, font=font, anchor="lm")
        for j, image in enumerate(row):
            tile = Image.fromarray(_rgb(image))
            canvas.paste(tile.resize((tw, th), Image.NEAREST) if scale > 1 else tile, (left + j * (tw + pad), y))
    return canvas


def overview_rows(images: np.ndarray, labels: np.ndarray, max_classes: int, per_class: int,
                  class_names: Sequence[str] | None = None) -> tuple[list[np.ndarray], list[str]]:
    """Up to `max_classes` evenly spaced classes present in `labels` x the first `per_class` images of
    each (all rows cut to the shortest), and their row labels; images (N, H, W, C), labels (N,)."""
    classes = np.unique(labels)
    shown = classes[evenly_spaced(len(classes), max_classes)]
    rows = [images[labels == c][:per_class] for c in shown]
    per_row = min(len(r) for r in rows)
    return [r[:per_row] for r in rows], [class_label(int(c), class_names) for c in shown]


def save_grid(image: Image.Image, path: str | Path) -> Path:
    """Write a grid PNG atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="png")
    return path


def save_class_grid(images: np.ndarray, labels: np.ndarray, path: str | Path, max_classes: int, per_class: int,
                    class_names: Sequence[str] | None = None) -> Path:
    """overview PNG: one labelled row per class (`overview_rows`), written atomically."""
    rows, names = overview_rows(images, labels, max_classes, per_class, class_names)
    return save_grid(class_grid(rows, names), path)


def read_class_names(data_out: str | Path, num_classes: int) -> list[str] | None:
    """Class names from the prepared data's manifest (`data.out/manifest.json`, label id = index); None
    (one warning, rows then say `class <id>`) when it is unreadable or lists another number of classes."""
    from sphereard.data.shards import load_manifest
    from sphereard.errors import UserError

    try:
        names = list(load_manifest(data_out, verify=False)["classes"])
    except UserError as err:
        log.warning("no class names for the sample grids: %s", err)
        return None
    if len(names) != num_classes:
        log.warning("%s lists %d classes, the generator has %d: grids label rows by class id", data_out,
                    len(names), num_classes)
        return None
    return names
