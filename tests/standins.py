"""Stand-ins for weights nobody can ship (FID Inception), for tests and the tiny pretrained DAG."""

from __future__ import annotations

from pathlib import Path

import torch
import torch_fidelity.feature_extractor_inceptionv3 as tfi


def save_standin_inception(path: Path, seed: int = 0) -> Path:
    """Write a random torch-fidelity Inception-v3 state dict to `path` (no download: the URL loader and
    the weight load are stubbed while building; convolutions He-normal so its features vary across
    images). Extractors built from it are tagged `inception_unverified`, never FID."""
    original_url, original_load = tfi.load_state_dict_from_url, tfi.FeatureExtractorInceptionV3.load_state_dict
    tfi.load_state_dict_from_url = lambda *a, **k: None
    tfi.FeatureExtractorInceptionV3.load_state_dict = lambda self, *a, **k: None
    try:
        torch.manual_seed(seed)
        standin = tfi.FeatureExtractorInceptionV3("standin", ["2048"])
    finally:
        tfi.load_state_dict_from_url, tfi.FeatureExtractorInceptionV3.load_state_dict = original_url, original_load
    state = standin.state_dict()
    gen = torch.Generator().manual_seed(seed)
    for key, value in state.items():  # He-normal convolutions: the default init's activations vanish over the
        if value.ndim == 4:  # ~100 layers (pool features with std ~1e-9, so FD ~0 and precision 0)
            state[key] = torch.randn(value.shape, generator=gen) * (2.0 / value[0].numel()) ** 0.5
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path
