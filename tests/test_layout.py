"""The output layout (sphereard/layout.py) and dvc.yaml agree; metrics files hold numbers only; each
stage lists only the params it reads (the sweep: only the sampling keys its trials inherit)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sphereard import layout
from sphereard.config import Params, SamplingConfig
from sphereard.errors import UserError
from sphereard.eval.steps_study import STEPS_FILES, steps_file
from sphereard.layout import METRICS_BLOCKS, info_file, metrics_file, write_results
from sphereard.sweep.grid import TrialSettings
from sphereard.sweep.trial import INHERITED_SAMPLING_KEYS, trial_sampling

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import stage_deps  # noqa: E402

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
STAGE_BLOCK = {"train_vae": "tokenizer", "train_ar": "generator", "sample": "sampling", "evaluate": "evaluation",
               "train_classifier": "classifier"}


def stage_body(name: str) -> dict:
    """The mapping holding a stage's cmd, deps and outs (`foreach` stages too): scripts/stage_deps.py's rule."""
    return dict(stage_deps.stage_bodies({"stages": DVC}))[name]


def declared_metrics(body: dict) -> list[str]:
    return [next(iter(m)) if isinstance(m, dict) else m for m in body.get("metrics", [])]


def declared_outs(body: dict) -> list[str]:
    return [next(iter(o)) if isinstance(o, dict) else o for o in body.get("outs", [])]


def declared_plots(body: dict) -> list[str]:
    return [next(iter(o)) if isinstance(o, dict) else o for o in body.get("plots", [])]


OUT_BLOCKS = ("data", "tokenizer", "encode", "generator", "sampling", "evaluation", "classifier", "sweep",
              "steps_study")


PLACEHOLDER_SEED = 7  # the run `placeholder_params` belong to (not the first of `seeds`, not the shared `seed`)


def placeholder_params() -> Params:
    """Params of run PLACEHOLDER_SEED (`Params.for_run`) whose metrics_dir and every block's `out` are
    placeholders (M, O_<block>)."""
    params = Params(metrics_dir="M", seeds=[0, PLACEHOLDER_SEED])
    for name in OUT_BLOCKS:
        params = params.model_copy(update={name: getattr(params, name).model_copy(update={"out": f"O_{name}"})})
    return params.for_run(PLACEHOLDER_SEED)


def render_placeholders(path: str) -> str:
    """dvc.yaml's `${...}` templates with the placeholder values of `placeholder_params` (matrix item:
    posterior P, seed PLACEHOLDER_SEED)."""
    path = path.replace("${metrics_dir}", "M").replace("${item.posterior}", "P")
    path = path.replace("${item.seed}", str(PLACEHOLDER_SEED))
    for name in OUT_BLOCKS:
        path = path.replace(f"${{{name}.out}}", f"O_{name}")
    assert "${" not in path, f"unrendered template in {path}"
    return path


@pytest.mark.parametrize("stage,block", sorted(STAGE_BLOCK.items()))
def test_dvc_yaml_metrics_and_info_paths_come_from_the_layout(stage, block):
    """dvc.yaml's templated paths, rendered with placeholder values, equal what the layout returns."""
    params = placeholder_params()
    posterior = None if block == "classifier" else "P"
    body = stage_body(stage)
    assert [render_placeholders(m) for m in declared_metrics(body)] == [str(metrics_file(params, block, posterior))]
    assert str(info_file(params, block, posterior)) in [render_placeholders(o) for o in declared_outs(body)]
    for entry in body.get("metrics", []):
        assert entry[next(iter(entry))] == {"cache": False}, "metrics are git-tracked, so `dvc exp` commits them"
    assert "metrics_dir" in body["params"]


