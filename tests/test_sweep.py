"""Sweep stage: grid expansion and trial names, seed aggregation, and Ray Tune sweeps end to end on
smoke-size outputs (sample/evaluate trials over the DAG's models; a training trial under ASHA)."""

import argparse
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from sphereard.config import SweepConfig, parse_params
from sphereard.config_errors import validated
from sphereard.errors import UserError
from sphereard.profiles import materialise
from sphereard.sweep import (
    TrialSettings,
    aggregate_over_seeds,
    expand_grid,
    results_frame,
    search_space,
    segment_ends,
    write_outputs,
)
from sphereard.sweep.grid import model_name, settings_of
from sphereard.sweep.results import fd_plot_frame
from sphereard.sweep.trial import norm_deviation
from sphereard.utils.io import sha256_file

POSTERIORS = ("spherical", "gaussian")
BLOCKS = ("tokenizer", "encode", "generator", "sampling", "classifier", "evaluation", "sweep")
SMOKE_STEPS = 12  # training steps of each model: the sweep needs working models, not good ones


# ---------------------------------------------------------------- fast: names, grid, aggregation

def test_trial_names_carry_the_settings():
    t = TrialSettings("spherical", 4.0, 3.0, "sphere", 25, 0)
    assert t.name == "ar-spherical-R4-cfg3.0-proj_sphere-s25-seed0"
    assert TrialSettings("gaussian", math.sqrt(32), 1.25, "none", 8, 3, train=True).name == \
        "ar-gaussian-R5.657-cfg1.25-proj_none-s8-seed3-train"


def test_grid_expansion_resolves_dedupes_and_marks_training():
    sweep = SweepConfig(cfg_scales=[1.0, 3.0], radii=[None, 4.0, 2.0], posteriors=["spherical", "gaussian"],
                        projections=["auto", "sphere"], sampler_steps=[8], seeds=[0, 1])
    trials = expand_grid(sweep, {"spherical": 4.0, "gaussian": 4.0}, default_r=4.0)
    sph = [t for t in trials if t.posterior == "spherical"]
    gau = [t for t in trials if t.posterior == "gaussian"]
    # spherical: auto == sphere and null R == 4 collapse; R=2 is a radius ablation -> trains
    assert len(sph) == 2 * 2 * 2 and {(t.radius, t.train) for t in sph} == {(4.0, False), (2.0, True)}
    assert {t.projection for t in sph} == {"sphere"}
    # gaussian: R never enters its training -> R=2 only changes the projection radius; auto -> none
    assert len(gau) == 2 * 2 * 2 * 2 and not any(t.train for t in gau)
    assert {t.projection for t in gau} == {"none", "sphere"}
    assert len({t.name for t in trials}) == len(trials) == 24
    assert sorted({t.seed for t in trials}) == [0, 1]
    space = search_space(trials)
    assert [settings_of({"trial": c}) for c in space["trial"]["grid_search"]] == trials


def test_grid_training_and_missing_models():
    sweep = SweepConfig(cfg_scales=[3.0], radii=[None], posteriors=["spherical"], seeds=[0], train=True)
    (t,) = expand_grid(sweep, {"spherical": None}, default_r=4.0)
    assert t.train and t.radius == 4.0 and t.name.endswith("-train")
    with pytest.raises(UserError, match=r"sweep.train: true"):
        expand_grid(SweepConfig(posteriors=["gaussian"]), {"gaussian": None}, default_r=4.0)
    with pytest.raises(UserError, match="too close"):
        expand_grid(SweepConfig(radii=[2.00001, 2.00002], posteriors=["spherical"], cfg_scales=[1.0]),
                    {"spherical": 4.0}, default_r=4.0)


