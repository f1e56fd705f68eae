"""Importing the official SphereAR checkpoints (`python -m sphereard.convert official`).

(a) without the official code: random official-format checkpoints (tests/official_format.py) convert,
load through the project loaders and reproduce the model they came from; the B preset's key set is
checked on the meta device; bad files give one-line errors. (b) with SPHEREARD_OFFICIAL_SRC naming a
local checkout of github guolinke/SphereAR: numeric parity of our imported model with the official one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import official_format as fmt
import pytest
import torch

from sphereard.ar.export import load_generator
from sphereard.ar.presets import create_generator
from sphereard.convert.__main__ import main
from sphereard.convert.official import (
    GENERATOR_RULES,
    TOKENIZER_RULES,
    expected_official,
    official_key,
    qkv_to_official,
    qkv_to_ours,
    rope_permutation,
)
from sphereard.nn.rope import grid_positions
from sphereard.tokenizer.export import load_tokenizer
from sphereard.tokenizer.vae import create_tokenizer

SMALL = ["--preset", fmt.GENERATOR[0], "--tokenizer-preset", fmt.TOKENIZER[0]]


def convert(tmp_path: Path, *args: str) -> Path:
    out = tmp_path / "out"
    main(["official", *SMALL, "--out", str(out), *args])
    return out


def convert_error(capsys, tmp_path: Path, *args: str) -> str:
    with pytest.raises(SystemExit) as exc:
        convert(tmp_path, *args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


@pytest.fixture(scope="module")
def models():
    return fmt.small_models()


@pytest.fixture
def generator_file(tmp_path, models):
    vae, gen = models
    ema = fmt.official_state(vae, gen)
    # raw AR weights differ from the EMA; the VAE is frozen, so its copies are equal
    model = {k: v if k.startswith("vae.") else v + 1.0 for k, v in ema.items()}
    return fmt.save_official(tmp_path / "AR.pt", ema, model, fmt.run_args(gen))


# --- pure mapping ---------------------------------------------------------------------------------

def test_rope_permutation_pairs_our_row_axis_with_the_official_second_half():
    perm = rope_permutation(64)
    assert perm[:4].tolist() == [32, 34, 36, 38] and perm[16:18].tolist() == [0, 2]
    assert perm[32:34].tolist() == [33, 35] and sorted(perm.tolist()) == list(range(64))
    w = torch.randn(3 * 96, 96)
    assert torch.equal(qkv_to_ours(qkv_to_official(w, heads=4), heads=4), w)
    assert torch.equal(qkv_to_ours(w, 4)[192:], w[192:])  # v rows untouched


def test_b_preset_key_set_and_shapes_on_the_meta_device():
    with torch.device("meta"):
        gen = create_generator("SphereAR-B", **fmt.OFFSET)
        vae = create_tokenizer("svae-paper", **fmt.OFFSET)
    ar = expected_official(gen.state_dict(), GENERATOR_RULES)
    tok = expected_official(vae.state_dict(), TOKENIZER_RULES)
    assert (len(ar), len(tok)) == (202, 200)  # official: 202 AR keys, 202 vae.* keys incl. 2 RoPE tables
    assert ar["cls_embedding.weight"] == (1001, 16 * 768) and ar["pos_for_diff.weight"] == (256, 768)
    assert ar["layers.23.attention.wqkv.weight"] == (2304, 768)
    assert ar["layers.0.feed_forward.w1.weight"] == (4096, 768) and ar["layers.0.feed_forward.w2.weight"] == (768, 2048)
    assert ar["head.net.res_blocks.5.w1.bias"] == (2304,) and ar["head.net.ada_ln_blocks.1.weight"] == (2304, 768)
    assert ar["head.net.final_layer.ada_ln_modulation.weight"] == (1536, 768)
    assert tok["decoder.unpatchify.1.net.3.block2.5.weight"] == (64, 64, 3, 3)
    assert tok["decoder.unpatchify.1.net.0.shortcut.weight"] == (512, 256, 2, 2)
    assert tok["encoder.patchify.0.net.3.shortcut.weight"] == (512, 256, 2, 2)
    assert tok["quant_proj.weight"] == (17, 512) and tok["decoder.conv_in.1.weight"] == (512, 512, 3, 3)
    # every key of ours has one source; only the SwiGLU halves share one
    for model, rules in ((gen, GENERATOR_RULES), (vae, TOKENIZER_RULES)):
        ops = [official_key(k, rules) for k in model.state_dict()]
        assert len({name for name, _ in ops}) == len(ops) - sum(op == "up" for _, op in ops)


@pytest.mark.parametrize("preset,keys,params", [("SphereAR-L", 262, 476_380_176), ("SphereAR-H", 336, 943_854_096)])
def test_l_and_h_key_counts_and_parameters_on_the_meta_device(preset, keys, params):
    with torch.device("meta"):
        gen = create_generator(preset, **fmt.OFFSET)
    expected = expected_official(gen.state_dict(), GENERATOR_RULES)
    assert len(expected) == keys  # 4 embedding keys + 6 per layer + 2 + the head's
    assert sum(torch.Size(s).numel() for s in expected.values()) == params  # official count without vae.*


def test_rope_patch_offset_default_keeps_positions():
    assert torch.equal(grid_positions(2, 2, 1)[1:], torch.tensor([[1., 1.], [1., 2.], [2., 1.], [2., 2.]]))
    assert grid_positions(2, 2, 1, patch_offset=0.5)[1].tolist() == [1.5, 1.5]
    assert create_generator("fmnist-xs").arch.rope_patch_offset == 0.0
    assert create_tokenizer("fmnist-xs").arch.rope_patch_offset == 0.0


# --- conversion round trip -------------------------------------------------------------------------

def test_convert_loads_unchanged_and_reproduces_the_source_model(tmp_path, models, generator_file, capsys):
    vae, gen = models
    out = convert(tmp_path, "--generator", str(generator_file))
    assert "generator_dir" in capsys.readouterr().out
    tok, tok_meta = load_tokenizer(out / "tokenizer", posterior="spherical")
    ar, gen_meta = load_generator(out / "generator", posterior="spherical")
    assert tok_meta["overrides"] == gen_meta["overrides"] == {"rope_patch_offset": 0.5}
    assert (tok_meta["radius"], gen_meta["step"]) == (4.0, 7) and "'ema'" in gen_meta["source"]
    for ours, loaded in ((vae, tok), (gen, ar)):
        src, got = ours.state_dict(), loaded.state_dict()
        assert src.keys() == got.keys() and all(torch.equal(src[k], got[k]) for k in src)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = torch.randn(2, 64, 16)
    labels = torch.tensor([3, 10])
    with torch.no_grad():
        assert torch.equal(tok.encode_moments(x), vae.encode_moments(x))
        assert torch.equal(tok.decode(z), vae.decode(z))
        assert torch.equal(ar.transformer(z, labels), gen.transformer(z, labels))


def test_weights_model_and_separate_vae_file(tmp_path, models, generator_file, capsys):
    vae, gen = models
    vae_file = fmt.save_official(tmp_path / "vae.pt", None, fmt.official_vae_state(vae), fmt.run_args(vae_only=True))
    out = convert(tmp_path, "--generator", str(generator_file), "--vae", str(vae_file), "--weights", "model")
    assert "equals" in capsys.readouterr().out
    ar, _ = load_generator(out / "generator")
    assert torch.equal(ar.state_dict()["head.out.bias"], gen.state_dict()["head.out.bias"] + 1.0)


def test_vae_only_file_writes_the_tokenizer(tmp_path, models):
    vae, _ = models
    vae_file = fmt.save_official(tmp_path / "vae.pt", None, fmt.official_vae_state(vae), fmt.run_args(vae_only=True))
    out = convert(tmp_path, "--vae", str(vae_file))
    assert (out / "tokenizer" / "model.json").is_file() and not (out / "generator").exists()


def test_console_entry_runs_as_a_module(tmp_path):
    res = subprocess.run([sys.executable, "-m", "sphereard.convert", "official", "--vae", str(tmp_path / "no.pt"),
                          "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.strip() == f"error: {tmp_path / 'no.pt'}: checkpoint file not found"


# --- bad files -------------------------------------------------------------------------------------

class Custom:  # a pickled class that is not allow-listed
    pass


def test_checkpoint_needing_another_global_is_refused(tmp_path, models, capsys):
    vae, gen = models
    path = fmt.save_official(tmp_path / "AR.pt", fmt.official_state(vae, gen), extra=Custom())
    err = convert_error(capsys, tmp_path, "--generator", str(path))
    assert str(path) in err and "Custom" in err and "allow-listed" in err


@pytest.mark.parametrize("case", ["missing", "unexpected", "shape"])
def test_key_and_shape_mismatches_name_the_first_key_and_both_shapes(tmp_path, models, capsys, case):
    vae, gen = models
    state = fmt.official_state(vae, gen)
    if case == "missing":
        del state["layers.1.feed_forward.w1.weight"]
    elif case == "unexpected":
        state["layers.9.attention.wqkv.weight"] = torch.zeros(3, 3)
    else:
        state["proj_in.weight"] = torch.zeros(96, 8)
    path = fmt.save_official(tmp_path / "AR.pt", state, args=fmt.run_args(gen))
    err = convert_error(capsys, tmp_path, "--generator", str(path))
    assert str(path) in err
    expected = {"missing": "no tensor 'layers.1.feed_forward.w1.weight' (the preset needs shape (512, 96)",
                "unexpected": "tensor 'layers.9.attention.wqkv.weight' (3, 3) has no counterpart",
                "shape": "tensor 'proj_in.weight' has shape (96, 8) in the file but the preset needs (96, 16)"}[case]
    assert expected in err


def test_vae_rope_table_of_other_positions_is_refused(tmp_path, models, capsys):
    vae, gen = models
    state = fmt.official_state(vae, gen)
    state["vae.decoder.freqs_cis"] = state["vae.decoder.freqs_cis"].flip(0)
    err = convert_error(capsys, tmp_path, "--generator", str(fmt.save_official(tmp_path / "AR.pt", state)))
    assert "vae.decoder.freqs_cis" in err and "RoPE positions" in err


def test_no_weights_entry_and_differing_vae(tmp_path, models, capsys):
    vae, gen = models
    torch.save({"epochs": 1}, tmp_path / "empty.pt")
    err = convert_error(capsys, tmp_path, "--generator", str(tmp_path / "empty.pt"))
    assert "no 'ema' or 'model' entry" in err
    other = {k: v * 2 for k, v in fmt.official_vae_state(vae).items() if "freqs_cis" not in k}
    other = {**fmt.official_vae_state(vae), **other}
    vae_file = fmt.save_official(tmp_path / "vae.pt", None, other)
    ar_file = fmt.save_official(tmp_path / "AR.pt", fmt.official_state(vae, gen), args=fmt.run_args(gen))
    err = convert_error(capsys, tmp_path, "--generator", str(ar_file), "--vae", str(vae_file))
    assert "differs from" in err and str(vae_file) in err


# --- (b) parity with the official code ---------------------------------------------------------------

OFFICIAL_SRC = os.environ.get("SPHEREARD_OFFICIAL_SRC")
needs_official = pytest.mark.skipif(
    not OFFICIAL_SRC, reason="SPHEREARD_OFFICIAL_SRC does not name a local checkout of github guolinke/SphereAR")
# An SDPA stand-in for flash-attn (our own code): the official code imports `flash_attn_func` at module
# level and calls it with (B, L, H, Dh) tensors for its uncached attention; real flash-attn is
# fp16/bf16-on-CUDA only, so an fp32 CPU comparison needs a stand-in.
FLASH_ATTN_STANDIN = '''
import torch.nn.functional as F


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **_):
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, Dh)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal, scale=softmax_scale)
    return out.transpose(1, 2)  # (B, L, H, Dh)
'''
# The small configuration on both sides: S-VAE width 64 (one 64-dim head, official heads = width / 64),
# CNN [64, 64, 64] (patch 4, 32x32 images, 8x8 grid); AR width 64, 2 heads of 32, 2 layers, 2 head blocks.
OFFICIAL_VAE = dict(z_channels=64, cnn_chs=[64, 64, 64], encoder_vit_layers=1, decoder_vit_layers=2)
OFFICIAL_AR = dict(dim=64, n_layer=2, n_head=2, diff_layers=2, diff_dim=64, diff_adanln_layers=1, latent_dim=16,
                   patch_size=4, resolution=32, diff_batch_mul=1, cls_token_num=4, num_classes=10)
OUR_TOKENIZER = dict(image_size=32, patch_size=4, cnn_channels=[64, 64, 64], width=64, heads=1, enc_layers=1,
                     dec_layers=2, num_registers=4, latent_dim=16, mlp_hidden=None)
OUR_GENERATOR = dict(dim=64, depth=2, heads=2, head_blocks=2, head_width=64, adaln_groups=1, num_class_tokens=4,
                     token_dim=16, grid_size=8, num_classes=10, mlp_hidden=None)
TOL, SAMPLE_TOL = 1e-5, 1e-4


@pytest.fixture
def official(tmp_path, monkeypatch):
    """The official package `SphereAR` imported from $SPHEREARD_OFFICIAL_SRC with the stand-in, compile off."""
    shim = tmp_path / "shim" / "flash_attn"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(FLASH_ATTN_STANDIN)
    monkeypatch.syspath_prepend(str(Path(OFFICIAL_SRC)))
    monkeypatch.syspath_prepend(str(shim.parent))
    monkeypatch.setenv("TORCH_COMPILE_DISABLE", "1")
    monkeypatch.setattr(torch._dynamo.config, "disable", True)
    import SphereAR.model as model

    yield model
    for name in [n for n in sys.modules if n == "flash_attn" or n.split(".")[0] == "SphereAR"]:
        del sys.modules[name]


@torch.no_grad()
def random_official(model_module, monkeypatch):
    """The official small model with every parameter random (norm gains and biases too, no zero layers)."""
    from functools import partial

    monkeypatch.setattr(model_module, "VAE", partial(model_module.VAE, **OFFICIAL_VAE))
    torch.manual_seed(0)
    off = model_module.SphereAR(**OFFICIAL_AR).eval()
    for name, p in off.named_parameters():
        if p.dim() == 1:
            p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
        else:
            p.normal_(0, 0.1 if p.shape[-1] <= 64 else 0.02)
    return off


def official_condition(off, z, labels):
    """Teacher-forced per-position conditions (B, L, D) of the official AR (model.py:171-188 order)."""
    B, n = z.shape[0], off.cls_token_num
    x = torch.cat([off.cls_embedding(labels).view(B, n, -1), off.proj_in(z[:, :-1])], dim=1)
    x = off.emb_norm(x)
    for layer in off.layers:
        x = layer(x, off.freqs_cis)
    return off.norm(x)[:, n - 1:]


@needs_official
def test_parity_with_the_official_code(official, tmp_path, monkeypatch, capsys):
    import torch.nn.functional as F

    off = random_official(official, monkeypatch)
    state = off.state_dict()
    args = fmt.run_args()
    args.model = "fmnist-s"
    path = fmt.save_official(tmp_path / "AR.pt", state, {k: v.clone() for k, v in state.items()}, args)
    out = tmp_path / "out"
    main(["official", "--generator", str(path), "--preset", "fmnist-s", "--tokenizer-preset", "emoji-s",
          "--tokenizer-overrides", json.dumps(OUR_TOKENIZER), "--generator-overrides", json.dumps(OUR_GENERATOR),
          "--out", str(out)])
    tok, _ = load_tokenizer(out / "tokenizer")
    ours, _ = load_generator(out / "generator")
    figures = {}
    torch.manual_seed(1)
    with torch.no_grad():
        x = torch.rand(2, 3, 32, 32) * 2 - 1
        raw = off.vae.quant_proj(off.vae.encoder(x))
        mu, kappa = F.normalize(raw[..., :-1], dim=-1), F.softplus(raw[..., -1]) + 1.0  # vae.py:60-67
        moments = tok.encode_moments(x)
        figures["tokenizer mu"] = (moments[..., :-1] - mu).abs().max().item()
        figures["tokenizer kappa"] = (moments[..., -1] - kappa).abs().max().item()
        z = 4.0 * F.normalize(torch.randn(2, 64, 16), dim=-1)
        figures["tokenizer decode"] = (tok.decode(z) - off.vae.decode(z)).abs().max().item()
        labels = torch.tensor([3, 10])  # 10 = null class
        cond = official_condition(off, z, labels)
        figures["generator condition"] = (ours.transformer(z, labels) - cond).abs().max().item()
        c, pos = cond.reshape(-1, 64), torch.arange(64).repeat(2)
        xt, t = torch.randn(128, 16), torch.rand(128)
        v_off = off.head.net(xt, t, c + off.pos_for_diff.weight[pos])  # model.py:188, diff_head.py:214
        figures["head velocity"] = (ours.head.velocity(xt, t, ours.head.condition(c, pos)) - v_off).abs().max().item()
        off.vae.decode = lambda tokens: tokens  # `sample` returns decoded images; keep its tokens
        sample_labels = torch.tensor([7, 2])
        torch.manual_seed(123)
        z_off = off.sample(sample_labels, sample_steps=10, cfg_scale=1.0)
        torch.manual_seed(123)  # same global-RNG draws: x0 (B, d) then one (B, d) per step, token by token
        z_ours = ours.sample(sample_labels, cfg_scale=1.0, steps=10)
        diff = (z_ours - z_off).abs().amax(dim=(0, 2))  # (L,) per token
        figures["sampling cfg 1, first 8 tokens"] = diff[:8].max().item()
        figures["sampling cfg 1, all 64 tokens"] = diff.max().item()
        torch.manual_seed(321)  # linear CFG: token 0 has weight 1, run unguided on both streams (official)
        z_off = off.sample(sample_labels, sample_steps=10, cfg_scale=3.0, cfg_schedule="linear")[:2]
        torch.manual_seed(321)
        z_ours = ours.sample(sample_labels, cfg_scale=3.0, cfg_schedule="linear", steps=10, cfg_unit_weight="separate")
        diff = (z_ours - z_off).abs().amax(dim=(0, 2))
        figures["sampling cfg 3 linear (separate), first 8 tokens"] = diff[:8].max().item()
        figures["sampling cfg 3 linear (separate), all 64 tokens"] = diff.max().item()
    with capsys.disabled():
        print("\nparity (max abs diff):", json.dumps(figures, indent=1))
    for name, value in figures.items():
        limit = SAMPLE_TOL if name.startswith("sampling") else TOL
        assert value <= limit, f"{name}: {value:.3g} > {limit}"


# --- the pretrained DAG's import stage -------------------------------------------------------------

def tiny_params(tmp_path: Path, **official):
    from sphereard.config import parse_params
    from sphereard.profiles import materialise

    data = materialise("official-tiny")
    for block in ("tokenizer", "generator"):
        data[block]["out"] = str(tmp_path / block)
    data["official"].update({k: str(v) for k, v in official.items()})
    return parse_params(data)


def test_import_stage_writes_the_dag_exports_and_info(tmp_path, models, generator_file):
    from sphereard.convert.stage import import_to_layout
    from sphereard.layout import export_dir, info_file

    vae_file = fmt.save_official(tmp_path / "vae.pt", None, fmt.official_vae_state(models[0]),
                                 fmt.run_args(vae_only=True))
    params = tiny_params(tmp_path, generator=generator_file, vae=vae_file)
    import_to_layout(params)
    model, meta = load_generator(export_dir(params, "generator", "spherical"), posterior="spherical")
    ema = models[1].state_dict()
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())
    load_tokenizer(export_dir(params, "tokenizer", "spherical"), posterior="spherical")
    info = json.loads(info_file(params, "generator", "spherical").read_text())
    assert info["imported"] and info["epochs"] == 7 and info["params"] == meta["params"]
    assert info["vae_check"].startswith("the generator's vae.* equals")
    tok_info = json.loads(info_file(params, "tokenizer", "spherical").read_text())
    assert tok_info["file"] == str(vae_file) and len(tok_info["sha256"]) == 64


def test_import_stage_names_a_missing_file_and_writes_nothing(tmp_path, generator_file):
    from sphereard.convert.stage import import_to_layout
    from sphereard.errors import UserError

    params = tiny_params(tmp_path, generator=generator_file, vae=tmp_path / "absent.pt")
    with pytest.raises(UserError, match=r"^official\.vae='.*absent\.pt': no such file"):
        import_to_layout(params)
    assert not (tmp_path / "tokenizer").exists() and not (tmp_path / "generator").exists()


def test_paper_comparison_only_with_the_papers_protocol():
    """The report says "same protocol" only when every sampling setting, the sample count, the ADM
    statistics and the EMA entry match the paper's; otherwise it lists each difference."""
    from types import SimpleNamespace

    from sphereard.config import parse_params
    from sphereard.profiles import materialise
    from sphereard.report.imported import PAPER_SAMPLING, paper_line

    params = parse_params(materialise("imagenet256-official-L"))
    settings = {**PAPER_SAMPLING, "cfg_scale": 4.6}
    info = {"sampling": {"spherical": {"settings": settings}},
            "evaluation": {"spherical": {"num_samples": 50_000, "reference_sources": {"inception": "adm_file"}}},
            "generator": {"spherical": {"source": "/w/SphereAR_L.pt: 'ema'"}}}
    inp = SimpleNamespace(posteriors=["spherical"], info=info,
                          metrics={"evaluation": {"spherical": {"fid_inception": 1.61}}})
    assert paper_line(params, inp)[0].endswith("`fid_inception` 1.61 with the same protocol (50,000 samples, the "
                                               "paper's sampling settings, FD against the ADM reference batch's "
                                               "statistics, standard Inception weights).")
    settings["cfg_scale"] = 3.0
    info["generator"]["spherical"]["source"] = "/w/SphereAR_L.pt: 'model'"
    line = paper_line(params, inp)[0]
    assert "cfg_scale 3 (paper 4.6)" in line and "other than the released EMA" in line and "not comparable" in line


