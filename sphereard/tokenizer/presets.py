"""Tokenizer architectures and the preset registry (configuration only; `vae.create_tokenizer` builds one, like DiT's `DiT_models`).

| preset     | image | C | patch | tokens | CNN channels      | enc/dec layers | width | heads | mlp  | regs | d  | params   | MFLOP/img (fwd+bwd) |
|------------|-------|---|-------|--------|-------------------|----------------|-------|-------|------|------|----|----------|---------------------|
| svae-paper | 256   | 3 | 16    | 16x16  | 64,64,128,256,512 | 6 / 12         | 512   | 8     | 1536 | 4    | 16 | 75.39M   | -                   |
| fmnist-s   | 32    | 1 | 4     | 8x8    | 8,16,64           | 2 / 3          | 64    | 4     | 192  | 4    | 16 | 0.397M   | 184                 |
| fmnist-xs  | 32    | 1 | 4     | 8x8    | 8,16,32           | 1 / 1          | 32    | 2     | 64   | 2    | 8  | 0.068M   | 40                  |
| emoji-s    | 32    | 3 | 4     | 8x8    | 16,32,96          | 2 / 3          | 96    | 4     | 256  | 4    | 16 | 0.897M   | 462                 |

(params with the spherical head; the Gaussian heads add (d - 1) * (width + 1). fmnist-xs has no
extra decoder residual units, the others one per up-stage.)
The paper preset follows the S-VAE facts (Sec. 4.1; official code): heads = width / 64, SwiGLU
hidden 8w/3 rounded up to 256, one residual down-block per encoder stage, one up-block plus one
plain residual unit per decoder stage, transposed-conv upsampling, a 3x3 grid conv before the
decoder ViT.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sphereard.config import Channels, PositiveInt, StrictModel
from sphereard.config_errors import check, validated
from sphereard.errors import UserError
from sphereard.nn import ROPE_HEAD_MULTIPLE
from sphereard.tokenizer.groupnorm import gn_groups


class TokenizerArch(StrictModel):
    """Architecture of the hybrid CNN + ViT VAE (SphereAR Sec. 4.1)."""

    image_size: int = 256
    in_channels: Channels = 3
    patch_size: int = Field(16, description="2 ** (len(cnn_channels) - 1): one stride-2 CNN stage per channel step")
    cnn_channels: list[PositiveInt] = Field(
        default_factory=lambda: [64, 64, 128, 256, 512], min_length=2,
        description="conv_in width, then one per stride-2 stage; the last equals width")
    enc_layers: int = Field(6, ge=1)
    dec_layers: int = Field(12, ge=1)
    width: int = 512
    heads: int = Field(8, gt=0)
    num_registers: int = Field(4, ge=0)
    latent_dim: int = Field(16, ge=2, description="sphere S^{d-1}")
    mlp_hidden: int | None = Field(None, gt=0, description="null: 8w/3 rounded up to a multiple of 256")
    enc_extra_units: int = Field(0, ge=0, description="plain residual units after each down-block")
    dec_extra_units: int = Field(1, ge=0, description="plain residual units after each up-block")
    upsample: Literal["transpose", "nearest"] = "transpose"
    rope_patch_offset: float = Field(0.0, ge=0, lt=1, description=(
        "extra RoPE offset of patch centres (patches at idx + 1 + offset, registers at 0); "
        "0.5 for checkpoints imported from the official code"))

    @model_validator(mode="after")
    def _rules(self) -> TokenizerArch:
        stages = len(self.cnn_channels) - 1
        check(self.patch_size == 2 ** stages, "patch_size", self.patch_size,
              f"must equal 2 ** (len(cnn_channels) - 1) = {2 ** stages}: one stride-2 CNN stage per channel step")
        check(self.image_size % self.patch_size == 0, "image_size", self.image_size,
              f"must be divisible by patch_size={self.patch_size}")
        check(all(c % gn_groups(c) == 0 for c in self.cnn_channels), "cnn_channels", self.cnn_channels,
              "each must be divisible by its GroupNorm groups min(32, c // 4)")
        check(self.cnn_channels[-1] == self.width, "width", self.width,
              f"must equal cnn_channels[-1]={self.cnn_channels[-1]} (the CNN output is the ViT input)")
        check(self.width % self.heads == 0, "heads", self.heads, f"must divide width={self.width}")
        check((self.width // self.heads) % ROPE_HEAD_MULTIPLE == 0, "heads", self.heads,
              f"head dim width / heads must be a multiple of {ROPE_HEAD_MULTIPLE} for 2D RoPE")
        return self

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid_size ** 2


TOKENIZER_PRESETS: dict[str, TokenizerArch] = {
    "svae-paper": TokenizerArch(),
    "fmnist-s": TokenizerArch(
        image_size=32, in_channels=1, patch_size=4, cnn_channels=[8, 16, 64],
        enc_layers=2, dec_layers=3, width=64, heads=4, num_registers=4, latent_dim=16, mlp_hidden=192),
    "fmnist-xs": TokenizerArch(
        image_size=32, in_channels=1, patch_size=4, cnn_channels=[8, 16, 32],
        enc_layers=1, dec_layers=1, width=32, heads=2, num_registers=2, latent_dim=8, mlp_hidden=64,
        dec_extra_units=0),
    "emoji-s": TokenizerArch(
        image_size=32, in_channels=3, patch_size=4, cnn_channels=[16, 32, 96],
        enc_layers=2, dec_layers=3, width=96, heads=4, num_registers=4, latent_dim=16, mlp_hidden=256),
}


def tokenizer_arch(name: str, **overrides) -> TokenizerArch:
    """Preset `name` with fields replaced by `overrides` (validated again)."""
    if name not in TOKENIZER_PRESETS:
        raise UserError(f"tokenizer.preset={name!r}: unknown preset (known: {', '.join(TOKENIZER_PRESETS)})")
    # unknown keys, wrong types and broken rules name `tokenizer.overrides.<key>`
    return validated(TokenizerArch, {**TOKENIZER_PRESETS[name].model_dump(), **overrides}, "tokenizer.overrides")
