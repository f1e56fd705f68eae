"""The whole DAG on the smoke profile in a fresh clone: `dvc repro`, a no-op second run, a
sampling-only change that invalidates only the stages downstream of it, a code edit that invalidates
exactly the stages that run the edited module, the notebook on the real smoke outputs, and (last:
it changes the clone) a one-posterior params file with the sweep disabled that still reproduces."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
POSTERIORS = ("spherical", "gaussian_norm", "gaussian")
SAMPLING_DOWNSTREAM = {f"{s}@{p}" for s in ("sample", "evaluate") for p in POSTERIORS} | {"sweep", "report"}
DAG_TIMEOUT_S = 1500
NOTEBOOK_TIMEOUT_S = 600


def run(cmd, cwd, env, timeout=DAG_TIMEOUT_S):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout + proc.stderr


def changed_stages(status_json: str) -> set[str]:
    return set(json.loads(status_json or "{}"))


@pytest.fixture(scope="module")
def dag(tmp_path_factory):
    if shutil.which("git") is None:
        pytest.skip("needs git")
    clone = tmp_path_factory.mktemp("dag") / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{clone / 'mlflow.db'}", "PYTHONPATH": str(clone)}
    run([sys.executable, "-m", "sphereard.profiles", "apply", "smoke"], clone, env)
    first = run(["dvc", "repro"], clone, env)
    return clone, env, first


@pytest.mark.slow
def test_dvc_repro_runs_every_stage_and_writes_outputs(dag):
    clone, _, log = dag
    for stage in ["prepare", "train_classifier", "reference", "sweep", "report"] + [
            f"{s}@{p}" for s in ("train_vae", "encode", "train_ar", "sample", "evaluate") for p in POSTERIORS]:
        assert f"Running stage '{stage}'" in log, stage
    params = yaml.safe_load((clone / "params.yaml").read_text())
    for p in POSTERIORS:
        tok = json.loads((clone / "outputs/tokenizer" / p / "metrics.json").read_text())
        assert np.isfinite(tok["psnr"]) and 0 < tok["ssim"] <= 1
        ev = json.loads((clone / "outputs/metrics" / p / "metrics.json").read_text())
        assert np.isfinite(ev["fd_classifier"]) and "fid_inception" not in ev
        with np.load(clone / "outputs/samples" / p / "samples.npz") as npz:
            n = params["sampling"]["num_per_class"] * 10
            images = npz["arr_0"]  # ADM layout: grey data as 3 equal channels (the ADM evaluator takes RGB)
            assert images.shape == (n, 32, 32, 3) and images.dtype == np.uint8
            assert (images == images[..., :1]).all()
            assert np.bincount(npz["arr_1"]).tolist() == [params["sampling"]["num_per_class"]] * 10
            if p != "gaussian":  # projection auto: sphere for spherical and gaussian_norm
                norms = np.linalg.norm(npz["latents"], axis=-1)
                assert np.allclose(norms, np.sqrt(npz["latents"].shape[-1]), rtol=1e-4)
    report = (clone / "reports/report.md").read_text()
    assert "fd_classifier" in report and "FID" not in report


@pytest.mark.slow
def test_second_repro_is_a_noop_and_status_is_clean(dag):
    clone, env, _ = dag
    out = run(["dvc", "repro"], clone, env)
    assert "Data and pipelines are up to date." in out
    assert changed_stages(run(["dvc", "status", "--json"], clone, env)) == set()


@pytest.mark.slow
def test_sampling_change_invalidates_only_downstream_stages(dag):
    clone, env, _ = dag
    params_path = clone / "params.yaml"
    original = params_path.read_text()
    try:
        data = yaml.safe_load(original)
        data["sampling"]["cfg_scale"] = 4.5
        params_path.write_text(yaml.safe_dump(data, sort_keys=False))
        assert changed_stages(run(["dvc", "status", "--json"], clone, env)) == SAMPLING_DOWNSTREAM
    finally:
        params_path.write_text(original)


@pytest.mark.slow
def test_notebook_runs_on_smoke_outputs(dag, tmp_path, monkeypatch):
    import nbclient
    import nbformat

    clone, env, _ = dag
    nb = nbformat.read(clone / "notebooks/analysis.ipynb", as_version=4)
    figures = tmp_path / "figures"
    monkeypatch.setenv("SPHEREARD_ROOT", str(clone))
    monkeypatch.setenv("SPHEREARD_FIGURES", str(figures))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    nbclient.NotebookClient(nb, timeout=NOTEBOOK_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(clone / "notebooks")}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    assert {"metric_vs_cfg.png", "recon_vs_generation.png", "norm_trajectories.png"} <= {
        f.name for f in figures.iterdir()}


@pytest.mark.slow
def test_code_edit_invalidates_exactly_the_stages_that_run_it(dag):
    """Editing the AR sampler reruns what samples (training media, sampling, evaluation, sweep)
    and nothing upstream: no tokenizer is retrained, no data re-prepared."""
    clone, env, _ = dag
    sampler = clone / "sphereard/ar/sampler.py"
    original = sampler.read_text()
    try:
        sampler.write_text(original + "\n# an edit\n")
        changed = changed_stages(run(["dvc", "status", "--json"], clone, env))
    finally:
        sampler.write_text(original)
    expected = {f"{s}@{p}" for s in ("train_ar", "sample", "evaluate") for p in POSTERIORS} | {"sweep"}
    assert changed == expected, changed ^ expected


@pytest.mark.slow
def test_one_posterior_without_sweep_reproduces(dag):
    clone, env, _ = dag
    params_path = clone / "params.yaml"
    data = yaml.safe_load(params_path.read_text())
    data["tokenizer"]["posteriors"] = ["spherical"]
    data["sweep"]["enabled"] = False
    params_path.write_text(yaml.safe_dump(data, sort_keys=False))
    log = run(["dvc", "repro"], clone, env)
    assert "Running stage 'report'" in log and "train_vae@gaussian" not in log
    # the tokenizer block changed: the persisted checkpoints of the old run are not reused
    assert "removed; training starts from step 0" in log
    assert "Sweep disabled" in (clone / "reports/report.md").read_text()
    assert changed_stages(run(["dvc", "status", "--json"], clone, env)) == set()
