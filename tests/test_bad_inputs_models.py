"""Bad model files: exports, the in-project classifier, Inception / LPIPS weights, checkpoints and resume.

`CASES` is the table: case, what is broken, the entry point that reads it, the message fragment. Each case
breaks a copy of the tiny workspace of tests/bad_inputs_helpers.py; `check_case` asserts the error is one
line starting with the broken file's path. The other tables: tests/test_bad_inputs_data.py (manifests,
shards, sources, latent caches), tests/test_bad_inputs_eval.py (ADM reference, reference statistics,
samples.npz, sweep files); stage-level tests in tests/test_bad_inputs_stages.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import bad_inputs_helpers
import pytest
import torch
from bad_inputs_helpers import (
    CLASSES,
    SIZE,
    Case,
    built_task,
    check_case,
    copy,
    drop,
    edit_json,
    nan_weights,
    png_bytes,
    resume_from,
    set_key,
    tiny_checkpoint,
    train_params,
    truncate,
    vgg_state,
)
from safetensors.torch import save_file

from sphereard.ar import create_generator
from sphereard.ar.export import check_fits_data, check_pair, load_generator
from sphereard.config import ClassifierConfig
from sphereard.data import load_manifest
from sphereard.eval import build_extractor, load_classifier, save_classifier
from sphereard.eval.classifier import SmallCNN, train_classifier
from sphereard.export import export_model
from sphereard.layout import export_dir
from sphereard.tokenizer import create_tokenizer
from sphereard.tokenizer.export import load_tokenizer
from sphereard.tokenizer.losses import load_lpips
from sphereard.train.checkpoint import LATEST_FILE, STATE_FILE, latest_state, load_latest

ws = bad_inputs_helpers.ws  # the module-scoped workspace fixture


def _tok_meta(change):
    def run(ws, tmp):
        edit_json(copy(ws, "tok", tmp) / "model.json", change)
        return load_tokenizer(tmp / "tok")
    return run


def _clf_meta(change):
    def run(ws, tmp):
        edit_json(copy(ws, "clf", tmp) / "model.json", change)
        return load_classifier(tmp / "clf")
    return run


def _case_export_truncated_meta(ws, tmp):
    truncate(copy(ws, "tok", tmp) / "model.json")
    return load_tokenizer(tmp / "tok")


def _case_export_meta_not_object(ws, tmp):
    (copy(ws, "tok", tmp) / "model.json").write_text("[1, 2]")
    return load_tokenizer(tmp / "tok")


def _case_export_missing_weights(ws, tmp):
    (copy(ws, "gen", tmp) / "model.safetensors").unlink()
    return load_generator(tmp / "gen")


def _case_export_other_kind(ws, tmp):
    return load_tokenizer(copy(ws, "gen", tmp))


def _case_export_other_model_weights(ws, tmp):
    shutil.copy(ws / "gen" / "model.safetensors", copy(ws, "tok", tmp) / "model.safetensors")
    return load_tokenizer(tmp / "tok")


def _case_export_truncated_weights(ws, tmp):
    truncate(copy(ws, "gen", tmp) / "model.safetensors")
    return load_generator(tmp / "gen")


def _case_export_png_weights(ws, tmp):
    (copy(ws, "tok", tmp) / "model.safetensors").write_bytes(png_bytes())
    return load_tokenizer(tmp / "tok")


def _case_export_nan_weights(ws, tmp):
    nan_weights(copy(ws, "tok", tmp) / "model.safetensors")
    return load_tokenizer(tmp / "tok")


def _case_export_other_posterior(ws, tmp):
    return load_tokenizer(copy(ws, "tok", tmp), posterior="gaussian")


def _case_export_pair_mismatch(ws, tmp):
    vae16 = create_tokenizer("fmnist-xs", latent_dim=16)
    export_model(tmp / "tok16", vae16, {"kind": "tokenizer", "preset": "fmnist-xs", "overrides": {"latent_dim": 16},
                                        "posterior": "spherical", "radius": vae16.radius})
    vae, _ = load_tokenizer(tmp / "tok16")
    gen, _ = load_generator(copy(ws, "gen", tmp))
    return check_pair(vae, tmp / "tok16", gen, tmp / "gen")


def _case_export_other_data(ws, tmp):
    gen = create_generator("fmnist-xs")
    export_model(tmp / "gen10", gen, {"kind": "generator", "preset": "fmnist-xs", "overrides": {},
                                      "posterior": "spherical", "radius": 1.0, "step": 1})
    vae, _ = load_tokenizer(copy(ws, "tok", tmp))
    gen, _ = load_generator(tmp / "gen10")
    data = copy(ws, "data", tmp)
    return check_fits_data(vae, tmp / "tok", gen, tmp / "gen10", load_manifest(data), data / "manifest.json")


def _case_clf_other_data(ws, tmp):
    from sphereard.eval.evaluate import check_classifier

    save_classifier(SmallCNN(10, 1, SIZE, width=8, feature_dim=16), tmp / "clf_out" / "model")
    ext = build_extractor("classifier", classifier_path=tmp / "clf_out" / "model")
    params = SimpleNamespace(classifier=SimpleNamespace(out=str(tmp / "clf_out")))
    return check_classifier([ext], load_manifest(copy(ws, "data", tmp)), params)


def _case_clf_other_weights(ws, tmp):
    save_file({k: v.contiguous() for k, v in SmallCNN(CLASSES, 1, SIZE, width=16, feature_dim=16).state_dict().items()},
              str(copy(ws, "clf", tmp) / "model.safetensors"))
    return build_extractor("classifier", classifier_path=tmp / "clf")


def _case_clf_truncated_weights(ws, tmp):
    truncate(copy(ws, "clf", tmp) / "model.safetensors")
    return load_classifier(tmp / "clf")


def _case_clf_truncated_meta(ws, tmp):
    truncate(copy(ws, "clf", tmp) / "model.json")
    return load_classifier(tmp / "clf")


def _case_one_class_data(ws, tmp):
    return train_classifier(copy(ws, "data1", tmp), ClassifierConfig(steps=1, batch_size=2, width=8, feature_dim=8))


def _case_inception_other_weights(ws, tmp):
    torch.save({"conv.weight": torch.zeros(1)}, tmp / "inc.pth")
    return build_extractor("inception", inception_weights=tmp / "inc.pth")


def _case_lpips_text(ws, tmp):
    (tmp / "vgg16.pth").write_text("not a checkpoint")
    return load_lpips(tmp / "vgg16.pth")


def _case_lpips_code(ws, tmp):
    torch.save({"features.0.weight": Path("x")}, tmp / "vgg16.pth")  # an arbitrary object: refused
    return load_lpips(tmp / "vgg16.pth")


def _case_lpips_other_layout(ws, tmp):
    torch.save({"conv.weight": torch.zeros(1)}, tmp / "vgg16.pth")
    return load_lpips(tmp / "vgg16.pth")


def _case_lpips_wrong_shapes(ws, tmp):
    torch.save(vgg_state(), tmp / "vgg16.pth")
    return load_lpips(tmp / "vgg16.pth")


def _case_ckpt_state_not_object(ws, tmp):
    (tiny_checkpoint(tmp) / "step-00000003" / STATE_FILE).write_text("[3]")
    return load_latest(tmp / "ckpt")


def _ckpt_record(change):
    def run(ws, tmp):
        edit_json(tiny_checkpoint(tmp) / "step-00000003" / STATE_FILE, change)
        return load_latest(tmp / "ckpt")
    return run


def _case_ckpt_latest_not_utf8(ws, tmp):
    (tiny_checkpoint(tmp) / LATEST_FILE).write_bytes(b"\xff\xfe step")
    return load_latest(tmp / "ckpt")


def _case_ckpt_latest_outside(ws, tmp):
    """`latest` names ../elsewhere, a complete checkpoint outside the checkpoint dir."""
    shutil.copytree(tiny_checkpoint(tmp) / "step-00000003", tmp / "elsewhere")
    (tmp / "ckpt" / LATEST_FILE).write_text("../elsewhere\n")
    return load_latest(tmp / "ckpt")


def _case_export_without_checkpoint(ws, tmp):
    """A training stage asked to export before any checkpoint exists (an emptied ckpt dir)."""
    (tmp / "ckpt").mkdir()
    return latest_state(tmp / "ckpt", "ema")


def _case_export_without_ema(ws, tmp):
    """The newest checkpoint holds no 'ema' state (written by another task)."""
    return latest_state(tiny_checkpoint(tmp), "ema")


def _case_ckpt_state_name_outside(ws, tmp):
    """A state named '../evil', whose file would be read from outside the step dir."""
    ckpt = tiny_checkpoint(tmp)
    shutil.copy(ckpt / "step-00000003" / "model.safetensors", ckpt / "evil.safetensors")
    return _ckpt_record(lambda r: r["structure"].update({"../evil": {}}))(ws, tmp)


def _resume_case(kind, saved_overrides, change=lambda states: None):
    """Resume the smoke preset's task from a checkpoint of a task with `saved_overrides`, edited by `change`."""
    def run(ws, tmp):
        key = "tokenizer_overrides" if kind == "tokenizer" else "generator_overrides"
        saved, _, _ = built_task(kind, train_params(tmp, **{key: saved_overrides}))
        states = saved.state_dicts()
        change(states)
        return resume_from(tmp, kind, states, train_params(tmp))
    return run