def layout_outputs(params: Params, p: str = "P") -> dict[str, set[str]]:
    """Each stage's outs and plots (other than metrics), as the layout (and the sweep's tables) name them."""
    paths = {
        "prepare": [Path(params.data.out)],
        "train_vae": [layout.checkpoint_dir(params, "tokenizer", p), layout.export_dir(params, "tokenizer", p),
                      info_file(params, "tokenizer", p), layout.reconstructions_file(params, p),
                      layout.history_file(params, p)],
        "encode": [layout.latent_cache_dir(params, p)],
        "train_classifier": [layout.classifier_model_dir(params), info_file(params, "classifier")],
        "reference": [layout.reference_dir(params)],
        "train_ar": [layout.checkpoint_dir(params, "generator", p), layout.export_dir(params, "generator", p),
                     info_file(params, "generator", p)],
        "sample": [layout.samples_file(params, p), layout.grids_dir(params, p), info_file(params, "sampling", p)],
        "evaluate": [info_file(params, "evaluation", p),
                     *(layout.evaluation_file(params, p, name) for name in layout.EVALUATION_FILES)],
        "steps": [steps_file(params, name) for name in STEPS_FILES],
        "sweep": [layout.trials_dir(params), layout.sweep_models_dir(params),
                  *(layout.sweep_dir(params) / name for name in (
                      layout.SWEEP_RESULTS_FILE, layout.SWEEP_SUMMARY_FILE, layout.SWEEP_FD_PLOT_FILE,
                      layout.SWEEP_PLOTS_DIR))],
    }
    return {stage: {str(path) for path in stage_paths} for stage, stage_paths in paths.items()}


@pytest.mark.parametrize("stage", sorted(set(DVC) - {"report"}))
def test_dvc_yaml_outs_and_plots_come_from_the_layout(stage):
    """Every out and plot of every stage (but the report) is a path the layout returns, and back."""
    body = stage_body(stage)
    declared = {render_placeholders(o) for o in declared_outs(body) + declared_plots(body)}
    assert declared == layout_outputs(placeholder_params())[stage]


def test_dvc_yaml_deps_on_stage_outputs_come_from_the_layout():
    """A stage's templated deps are other stages' outputs as the layout names them (or a whole block's `out`)."""
    params = placeholder_params()
    known = set().union(*layout_outputs(params).values()) | {f"O_{name}" for name in OUT_BLOCKS} | {"M"}
    for name in DVC:
        templated = [d for d in stage_body(name).get("deps", []) if "${" in d]
        unknown = [d for d in templated if render_placeholders(d) not in known]
        assert not unknown, f"{name}: deps {unknown} are not layout paths"


def test_per_posterior_paths_live_in_the_posterior_folder():
    params = placeholder_params()
    for fn in (layout.reconstructions_file, layout.latent_cache_dir, layout.samples_file, layout.grids_dir,
               layout.overview_file):
        assert "P" in fn(params, "P").parts, fn.__name__
        parts = fn(params, "P").parts  # the run folder sits right under the posterior's
        assert parts[parts.index("P") + 1] == f"seed{PLACEHOLDER_SEED}", fn.__name__
    for block in layout.TRAINED_BLOCKS:
        for fn in (layout.checkpoint_dir, layout.export_dir):
            run_dir = Path(getattr(params, block).out) / "P" / f"seed{PLACEHOLDER_SEED}"
            assert fn(params, block, "P").parent == run_dir, fn.__name__
    with pytest.raises(AssertionError, match="block must be one of"):
        layout.export_dir(params, "sampling", "P")
    assert layout.trial_dir(params, "t1") == layout.trials_dir(params) / "t1"
    assert layout.reference_file(params, "inception") == layout.reference_dir(params) / "inception.npz"
    with pytest.raises(AssertionError, match="must be one of"):
        layout.evaluation_file(params, "P", "other.png")


def test_metrics_folder_is_tracked_by_git_not_ignored():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout")
    for path in ("metrics/evaluation/spherical/seed0.json", "metrics/classifier.json", "reports/report.md"):
        proc = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO)
        assert proc.returncode == 1, f"{path} is git-ignored: `dvc exp run` would not commit it"


def test_only_checkpoints_metrics_and_the_report_stay_out_of_the_dvc_cache():
    """Everything else is cached, so `dvc checkout` restores a commit's or an experiment's outputs."""
    for name, stage in DVC.items():
        body = stage.get("do", stage)
        for out in body.get("outs", []) + body.get("plots", []):
            if isinstance(out, dict) and next(iter(out.values())).get("cache") is False:
                path, spec = next(iter(out.items()))
                assert spec.get("persist") or path == "reports", f"{name}: {path} is cache: false"