def test_grid_arms_head_axes_and_conflicts():
    """Arms replace axes of the main grid; a head that differs from the DAG's trains a generator on the DAG
    tokenizer (reuse_tokenizer), a radius ablation trains both; combinations a head cannot model are left
    out, and a swept value that fits nothing is refused naming its key."""
    arms = [{"posteriors": ["spherical"], "flows": ["riemannian"], "samplers": ["euler"], "cfg_scales": [3.0]},
            {"posteriors": ["gaussian", "spherical"], "magnitudes": [None, "predict"], "cfg_scales": [3.0]},
            {"posteriors": ["spherical"], "radii": [2.0, 8.0], "cfg_scales": [3.0]}]
    sweep = validated(SweepConfig, {"cfg_scales": [1.0, 3.0], "posteriors": ["spherical", "gaussian"],
                                    "seeds": [0, 1], "arms": arms})
    trials = expand_grid(sweep, {"spherical": 4.0, "gaussian": 4.0}, default_r=4.0)
    main = [t for t in trials if not t.train]
    assert len(main) == 2 * 2 * 2  # posteriors x cfg x seeds; arm 2's `none` trials repeat them: run once
    riem = [t for t in trials if t.flow == "riemannian"]
    assert len(riem) == 2 and all(t.train and t.reuse_tokenizer and t.sampler == "euler" for t in riem)
    assert riem[0].name == "ar-spherical-R4-cfg3.0-proj_sphere-s25-flow_riemannian-euler-seed0-train"
    pred = [t for t in trials if t.magnitude == "predict"]  # spherical x predict left out (constant norm)
    assert {t.posterior for t in pred} == {"gaussian"} and all(t.reuse_tokenizer for t in pred)
    radius = [t for t in trials if t.radius != 4.0]
    assert {(t.radius, t.train, t.reuse_tokenizer) for t in radius} == {(2.0, True, False), (8.0, True, False)}
    assert len(trials) == len(main) + len(riem) + len(pred) + len(radius) == 8 + 2 + 2 + 4
    assert model_name(riem[0]) == model_name(dataclasses.replace(riem[0], cfg_scale=6.0, sampler="euler"))
    assert model_name(riem[0]) == "spherical-R4-flow_riemannian-seed0"
    # the DAG's own head is riemannian: a null flow means riemannian, `euclidean` then trains
    heads = {"flow": "riemannian", "magnitude": "none", "sampler": "euler"}
    (t,) = expand_grid(SweepConfig(posteriors=["spherical"], cfg_scales=[3.0], flows=[None]), {"spherical": 4.0},
                       4.0, heads)
    assert (t.flow, t.train) == ("riemannian", False)
    with pytest.raises(UserError, match=r"^sweep\.flows=\['riemannian'\]: fits no swept posterior"):
        expand_grid(SweepConfig(posteriors=["spherical"], flows=["riemannian"]), {"spherical": 4.0}, 4.0)
    with pytest.raises(UserError, match=r"^sweep\.arms\[0\]\.magnitudes=\['predict'\]"):
        expand_grid(validated(SweepConfig, {"posteriors": ["spherical"], "arms": [{"magnitudes": ["predict"]}]}),
                    {"spherical": 4.0}, 4.0)
    with pytest.raises(UserError, match=r"^sweep\.scheduler='asha': ranks trials by their AR training loss"):
        expand_grid(validated(SweepConfig, {"posteriors": ["spherical"], "train": True, "scheduler": "asha",
                                            "flows": [None, "riemannian"], "samplers": ["euler"]}),
                    {"spherical": 4.0}, 4.0)
    with pytest.raises(UserError, match=r"^sweep\.arms\[0\]\.posteriors: no exported gaussian tokenizer"):
        expand_grid(validated(SweepConfig, {"posteriors": ["spherical"],
                                            "arms": [{"posteriors": ["gaussian"], "magnitudes": ["predict"]}]}),
                    {"spherical": 4.0, "gaussian": None}, 4.0)
    with pytest.raises(UserError, match=r"^sweep\.arms\[0\]: sets no axis"):
        expand_grid(validated(SweepConfig, {"posteriors": ["spherical"], "arms": [{}]}), {"spherical": 4.0}, 4.0)
    with pytest.raises(UserError, match=r"^sweep\.arms\[0\]\.radii / \.cfg_scales: values too close .*3\.05"):
        expand_grid(validated(SweepConfig, {"posteriors": ["spherical"], "arms": [{"cfg_scales": [3.05, 3.0500001]}]}),
                    {"spherical": 4.0}, 4.0)
    with pytest.raises(UserError, match=r"^sweep\.arms\[0\]\.flow: "):
        validated(SweepConfig, {"arms": [{"flow": ["riemannian"]}]}, "sweep")  # a typo in an arm's key


