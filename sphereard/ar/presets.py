"""Generator architectures, the preset registry and the SphereAR model (transformer + diffusion head).

| preset     | AR depth/width/heads | class tok | head blocks x width | adaLN | grid x d   | classes | params     | reference           |
|------------|----------------------|-----------|---------------------|-------|------------|---------|------------|---------------------|
| SphereAR-B | 24 / 768 / 12        | 16        | 6 x 768             | 2     | 16x16 x 16 | 1000    | 204.50M    | ~205M (README 208M) |
| SphereAR-L | 32 / 1024 / 16       | 16        | 8 x 1024            | 2     | 16x16 x 16 | 1000    | 476.38M    | ~476M (README 479M) |
| SphereAR-H | 40 / 1280 / 20       | 16        | 12 x 1280           | 3     | 16x16 x 16 | 1000    | 943.85M    | ~944M (README 943M) |
| fmnist-s   | 4 / 96 / 4 (mlp 256) | 4         | 2 x 96              | 1     | 8x8 x 16   | 10      | 0.632M     | default data        |
| fmnist-xs  | 2 / 32 / 2 (mlp 64)  | 2         | 2 x 32              | 1     | 8x8 x 8    | 10      | 0.049M     | smoke / tests       |

Counts exclude the VAE (as the paper's do) and are checked in tests/test_ar.py (within 2% of the
paper's ~205M/~476M/~944M; the README's 208M/479M/943M are also within 2%). Paper facts (Sec. 4.1,
official code): 16 class tokens, SwiGLU hidden 8d/3 rounded up to 256, head SwiGLU hidden 1.5 x
width, diff_batch_mul 4, label dropout 0.1. fmnist-xs uses d = 8 to match the fmnist-xs tokenizer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from sphereard.ar.diffusion_head import HEAD_MLP_RATIO, DiffusionHead
from sphereard.ar.flow import flow_loss
from sphereard.ar.sampler import generate
from sphereard.ar.transformer import ARTransformer
from sphereard.config_schema import from_dict, require
from sphereard.errors import UserError

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
    "SphereAR-B": GeneratorArch(dim=768, depth=24, heads=12, head_blocks=6, head_width=768, adaln_groups=2, **_IMAGENET),
    "SphereAR-L": GeneratorArch(dim=1024, depth=32, heads=16, head_blocks=8, head_width=1024, adaln_groups=2, **_IMAGENET),
    "SphereAR-H": GeneratorArch(dim=1280, depth=40, heads=20, head_blocks=12, head_width=1280, adaln_groups=3, **_IMAGENET),
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


# AdamW no-decay rule (paper Sec. 4.1): embeddings, the input projection and 1-D params
# (1-D params are excluded by `sphereard.train.optim.is_no_decay` itself).
NO_DECAY_PATTERNS = (r"^transformer\.class_embed\.", r"^transformer\.proj_in\.", r"^head\.pos_embed\.")


class SphereARModel(nn.Module):
    """Causal transformer + per-token diffusion head; `loss` for training, `sample` for generation."""

    def __init__(self, arch: GeneratorArch):
        super().__init__()
        self.arch = arch
        self.transformer = ARTransformer(
            arch.token_dim, arch.dim, arch.depth, arch.heads, arch.num_classes, arch.num_class_tokens,
            arch.grid_size, arch.label_dropout, arch.mlp_hidden)
        self.head = DiffusionHead(arch.token_dim, arch.dim, arch.head_width, arch.head_blocks,
                                  arch.adaln_groups, arch.num_tokens, arch.head_mlp_ratio)

    def loss(self, z: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Rectified-flow loss of next-token prediction: z (B, L, d) tokens, labels (B,) -> scalar."""
        return flow_loss(self.head, z, self.transformer(z, labels), self.arch.diff_batch_mul, generator)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss(z, labels)

    def sample(self, labels: torch.Tensor, **kwargs):
        """`sphereard.ar.sampler.generate` with this model's transformer and head."""
        return generate(self.transformer, self.head, labels, **kwargs)


def create_generator(name: str, **overrides) -> SphereARModel:
    """Build preset `name` (+ arch overrides); wrap in `with torch.device("meta")` to count for free."""
    return SphereARModel(resolve_generator_arch(name, overrides))


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