def test_write_results_refuses_settings_in_metrics(tmp_path):
    params = Params(metrics_dir=str(tmp_path / "m"))
    params = params.model_copy(update={"tokenizer": params.tokenizer.model_copy(update={"out": str(tmp_path / "t")})})
    write_results(params, "tokenizer", "spherical", {"psnr": 20.5}, {"precision": "fp32", "eval_images": 10})
    assert json.loads((tmp_path / "m/tokenizer/spherical/seed0.json").read_text()) == {"psnr": 20.5}
    assert json.loads((tmp_path / "t/spherical/seed0/info.json").read_text())["precision"] == "fp32"
    for bad in ({"precision": "fp32"}, {"use_ema": True}, {"settings": {"w": 3.0}}):
        with pytest.raises(AssertionError, match="metrics hold numbers only"):
            write_results(params, "tokenizer", "spherical", bad, {})


def test_every_block_has_one_metrics_file_per_posterior():
    params = Params()
    files = {b: metrics_file(params, b, None if b == "classifier" else "p") for b in METRICS_BLOCKS}
    assert {f.parent.name if b == "classifier" else f.parent.parent.name for b, f in files.items()} == {
        "tokenizer", "generator", "sampling", "evaluation", "metrics"}
    assert {b: str(f) for b, f in files.items()} == {
        b: "metrics/classifier.json" if b == "classifier" else f"metrics/{b}/p/seed0.json" for b in METRICS_BLOCKS}
    with pytest.raises(AssertionError):
        metrics_file(params, "tokenizer")


def test_sweep_depends_only_on_the_sampling_keys_its_trials_inherit():
    sampling_params = {p.removeprefix("sampling.") for p in DVC["sweep"]["params"]
                       if isinstance(p, str) and p.startswith("sampling")}
    assert sampling_params == set(INHERITED_SAMPLING_KEYS), "dvc.yaml sweep params != INHERITED_SAMPLING_KEYS"
    # every other sampling key is set by the trial itself (or is the sample stage's output folder)
    base = Params()
    trial = TrialSettings(posterior="spherical", radius=4.0, cfg_scale=7.25, projection="none", sampler_steps=3,
                          seed=11)
    cfg = trial_sampling(base, trial)
    overridden = {name for name in SamplingConfig.model_fields if getattr(cfg, name) != getattr(base.sampling, name)}
    inherited = set(SamplingConfig.model_fields) - overridden - {"out"}
    assert inherited == set(INHERITED_SAMPLING_KEYS)