def test_arm_posteriors_the_dag_does_not_train_are_left_out(tmp_path, caplog):
    """Without sweep.train an arm, like the main grid, only uses posteriors the DAG trains (else it would
    read stale exports); an arm left with none is refused naming its key; `--list` of a disabled sweep
    writes nothing."""
    from sphereard.sweep.run import dag_posteriors_only, run_sweep

    data = materialise("default")
    data["tokenizer"]["posteriors"] = ["spherical"]
    data["sweep"].update(posteriors=["spherical", "gaussian"],
                         arms=[{"posteriors": ["gaussian", "spherical"], "cfg_scales": [3.0]}])
    sweep = dag_posteriors_only(parse_params(data)).sweep
    assert sweep.posteriors == ["spherical"] and sweep.arms[0].posteriors == ["spherical"]
    data["sweep"]["arms"] = [{"posteriors": ["gaussian"], "magnitudes": ["predict"]}]
    with pytest.raises(UserError, match=r"^sweep\.arms\[0\]\.posteriors=\['gaussian'\]: none is in tokenizer"):
        dag_posteriors_only(parse_params(data))
    data["sweep"].update(enabled=False, arms=[], out=str(tmp_path / "sweep"))
    run_sweep(parse_params(data), list_only=True)
    assert not (tmp_path / "sweep").exists()


def test_sweep_config_validation():
    with pytest.raises(UserError, match=r"^sweep\.scheduler='asha': .*sweep.train"):
        validated(SweepConfig, {"scheduler": "asha"}, "sweep")
    with pytest.raises(UserError, match=r"^sweep\.train_steps_fraction=0\.0: must be positive"):
        validated(SweepConfig, {"train_steps_fraction": 0.0}, "sweep")
    with pytest.raises(UserError, match=r"^sweep\.seeds=\[\]: list at least one value"):
        validated(SweepConfig, {"seeds": []}, "sweep")
    assert SweepConfig(scheduler="asha", train=True).train_reports == 4


def test_segment_ends():
    assert segment_ends(10, 4) == [2, 5, 8, 10]
    assert segment_ends(3, 5) == [1, 2, 3]
    assert segment_ends(7, 1) == [7]


def test_norm_deviation():
    r = 4.0
    norms = np.full((5, 6), 1.1 * r)
    norms[:, 0] = r  # first position on the sphere, the rest 10% out
    out = norm_deviation(norms, r)
    assert out["norm_rel_dev_max"] == pytest.approx(0.1)
    assert out["norm_rel_dev_mean"] == pytest.approx(0.1 * 5 / 6)


def test_aggregation_over_two_seeds_and_outputs(tmp_path):
    rows = []
    for post, fds in (("spherical", (10.0, 14.0)), ("gaussian", (20.0, 30.0))):
        for w in (1.0, 3.0):
            for seed, fd in enumerate(fds):
                t = TrialSettings(post, 4.0, w, "sphere" if post == "spherical" else "none", 8, seed)
                rows.append({"trial": t.name, "status": "done", **t.as_dict(), "fd_classifier": fd * w,
                             "class_consistency_classifier": 0.5 + seed / 10, "norm_rel_dev_max": 0.01 * seed,
                             "mlflow_run_id": f"run{len(rows)}"})
    stopped = TrialSettings("spherical", 4.0, 1.0, "sphere", 8, 2)
    rows.append({"trial": stopped.name, "status": "stopped", **stopped.as_dict(), "fd_classifier": np.nan})
    results = results_frame(rows)
    summary = aggregate_over_seeds(results)
    assert len(results) == 9 and list(results.columns[:2]) == ["trial", "status"]
    assert len(summary) == 4 and set(summary["num_seeds"]) == {2} and set(summary["seeds"]) == {"0;1"}
    row = summary[(summary.posterior == "gaussian") & (summary.cfg_scale == 3.0)].iloc[0]
    assert row["fd_classifier_mean"] == pytest.approx(75.0)
    assert row["fd_classifier_std"] == pytest.approx(np.std([60.0, 90.0], ddof=1))
    assert row["class_consistency_classifier_mean"] == pytest.approx(0.55)
    paths = write_outputs(tmp_path, results, summary)
    assert len(pd.read_csv(paths["results"])) == 9
    reread = pd.read_csv(paths["summary"])
    assert reread["fd_classifier_mean"].tolist() == pytest.approx(summary["fd_classifier_mean"].tolist())
    assert {p.name for p in paths["plots"].iterdir()} == {
        "fd_classifier_vs_cfg.png", "class_consistency_classifier_vs_cfg.png", "norm_rel_dev_max_vs_cfg.png"}
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave nothing behind
    fd = pd.read_csv(paths["fd_plot"])  # DVC plot input: one line per (setting, extractor), no fixed name
    assert list(fd.columns) == ["cfg_scale", "series", "extractor", "fd_mean", "fd_std", "num_seeds"]
    assert set(fd["series"]) == {"spherical proj_sphere classifier", "gaussian proj_none classifier"} and len(fd) == 4
    gaussian_w3 = fd[(fd.series == "gaussian proj_none classifier") & (fd.cfg_scale == 3.0)]
    assert gaussian_w3["fd_mean"].item() == pytest.approx(75.0)


