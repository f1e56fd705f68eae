"""SphereAR generator: causal transformer, diffusion head, rectified flow, CFG, projection, sampling."""

from sphereard.ar.cfg import CFG_SCHEDULES, cfg_combine, cfg_scale_at
from sphereard.ar.diffusion_head import DiffusionHead, timestep_embedding
from sphereard.ar.flow import (
    SAMPLERS,
    euler,
    euler_maruyama,
    flow_loss,
    integrate,
    interpolate,
    sample_t,
    score_from_velocity,
    velocity_target,
)
from sphereard.ar.presets import (
    GENERATOR_PRESETS,
    GeneratorArch,
    SphereARModel,
    count_params,
    create_generator,
    resolve_generator_arch,
)
from sphereard.ar.projection import PROJECTIONS, default_projection, project_tokens
from sphereard.ar.sampler import generate
from sphereard.ar.transformer import ARTransformer, DecodeState

__all__ = [
    "ARTransformer", "CFG_SCHEDULES", "DecodeState", "DiffusionHead", "GENERATOR_PRESETS", "GeneratorArch",
    "PROJECTIONS", "SAMPLERS", "SphereARModel", "cfg_combine", "cfg_scale_at", "count_params",
    "create_generator", "default_projection", "euler", "euler_maruyama", "flow_loss", "generate",
    "integrate", "interpolate", "project_tokens", "resolve_generator_arch", "sample_t",
    "score_from_velocity", "timestep_embedding", "velocity_target",
]