def test_clean_outputs_lists_every_regenerated_folder_and_refuses_kept_ones(tmp_path, monkeypatch, capsys):
    """`make clean-outputs` deletes what `python -m sphereard.layout outputs` prints: every stage block's
    `out` and the Ray storage from the params, never the prepared data, metrics/ or the checkout itself."""
    params = Params()
    outs = {str(p) for p in layout.regenerated_outputs(params)}
    assert outs == {"outputs/tokenizer", "data/latents", "outputs/generator", "outputs/samples", "outputs/metrics",
                    "outputs/classifier", "outputs/sweep", "outputs/ray"}
    assert params.data.out not in outs and params.metrics_dir not in outs
    layout.check_deletable(layout.regenerated_outputs(params), params, tmp_path)  # the defaults are fine
    with pytest.raises(UserError, match="holds files git tracks"):  # in this checkout
        layout.check_deletable([Path("dvc.yaml")], params, REPO)
    monkeypatch.chdir(tmp_path)
    for key, value, why in (("sweep", ".", "not a folder inside"), ("sampling", "..", "not a folder inside"),
                            ("sampling", "data", "which a clean keeps"), ("sweep", ".git", "which a clean keeps"),
                            ("sweep", "data/shards/x", "which a clean keeps"), ("sweep", "reports/x", "which a clean"),
                            ("sweep", "outputs/sweep\n/tmp/victim", "a control character")):
        bad = tmp_path / f"{key}.yaml"
        data = yaml.safe_load((REPO / "params.yaml").read_text())
        data[key]["out"] = value
        bad.write_text(yaml.safe_dump(data))
        with pytest.raises(SystemExit) as exit_info:
            layout.main(["outputs", "--params", str(bad)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and why in err and len(err.splitlines()) == 1, err
    proc = subprocess.run([sys.executable, "-m", "sphereard.layout", "outputs", "--params", str(bad)], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and why in proc.stderr and proc.stdout == "" and len(proc.stderr.splitlines()) == 1


RUN_PATHS = {  # every per-run layout function, as (params, posterior) -> path
    "metrics_file": lambda params, p: metrics_file(params, "evaluation", p),
    "info_file": lambda params, p: info_file(params, "sampling", p),
    "trained_dir": lambda params, p: layout.trained_dir(params, "generator", p),
    "checkpoint_dir": lambda params, p: layout.checkpoint_dir(params, "tokenizer", p),
    "export_dir": lambda params, p: layout.export_dir(params, "generator", p),
    "reconstructions_file": layout.reconstructions_file,
    "history_file": layout.history_file,
    "latent_cache_dir": layout.latent_cache_dir,
    "samples_dir": layout.samples_dir,
    "samples_file": layout.samples_file,
    "grids_dir": layout.grids_dir,
    "overview_file": layout.overview_file,
    "evaluation_dir": layout.evaluation_dir,
    "evaluation_file": lambda params, p: layout.evaluation_file(params, p, "error_split.csv"),
}


@pytest.mark.parametrize("name", sorted(RUN_PATHS))
def test_each_run_of_the_seed_axis_has_its_own_paths(name):
    """Runs 0 and 1 (`Params.for_run`) of one posterior never share a path: each sits in its run folder
    `<posterior>/seed<k>` (metrics: `<posterior>/seed<k>.json`)."""
    fn, params = RUN_PATHS[name], Params(seeds=[0, 1])
    run0, run1 = fn(params.for_run(0), "spherical"), fn(params.for_run(1), "spherical")
    assert run0 != run1
    for path, run in ((run0, "seed0"), (run1, "seed1")):
        parts = path.parts
        if name == "metrics_file":
            assert parts[-2:] == ("spherical", f"{run}.json"), path
        else:
            assert parts[parts.index("spherical") + 1] == run, path
        assert layout.run_name(params.for_run(int(run[-1])), "spherical") == f"spherical/{run}"
    assert str(run1) == str(run0).replace("seed0", "seed1"), "only the run folder differs"
    assert fn(params.for_run(0), "spherical") != fn(params.for_run(0), "gaussian")


def test_shared_stages_have_no_run_level():
    """The classifier's metrics and info, its model and the reference statistics are one per repository,
    whatever the run: no `seed<k>` in their paths, the same for every run's params."""
    params = Params(seeds=[0, 1])
    shared = {"classifier metrics": lambda p: metrics_file(p, "classifier"),
              "classifier info": lambda p: info_file(p, "classifier"),
              "classifier model": layout.classifier_model_dir,
              "reference": layout.reference_dir,
              "reference file": lambda p: layout.reference_file(p, "classifier")}
    for what, fn in shared.items():
        paths = {fn(run) for run in (params, *params.runs())}
        assert len(paths) == 1, what
        (path,) = paths
        assert not any(part.startswith("seed") for part in path.parts), (what, path)
    assert metrics_file(params, "classifier") == Path("metrics/classifier.json")
    assert layout.reference_dir(params.for_run(1)) == Path(params.evaluation.out) / "reference"


PER_RUN_STAGES = ("train_vae", "encode", "train_ar", "sample", "evaluate")


def test_per_run_stages_are_a_matrix_over_posterior_and_seed():
    """dvc.yaml runs each per-run stage once per posterior and entry of `seeds` (`<stage>@<posterior>-<seed>`),
    handing the run's seed to the stage; the shared stages run once."""
    for name in PER_RUN_STAGES:
        assert DVC[name]["matrix"] == {"posterior": "${tokenizer.posteriors}", "seed": "${seeds}"}, name
        assert DVC[name]["cmd"].endswith(f"-m pipelines.{name} --posterior ${{item.posterior}} --seed ${{item.seed}}")
    for name in set(DVC) - set(PER_RUN_STAGES):
        assert "matrix" not in DVC[name] and "foreach" not in DVC[name] and "${item" not in DVC[name]["cmd"], name