def test_fd_plot_frame_has_one_series_per_extractor():
    summary = pd.DataFrame({"cfg_scale": [1.0, 3.0], "num_seeds": [1, 1], "fd_inception_mean": [5.0, 4.0],
                            "fd_inception_std": [np.nan, np.nan], "fd_effnet_mean": [2.0, 1.0]})
    frame = fd_plot_frame(summary, pd.Series(["spherical", "spherical"]))
    assert sorted(set(frame["series"])) == ["spherical effnet", "spherical inception"]
    assert frame.groupby("extractor")["fd_mean"].apply(list).to_dict() == {"effnet": [2.0, 1.0],
                                                                          "inception": [5.0, 4.0]}


class FakeResult:
    """The fields of a Tune Result that the stage reads."""

    def __init__(self, t: TrialSettings, metrics: dict, error: BaseException | None = None):
        self.config, self.metrics, self.error = {"trial": t.as_dict()}, metrics, error


class WrappedError(RuntimeError):
    """Stands in for Ray's RayTaskError: the trial's own exception is `.cause`."""

    def __init__(self, cause):
        super().__init__("ray task failed")
        self.cause = cause


def test_collect_rows_statuses_and_trial_errors():
    from sphereard.sweep.run import collect

    done = TrialSettings("spherical", 4.0, 3.0, "sphere", 8, 0, train=True)
    stopped = TrialSettings("spherical", 2.0, 3.0, "sphere", 8, 0, train=True)
    grid = [FakeResult(done, {"fd_classifier": 1.5, "num_images": 40, "ar_loss": 0.9, "mlflow_run_id": "a",
                              "training_iteration": 3, "time_total_s": 12.0, "trial_id": "x", "config": {}}),
            FakeResult(stopped, {"ar_loss": 2.0, "ar_step": 5, "mlflow_run_id": "b", "training_iteration": 1})]
    rows = collect(grid)
    assert [r["status"] for r in rows] == ["done", "stopped"]
    assert rows[0]["trial"] == done.name and rows[0]["trial_s"] == 12.0 and rows[0]["fd_classifier"] == 1.5
    assert not {"training_iteration", "trial_id", "config", "ar_step"} & (set(rows[0]) | set(rows[1]))
    bad = [FakeResult(done, {}), FakeResult(stopped, {}, WrappedError(UserError("reference/x.npz: missing")))]
    with pytest.raises(UserError, match=r"^reference/x.npz: missing$"):
        collect(bad)
    with pytest.raises(RuntimeError, match=r"1 trial\(s\) failed, first ar-spherical-R2.*ZeroDivisionError"):
        collect([FakeResult(stopped, {}, WrappedError(ZeroDivisionError("boom")))])


def test_preflight_names_the_missing_input(tmp_path):
    from sphereard.sweep.run import preflight

    data = smoke_data(tmp_path)
    with pytest.raises(UserError, match=r"manifest.json: data manifest missing"):
        preflight(parse_params(data))
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "manifest.json").write_text("{}")
    with pytest.raises(UserError, match=r"reference/classifier.npz: reference statistics missing"):
        preflight(parse_params(data))


# ---------------------------------------------------------------- slow: real sweeps on smoke outputs

