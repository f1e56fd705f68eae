"""Classifier-free guidance on the velocity (SphereAR Sec. 3.3; Ho & Salimans 2022).

v = v_u + w (v_c - v_u), with a guidance scale that is either constant over the token
sequence or grows linearly from 1 at the first token: w_k = 1 + (w - 1) k / N.
"""

from __future__ import annotations

import torch

from sphereard.errors import UserError

CFG_SCHEDULES: tuple[str, ...] = ("constant", "linear")
CFG_UNIT_WEIGHTS: tuple[str, ...] = ("shared", "separate")  # a guided token of weight 1 (ar/sampler.py)


def cfg_combine(v_cond: torch.Tensor, v_uncond: torch.Tensor, w: float) -> torch.Tensor:
    """Guided velocity v_u + w (v_c - v_u); w = 1 gives v_c, w = 0 gives v_u. Shapes (N, d)."""
    return v_uncond + w * (v_cond - v_uncond)


def cfg_scale_at(k: int, num_tokens: int, w: float, schedule: str = "linear") -> float:
    """Guidance scale for token k of num_tokens (raster index, 0-based).

    constant: w.  linear: 1 + (w - 1) k / N (the paper's default; w_0 = 1).
    """
    assert num_tokens > 0, "num_tokens must be positive"
    assert 0 <= k < num_tokens, "token index k must lie in [0, num_tokens)"
    if schedule == "constant":
        return float(w)
    if schedule == "linear":
        return 1.0 + (float(w) - 1.0) * k / num_tokens
    raise UserError(f"cfg_schedule={schedule!r}: must be one of {', '.join(CFG_SCHEDULES)}")
