"""Whole-file params validation: unknown keys, wrong types, out-of-range values, profiles."""

import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from sphereard.config import Params, load_params, parse_params
from sphereard.errors import UserError
from sphereard.profiles import available_profiles, deep_merge, materialise, render

REPO = Path(__file__).resolve().parent.parent


def with_change(path: str, value, data: dict | None = None):
    data = Params().model_dump() if data is None else data
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
    # the official augmentation: stored squares of 320 for random 256 crops; the S-VAE crops throughout, the
    # generator encodes online with the crop probability falling from epoch 350 to 0 at 375
    assert b.data.store_size == 320 and b.tokenizer.train.crop.enabled and b.tokenizer.train.crop.min_fraction == 0.8
    gen = b.generator.train
    assert gen.latents == "online" and gen.crop.enabled and (gen.crop.decay_start_epoch, gen.crop.decay_end_epoch) == (
        350, 375)
    assert b.encode.hflip and b.encode.max_images == 50_000  # the cache only feeds the reports


@pytest.mark.parametrize(
    "path, value, expected",
    [
        ("tokenizer.radius", -1.0, "tokenizer.radius=-1.0: must be positive"),
        ("tokenizer.radius", 0, "tokenizer.radius=0: must be positive"),
        ("sampling.cfg_scale", -0.5, "sampling.cfg_scale=-0.5: must be >= 0"),
        ("sampling.cfg_schedule", "cubic", "sampling.cfg_schedule='cubic': must be one of"),
        ("data.image_size", "big", "data.image_size='big': expected an integer"),
        ("data.channels", 2, "data.channels=2: must be one of"),
        ("generator.train.optim.lr", 0, "generator.train.optim.lr=0: must be positive"),
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
    data = Params().model_dump()
    data["sampling"]["cfg_scal"] = 2.0
    with pytest.raises(UserError, match=r"^sampling\.cfg_scal: unknown key"):
        parse_params(data)


def test_non_string_keys_are_named():
    """YAML allows `1: 2`; a block or an `overrides` mapping with such a key is one line naming it."""
    data = Params().model_dump()
    data[1] = 2
    with pytest.raises(UserError, match=r"^1: unknown key \(allowed: classifier, "):
        parse_params(data)
    data = Params().model_dump()
    data["tokenizer"]["overrides"] = {1: 2}
    with pytest.raises(UserError, match=r"^tokenizer\.overrides\.1: keys must be strings$"):
        parse_params(data)


def test_cfg_unit_weight_is_shared_or_separate():
    data = Params().model_dump()
    assert data["sampling"]["cfg_unit_weight"] == "shared"
    data["sampling"]["cfg_unit_weight"] = "own"
    with pytest.raises(UserError, match=r"^sampling\.cfg_unit_weight="):
        parse_params(data)


def test_image_size_not_divisible_by_patch_size():
    data = Params().model_dump()
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
        "error: tokenizer.radius=-2.0: must be positive"]
    missing = subprocess.run([sys.executable, "-m", "pipelines.prepare", "--params", str(tmp_path / "none.yaml")],
                             cwd=REPO, capture_output=True, text=True)
    assert missing.returncode == 2 and "none.yaml: params file not found" in missing.stderr


def admits_float(hint) -> bool:
    """float, float | None, list[float], list[Annotated[float, ...] | None], ..."""
    return hint is float or any(admits_float(arg) for arg in typing.get_args(hint))


def float_keys(cls=Params, prefix=""):
    """Every params key whose type admits a float (float, float | None, list[float]), as dotted paths."""
    keys = []
    for name, field in cls.model_fields.items():
        key = f"{prefix}{name}"
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            keys += float_keys(field.annotation, key + ".")
        elif admits_float(field.annotation):
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
        node = Params().model_dump()
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
        with pytest.raises(UserError, match=rf"^{key}=-1: must be >= 0$"):
            parse_params(with_change(key, -1))
        with pytest.raises(UserError, match=rf"^{key}={2**63}: must be <= {2**63 - 1}$"):
            parse_params(with_change(key, 2**63))
    with pytest.raises(UserError, match=r"^sweep.seeds\[1\]=-3: must be >= 0$"):
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


# --- pydantic strictness, one-line errors, the schema command -------------------------------------------------

@pytest.mark.parametrize("path, value, expected", [
    ("data.image_size", True, "data.image_size=True: expected an integer"),  # a bool is no int
    ("data.channels", True, "data.channels=True: expected an integer"),  # not even where 1 is allowed
    ("sampling.cfg_scale", False, "sampling.cfg_scale=False: expected a number"),
    ("tokenizer.train.optim.lr", "1e-3", "tokenizer.train.optim.lr='1e-3': expected a number"),  # no str -> float
    ("sampling.steps", 2.0, "sampling.steps=2.0: expected an integer"),  # no float -> int
    ("generator.overrides", {"head_mlp_ratio": float("inf")},
     "generator.overrides.head_mlp_ratio=inf: must be a finite number"),
    ("tokenizer.overrides", {"cnn_channels": [8, float("nan"), 32]},
     "tokenizer.overrides.cnn_channels[1]=nan: must be a finite number"),  # nested in an override
    ("generator.overrides", {"dim": True}, "generator.overrides.dim=True: expected an integer"),
    ("tokenizer.overrides", {"heads": 3}, "tokenizer.overrides.heads=3: must divide width=64"),
    ("sweep.radii", [None, -1.0], "sweep.radii[1]=-1.0: must be positive"),
    ("tokenizer.posteriors", ["spherical", "spherical"],
     "tokenizer.posteriors=['spherical', 'spherical']: must not repeat a posterior"),
    ("tokenizer.train.optim.min_lr", 1.0, "tokenizer.train.optim.min_lr=1.0: must be in [0, lr]"),
    ("sweep.scheduler", "asha", "sweep.scheduler='asha': asha stops trials on their AR training loss"),
    ("generator.overrides", {"grid_size": 4},
     "generator.preset='fmnist-s': grid_size 4 must equal the tokenizer grid 8"),
    ("sampling", 3, "sampling=3: expected a mapping"),
])
def test_strict_types_and_rules_give_one_line_with_the_dotted_key(path, value, expected):
    with pytest.raises(UserError) as err:
        parse_params(with_change(path, value))
    assert str(err.value).startswith(expected), str(err.value)
    assert "\n" not in str(err.value)


def test_an_int_is_a_float_and_an_empty_block_takes_the_defaults():
    params = parse_params(with_change("sampling.cfg_scale", 2))  # YAML `2` for a float key
    assert params.sampling.cfg_scale == 2.0 and isinstance(params.sampling.cfg_scale, float)
    assert parse_params(with_change("tracking", None)).tracking == Params().tracking  # `tracking:` with no keys


def test_unknown_nested_keys_are_named_with_the_allowed_ones():
    data = with_change("tokenizer.train.optim.lr", 1e-4)
    data["tokenizer"]["train"]["optim"]["lr_max"] = 1.0
    with pytest.raises(UserError, match=r"^tokenizer\.train\.optim\.lr_max: unknown key \(allowed: betas, ema_decay, "):
        parse_params(data)
    with pytest.raises(UserError, match=r"^generator\.overrides\.dimm: unknown key \(allowed: .*\bdim\b"):
        parse_params(with_change("generator.overrides", {"dimm": 64}))


def test_one_lpips_weights_key_for_the_loss_and_the_metric():
    assert parse_params(with_change("lpips_weights_path", "/w/vgg16.pth")).lpips_weights_path == "/w/vgg16.pth"
    for old in ("tokenizer.train.lpips_weights_path", "evaluation.lpips_weights_path"):
        with pytest.raises(UserError, match=rf"^{old}: unknown key \(allowed: "):
            parse_params(with_change(old, "/w/vgg16.pth"))
    paper = parse_params(materialise("imagenet256-sphereAR-B"))
    assert paper.lpips_weights_path == "/data/weights/vgg16-397923af.pth"


def test_absolute_paths_resolves_every_out_and_keeps_the_rest(tmp_path, monkeypatch):
    from sphereard.config import absolute_paths

    monkeypatch.chdir(tmp_path)
    params = Params()
    resolved = absolute_paths(params)
    assert resolved.metrics_dir == str(tmp_path / "metrics")
    assert resolved.tokenizer.out == str(tmp_path / params.tokenizer.out)
    assert resolved.tokenizer.train == params.tokenizer.train and params.tokenizer.out == "outputs/tokenizer"


def test_schema_command_prints_the_json_schema_of_params_yaml():
    proc = subprocess.run([sys.executable, "-m", "sphereard.config", "schema"], cwd=REPO, capture_output=True,
                          text=True, check=True)
    schema = json.loads(proc.stdout)
    assert set(Params.model_fields) <= set(schema["properties"])
    assert {"data", "tokenizer", "sampling", "sweep", "tracking", "lpips_weights_path"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False


def test_check_command_validates_a_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(with_change("sweep.seeds", [0, True])))
    proc = subprocess.run([sys.executable, "-m", "sphereard.config", "check", "--params", str(bad)], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: sweep.seeds[1]=True: expected an integer"]
    ok = subprocess.run([sys.executable, "-m", "sphereard.config", "check"], cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


OFFICIAL_PROFILES = [n for n in available_profiles() if "official" in n]


def test_official_profiles_follow_the_paper_protocol():
    expected = {"imagenet256-official-B": ("SphereAR-B", 4.5), "imagenet256-official-L": ("SphereAR-L", 4.6),
                "imagenet256-official-H": ("SphereAR-H", 4.5)}
    for name, (preset, cfg) in expected.items():
        p = parse_params(materialise(name))
        assert (p.generator.preset, p.sampling.cfg_scale, p.sampling.cfg_schedule) == (preset, cfg, "linear")
        assert (p.sampling.sampler, p.sampling.steps, p.sampling.final_step) == ("euler_maruyama", 100, 0.04)
        assert (p.sampling.cfg_unit_weight, p.sampling.projection) == ("separate", "sphere")
        assert p.sampling.num_per_class * 1000 == 50_000 and p.evaluation.extractors == ["inception"]
        assert p.official.generator.endswith(f"SphereAR_{preset[-1]}.pt") and p.evaluation.adm_reference
        assert p.tokenizer.overrides == p.generator.overrides == {"rope_patch_offset": 0.5}


def _outputs(params: Params) -> list[Path]:
    blocks = ("data", "tokenizer", "encode", "generator", "sampling", "classifier", "evaluation", "sweep")
    return [Path(getattr(params, b).out) for b in blocks] + [Path(params.metrics_dir)]


@pytest.mark.parametrize("official", OFFICIAL_PROFILES)
def test_pretrained_outputs_never_overlap_the_training_dags(official):
    """DVC refuses a project where two stages own one path or one output holds another (for every
    command, both pipelines at once); and the root `report` depends on `metrics/`, so a pretrained output
    there would pull the pretrained DAG into `make demo`."""
    theirs = _outputs(parse_params(materialise(official)))
    for name in [n for n in available_profiles() if "official" not in n]:
        for a in _outputs(parse_params(materialise(name))):
            for b in theirs:
                assert not (a == b or a in b.parents or b in a.parents), f"{official} {b} vs {name} {a}"
    assert all(p.parts[0] in ("outputs", "data", "pretrained") for p in theirs)


def test_committed_pretrained_params_is_an_official_profile():
    committed = yaml.safe_load((REPO / "pretrained/params.yaml").read_text())
    assert committed == materialise(committed["profile"]) and committed["profile"] in OFFICIAL_PROFILES


@pytest.mark.parametrize("path, value, expected", [
    ("tokenizer.posteriors", ["spherical", "gaussian"], "tokenizer.posteriors=['spherical', 'gaussian']: must be"),
    ("evaluation.extractors", ["inception", "classifier"], "evaluation.extractors=['inception', 'classifier']"),
    ("sweep.enabled", True, "sweep.enabled=True: must be false when `official` is set"),
    ("sampling.use_ema", False, "sampling.use_ema=False: must be true"),
    ("evaluation.adm_reference", None, "evaluation.adm_reference=None: must name a local file"),
    ("evaluation.extractors", ["effnet"], "evaluation.extractors=['effnet']: must hold 'inception'"),
    ("official.weights", "best", "official.weights='best': must be one of"),
])
def test_official_rules_name_the_key(path, value, expected):
    data = materialise("official-tiny")
    with pytest.raises(UserError) as err:
        parse_params(with_change(path, value, data))
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)


def test_kappa_init_is_the_demos_and_the_paper_profiles_keep_the_official_init():
    from sphereard.config import DEMO_KAPPA_INIT

    assert parse_params(materialise("default")).tokenizer.train.kappa_init == DEMO_KAPPA_INIT
    for name in ("imagenet256-sphereAR-B", "imagenet256-sphereAR-L", "imagenet256-sphereAR-H"):
        train = parse_params(materialise(name)).tokenizer.train
        assert train.kappa_init is None and train.export == "raw", name


# --- the seed axis: `seeds`, `Params.for_run` ---------------------------------------------------------------

def test_for_run_sets_the_run_seed_and_offsets_the_sampling_seed():
    data = with_change("seeds", [0, 3, 5])
    params = parse_params(with_change("sampling.seed", 11, with_change("seed", 7, data)))
    run = params.for_run(3)
    assert (run.seed, run.sampling.seed, run.seeds) == (3, 11 + 3, [0, 3, 5])
    assert (params.seed, params.sampling.seed) == (7, 11), "for_run leaves the shared params as they are"
    assert run.model_dump(exclude={"seed", "sampling"}) == params.model_dump(exclude={"seed", "sampling"})
    assert run.sampling.model_dump(exclude={"seed"}) == params.sampling.model_dump(exclude={"seed"})
    assert [(r.seed, r.sampling.seed) for r in params.runs()] == [(0, 11), (3, 14), (5, 16)]
    assert params.for_run(0).sampling.seed == 11, "run 0 samples with sampling.seed itself"


def test_for_run_of_a_seed_not_in_seeds_is_a_user_error_naming_seeds():
    params = parse_params(with_change("seeds", [0, 1]))
    for seed in (2, 7):
        with pytest.raises(UserError, match=rf"^seeds: run seed {seed} is not one of \[0, 1\]") as err:
            params.for_run(seed)
        assert "\n" not in str(err.value)


def test_seeds_must_not_repeat_and_the_default_is_one_run():
    assert Params().seeds == [0] and [r.seed for r in Params().runs()] == [0]
    with pytest.raises(UserError) as err:
        parse_params(with_change("seeds", [0, 1, 0]))
    assert str(err.value).startswith("seeds=[0, 1, 0]: must not repeat a seed"), str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"^seeds"):
        parse_params(with_change("seeds", []))  # at least one run


def test_run_sampling_seeds_must_fit_below_the_largest_seed():
    """Run k samples with sampling.seed + k: a sum beyond MAX_SEED would be clamped into a seed another run
    also uses, so it is rejected naming `sampling.seed`; the largest sum that fits is accepted."""
    from sphereard.config import MAX_SEED

    data = with_change("sampling.seed", MAX_SEED, with_change("seeds", [0, 1]))
    with pytest.raises(UserError) as err:
        parse_params(data)
    assert str(err.value).startswith(f"sampling.seed={MAX_SEED}: plus the largest of `seeds` (1)"), str(err.value)
    params = parse_params(with_change("sampling.seed", MAX_SEED - 1, with_change("seeds", [0, 1])))
    assert [r.sampling.seed for r in params.runs()] == [MAX_SEED - 1, MAX_SEED]


def test_sampling_sweep_seeds_must_be_runs_unless_the_sweep_trains():
    """A sampling trial of seed k reads run k's exported models: `sweep.seeds` within `seeds`, unless the
    sweep trains its own models (sweep.train: true) or is off."""
    data = with_change("sweep.seeds", [0, 2], with_change("seeds", [0, 1]))
    assert data["sweep"]["enabled"] and not data["sweep"]["train"]
    with pytest.raises(UserError) as err:
        parse_params(data)
    assert str(err.value).startswith("sweep.seeds=[0, 2]: must be a subset of seeds [0, 1]"), str(err.value)
    assert "\n" not in str(err.value)
    assert parse_params(with_change("sweep.train", True, data)).sweep.seeds == [0, 2]
    assert parse_params(with_change("sweep.enabled", False, data)).sweep.seeds == [0, 2]
    assert parse_params(with_change("sweep.seeds", [1, 0], data)).sweep.seeds == [1, 0]  # a subset, any order
