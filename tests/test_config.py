"""Whole-file params validation: unknown keys, wrong types, out-of-range values, profiles."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sphereard.config import Params, as_dict, load_params, parse_params
from sphereard.errors import UserError
from sphereard.profiles import available_profiles, deep_merge, materialise, render

REPO = Path(__file__).resolve().parent.parent


def with_change(path: str, value):
    data = as_dict(Params())
    *parents, leaf = path.split(".")
    node = data
    for key in parents:
        node = node[key]
    node[leaf] = value
    return data


def test_committed_params_yaml_is_the_default_profile():
    assert yaml.safe_load((REPO / "params.yaml").read_text()) == materialise("default")


@pytest.mark.parametrize("name", available_profiles())
def test_every_profile_is_valid(name):
    params = parse_params(materialise(name))
    assert params.profile == name


def test_paper_profiles_use_paper_presets():
    b = parse_params(materialise("imagenet256-sphereAR-B"))
    assert (b.tokenizer.preset, b.generator.preset) == ("svae-paper", "SphereAR-B")
    assert b.data.image_size == 256 and b.sampling.cfg_scale == 4.5
    assert b.generator.train.batch_size == 512 and b.generator.train.optim.warmup_steps == 20_000
    assert b.encode.hflip and b.encode.max_images is None  # the paper caches every image and its flip


@pytest.mark.parametrize(
    "path, value, expected",
    [
        ("tokenizer.radius", -1.0, "tokenizer.radius=-1.0: must be positive"),
        ("tokenizer.radius", 0, "tokenizer.radius=0.0: must be positive"),
        ("sampling.cfg_scale", -0.5, "sampling.cfg_scale=-0.5: must be >= 0"),
        ("sampling.cfg_schedule", "cubic", "sampling.cfg_schedule='cubic': must be one of"),
        ("data.image_size", "big", "data.image_size='big': expected an integer"),
        ("data.channels", 2, "data.channels=2: must be one of"),
        ("generator.train.optim.lr", 0, "generator.train.optim.lr=0.0: must be positive"),
        ("encode.max_images", 0, "encode.max_images=0: must be positive"),
        ("tokenizer.posteriors", ["spherical", "vmf"], "tokenizer.posteriors[1]='vmf': must be one of"),
        ("generator.train.batch_size", 7, None),
    ],
)
def test_bad_values_name_key_and_value(path, value, expected):
    data = with_change(path, value)
    if path == "generator.train.batch_size":
        data["generator"]["train"]["ray"]["num_workers"] = 2
        expected = "generator.train.batch_size=7: must be divisible by ray.num_workers=2"
    with pytest.raises(UserError) as err:
        parse_params(data)
    assert str(err.value).startswith(expected), str(err.value)


def test_unknown_key_is_named():
    data = as_dict(Params())
    data["sampling"]["cfg_scal"] = 2.0
    with pytest.raises(UserError, match=r"^sampling\.cfg_scal: unknown key"):
        parse_params(data)


def test_image_size_not_divisible_by_patch_size():
    data = as_dict(Params())
    data["data"]["image_size"] = 30
    data["tokenizer"]["overrides"] = {"image_size": 30}
    with pytest.raises(UserError, match="image_size"):
        parse_params(data)


def test_tokenizer_must_fit_data():
    data = with_change("data.image_size", 64)
    with pytest.raises(UserError, match=r"^tokenizer\.preset='fmnist-s': image_size 32 must equal data\.image_size 64"):
        parse_params(data)


def test_deep_merge_replaces_lists_and_merges_maps():
    merged = deep_merge({"a": {"b": 1, "c": [1, 2]}, "d": 1}, {"a": {"c": [3]}, "e": 2})
    assert merged == {"a": {"b": 1, "c": [3]}, "d": 1, "e": 2}


def test_unknown_profile_lists_available():
    with pytest.raises(UserError, match="profile='nope': unknown profile"):
        materialise("nope")


def test_render_round_trips(tmp_path):
    out = tmp_path / "p.yaml"
    out.write_text(render("smoke"))
    assert load_params(out).tokenizer.preset == "fmnist-xs"


def test_stage_cli_rejects_bad_file_with_one_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(with_change("tokenizer.radius", -2.0)))
    proc = subprocess.run([sys.executable, "-m", "pipelines.prepare", "--params", str(bad)],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: tokenizer.radius=-2.0: must be positive (or null = sqrt(latent_dim))"]
    missing = subprocess.run([sys.executable, "-m", "pipelines.prepare", "--params", str(tmp_path / "none.yaml")],
                             cwd=REPO, capture_output=True, text=True)
    assert missing.returncode == 2 and "none.yaml: params file not found" in missing.stderr


def float_keys(cls=Params, prefix=""):
    """Every params key whose type admits a float (float, float | None, list[float]), as dotted paths."""
    import dataclasses
    import typing

    keys = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hint):
            keys += float_keys(hint, key + ".")
        elif float in (hint, *typing.get_args(hint)) or any(float in typing.get_args(a) for a in typing.get_args(hint)):
            keys.append(key)
    return keys


def test_float_keys_cover_the_known_float_params():
    keys = float_keys()
    assert {"tokenizer.radius", "tokenizer.train.optim.lr", "tokenizer.train.kl_weight", "sampling.cfg_scale",
            "sweep.radii", "sweep.cfg_scales", "generator.train.optim.betas"} <= set(keys)
    assert len(keys) >= 25


@pytest.mark.parametrize("text", [".inf", "-.inf", ".nan"])
def test_every_float_param_rejects_non_finite_values_by_name(text):
    value = yaml.safe_load(text)
    for key in float_keys():
        node = as_dict(Params())
        for part in key.split("."):
            node = node[part]
        data = with_change(key, [value] if isinstance(node, list) else value)
        with pytest.raises(UserError, match=rf"^{key}(\[0\])?={value!r}: must be a finite number$") as err:
            parse_params(data)
        assert "\n" not in str(err.value)


def test_non_finite_values_inside_overrides_and_out_of_range_seeds_are_rejected():
    with pytest.raises(UserError, match=r"^generator.overrides.label_dropout=nan: must be a finite number$"):
        parse_params(with_change("generator.overrides", {"label_dropout": float("nan")}))
    for key in ("seed", "sampling.seed"):
        with pytest.raises(UserError, match=rf"^{key}=-1: must be in \[0, "):
            parse_params(with_change(key, -1))
    with pytest.raises(UserError, match=r"^sweep.seeds=\[0, -3\]: must all be in \[0, "):
        parse_params(with_change("sweep.seeds", [0, -3]))
    with pytest.raises(UserError, match=r"^sweep.gpus_per_trial=1.5: must be a fraction <= 1 or a whole number"):
        parse_params(with_change("sweep.gpus_per_trial", 1.5))
    with pytest.raises(UserError, match=r"^tokenizer.train.optim.lr=1e\+39: lr / \(1 - betas\[0\]\) must fit float32"):
        parse_params(with_change("tokenizer.train.optim.lr", 1e39))  # finite, but AdamW's step size overflows
    with pytest.raises(UserError, match=r"^tracking.experiment=' ': must not be empty$"):
        parse_params(with_change("tracking.experiment", " "))


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe not utf-8", r"params\.yaml: params file unreadable \(UnicodeDecodeError"),
    (b"data: [unclosed", r"params\.yaml: not valid YAML"),
    (b"- a list\n", r"params\.yaml: expected a mapping of config blocks"),
])
def test_unreadable_params_files_are_one_user_error(tmp_path, content, message):
    path = tmp_path / "params.yaml"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as err:
        load_params(path)
    assert "\n" not in str(err.value)
