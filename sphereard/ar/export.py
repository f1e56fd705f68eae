"""Load an exported generator (`sphereard.export` format), check it against its tokenizer and data, and
load the generator/tokenizer pair a stage needs (`load_pair`)."""

from __future__ import annotations

from pathlib import Path

import torch

from sphereard.ar.presets import create_generator
from sphereard.config import Params
from sphereard.data.shards import manifest_path
from sphereard.errors import UserError
from sphereard.export import META_FILE, WEIGHTS_FILE, build_from_meta, check_posterior, read_export
from sphereard.layout import checkpoint_dir, export_dir
from sphereard.tokenizer.export import load_tokenizer
from sphereard.train.checkpoint import load_weights
from sphereard.utils.weights import load_state_strict


def load_generator(model_dir: str | Path, device: str | torch.device = "cpu", posterior: str | None = None):
    """Rebuild a trained SphereARModel (eval mode) from its export; errors as `load_tokenizer`."""
    model_dir = Path(model_dir)
    state, meta = read_export(model_dir, device, kind="generator")
    check_posterior(meta, model_dir, posterior)
    with torch.device(device):
        model = build_from_meta(model_dir / META_FILE, lambda: create_generator(
            meta["preset"], meta.get("flow", "euclidean"), meta.get("magnitude", "none"), **meta["overrides"]))
    load_state_strict(model, state, model_dir / WEIGHTS_FILE)
    return model.eval(), meta


def check_pair(vae, tok_dir: str | Path, model, gen_dir: str | Path) -> None:
    """Raises UserError naming both exports when the tokenizer's latents do not fit the generator."""
    if (vae.latent_dim, vae.grid_size) != (model.arch.token_dim, model.arch.grid_size):
        raise UserError(f"{tok_dir}: tokenizer latents (d={vae.latent_dim}, grid {vae.grid_size}) do not fit "
                        f"the generator in {gen_dir} (d={model.arch.token_dim}, grid {model.arch.grid_size})")


def check_fits_data(vae, tok_dir: str | Path, model, gen_dir: str | Path, manifest: dict, manifest_path) -> None:
    """Raises UserError when the tokenizer's image size / channels or the generator's classes differ
    from the prepared data's (models trained on other data)."""
    arch = vae.arch
    if (arch.image_size, arch.in_channels) != (manifest["image_size"], manifest["channels"]):
        raise UserError(f"{tok_dir}: tokenizer takes {arch.image_size}x{arch.image_size}x{arch.in_channels} "
                        f"images, the data in {manifest_path} are {manifest['image_size']}x"
                        f"{manifest['image_size']}x{manifest['channels']}")
    if model.arch.num_classes != manifest["num_classes"]:
        raise UserError(f"{gen_dir}: generator has {model.arch.num_classes} classes, the data in "
                        f"{manifest_path} have {manifest['num_classes']}")


def load_pair(params: Params, posterior: str, device: str | torch.device = "cpu", *, use_ema: bool = True,
              manifest: dict | None = None):
    """The exported generator of `posterior` (or, with `use_ema=False`, the raw weights of its last
    checkpoint) and the tokenizer it was trained on -> (vae, tokenizer meta, model, generator meta).

    Raises UserError naming the file for missing, corrupt or mismatched exports / checkpoint weights,
    and, given the data's `manifest`, when the pair was trained on other data (`check_fits_data`)."""
    tok_dir, gen_dir = export_dir(params, "tokenizer", posterior), export_dir(params, "generator", posterior)
    model, gen_meta = load_generator(gen_dir, device, posterior=posterior)
    if not use_ema:
        ckpt_dir = checkpoint_dir(params, "generator", posterior)
        load_state_strict(model, load_weights(ckpt_dir, "model", device), ckpt_dir)
    vae, tok_meta = load_tokenizer(tok_dir, device, posterior=posterior)
    check_pair(vae, tok_dir, model, gen_dir)
    if manifest is not None:
        check_fits_data(vae, tok_dir, model, gen_dir, manifest, manifest_path(params.data.out))
    return vae, tok_meta, model, gen_meta