def _bad_exp_avg(states):
    """A one-step Adam state whose exp_avg for parameter 0 has another shape (same counts, same groups)."""
    first = states["optimizer"]["param_groups"][0]["params"][0]
    states["optimizer"]["state"][first] = {"step": torch.tensor(1.0), "exp_avg": torch.zeros(3),
                                           "exp_avg_sq": torch.zeros(3)}


def _case_encode_other_posterior(ws, tmp):
    """A spherical export where the gaussian tokenizer's should be: encode must not cache its latents."""
    from sphereard.tokenizer.encode import encode_split

    params = train_params(tmp)
    shutil.copytree(ws / "tok", export_dir(params, "tokenizer", "gaussian"))  # tok_out/gaussian/seed0/model
    copy(ws, "data", tmp)
    return encode_split(params, "gaussian", torch.device("cpu"))


CASES = [
    # exported models (model.json + model.safetensors): sample, evaluate, encode, sweep
    Case("export-truncated-meta", "model.json cut in half", "load_tokenizer", r"model\.json: not valid JSON",
         _case_export_truncated_meta),
    Case("export-meta-not-object", "model.json holds a list", "load_tokenizer", r"model\.json: .*JSON object",
         _case_export_meta_not_object),
    Case("export-meta-missing-key", "model.json lacks 'preset'", "load_tokenizer",
         r"model\.json: key 'preset' missing", _tok_meta(drop("preset"))),
    Case("export-meta-wrong-type", "radius is a string", "load_tokenizer",
         r"model\.json: key 'radius' must be number, got 'big'", _tok_meta(set_key("radius", "big"))),
    Case("export-meta-bad-radius", "radius is negative", "load_tokenizer",
         r"model\.json: key 'radius' must be a positive finite number", _tok_meta(set_key("radius", -1.0))),
    Case("export-meta-unknown-preset", "preset names no preset", "load_tokenizer",
         r"model\.json: tokenizer\.preset='nope': unknown preset", _tok_meta(set_key("preset", "nope"))),
    Case("export-meta-unknown-override", "overrides has an unknown key", "load_tokenizer",
         r"model\.json: .*bogus", _tok_meta(set_key("overrides", {"bogus": 1}))),
    Case("export-missing-weights", "model.safetensors deleted", "load_generator",
         r"model\.safetensors: exported model file missing", _case_export_missing_weights),
    Case("export-other-kind", "a generator export where a tokenizer is read", "load_tokenizer",
         r"model\.json: key 'kind' is 'generator'.*expected a tokenizer", _case_export_other_kind),
    Case("export-other-model-weights", "generator weights beside tokenizer metadata", "load_tokenizer",
         r"model\.safetensors: weights of a different model: no tensor '.+' \(.*\), which the HybridVAE needs",
         _case_export_other_model_weights),
    Case("export-wrong-shape", "model.json says latent_dim 16, weights have 8", "load_tokenizer",
         r"model\.safetensors: weights of a different model: tensor '.+' has shape \(.+\) in the file but \(.+\)",
         _tok_meta(set_key("overrides", {"latent_dim": 16}))),
    Case("export-truncated-weights", "model.safetensors cut in half", "load_generator",
         r"model\.safetensors: cannot read exported weights: truncated, corrupt", _case_export_truncated_weights),
    Case("export-png-weights", "a PNG as model.safetensors", "load_tokenizer",
         r"model\.safetensors: cannot read exported weights", _case_export_png_weights),
    Case("export-nan-weights", "a weight tensor is all NaN", "load_tokenizer",
         r"model\.safetensors: tensor '.+' holds NaN or inf", _case_export_nan_weights),
    Case("export-other-posterior", "the spherical export read as the gaussian one", "load_tokenizer",
         r"model\.json: key 'posterior' is 'spherical', expected 'gaussian'", _case_export_other_posterior),
    Case("export-pair-mismatch", "a tokenizer with d=16 beside a generator for d=8", "check_pair (sample, evaluate)",
         r"tok16: tokenizer latents \(d=16, grid 8\) do not fit the generator in .*gen \(d=8, grid 8\)",
         _case_export_pair_mismatch),
    Case("export-other-data", "a generator of 10 classes for 2-class data", "check_fits_data (evaluate)",
         r"gen10: generator has 10 classes, the data in .*manifest\.json have 2", _case_export_other_data),
    # in-project classifier (model.json + model.safetensors): reference, evaluate, sweep
    Case("classifier-truncated-meta", "model.json cut in half", "load_classifier", r"model\.json: not valid JSON",
         _case_clf_truncated_meta),
    Case("classifier-meta-missing-key", "model.json lacks 'width'", "load_classifier",
         r"model\.json: key 'width' missing", _clf_meta(drop("width"))),
    Case("classifier-meta-one-class", "model.json says 1 class", "load_classifier",
         r"model\.json: key 'num_classes': 1 class", _clf_meta(set_key("num_classes", 1))),
    Case("classifier-other-weights", "weights of a wider network", "build_extractor('classifier')",
         r"model\.safetensors: weights of a different model: tensor '.+' has shape", _case_clf_other_weights),
    Case("classifier-truncated-weights", "model.safetensors cut in half", "load_classifier",
         r"model\.safetensors: cannot read classifier weights", _case_clf_truncated_weights),
    Case("classifier-other-data", "a 10-class classifier for 2-class data", "check_classifier (evaluate)",
         r"clf_out/model/model\.json: classifier has 10 classes, the data have 2", _case_clf_other_data),
    Case("classifier-one-class-data", "a one-class dataset reaches the classifier", "train_classifier",
         r"manifest\.json: 1 class\(es\); the classifier needs at least 2", _case_one_class_data),
    # local FID Inception weights (evaluation.inception_weights): reference, evaluate
    Case("inception-other-weights", "a state dict of some other network", "build_extractor('inception')",
         r"inc\.pth: not torch-fidelity Inception-v3 weights \(no tensor 'Conv2d_1a_3x3\.conv\.weight'",
         _case_inception_other_weights),
    # local VGG16 weights for LPIPS (lpips_weights_path: tokenizer training, evaluation)
    Case("lpips-text", "a text file as VGG16 weights", "load_lpips",
         r"vgg16\.pth: cannot read VGG16 weights .*not a tensors-only torch\.save file", _case_lpips_text),
    Case("lpips-code", "a pickle carrying an arbitrary object", "load_lpips",
         r"vgg16\.pth: .*refused by weights-only loading", _case_lpips_code),
    Case("lpips-other-layout", "a state dict of some other network", "load_lpips",
         r"vgg16\.pth: not a torchvision vgg16 state dict \(missing features\.0\.weight\)", _case_lpips_other_layout),
    Case("lpips-wrong-shapes", "vgg16 keys with the wrong shapes", "load_lpips",
         r"vgg16\.pth: weights of a different model: tensor 'slice1\.0\.weight' has shape \(1,\) in the file",
         _case_lpips_wrong_shapes),
    # training checkpoints (<stage out>/<posterior>/ckpt): train_vae, train_ar (resume, export), sweep
    Case("ckpt-state-not-object", "state.json holds a list", "load_latest",
         r"state\.json: checkpoint state must hold a JSON object", _case_ckpt_state_not_object),
    Case("ckpt-state-missing-step", "state.json lacks 'step'", "load_latest", r"state\.json: key 'step' missing",
         _ckpt_record(drop("step"))),
    Case("ckpt-state-bad-structure", "a tensor placeholder holds a list", "load_latest",
         r"model\.safetensors: does not match its structure in state\.json",
         _ckpt_record(lambda r: r["structure"].update(model={"weight": {"__tensor__": ["weight"]}}))),
    Case("ckpt-state-name-outside", "a state named '../evil'", "load_latest",
         r"state\.json: state name '\.\./evil' in 'structure' is not a plain name", _case_ckpt_state_name_outside),
    Case("ckpt-latest-not-utf8", "latest holds non-UTF-8 bytes", "load_latest",
         r"ckpt/latest: not a text file naming a step dir", _case_ckpt_latest_not_utf8),
    Case("ckpt-latest-outside", "latest names ../elsewhere (a checkpoint outside the dir)", "load_latest",
         r"ckpt/latest: names '\.\./elsewhere', not a step dir of", _case_ckpt_latest_outside),
    Case("export-no-checkpoint", "export asked for with an empty checkpoint dir", "latest_state (train_vae, train_ar)",
         r"ckpt: no checkpoint to read", _case_export_without_checkpoint),
    Case("export-no-ema-state", "the newest checkpoint has no 'ema' state", "latest_state (train_vae, train_ar)",
         r"ckpt/step-00000003: state 'ema': missing from the checkpoint", _case_export_without_ema),
    Case("resume-tokenizer-other-preset", "a checkpoint of mlp_hidden 96 resumed with 64", "_resume (train_vae)",
         r"ckpt/step-00000001: state 'model': weights of a different model: tensor '.+' has shape \(.+\) in the file "
         r"but \(.+\) in the HybridVAE.*; remove .*ckpt to start over",
         _resume_case("tokenizer", {"mlp_hidden": 96})),
    Case("resume-generator-other-preset", "a checkpoint of 3 classes resumed with 10", "_resume (train_ar)",
         r"ckpt/step-00000001: state 'model': weights of a different model: tensor '.+' has shape",
         _resume_case("generator", {"num_classes": 3})),
    Case("resume-missing-ema", "a checkpoint without the 'ema' state", "_resume (train_vae)",
         r"ckpt/step-00000001: state 'ema': missing from the checkpoint",
         _resume_case("tokenizer", {}, lambda states: states.pop("ema"))),
    Case("resume-missing-optimizer", "a checkpoint without the 'optimizer' state", "_resume (train_ar)",
         r"ckpt/step-00000001: state 'optimizer': missing from the checkpoint",
         _resume_case("generator", {}, lambda states: states.pop("optimizer"))),
    Case("resume-optimizer-wrong-shape", "Adam's exp_avg of another shape", "_resume (train_vae)",
         r"ckpt/step-00000001: state 'optimizer': optimizer state of a different model: 'exp_avg' of parameter 0 "
         r"\(group 0\) has shape \(3,\)", _resume_case("tokenizer", {}, _bad_exp_avg)),
    # the encode stage's tokenizer export (tokenizer.out/<posterior>/model)
    Case("encode-other-posterior", "the spherical export where the gaussian one should be", "encode_split",
         r"tok_out/gaussian/seed0/model/model\.json: key 'posterior' is 'spherical', expected 'gaussian'",
         _case_encode_other_posterior),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_naming_the_file(case, ws, tmp_path):
    check_case(case, ws, tmp_path)
