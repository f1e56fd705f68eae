"""Generator architectures and the preset registry (configuration only: no torch, no model code).

Kept apart from the model (`presets.py`) so that validating params (`sphereard.config`) does not
import, and so does not depend on, the transformer, the diffusion head or the samplers. The table of
presets and their parameter counts is in `sphereard/ar/presets.py`.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from sphereard.config import StrictModel
from sphereard.config_errors import check, validated
from sphereard.errors import UserError
from sphereard.nn import ROPE_HEAD_MULTIPLE

HEAD_MLP_RATIO = 1.5  # diffusion-head SwiGLU hidden = 1.5 x width (official code)


class GeneratorArch(StrictModel):
    """Architecture of the AR transformer + diffusion head (defaults: SphereAR-B on ImageNet-256)."""

    dim: int = Field(768, ge=1)
    depth: int = Field(24, ge=1)
    heads: int = Field(12, ge=1)
    head_blocks: int = Field(6, ge=1)
    head_width: int = Field(768, ge=1)
    adaln_groups: int = Field(2, ge=1, description="divides head_blocks (one adaLN projection per consecutive run)")
    num_class_tokens: int = Field(16, ge=1)
    diff_batch_mul: int = Field(4, ge=1)
    token_dim: int = Field(16, ge=2, description="tokens live on S^{d-1}")
    grid_size: int = Field(16, ge=1)
    num_classes: int = Field(1000, ge=1)
    label_dropout: float = Field(0.1, ge=0, lt=1)
    mlp_hidden: int | None = Field(None, ge=1, description="null: 8 dim / 3 rounded up to a multiple of 256")
    head_mlp_ratio: float = Field(HEAD_MLP_RATIO, gt=0)
    rope_patch_offset: float = Field(0.0, ge=0, lt=1, description=(
        "extra RoPE offset of patch centres (patches at idx + 1 + offset, class tokens at 0); "
        "0.5 for checkpoints imported from the official code"))

    @model_validator(mode="after")
    def _rules(self) -> GeneratorArch:
        check(self.dim % self.heads == 0, "heads", self.heads, f"must divide dim={self.dim}")
        check((self.dim // self.heads) % ROPE_HEAD_MULTIPLE == 0, "heads", self.heads,
              f"head dim dim / heads must be a multiple of {ROPE_HEAD_MULTIPLE} for 2D RoPE")
        check(self.head_blocks % self.adaln_groups == 0, "adaln_groups", self.adaln_groups,
              f"must divide head_blocks={self.head_blocks} (each adaLN projection serves consecutive blocks)")
        return self

    @property
    def num_tokens(self) -> int:
        return self.grid_size ** 2


_IMAGENET = dict(token_dim=16, grid_size=16, num_classes=1000, num_class_tokens=16)
GENERATOR_PRESETS: dict[str, GeneratorArch] = {
    "SphereAR-B": GeneratorArch(dim=768, depth=24, heads=12, head_blocks=6, head_width=768,
                                adaln_groups=2, **_IMAGENET),
    "SphereAR-L": GeneratorArch(dim=1024, depth=32, heads=16, head_blocks=8, head_width=1024,
                                adaln_groups=2, **_IMAGENET),
    "SphereAR-H": GeneratorArch(dim=1280, depth=40, heads=20, head_blocks=12, head_width=1280,
                                adaln_groups=3, **_IMAGENET),
    "fmnist-s": GeneratorArch(dim=96, depth=4, heads=4, head_blocks=2, head_width=96, adaln_groups=1,
                              num_class_tokens=4, token_dim=16, grid_size=8, num_classes=10, mlp_hidden=256),
    "fmnist-m": GeneratorArch(dim=192, depth=6, heads=6, head_blocks=3, head_width=192, adaln_groups=1,
                              num_class_tokens=4, token_dim=16, grid_size=8, num_classes=10, mlp_hidden=512),
    "fmnist-xs": GeneratorArch(dim=32, depth=2, heads=2, head_blocks=2, head_width=32, adaln_groups=1,
                               num_class_tokens=2, token_dim=8, grid_size=8, num_classes=10, mlp_hidden=64),
}
# Reference parameter counts (paper, excluding the VAE) that the presets must match within 2%.
PAPER_PARAMS: dict[str, float] = {"SphereAR-B": 205e6, "SphereAR-L": 476e6, "SphereAR-H": 944e6}
README_PARAMS: dict[str, float] = {"SphereAR-B": 208e6, "SphereAR-L": 479e6, "SphereAR-H": 943e6}


def resolve_generator_arch(name: str, overrides: dict | None = None, key: str = "generator") -> GeneratorArch:
    """Preset `name` with fields replaced by `overrides`, validated; errors name `<key>.preset/overrides.<field>`."""
    if name not in GENERATOR_PRESETS:
        raise UserError(f"{key}.preset={name!r}: unknown generator preset (known: {', '.join(GENERATOR_PRESETS)})")
    merged = {**GENERATOR_PRESETS[name].model_dump(), **(overrides or {})}
    return validated(GeneratorArch, merged, f"{key}.overrides")  # rejects unknown keys and wrong types
