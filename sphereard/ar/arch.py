"""Generator architectures and the preset registry (configuration only: no torch, no model code).

Kept apart from the model (`presets.py`) so that validating params (`sphereard.config`) does not
import, and so does not depend on, the transformer, the diffusion head or the samplers. The table of
presets and their parameter counts is in `sphereard/ar/presets.py`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sphereard.config_schema import from_dict, require
from sphereard.errors import UserError

HEAD_MLP_RATIO = 1.5  # diffusion-head SwiGLU hidden = 1.5 x width (official code)
ROPE_HEAD_MULTIPLE = 4  # 2D RoPE rotates pairs on two axes


@dataclass
class GeneratorArch:
    """Architecture of the AR transformer + diffusion head (defaults: SphereAR-B on ImageNet-256)."""

    dim: int = 768
    depth: int = 24
    heads: int = 12
    head_blocks: int = 6
    head_width: int = 768
    adaln_groups: int = 2
    num_class_tokens: int = 16
    diff_batch_mul: int = 4
    token_dim: int = 16
    grid_size: int = 16
    num_classes: int = 1000
    label_dropout: float = 0.1
    mlp_hidden: int | None = None  # None: 8 dim / 3 rounded up to a multiple of 256
    head_mlp_ratio: float = HEAD_MLP_RATIO

    def __post_init__(self):
        for name in ("dim", "depth", "heads", "head_blocks", "head_width", "adaln_groups",
                     "num_class_tokens", "diff_batch_mul", "grid_size", "num_classes"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        require(self.token_dim >= 2, "token_dim", self.token_dim, "must be >= 2 (tokens live on S^{d-1})")
        require(self.dim % self.heads == 0, "heads", self.heads, f"must divide dim={self.dim}")
        require((self.dim // self.heads) % ROPE_HEAD_MULTIPLE == 0, "heads", self.heads,
                f"head dim dim / heads must be a multiple of {ROPE_HEAD_MULTIPLE} for 2D RoPE")
        require(self.head_blocks % self.adaln_groups == 0, "adaln_groups", self.adaln_groups,
                f"must divide head_blocks={self.head_blocks} (each adaLN projection serves consecutive blocks)")
        require(0.0 <= self.label_dropout < 1.0, "label_dropout", self.label_dropout, "must be in [0, 1)")
        require(self.mlp_hidden is None or self.mlp_hidden >= 1, "mlp_hidden", self.mlp_hidden,
                "must be positive or null")
        require(self.head_mlp_ratio > 0, "head_mlp_ratio", self.head_mlp_ratio, "must be positive")

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
    merged = {**dataclasses.asdict(GENERATOR_PRESETS[name]), **(overrides or {})}
    return from_dict(GeneratorArch, merged, f"{key}.overrides")  # rejects unknown keys and wrong types
