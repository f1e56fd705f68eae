"""Latent cache (sphereard.latents): every stored posterior parameter round-trips without changing
samples, in float16 as well (issue 11, item 4); values it cannot hold stop the encode in one line."""

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from sphereard.errors import UserError
from sphereard.latents import (
    CACHE_FORMAT,
    LATENTS_FILE,
    LEGACY_META_FILE,
    LatentCacheWriter,
    decode_column,
    read_latent_cache,
)
from sphereard.tokenizer.posterior import sample_from_moments
from sphereard.utils.io import sha256_file

D, L = 16, 3
KAPPAS = (1.0, 1e4, 1e5, 1e9)  # 1e5 and 1e9 overflowed float16 to inf, and PS(mu, inf) sampled -mu
LOG16_REL = 2.0 ** -11  # float16 rounding, relative: log kappa is stored to |log kappa| * 2^-11


def spherical_params(kappas=KAPPAS, seed=0) -> np.ndarray:
    """(N, L, D + 1) [unit mu | kappa], one kappa per image."""
    g = torch.Generator().manual_seed(seed)
    mu = F.normalize(torch.randn(len(kappas), L, D, generator=g), dim=-1)
    kappa = torch.tensor(kappas).view(-1, 1, 1).expand(-1, L, 1)
    return torch.cat([mu, kappa], dim=-1).numpy()


def write(out_dir, params, posterior="spherical", dtype="float16", flips=None):
    with LatentCacheWriter(out_dir, {"posterior": posterior, "radius": math.sqrt(D)}, dtype) as cache:
        cache.write(params, np.arange(len(params)), flips)
    return out_dir


def same_seed_samples(kind, params, seed=3):
    torch.manual_seed(seed)
    return sample_from_moments(kind, torch.as_tensor(params).float())


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_cache_round_trips_concentration_and_samples(tmp_path, dtype):
    params = spherical_params()
    flips = spherical_params(seed=1)
    cached, labels, meta = read_latent_cache(write(tmp_path / "c", params, dtype=dtype, flips=flips))
    assert cached.shape == (len(KAPPAS), 2, L, D + 1) and cached.dtype == torch.float32  # (N, V, L, P)
    assert meta["format"] == CACHE_FORMAT and meta["log_channels"] == [D] and meta["dtype"] == dtype
    assert torch.equal(labels, torch.arange(len(KAPPAS)))
    kappa = cached[..., -1]  # (N, V, L)
    expected = torch.tensor(KAPPAS).view(-1, 1, 1).expand_as(kappa)
    rel = (kappa / expected - 1).abs()
    bound = LOG16_REL * torch.log(expected).clamp_min(1.0) if dtype == "float16" else torch.full_like(rel, 1e-6)
    assert torch.isfinite(kappa).all() and (rel <= bound).all(), rel.amax(dim=(1, 2))
    for view, original in enumerate((params, flips)):
        a, b = same_seed_samples("spherical", original), same_seed_samples("spherical", cached[:, view])
        radius = math.sqrt(D)
        assert torch.isfinite(b).all()
        # float16 rounding of mu (<= 2^-12 per component) bounds the difference, at every kappa
        assert (a - b).abs().max().item() / radius < (1e-3 if dtype == "float16" else 1e-6)
        cos = F.cosine_similarity(a, b, dim=-1)
        assert cos.min().item() > 1 - 1e-6


def test_gaussian_cache_stores_raw_params(tmp_path):
    g = torch.Generator().manual_seed(2)
    params = torch.cat([3 * torch.randn(4, L, D, generator=g), torch.empty(4, L, D).uniform_(-30, 20)], -1).numpy()
    cached, _, meta = read_latent_cache(write(tmp_path / "g", params, posterior="gaussian"))
    assert meta["log_channels"] == [] and cached.dtype == torch.float16  # nothing to decode: stays compact
    torch.testing.assert_close(cached[:, 0].float(), torch.from_numpy(params), rtol=2.0 ** -11, atol=0)


@pytest.mark.parametrize("posterior, channel, value, match", [
    ("spherical", -1, math.nan, r"non-finite posterior parameter nan at image 1, token 2, channel 16"),
    ("spherical", -1, math.inf, r"non-finite posterior parameter inf at image 1, token 2, channel 16"),
    ("spherical", -1, 0.0, r"parameter 0 at image 1, token 2, channel 16 is stored as its log"),
    ("gaussian", 5, 1e5, r"parameter 100000 at image 1, token 2, channel 5 overflows float16 "
                         r"\(set encode.dtype=float32\)"),
])
def test_unrepresentable_parameter_stops_with_one_line(tmp_path, posterior, channel, value, match):
    params = np.full((2, L, D + 1 if posterior == "spherical" else 2 * D), 0.5, np.float32)
    params[1, 2, channel] = value
    with pytest.raises(UserError, match=match) as err:
        write(tmp_path / "bad", params, posterior=posterior)
    message = str(err.value)
    assert "\n" not in message and f"{tmp_path / 'bad' / LATENTS_FILE} column 'moments'" in message
    assert not (tmp_path / "bad").exists()  # nothing half-written
    assert posterior == "spherical" or write(tmp_path / "ok", params, posterior=posterior, dtype="float32")


def test_format_1_caches_are_still_read_and_newer_formats_refused(tmp_path):
    """Caches written before format 2 hold raw parameters (float16 kappa) and no "format" key."""
    params = spherical_params(kappas=(1.0, 300.0))
    out = tmp_path / "v1"
    out.mkdir()
    flat = pa.array(params.reshape(-1).astype(np.float16), type=pa.float16())
    table = pa.table({"label": pa.array(np.arange(2, dtype=np.int32)),
                      "params": pa.FixedSizeListArray.from_arrays(flat, L * (D + 1))})
    pq.write_table(table, out / LATENTS_FILE)
    meta = {"posterior": "spherical", "rows": 2, "num_tokens": L, "params_dim": D + 1, "views": 1,
            "dtype": "float16", "sha256": sha256_file(out / LATENTS_FILE)}
    (out / LEGACY_META_FILE).write_text(json.dumps(meta))  # format 1: old names
    cached, _, _ = read_latent_cache(out)
    assert cached.shape == (2, 1, L, D + 1)
    torch.testing.assert_close(cached[:, 0].float(), torch.from_numpy(params.astype(np.float16)).float())
    (out / LEGACY_META_FILE).write_text(json.dumps({**meta, "format": CACHE_FORMAT + 1}))
    with pytest.raises(UserError, match=rf"meta\.json: cache format {CACHE_FORMAT + 1} is newer"):
        read_latent_cache(out)


def test_decode_column_gives_the_readers_params(tmp_path):
    """Row-group readers (the AR stage's loss estimate) decode with `decode_column`."""
    out = write(tmp_path / "c", spherical_params())
    cached, _, meta = read_latent_cache(out)
    group = pq.ParquetFile(out / LATENTS_FILE).read_row_group(0, columns=["moments"])
    torch.testing.assert_close(decode_column(group.column("moments"), meta), cached[:, 0])
