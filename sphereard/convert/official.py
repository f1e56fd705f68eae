"""Key mapping between the official SphereAR state dicts and ours (facts: docs/official-checkpoints.md §2).

Everything is a rename except two transforms:
- `qkv`: the q and k rows of a fused attention input get a fixed per-head permutation, because the
  official RoPE rotates adjacent channel pairs (2j, 2j+1) with the column axis first (`layers.py:255-290`)
  while ours rotates (i, i + head_dim/2) with the row axis first (`nn/rope.py`);
- `gate` / `up`: a fused SwiGLU input (`w1`, official `layers.py:173-187`, `diff_head.py:111-118`) is
  [gate; up] along dim 0: the first half becomes our `fc1_g`, the second half our `fc1_x`.
The map is written from our key to the official one, so every key of ours names exactly one source;
`expected_official` turns it into the official key set and shapes that a checkpoint must have.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch

OFFICIAL_ROPE_PATCH_OFFSET = 0.5  # official patch centres (idx + 0.5) + 1 vs ours idx + 1 (layers.py:239-270)
VAE_PREFIX = "vae."  # the generator checkpoints hold the whole S-VAE under `vae.` (model.py:74-76)
VAE_ROPE_TABLES = ("encoder.freqs_cis", "decoder.freqs_cis")  # stored buffers (vae.py:216-218, 280-282)

# (our key pattern, official key template, transform) for the shared Transformer block (nn/block.py)
_BLOCK = [
    (r"attn\.qkv\.weight", "attention.wqkv.weight", "qkv"),
    (r"attn\.proj\.weight", "attention.wo.weight", "copy"),
    (r"mlp\.fc1_g\.weight", "feed_forward.w1.weight", "gate"),
    (r"mlp\.fc1_x\.weight", "feed_forward.w1.weight", "up"),
    (r"mlp\.fc2\.weight", "feed_forward.w2.weight", "copy"),
    (r"norm1\.weight", "attention_norm.weight", "copy"),
    (r"norm2\.weight", "ffn_norm.weight", "copy"),
]


def _blocks(ours: str, official: str) -> list[tuple[str, str, str]]:
    return [(rf"{ours}\.(\d+)\.{pat}", rf"{official}.\1.{tpl}", op) for pat, tpl, op in _BLOCK]


def _dec_stage(m: re.Match) -> str:
    """Our decoder stage 2s is the official up-block s, stage 2s+1 its plain residual unit `block2`."""
    stage, part, rest = int(m[1]), m[2], m[3]
    if part == "block" and stage % 2 == 1:
        part = "block2"
    return f"decoder.unpatchify.1.net.{stage // 2}.{part}.{rest}"


TOKENIZER_RULES: list[tuple[str, str | Callable[[re.Match], str], str]] = [
    (r"cnn_enc\.conv_in\.weight", "encoder.conv_in.weight", "copy"),
    (r"cnn_enc\.stages\.(\d+)\.(.+)", r"encoder.patchify.0.net.\1.\2", "copy"),
    (r"vit_enc\.stack\.registers", "encoder.register_token.weight", "copy"),
    *_blocks(r"vit_enc\.stack\.blocks", "encoder.layers"),
    (r"vit_enc\.norm\.weight", "encoder.norm.weight", "copy"),
    (r"vit_enc\.out\.weight", "encoder.output.weight", "copy"),
    (r"to_moments\.(weight|bias)", r"quant_proj.\1", "copy"),
    (r"from_latent\.weight", "post_quant_proj.weight", "copy"),
    (r"vit_dec\.conv_in\.weight", "decoder.conv_in.1.weight", "copy"),
    (r"vit_dec\.stack\.registers", "decoder.register_token.weight", "copy"),
    *_blocks(r"vit_dec\.stack\.blocks", "decoder.layers"),
    (r"cnn_dec\.stages\.(\d+)\.(block|shortcut)\.(.+)", _dec_stage, "copy"),
    (r"cnn_dec\.conv_out\.(.+)", r"decoder.conv_out.\1", "copy"),
]

GENERATOR_RULES: list[tuple[str, str | Callable[[re.Match], str], str]] = [
    (r"transformer\.class_embed\.weight", "cls_embedding.weight", "copy"),
    (r"transformer\.proj_in\.(weight|bias)", r"proj_in.\1", "copy"),
    (r"transformer\.emb_norm\.weight", "emb_norm.weight", "copy"),
    *_blocks(r"transformer\.blocks", "layers"),
    (r"transformer\.norm\.weight", "norm.weight", "copy"),
    (r"head\.pos_embed\.weight", "pos_for_diff.weight", "copy"),
    (r"head\.time_embed\.mlp\.(\d)\.(weight|bias)", r"head.net.time_embed.mlp.\1.\2", "copy"),
    (r"head\.cond_proj\.(weight|bias)", r"head.net.cond_embed.\1", "copy"),
    (r"head\.input_proj\.(weight|bias)", r"head.net.input_proj.\1", "copy"),
    (r"head\.blocks\.(\d+)\.norm\.(weight|bias)", r"head.net.res_blocks.\1.norm.\2", "copy"),
    (r"head\.blocks\.(\d+)\.mlp\.fc1_g\.(weight|bias)", r"head.net.res_blocks.\1.w1.\2", "gate"),
    (r"head\.blocks\.(\d+)\.mlp\.fc1_x\.(weight|bias)", r"head.net.res_blocks.\1.w1.\2", "up"),
    (r"head\.blocks\.(\d+)\.mlp\.fc2\.(weight|bias)", r"head.net.res_blocks.\1.w2.\2", "copy"),
    (r"head\.adaln\.(\d+)\.(weight|bias)", r"head.net.ada_ln_blocks.\1.\2", "copy"),
    (r"head\.final_adaln\.(weight|bias)", r"head.net.final_layer.ada_ln_modulation.\1", "copy"),
    (r"head\.out\.(weight|bias)", r"head.net.final_layer.linear.\1", "copy"),
]


def official_key(ours: str, rules) -> tuple[str, str]:
    """Our state-dict key -> (official key, transform in {copy, qkv, gate, up}); KeyError if unmapped."""
    for pattern, template, op in rules:
        m = re.fullmatch(pattern, ours)
        if m:
            return (template(m) if callable(template) else m.expand(template)), op
    raise KeyError(f"no official counterpart for {ours!r}")


def rope_permutation(head_dim: int) -> torch.Tensor:
    """perm (head_dim,) with our channel e = official channel perm[e] of one head (docs §2.3).

    Our pair i = channels (i, i + 2Q) uses the row for i < Q; official pair j = channels (2j, 2j + 1)
    uses the column for j < Q (Q = head_dim / 4), so our pair i is official pair (i + Q) mod 2Q."""
    q = head_dim // 4
    e = torch.arange(head_dim)
    return 2 * ((e % (2 * q) + q) % (2 * q)) + e // (2 * q)


def qkv_to_ours(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Official fused wqkv (3D, D) -> ours (3D, D): permute the q and k rows of every head, keep v."""
    q, k, v = w.chunk(3, dim=0)  # (D, D) each, head h = rows h*hd .. (h+1)*hd
    perm = rope_permutation(q.shape[0] // heads)
    permute = lambda x: x.reshape(heads, -1, x.shape[-1])[:, perm].reshape(x.shape)  # noqa: E731
    return torch.cat([permute(q), permute(k), v], dim=0)


def qkv_to_official(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Inverse of `qkv_to_ours` (3D, D) -> (3D, D)."""
    q, k, v = w.chunk(3, dim=0)
    inverse = torch.argsort(rope_permutation(q.shape[0] // heads))
    permute = lambda x: x.reshape(heads, -1, x.shape[-1])[:, inverse].reshape(x.shape)  # noqa: E731
    return torch.cat([permute(q), permute(k), v], dim=0)


def official_shape(ours_shape: torch.Size, op: str) -> tuple[int, ...]:
    """A fused SwiGLU input is twice as tall as either of our halves; everything else keeps its shape."""
    shape = tuple(ours_shape)
    return (2 * shape[0], *shape[1:]) if op in ("gate", "up") else shape


def expected_official(ours: Mapping[str, torch.Tensor], rules) -> dict[str, tuple[int, ...]]:
    """Official key -> shape implied by our state dict (works on the meta device)."""
    out: dict[str, tuple[int, ...]] = {}
    for key, tensor in ours.items():
        name, op = official_key(key, rules)
        out[name] = official_shape(tensor.shape, op)
    return out


def to_ours(official: Mapping[str, torch.Tensor], ours: Mapping[str, torch.Tensor], rules,
            heads: dict[str, int]) -> dict[str, torch.Tensor]:
    """Official tensors -> our state dict (keys and order of `ours`). `heads` maps an official key prefix
    of a fused wqkv ('encoder.layers.') to its head count. Keys/shapes must already be checked."""
    out = {}
    for key in ours:
        name, op = official_key(key, rules)
        w = official[name]
        if op == "qkv":
            w = qkv_to_ours(w, _heads_for(name, heads))
        elif op in ("gate", "up"):
            w = w.chunk(2, dim=0)[0 if op == "gate" else 1]
        out[key] = w.detach().clone().contiguous()
    return out


def to_official(ours: Mapping[str, torch.Tensor], rules, heads: dict[str, int]) -> dict[str, torch.Tensor]:
    """Inverse of `to_ours` (our state dict -> official tensors); used to build test checkpoints."""
    out: dict[str, torch.Tensor] = {}
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, w in ours.items():
        name, op = official_key(key, rules)
        if op == "qkv":
            out[name] = qkv_to_official(w, _heads_for(name, heads))
        elif op in ("gate", "up"):
            halves.setdefault(name, {})[op] = w
            if len(halves[name]) == 2:
                out[name] = torch.cat([halves[name]["gate"], halves[name]["up"]], dim=0)
        else:
            out[name] = w.clone()
    return out


def _heads_for(name: str, heads: dict[str, int]) -> int:
    return next(h for prefix, h in heads.items() if name.startswith(prefix))


def official_rope_table(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Our RoPE tables cos/sin (L, hd) -> the official `freqs_cis` layout (L, hd/2, 2) = (cos, sin) of
    official pair j, which is our pair (j + Q) mod 2Q (Q = hd / 4)."""
    pairs = cos.shape[-1] // 2
    ours = (torch.arange(pairs) + pairs // 2) % pairs  # (hd/2,)
    return torch.stack([cos[:, ours], sin[:, ours]], dim=-1)
