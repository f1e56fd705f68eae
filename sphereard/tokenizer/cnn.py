"""Residual CNN stems of the hybrid VAE (SphereAR Sec. 4.1, "CNN stem with residual down/up-blocks").

Encoder: conv_in (C -> ch[0]) then one stride-2 residual down-block per step of the channel list,
so an image (B, C, H, W) becomes a grid (B, ch[-1], H / 2^S, W / 2^S) with S = len(ch) - 1.
Decoder mirrors it: one 2x residual up-block per step of the reversed list, then GroupNorm + SiLU
+ conv_out back to C channels. Each stage may hold extra plain residual units (the paper's
decoder has one per up-stage, its encoder none).
"""

from __future__ import annotations

import torch
from torch import nn

from sphereard.tokenizer.groupnorm import gn_groups

GN_EPS = 1e-6
UPSAMPLE_MODES = ("transpose", "nearest")


def norm_act(channels: int) -> list[nn.Module]:
    return [nn.GroupNorm(gn_groups(channels), channels, eps=GN_EPS), nn.SiLU()]


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class ResUnit(nn.Module):
    """x + [GN, SiLU, conv3x3] x 2, same channels and resolution."""

    def __init__(self, ch: int):
        super().__init__()
        self.block = nn.Sequential(*norm_act(ch), conv3x3(ch, ch), *norm_act(ch), conv3x3(ch, ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResDown(nn.Module):
    """Halve the resolution: [GN, SiLU, stride-2 conv3x3, GN, SiLU, conv3x3] + 2x2 stride-2 shortcut."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.block = nn.Sequential(*norm_act(cin), conv3x3(cin, cout, stride=2), *norm_act(cout), conv3x3(cout, cout))
        self.shortcut = nn.Conv2d(cin, cout, kernel_size=2, stride=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, cin, H, W) -> (B, cout, H/2, W/2)
        return self.shortcut(x) + self.block(x)


def upsample2x(cin: int, cout: int, mode: str, main: bool) -> nn.Module:
    """2x upsampling conv. transpose: 4x4 (main path) / 2x2 (shortcut) transposed conv;
    nearest: nearest-neighbour upsample then conv3x3 (main) / conv1x1 (shortcut)."""
    assert mode in UPSAMPLE_MODES, f"upsample must be one of {UPSAMPLE_MODES}"
    if mode == "transpose":
        if main:
            return nn.ConvTranspose2d(cin, cout, kernel_size=4, stride=2, padding=1, bias=False)
        return nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2, bias=False)
    conv = conv3x3(cin, cout) if main else nn.Conv2d(cin, cout, kernel_size=1, bias=False)
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv)


class ResUp(nn.Module):
    """Double the resolution: [GN, SiLU, up-conv, GN, SiLU, conv3x3] + up-conv shortcut."""

    def __init__(self, cin: int, cout: int, mode: str = "transpose"):
        super().__init__()
        self.block = nn.Sequential(
            *norm_act(cin), upsample2x(cin, cout, mode, main=True), *norm_act(cout), conv3x3(cout, cout)
        )
        self.shortcut = upsample2x(cin, cout, mode, main=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, cin, H, W) -> (B, cout, 2H, 2W)
        return self.shortcut(x) + self.block(x)


class CNNEncoder(nn.Module):
    """Image (B, C, H, W) -> feature grid (B, ch[-1], H/2^S, W/2^S)."""

    def __init__(self, in_channels: int, channels: list[int], extra_units: int = 0):
        super().__init__()
        self.conv_in = conv3x3(in_channels, channels[0])
        stages = []
        for cin, cout in zip(channels[:-1], channels[1:], strict=True):
            stages += [ResDown(cin, cout)] + [ResUnit(cout) for _ in range(extra_units)]
        self.stages = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.conv_in(x))


class CNNDecoder(nn.Module):
    """Feature grid (B, ch[-1], h, w) -> image (B, C, h*2^S, w*2^S); `channels` in encoder order."""

    def __init__(self, out_channels: int, channels: list[int], extra_units: int = 1, mode: str = "transpose"):
        super().__init__()
        rev = list(channels)[::-1]
        stages = []
        for cin, cout in zip(rev[:-1], rev[1:], strict=True):
            stages += [ResUp(cin, cout, mode)] + [ResUnit(cout) for _ in range(extra_units)]
        self.stages = nn.Sequential(*stages)
        self.conv_out = nn.Sequential(*norm_act(rev[-1]), conv3x3(rev[-1], out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.stages(x))