def smoke_data(root: Path) -> dict:
    """Smoke profile, every output under `root`, Ray Train in-process for the DAG stages, no MLflow."""
    data = materialise("smoke")
    data["data"].update(out=str(root / "shards"), max_per_class=20)
    data["metrics_dir"] = str(root / "metrics")
    for block in BLOCKS:
        data[block]["out"] = str(root / block)
    for block in ("tokenizer", "generator"):
        data[block]["train"].update(steps=SMOKE_STEPS, ckpt_every=SMOKE_STEPS, sample_every=SMOKE_STEPS)
        data[block]["train"]["ray"].update(num_workers=0, storage=str(root / "ray"))
    data["tokenizer"]["train"]["disc_start"] = SMOKE_STEPS // 2
    data["tracking"].update(enabled=False, store=str(root / "mlflow.db"), artifacts=str(root / "mlartifacts"))
    return data


def stage(module, data: dict, **args) -> None:
    """`module`'s stage in-process, as `pipelines._cli.stage_main` runs it: a per-run stage (`posterior`)
    gets the params of run `seed` (default: the first of `seeds`)."""
    params = parse_params(data)
    if "posterior" in args:
        args.setdefault("seed", params.seeds[0])
        params = params.for_run(args["seed"])
    module.run(params, argparse.Namespace(stop_after=None, **args))


@pytest.fixture(scope="module")
def eval_inputs(tmp_path_factory):
    """prepare -> train_classifier -> reference (what every trial scores against)."""
    from pipelines import prepare, reference, train_classifier

    root = tmp_path_factory.mktemp("sweep")
    data = smoke_data(root)
    for module in (prepare, train_classifier, reference):
        stage(module, data)
    yield root, data
    import ray

    ray.shutdown()


@pytest.fixture(scope="module")
def dag_models(eval_inputs):
    """train_vae -> encode -> train_ar for both posteriors (the models sample trials reuse)."""
    from pipelines import encode, train_ar, train_vae

    root, data = eval_inputs
    for posterior in POSTERIORS:
        for module in (train_vae, encode, train_ar):
            stage(module, data, posterior=posterior)
    return root, data


def run_sweep(data: dict, monkeypatch, db: Path, **sweep):
    """Run the sweep stage in-process with its own MLflow store `db` and output dir (beside it)."""
    from pipelines import sweep as sweep_stage

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    data = yaml.safe_load(yaml.safe_dump(data))  # a deep copy
    data["sweep"].update(sweep, out=str(db.with_suffix("")))
    data["tracking"]["enabled"] = True
    params = parse_params(data)
    sweep_stage.run(params, argparse.Namespace(list=False))
    return params


