"""In-project classifier: a small CNN trained on the dataset's train split (`train_classifier` stage).

Its penultimate features (feature_dim) and logits are the `classifier` feature extractor for
FD / KID / precision-recall / IS-analogue / class consistency on data where no standard
pretrained network applies (Fashion-MNIST, emoji). Saved as an export: `model.safetensors` +
`model.json`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from sphereard.data.transforms import random_hflip_batch
from sphereard.errors import UserError
from sphereard.export import META_FILE, WEIGHTS_FILE
from sphereard.utils.io import atomic_path, read_json_object, require_fields
from sphereard.utils.weights import load_state_strict, read_safetensors

log = logging.getLogger(__name__)

NUM_STAGES = 2  # stride-2 conv stages after the stride-2 stem: 32 -> 16 -> 8 -> 4 (cheap on CPU)
EVAL_BATCH = 1000
WEIGHT_DECAY = 1e-4
LOG_EVERY = 100


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.SiLU())


class SmallCNN(nn.Module):
    """Stride-2 stem conv + 2 stride-2 conv stages (width, 2w, 4w) + global pool + feature layer + linear head.

    Input float (B, C, H, W) in [-1, 1]; returns (features (B, feature_dim), logits (B, num_classes)).
    """

    def __init__(self, num_classes: int, channels: int, image_size: int, width: int = 32,
                 feature_dim: int = 128):
        super().__init__()
        assert num_classes > 1, "classifier needs at least two classes"
        self.config = dict(num_classes=num_classes, channels=channels, image_size=image_size,
                           width=width, feature_dim=feature_dim)
        widths = [width, 2 * width, 4 * width]
        layers = [conv_bn(channels, widths[0], stride=2)]
        layers += [conv_bn(widths[i], widths[i + 1], stride=2) for i in range(NUM_STAGES)]
        self.body = nn.Sequential(*layers)
        self.to_features = nn.Sequential(nn.Linear(widths[-1], feature_dim), nn.SiLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x).mean(dim=(2, 3))  # (B, 4 width)
        feats = self.to_features(h)  # (B, feature_dim)
        return feats, self.head(feats)  # (B, feature_dim), (B, num_classes)


def uint8_to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) in [0, 255] -> float in [-1, 1] (the ShardDataset convention)."""
    return x.float() / 127.5 - 1.0


def _nhwc_to_tensor(images: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().to(device)


@torch.no_grad()
def classifier_accuracy(model: SmallCNN, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy on uint8 (N, C, H, W) images."""
    model.eval()
    correct = 0
    for i in range(0, len(labels), EVAL_BATCH):
        _, logits = model(uint8_to_unit(images[i:i + EVAL_BATCH]))
        correct += (logits.argmax(-1) == labels[i:i + EVAL_BATCH]).sum().item()
    return correct / max(len(labels), 1)


def train_classifier(data_root: str | Path, cfg, device="cpu", seed: int = 0) -> tuple[SmallCNN, float]:
    """Train SmallCNN on the train split (AdamW, one-cycle cosine lr, random flips); return it with
    its test-split accuracy. `cfg` is a `ClassifierConfig`. Both splits are held in memory as uint8
    (meant for the small in-project datasets; ImageNet-scale data uses the inception extractor).

    Raises UserError naming manifest.json for a dataset with fewer than two classes or an empty split."""
    from sphereard.data import images_as_uint8, load_manifest, manifest_path

    manifest = load_manifest(data_root)
    check_classes(manifest["num_classes"], manifest_path(data_root))
    x_train, y_train = images_as_uint8(data_root, "train")
    x_test, y_test = images_as_uint8(data_root, "test")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x_train, x_test = _nhwc_to_tensor(x_train, device), _nhwc_to_tensor(x_test, device)  # (N, C, H, W)
    y_train, y_test = torch.from_numpy(y_train).to(device), torch.from_numpy(y_test).to(device)
    model = SmallCNN(manifest["num_classes"], manifest["channels"], manifest["image_size"],
                     cfg.width, cfg.feature_dim).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps)
    t0 = time.perf_counter()
    model.train()
    for step in range(cfg.steps):
        idx = torch.randint(len(y_train), (cfg.batch_size,), generator=gen).to(device)
        x = uint8_to_unit(x_train[idx])
        x = random_hflip_batch(x, generator=gen)  # Fashion-MNIST / emoji classes are mirror-invariant
        _, logits = model(x)
        loss = F.cross_entropy(logits, y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % LOG_EVERY == 0:
            log.info("classifier step %d/%d loss %.4f", step + 1, cfg.steps, loss.item())
    acc = classifier_accuracy(model, x_test, y_test)
    log.info("classifier: test accuracy %.4f after %d steps in %.1f s", acc, cfg.steps, time.perf_counter() - t0)
    return model.eval(), acc


def save_classifier(model: SmallCNN, out_dir: str | Path, accuracy: float | None = None,
                    classes: list[str] | None = None) -> Path:
    """Write `model.safetensors` + `model.json` into out_dir (atomically, as a whole directory)."""
    meta = dict(model.config, accuracy=accuracy, classes=classes)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return Path(out_dir)


CLASSIFIER_FIELDS = {"num_classes": int, "channels": int, "image_size": int, "width": int, "feature_dim": int}
MIN_CLASSES = 2


def check_classes(num_classes: int, where: str | Path) -> None:
    """Raises UserError naming `where` unless there are at least MIN_CLASSES classes."""
    if num_classes < MIN_CLASSES:
        raise UserError(f"{where}: {num_classes} class(es); the classifier needs at least {MIN_CLASSES} "
                        "(a one-class dataset has nothing to classify)")


def read_classifier_meta(path: str | Path) -> dict:
    """model.json of a saved classifier, checked (keys, types, values).

    Raises UserError naming model.json and the key for a missing, truncated or malformed file."""
    meta_path = Path(path) / META_FILE
    meta = read_json_object(meta_path, "classifier metadata")
    require_fields(meta_path, meta, CLASSIFIER_FIELDS)
    check_classes(meta["num_classes"], f"{meta_path}: key 'num_classes'")
    if meta["channels"] not in (1, 3):
        raise UserError(f"{meta_path}: key 'channels' must be 1 or 3, got {meta['channels']!r}")
    for key in ("image_size", "width", "feature_dim"):
        if meta[key] < 1:
            raise UserError(f"{meta_path}: key {key!r} must be positive, got {meta[key]!r}")
    return meta


def load_classifier(path: str | Path, device="cpu") -> tuple[SmallCNN, dict]:
    """Load a directory written by `save_classifier`; returns (model in eval mode, meta).

    Raises UserError naming the file: missing files, malformed model.json, unreadable or non-finite
    weights, weights that do not fit the network model.json describes."""
    path = Path(path)
    for name in (WEIGHTS_FILE, META_FILE):
        if not (path / name).is_file():
            raise UserError(f"{path / name}: classifier file missing (run the train_classifier stage)")
    meta = read_classifier_meta(path)
    model = SmallCNN(**{k: meta[k] for k in CLASSIFIER_FIELDS})
    load_state_strict(model, read_safetensors(path / WEIGHTS_FILE, "classifier weights"), path / WEIGHTS_FILE)
    return model.to(device).eval(), meta
