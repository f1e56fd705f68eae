"""The SphereAR model (transformer + diffusion head) built from a preset of `arch.py`'s registry.

| preset     | AR depth/width/heads | class tok | head blocks x width | adaLN | grid x d   | classes | params     | reference           |
|------------|----------------------|-----------|---------------------|-------|------------|---------|------------|---------------------|
| SphereAR-B | 24 / 768 / 12        | 16        | 6 x 768             | 2     | 16x16 x 16 | 1000    | 204.50M    | ~205M (README 208M) |
| SphereAR-L | 32 / 1024 / 16       | 16        | 8 x 1024            | 2     | 16x16 x 16 | 1000    | 476.38M    | ~476M (README 479M) |
| SphereAR-H | 40 / 1280 / 20       | 16        | 12 x 1280           | 3     | 16x16 x 16 | 1000    | 943.85M    | ~944M (README 943M) |
| fmnist-s   | 4 / 96 / 4 (mlp 256) | 4         | 2 x 96              | 1     | 8x8 x 16   | 10      | 0.632M     | default data        |
| fmnist-m   | 6 / 192 / 6 (mlp 512)| 4         | 3 x 192             | 1     | 8x8 x 16   | 10      | 3.497M     | benchmark (issue 18)|
| fmnist-xs  | 2 / 32 / 2 (mlp 64)  | 2         | 2 x 32              | 1     | 8x8 x 8    | 10      | 0.049M     | smoke / tests       |

Counts exclude the VAE (as the paper's do) and are checked in tests/test_ar.py (within 2% of the
paper's ~205M/~476M/~944M; the README's 208M/479M/943M are also within 2%). Paper facts (Sec. 4.1,
official code): 16 class tokens, SwiGLU hidden 8d/3 rounded up to 256, head SwiGLU hidden 1.5 x
width, diff_batch_mul 4, label dropout 0.1. fmnist-xs uses d = 8 to match the fmnist-xs tokenizer.
"""

from __future__ import annotations

import torch
from torch import nn

from sphereard.ar import fast_sampler, sampler
from sphereard.ar.arch import GeneratorArch, resolve_generator_arch
from sphereard.ar.diffusion_head import DiffusionHead
from sphereard.ar.flow import flow_loss
from sphereard.ar.magnitude import MAGNITUDES, MagnitudeHead, direction_targets, log_norm_nll
from sphereard.ar.riemannian import FLOWS, riemannian_flow_loss
from sphereard.ar.transformer import ARTransformer
from sphereard.errors import UserError

# AdamW no-decay rule (paper Sec. 4.1): embeddings, the input projection and 1-D params
# (1-D params are excluded by `sphereard.train.optim.is_no_decay` itself).
SAMPLER_IMPLS: tuple[str, ...] = ("fast", "reference")  # ar/fast_sampler.py, ar/sampler.py (the oracle)
NO_DECAY_PATTERNS = (r"^transformer\.class_embed\.", r"^transformer\.proj_in\.", r"^head\.pos_embed\.")


class SphereARModel(nn.Module):
    """Causal transformer + per-token diffusion head; `loss` for training, `sample` for generation.

    flow: `euclidean` (rectified flow, paper) | `riemannian` (geodesic flow on the sphere, `riemannian.py`);
    magnitude: `none` | `predict` (directions + a log-norm head, `magnitude.py`)."""

    def __init__(self, arch: GeneratorArch, flow: str = "euclidean", magnitude: str = "none"):
        super().__init__()
        assert flow in FLOWS, f"flow must be one of {FLOWS}"
        assert magnitude in MAGNITUDES, f"magnitude must be one of {MAGNITUDES}"
        self.arch, self.flow, self.magnitude = arch, flow, magnitude
        self.transformer = ARTransformer(
            arch.token_dim, arch.dim, arch.depth, arch.heads, arch.num_classes, arch.num_class_tokens,
            arch.grid_size, arch.label_dropout, arch.mlp_hidden, arch.rope_patch_offset)
        self.head = DiffusionHead(arch.token_dim, arch.dim, arch.head_width, arch.head_blocks,
                                  arch.adaln_groups, arch.num_tokens, arch.head_mlp_ratio)
        self.magnitude_head = MagnitudeHead(arch.dim, arch.head_width) if magnitude == "predict" else None

    def loss(self, z: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Flow loss of next-token prediction (+ the log-norm NLL with `magnitude: predict`): z (B, L, d)
        tokens, labels (B,) -> scalar. The transformer always reads the whole tokens z."""
        cond = self.transformer(z, labels)  # (B, L, D)
        loss_fn = riemannian_flow_loss if self.flow == "riemannian" else flow_loss
        if self.magnitude_head is None:
            return loss_fn(self.head, z, cond, self.arch.diff_batch_mul, generator)
        nll = log_norm_nll(*self.magnitude_head(cond.reshape(-1, cond.shape[-1])), z.reshape(-1, z.shape[-1]))
        return loss_fn(self.head, direction_targets(z), cond, self.arch.diff_batch_mul, generator) + nll

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss(z, labels)

    def sample(self, labels: torch.Tensor, impl: str = "fast", **kwargs):
        """Token sequences (B, L, d) for labels (B,): `fast_sampler.generate` (impl `fast`, the default) or the
        reference `sampler.generate` (impl `reference`, the oracle) with this model's transformer and head."""
        if impl not in SAMPLER_IMPLS:
            raise UserError(f"impl={impl!r}: must be one of {', '.join(SAMPLER_IMPLS)}")
        generate = fast_sampler.generate if impl == "fast" else sampler.generate
        return generate(self.transformer, self.head, labels, flow=self.flow, magnitude_head=self.magnitude_head,
                        **kwargs)


def create_generator(name: str, flow: str = "euclidean", magnitude: str = "none", **overrides) -> SphereARModel:
    """Build preset `name` (+ arch overrides) with the head's flow and magnitude option; wrap in
    `with torch.device("meta")` to count for free. UserError for an unknown flow or magnitude."""
    for key, value, known in (("flow", flow, FLOWS), ("magnitude", magnitude, MAGNITUDES)):
        if value not in known:
            raise UserError(f"{key}={value!r}: must be one of {', '.join(known)}")
    return SphereARModel(resolve_generator_arch(name, overrides), flow, magnitude)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