def mlflow_runs(db: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(materialise("smoke")["tracking"]["experiment"])
    return client, client.search_runs([exp.experiment_id])


@pytest.mark.slow
def test_sample_sweep_cfg_by_posterior(dag_models, monkeypatch):
    root, data = dag_models
    db = root / "sample_sweep.db"
    params = run_sweep(data, monkeypatch, db, cfg_scales=[1.0, 3.0], posteriors=list(POSTERIORS), seeds=[0],
                       sampler_steps=[8], num_per_class=4, max_concurrent=2)
    out = Path(params.sweep.out)
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 4 and set(results["status"]) == {"done"} and not results["train"].any()
    assert np.isfinite(results["fd_classifier"]).all() and (results["fd_classifier"] >= 0).all()
    assert results["class_consistency_classifier"].between(0, 1).all()
    assert np.isfinite(results["norm_rel_dev_mean"]).all() and (results["num_images"] == 40).all()
    assert sorted(zip(results.posterior, results.cfg_scale, strict=True)) == sorted(
        (p, w) for p in POSTERIORS for w in (1.0, 3.0))
    sph = results[results.posterior == "spherical"]
    assert set(sph["projection"]) == {"sphere"}
    assert set(results[results.posterior == "gaussian"]["projection"]) == {"none"}
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 4 and set(summary["num_seeds"]) == {1}
    assert summary["fd_classifier_mean"].tolist() == pytest.approx(results["fd_classifier"].tolist())
    for metric in ("fd_classifier", "class_consistency_classifier", "norm_rel_dev_max"):
        assert (out / "plots" / f"{metric}_vs_cfg.png").stat().st_size > 0

    client, runs = mlflow_runs(db)
    (parent,) = [r for r in runs if r.data.tags.get("stage") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4 and {c.info.run_name for c in children} == set(results["trial"])
    manifest_sha = sha256_file(Path(params.data.out) / "manifest.json")
    for run in [parent, *children]:
        assert run.info.status == "FINISHED"
        assert len(run.data.tags["mlflow.source.git.commit"]) == 40
        (data_input,) = run.inputs.dataset_inputs  # the data manifest, as MLflow dataset input
        assert manifest_sha.startswith(data_input.dataset.digest)
        assert {t.key: t.value for t in data_input.tags} == {"mlflow.data.context": "evaluation",
                                                              "sha256": manifest_sha}
    for child in children:
        row = results[results.trial == child.info.run_name].iloc[0]
        assert child.data.params["cfg_scale"] == str(row.cfg_scale)
        assert child.data.metrics["fd_classifier"] == pytest.approx(row.fd_classifier)
        assert row.mlflow_run_id == child.info.run_id
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.csv", "summary.csv", "plots"} <= artifacts


@pytest.mark.slow
def test_training_trial_radius_ablation_under_asha(eval_inputs, monkeypatch):
    root, data = eval_inputs
    db = root / "train_sweep.db"
    params = run_sweep(data, monkeypatch, db, cfg_scales=[3.0], posteriors=["spherical"], radii=[2.0], seeds=[0],
                       sampler_steps=[8], num_per_class=4, train=True, scheduler="asha", train_reports=2,
                       train_steps_fraction=0.5)
    (row,) = pd.read_csv(Path(params.sweep.out) / "results.csv").to_dict("records")
    assert row["trial"] == "ar-spherical-R2-cfg3.0-proj_sphere-s8-seed0-train" and row["status"] == "done"
    assert np.isfinite(row["fd_classifier"]) and np.isfinite(row["ar_loss"])
    trial = Path(params.sweep.out) / "models" / "spherical-R2-seed0"  # what the trial trained
    steps = round(params.generator.train.steps * 0.5)
    tok_meta = json.loads((trial / "tokenizer/spherical/seed0/model/model.json").read_text())  # the trial's seed 0
    gen_meta = json.loads((trial / "generator/spherical/seed0/model/model.json").read_text())
    assert tok_meta["radius"] == 2.0 and gen_meta["radius"] == 2.0 and gen_meta["step"] == steps
    assert json.loads((trial / "latents/spherical/seed0/cache.json").read_text())["radius"] == 2.0
    reports = json.loads((trial / "ar_reports.json").read_text())
    assert sorted(map(int, reports)) == segment_ends(steps, 2) and all(np.isfinite(list(reports.values())))
    # Tune saw one intermediate report per segment before the last, then the final one
    (progress,) = (root / "ray" / "tune").glob(f"sweep-*/{row['trial']}/progress.csv")
    assert pd.read_csv(progress)["training_iteration"].tolist() == [1, 2]
    client, runs = mlflow_runs(db)
    (child,) = [r for r in runs if r.info.run_name == row["trial"]]
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == child.info.run_id]
    assert {r.info.run_name for r in nested} == {"train_vae-spherical-R2-seed0", "train_ar-spherical-R2-seed0"}
    # every AR loss ASHA saw, on the trial run at its AR step; the training runs read the data manifest
    curve = client.get_metric_history(child.info.run_id, "asha/ar_loss")
    assert [(m.step, m.value) for m in curve] == [(int(k), pytest.approx(v)) for k, v in sorted(
        reports.items(), key=lambda kv: int(kv[0]))]
    for run in nested:
        (data_input,) = run.inputs.dataset_inputs
        assert {t.key: t.value for t in data_input.tags}["mlflow.data.context"] == "training"


@pytest.mark.slow
def test_head_arms_train_generators_on_the_dag_tokenizers(dag_models, monkeypatch):
    """Issue 16 through the sweep: a riemannian-head arm (sampler euler) on the spherical tokenizer and a
    magnitude-predict arm on the gaussian one, each at two CFG scales. Each arm trains one generator on the
    DAG's tokenizer and latents (shared by its two trials), samples on the sphere (riemannian) and records
    the tokenizer's reconstruction metrics."""
    root, data = dag_models
    db = root / "arms_sweep.db"
    arms = [{"posteriors": ["spherical"], "flows": ["riemannian"], "samplers": ["euler"]},
            {"posteriors": ["gaussian"], "magnitudes": ["predict"]}]
    params = run_sweep(data, monkeypatch, db, cfg_scales=[1.0, 3.0], posteriors=["spherical"], seeds=[0],
                       sampler_steps=[8], num_per_class=4, arms=arms)
    out = Path(params.sweep.out)
    results = pd.read_csv(out / "results.csv").set_index("trial")
    assert set(results.index) == {
        "ar-spherical-R2.828-cfg1.0-proj_sphere-s8-seed0", "ar-spherical-R2.828-cfg3.0-proj_sphere-s8-seed0",
        "ar-spherical-R2.828-cfg1.0-proj_sphere-s8-flow_riemannian-euler-seed0-train",
        "ar-spherical-R2.828-cfg3.0-proj_sphere-s8-flow_riemannian-euler-seed0-train",
        "ar-gaussian-R2.828-cfg1.0-proj_none-s8-mag_predict-seed0-train",
        "ar-gaussian-R2.828-cfg3.0-proj_none-s8-mag_predict-seed0-train"}
    riem = results[results["flow"] == "riemannian"]
    assert riem["reuse_tokenizer"].all() and set(riem["sampler"]) == {"euler"}
    assert (riem["norm_rel_dev_max"] < 1e-5).all()  # exponential-map steps never leave the sphere, CFG included
    assert set(results[results["magnitude"] == "predict"]["posterior"]) == {"gaussian"}
    assert results["recon_psnr_sample"].notna().all()  # the DAG tokenizer's own numbers
    dag_tok = json.loads((Path(params.metrics_dir) / "tokenizer/spherical/seed0.json").read_text())
    assert riem["recon_psnr_sample"].tolist() == pytest.approx([dag_tok["psnr_sample"]] * 2)
    models = sorted(p.name for p in (out / "models").iterdir() if p.is_dir())
    assert models == ["gaussian-R2.828-mag_predict-seed0", "spherical-R2.828-flow_riemannian-seed0"]
    for name, flow, magnitude in (("spherical-R2.828-flow_riemannian-seed0", "riemannian", "none"),
                                  ("gaussian-R2.828-mag_predict-seed0", "euclidean", "predict")):
        posterior = name.split("-")[0]
        assert not (out / "models" / name / "tokenizer").exists()  # the DAG's tokenizer, not retrained
        meta = json.loads((out / "models" / name / f"generator/{posterior}/seed0/model/model.json").read_text())
        assert (meta["flow"], meta["magnitude"], meta["step"]) == (flow, magnitude, params.generator.train.steps)
        assert meta["tokenizer_dir"].endswith(f"tokenizer/{posterior}/seed0/model")
    client, runs = mlflow_runs(db)
    trained = sorted(r.info.run_name for r in runs if r.data.tags.get("stage") == "sweep_train")
    assert trained == ["train_ar-gaussian-R2.828-mag_predict-seed0", "train_ar-spherical-R2.828-flow_riemannian-seed0"]


def test_summary_over_seeds_with_a_default_radius():
    """A null radius (sqrt(d)) is labelled once and stays one setting: labelling is idempotent, and
    `summarise_results` (the report's and notebook's summary) groups the seeds of each setting."""
    from sphereard.sweep.grid import radius_label
    from sphereard.sweep.results import summarise_results

    assert radius_label(None) == radius_label(float("nan")) == radius_label(radius_label(None)) == "sqrt(d)"
    assert radius_label(5.656854) == radius_label("5.657") == "5.657" and radius_label(4.0) == "4"
    rows = [{"posterior": "spherical", "cfg_scale": 3.0, "radius": r, "seed": s, "status": "done",
             "fd_classifier": fd} for r, s, fd in ((None, 0, 10.0), (float("nan"), 1, 12.0), (4.0, 0, 20.0))]
    summary = summarise_results(pd.DataFrame(rows)).set_index("radius")
    assert summary.loc["sqrt(d)", "n"] == 2 and summary.loc["sqrt(d)", "fd_classifier_mean"] == 11.0
    assert summary.loc["4", "n"] == 1 and np.isnan(summary.loc["4", "fd_classifier_std"])
