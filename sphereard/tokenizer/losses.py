"""Tokenizer losses (SphereAR Sec. 4.1): L1 recon 1.0 + LPIPS(VGG) 1.0 + KL 0.004 + PatchGAN hinge 0.5 from step 20k.

LPIPS (Zhang et al. 2018) comes from the `lpips` package: its linear heads ship inside the wheel,
the VGG16 backbone is read from a LOCAL torchvision vgg16 state dict (never downloaded). Without
that file the LPIPS term is disabled (weight 0) with one log line.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sphereard.errors import UserError
from sphereard.tokenizer.groupnorm import gn_groups
from sphereard.utils.weights import load_state_strict, read_torch_weights

log = logging.getLogger(__name__)

LPIPS_WEIGHTS_ENV = "SPHEREARD_LPIPS_VGG16"  # fallback for the weights path when no argument is given
LPIPS_NET = "vgg"
LPIPS_VERSION = "0.1"
DISC_NDF = 64  # PatchGAN base width (taming-transformers' NLayerDiscriminator)
DISC_LAYERS = 3
DISC_KERNEL = 4
LEAKY_SLOPE = 0.2


# --- reconstruction --------------------------------------------------------------------------
def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean absolute (l1) or squared (l2) error over all pixels: scalar."""
    if kind == "l1":
        return F.l1_loss(recon, target)
    if kind == "l2":
        return F.mse_loss(recon, target)
    raise UserError(f"recon_loss={kind!r}: must be 'l1' or 'l2'")


# --- LPIPS -----------------------------------------------------------------------------------
def _backbone_state(state: dict, slices: nn.Module, source: str | os.PathLike = "lpips_weights_path") -> dict:
    """Map a torchvision vgg16 state dict (features.{i}.*) onto lpips' slice{k}.{i}.* names.

    A state dict already in lpips layout (slice{k}.* or net.slice{k}.*) passes through.
    Raises UserError naming `source` and the first missing key otherwise.
    """
    names = list(slices.state_dict())
    stripped = {k.removeprefix("net."): v for k, v in state.items()}
    if all(n in stripped for n in names):
        return {n: stripped[n] for n in names}
    out = {}
    for name in names:
        _, idx, param = name.split(".")  # slice{k}.{i}.{weight|bias}
        key = f"features.{idx}.{param}"
        if key not in state:
            raise UserError(f"{source}: not a torchvision vgg16 state dict (missing {key})")
        out[name] = state[key]
    return out


class PerceptualLoss(nn.Module):
    """Frozen LPIPS-VGG on images in [-1, 1]; 1-channel inputs are repeated to RGB. forward -> (B,)."""

    def __init__(self, lpips_model: nn.Module):
        super().__init__()
        self.lpips = lpips_model.eval().requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.lpips.eval()  # dropout in the linear heads stays off
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        return self.lpips(x, y).flatten()  # (B,)


def load_lpips(weights_path: str | os.PathLike | None = None, device=None) -> PerceptualLoss | None:
    """LPIPS-VGG with the backbone from a local torchvision vgg16 state dict.

    `weights_path` (or $SPHEREARD_LPIPS_VGG16) names the file. Neither set: return None and log
    one line (the LPIPS weight is 0). Set but missing, unreadable, not tensors only, or not VGG16
    weights (a missing key, another shape): UserError naming the file.
    """
    path = weights_path or os.environ.get(LPIPS_WEIGHTS_ENV)
    if not path:
        log.warning("LPIPS disabled: no local VGG16 weights (lpips_weights_path / $%s unset); "
                    "the LPIPS loss weight is 0", LPIPS_WEIGHTS_ENV)
        return None
    path = Path(path)
    if not path.is_file():
        raise UserError(f"lpips_weights_path={str(path)!r}: VGG16 weights file does not exist")
    state = read_torch_weights(path, "VGG16 weights (lpips_weights_path)")  # before the model: fail fast
    import lpips  # lazy: pulls in torchvision

    # pnet_rand: build VGG16 with random weights (no download); pretrained=False: heads loaded below
    with warnings.catch_warnings():  # torchvision's "pretrained=False is deprecated" notice
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(pretrained=False, net=LPIPS_NET, version=LPIPS_VERSION, pnet_rand=True, verbose=False)
    heads = Path(lpips.__file__).parent / "weights" / f"v{LPIPS_VERSION}" / f"{LPIPS_NET}.pth"
    model.load_state_dict(torch.load(heads, map_location="cpu", weights_only=True), strict=False)
    load_state_strict(model.net, _backbone_state(state, model.net, path), path)
    log.info("LPIPS-VGG loaded (backbone %s)", path)
    return PerceptualLoss(model).to(device)


# --- PatchGAN discriminator + hinge losses -----------------------------------------------------
class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017): stride-2 4x4 convs, GroupNorm, LeakyReLU -> (B, 1, h, w) logits."""

    def __init__(self, in_channels: int = 3, ndf: int = DISC_NDF, n_layers: int = DISC_LAYERS):
        super().__init__()
        assert n_layers >= 1, "PatchGAN needs n_layers >= 1"
        pad = 1
        layers = [nn.Conv2d(in_channels, ndf, DISC_KERNEL, 2, pad), nn.LeakyReLU(LEAKY_SLOPE)]
        ch = ndf
        for n in range(1, n_layers + 1):
            out = ndf * min(2 ** n, 8)
            stride = 2 if n < n_layers else 1  # last block keeps the resolution
            layers += [nn.Conv2d(ch, out, DISC_KERNEL, stride, pad, bias=False),
                       nn.GroupNorm(gn_groups(out), out), nn.LeakyReLU(LEAKY_SLOPE)]
            ch = out
        layers.append(nn.Conv2d(ch, 1, DISC_KERNEL, 1, pad))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, 1, h, w)
        return self.net(x)


def d_hinge_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]): scalar."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def g_hinge_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-E[D(G(z))]: scalar."""
    return -fake_logits.mean()


def adversarial_weight(step: int, start: int, weight: float) -> float:
    """The GAN weight, 0 before `start` (paper: 0.5 from step 20k)."""
    return weight if step >= start else 0.0