def test_preflight_checks_params_and_every_input_file_before_dvc(tmp_path, capsys, generator_file, models):
    """`python -m sphereard.convert preflight`: one line naming the key and file, exit 2; run by
    `make pretrained` before DVC deletes any output."""
    import yaml

    from sphereard.profiles import materialise

    vae_file = fmt.save_official(tmp_path / "vae.pt", None, fmt.official_vae_state(models[0]),
                                 fmt.run_args(vae_only=True))
    data = materialise("official-tiny")
    data["official"].update(generator=str(generator_file), vae=str(vae_file))
    data["evaluation"].update(inception_weights=str(vae_file), adm_reference=str(tmp_path / "ref.npz"))
    params_file = tmp_path / "params.yaml"

    def preflight(change=None) -> tuple[int, str]:
        params_file.write_text(yaml.safe_dump(change(data) if change else data))
        with pytest.raises(SystemExit) as exc:
            main(["preflight", "--params", str(params_file)])
            raise SystemExit(0)
        out = capsys.readouterr()
        return exc.value.code, (out.err or out.out).strip()

    code, line = preflight()
    assert code == 2 and line == f"error: evaluation.adm_reference='{tmp_path / 'ref.npz'}': no such file " \
        "(docs/official-checkpoints.md and README \"The paper's released models\" list the files)"
    (tmp_path / "ref.npz").write_bytes(b"")
    if Path(data["data"]["path"]).exists():
        code, line = preflight()
        assert code == 0 and line.startswith(f"{params_file}: valid; found 4 files")
    code, line = preflight(lambda d: {**d, "sampling": {**d["sampling"], "use_ema": False}})
    assert code == 2 and line.startswith("error: sampling.use_ema=False: must be true") and "\n" not in line
    code, line = preflight(lambda d: {**d, "data": {**d["data"], "path": str(tmp_path / "nowhere")}})
    assert code == 2 and line.startswith(f"error: data.path='{tmp_path / 'nowhere'}': not found")
