"""SphereAR generator: causal transformer, diffusion head, rectified flow, CFG, projection, sampling."""

from sphereard.utils.lazy import lazy_exports

_EXPORTS = {  # public name -> submodule defining it (imported on first use)
    "CFG_SCHEDULES": "cfg", "cfg_combine": "cfg", "cfg_scale_at": "cfg",
    "DiffusionHead": "diffusion_head", "timestep_embedding": "diffusion_head",
    "SAMPLERS": "flow", "euler": "flow", "euler_maruyama": "flow", "flow_loss": "flow", "integrate": "flow",
    "interpolate": "flow", "sample_t": "flow", "score_from_velocity": "flow", "velocity_target": "flow",
    "GENERATOR_PRESETS": "arch", "GeneratorArch": "arch", "resolve_generator_arch": "arch", "SphereARModel": "presets",
    "count_params": "presets", "create_generator": "presets",
    "PROJECTIONS": "projection", "default_projection": "projection", "project_tokens": "projection",
    "generate": "sampler",
    "ARTransformer": "transformer", "DecodeState": "transformer",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
