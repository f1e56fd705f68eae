"""Convert official SphereAR checkpoints into our tokenizer and generator exports.

`convert_official` reads `vae.pt` and/or `SphereAR_{B,L,H}.pt`, checks that every tensor of the
selected weights fits the preset (official key names and shapes, docs/official-checkpoints.md §2),
maps them with `official.to_ours`, and writes `out/tokenizer` and `out/generator` with
`sphereard.export.export_model`, so `load_tokenizer` / `load_generator` rebuild them unchanged.
The rebuilt models carry `rope_patch_offset=0.5` (official RoPE patch centres) in their overrides.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from sphereard.ar.presets import count_params, create_generator
from sphereard.convert.checkpoint import load_checkpoint, run_args, select_weights
from sphereard.convert.official import (
    GENERATOR_RULES,
    OFFICIAL_ROPE_PATCH_OFFSET,
    TOKENIZER_RULES,
    VAE_PREFIX,
    VAE_ROPE_TABLES,
    expected_official,
    official_rope_table,
    to_ours,
)
from sphereard.errors import UserError
from sphereard.export import export_model
from sphereard.utils.weights import load_state_strict

log = logging.getLogger(__name__)
TOKENIZER_PRESET = "svae-paper"
ROPE_TABLE_ATOL = 1e-5
OFFICIAL_OVERRIDES = {"rope_patch_offset": OFFICIAL_ROPE_PATCH_OFFSET}


def fit_problem(found: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]],
                prefix: str = "") -> str | None:
    """None if `found` has exactly the `expected` keys and shapes, else one sentence naming the first
    mismatched key (expected order: shapes, then missing, then unexpected) and both shapes."""
    for key, shape in expected.items():
        if key in found and tuple(found[key].shape) != shape:
            return (f"tensor {prefix + key!r} has shape {tuple(found[key].shape)} in the file but the preset "
                    f"needs {shape}")
    missing = [k for k in expected if k not in found]
    if missing:
        k = missing[0]
        return f"no tensor {prefix + k!r} (the preset needs shape {expected[k]}; {len(missing)} missing)"
    unexpected = [k for k in found if k not in expected]
    if unexpected:
        k = unexpected[0]
        return (f"tensor {prefix + k!r} {tuple(found[k].shape)} has no counterpart in the preset "
                f"(shape: none; {len(unexpected)} unexpected)")
    return None


def split_vae(state: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """(the S-VAE's tensors without the `vae.` prefix, the rest) of an official state dict."""
    vae = {k[len(VAE_PREFIX):]: v for k, v in state.items() if k.startswith(VAE_PREFIX)}
    rest = {k: v for k, v in state.items() if not k.startswith(VAE_PREFIX)}
    return vae, rest


def rope_tables(vae: nn.Module) -> dict[str, torch.Tensor]:
    """The official `freqs_cis` buffers (L, hd/2, 2) our tokenizer's positions imply (they are stored in
    the official S-VAE state dict but recomputed by ours)."""
    enc, dec = vae.vit_enc.stack.rope, vae.vit_dec.stack.rope
    return {VAE_ROPE_TABLES[0]: official_rope_table(enc.cos, enc.sin),
            VAE_ROPE_TABLES[1]: official_rope_table(dec.cos, dec.sin)}


def import_tokenizer(state: Mapping[str, torch.Tensor], source: str, preset: str, overrides: dict):
    """Official S-VAE tensors (no `vae.` prefix) -> our HybridVAE (spherical posterior, eval mode).

    Raises UserError naming `source` and the first mismatched key with both shapes, or the RoPE table
    that differs from the positions of the rebuilt model."""
    from sphereard.tokenizer.vae import create_tokenizer

    vae = create_tokenizer(preset, posterior="spherical", **{**OFFICIAL_OVERRIDES, **overrides})
    ours = vae.state_dict()
    tables = rope_tables(vae)
    expected = {**expected_official(ours, TOKENIZER_RULES), **{k: tuple(v.shape) for k, v in tables.items()}}
    problem = fit_problem(state, expected, VAE_PREFIX)
    if problem:
        raise UserError(f"{source}: does not fit tokenizer preset {preset!r}: {problem}")
    for key, table in tables.items():  # consumed by checking, not copying: ours recomputes them
        diff = (state[key].float() - table).abs().max().item()
        if not diff <= ROPE_TABLE_ATOL:
            raise UserError(f"{source}: tensor '{VAE_PREFIX}{key}' differs from the RoPE positions of the "
                            f"rebuilt tokenizer by {diff:.3g} (> {ROPE_TABLE_ATOL}): other patch positions")
    heads = {"encoder.layers.": vae.arch.heads, "decoder.layers.": vae.arch.heads}
    load_state_strict(vae, to_ours(state, ours, TOKENIZER_RULES, heads), source)
    return vae.eval()


def import_generator(state: Mapping[str, torch.Tensor], source: str, preset: str, overrides: dict):
    """Official AR tensors (without `vae.*`) -> our SphereARModel (eval mode); errors as `import_tokenizer`."""
    model = create_generator(preset, **{**OFFICIAL_OVERRIDES, **overrides})
    ours = model.state_dict()
    problem = fit_problem(state, expected_official(ours, GENERATOR_RULES))
    if problem:
        raise UserError(f"{source}: does not fit generator preset {preset!r}: {problem}")
    load_state_strict(model, to_ours(state, ours, GENERATOR_RULES, {"layers.": model.arch.heads}), source)
    return model.eval()


def check_args(args: dict, model, source: str) -> None:
    """The run's recorded settings (official `train.py:521-569`) must agree with the preset."""
    arch = model.arch
    wanted = {"latent_dim": arch.token_dim, "cls_token_num": arch.num_class_tokens, "num_classes": arch.num_classes}
    for name, value in wanted.items():
        if name in args and args[name] != value:
            raise UserError(f"{source}: args.{name}={args[name]!r} but the generator preset has {value!r}")
    if "image_size" in args and "patch_size" in args and args["image_size"] // args["patch_size"] != arch.grid_size:
        raise UserError(f"{source}: args image_size/patch_size = {args['image_size']}/{args['patch_size']} "
                        f"but the generator preset has a {arch.grid_size}x{arch.grid_size} grid")


def same_tensors(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> str | None:
    """None if both dicts hold equal tensors under equal keys, else the first differing key."""
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b or a[key].shape != b[key].shape or not torch.equal(a[key], b[key]):
            return key
    return None


def read_weights(path: str | Path, which: str) -> tuple[str, dict[str, torch.Tensor], dict, int]:
    """(entry, its state dict, the run's args, epochs) of one official checkpoint (`select_weights`);
    logs the top-level entries left behind (optimizer, discriminator, ...). Raises as `load_checkpoint`."""
    ckpt = load_checkpoint(path)
    entry, state = select_weights(ckpt, path, which)
    log.info("%s: importing '%s'; not imported (no model weights): %s", path, entry,
             ", ".join(k for k in ckpt if k != entry) or "nothing")
    return entry, state, run_args(ckpt), int(ckpt.get("epochs", 0) or 0)


def convert_official(out: str | Path | None, generator: str | Path | None = None, vae: str | Path | None = None,
                     preset: str | None = None, weights: str = "auto", tokenizer_preset: str = TOKENIZER_PRESET,
                     tokenizer_overrides: dict | None = None, generator_overrides: dict | None = None,
                     tokenizer_dir: str | Path | None = None, generator_dir: str | Path | None = None) -> dict:
    """Write `out/tokenizer` (from `vae`, else the generator file's `vae.*`) and, with `generator`,
    `out/generator` (`tokenizer_dir` / `generator_dir` replace those folders: the DAG's layout).
    `weights` selects the generator file's entry (auto: 'ema' if present, else 'model'); `vae` is read
    with auto. Returns a summary dict. Raises UserError (one line naming the file) on bad input."""
    if generator is None and vae is None:
        raise UserError("convert official: give --generator and/or --vae")
    assert out is not None or (tokenizer_dir is not None and (generator is None or generator_dir is not None)), \
        "give `out` or the export folders (tokenizer_dir, and generator_dir with a generator)"
    out = Path(out) if out is not None else None
    summary: dict = {}
    vae_state = vae_source = None
    epochs = 0
    if vae is not None:
        entry, state, _, epochs = read_weights(vae, "auto")  # the official S-VAE is trained without EMA
        vae_state, rest = split_vae(state)
        if rest:
            k = next(iter(rest))
            raise UserError(f"{vae}: tensor {k!r} {tuple(rest[k].shape)} has no counterpart in the tokenizer "
                            f"(an S-VAE checkpoint holds only 'vae.*'; {len(rest)} unexpected)")
        vae_source = f"{vae}: '{entry}'"
        summary["tokenizer_source"] = vae_source
    gen_model = None
    if generator is not None:
        entry, state, args, gen_epochs = read_weights(generator, weights)
        preset = preset or args.get("model")
        if not preset:
            raise UserError(f"{generator}: give --preset (the checkpoint's args name no model)")
        inner_vae, ar_state = split_vae(state)
        source = f"{generator}: '{entry}'"
        gen_model = import_generator(ar_state, source, preset, generator_overrides or {})
        check_args(args, gen_model, str(generator))
        if vae_state is None:
            vae_state, vae_source, epochs = inner_vae, source, gen_epochs
            summary["tokenizer_source"] = vae_source
        else:
            key = same_tensors(vae_state, inner_vae)
            if key is not None:
                raise UserError(f"{generator}: its S-VAE differs from {vae} at tensor '{VAE_PREFIX}{key}' "
                                f"(the generator was trained on another tokenizer)")
            summary["vae_check"] = f"the generator's vae.* equals {vae} (all {len(vae_state)} tensors)"
            log.info("%s", summary["vae_check"])
        summary["generator_source"], summary["generator_epochs"] = source, gen_epochs
    tok = import_tokenizer(vae_state, vae_source, tokenizer_preset, tokenizer_overrides or {})
    radius = float(math.sqrt(tok.arch.latent_dim))  # official latents live on the sphere of radius sqrt(d)
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else out / "tokenizer"
    tok_meta = {"kind": "tokenizer", "preset": tokenizer_preset,
                "overrides": {**OFFICIAL_OVERRIDES, **(tokenizer_overrides or {})}, "posterior": "spherical",
                "radius": radius, "step": epochs, "params": count_params(tok), "source": vae_source}
    export_model(tok_dir, tok, tok_meta)
    summary["tokenizer_dir"], summary["tokenizer_epochs"] = str(tok_dir), epochs
    if gen_model is not None:
        if (tok.arch.latent_dim, tok.arch.grid_size) != (gen_model.arch.token_dim, gen_model.arch.grid_size):
            raise UserError(f"{generator}: generator tokens (d={gen_model.arch.token_dim}, grid "
                            f"{gen_model.arch.grid_size}) do not fit the tokenizer ({tok.arch.latent_dim}, "
                            f"{tok.arch.grid_size})")
        gen_dir = Path(generator_dir) if generator_dir is not None else out / "generator"
        gen_meta = {"kind": "generator", "preset": preset,
                    "overrides": {**OFFICIAL_OVERRIDES, **(generator_overrides or {})}, "posterior": "spherical",
                    "radius": radius, "tokenizer_dir": str(tok_dir), "step": summary["generator_epochs"],
                    "params": count_params(gen_model), "source": summary["generator_source"]}
        export_model(gen_dir, gen_model, gen_meta)
        summary["generator_dir"] = str(gen_dir)
    return summary
