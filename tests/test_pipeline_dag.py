"""The whole DAG on the smoke profile in a fresh clone: `dvc repro`, a no-op second run, a
sampling-only change that invalidates only the stages downstream of it, a code edit that invalidates
exactly the stages that run the edited module, the notebook on the real smoke outputs, and (last:
it changes the clone) a one-posterior params file with the sweep disabled that still reproduces."""

import json
import os
import re
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
SEED = 0  # the smoke profile's one run (`seeds: [0]`): stages `<stage>@<posterior>-0`, outputs under `seed0/`
RUN = f"seed{SEED}"


def run_stages(stages, posteriors=POSTERIORS) -> set[str]:
    """The per-run stages' names in DVC's matrix: `<stage>@<posterior>-<seed>`."""
    return {f"{s}@{p}-{SEED}" for s in stages for p in posteriors}


# sampling.cfg_scale: the sweep sets its own CFG scales, so it stays cached; the steps study samples with it
SAMPLING_DOWNSTREAM = run_stages(("sample", "evaluate")) | {"steps", "report"}
DAG_TIMEOUT_S = 1500
NOTEBOOK_TIMEOUT_S = 600
# pytest-timeout (900 s, pyproject) counts a module fixture's setup in the first test that uses it: the
# smoke DAG or the README flows plus the test took > 900 s on a slow CI machine; a hang still fails here
pytestmark = pytest.mark.timeout(DAG_TIMEOUT_S)


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
    for stage in ["prepare", "train_classifier", "reference", "sweep", "steps", "report"] + sorted(
            run_stages(("train_vae", "encode", "train_ar", "sample", "evaluate"))):
        assert f"Running stage '{stage}'" in log, stage
    params = yaml.safe_load((clone / "params.yaml").read_text())
    for p in POSTERIORS:
        tok = json.loads((clone / "metrics/tokenizer" / p / f"{RUN}.json").read_text())
        for decode in ("mode", "sample"):  # decode(posterior mode), decode(posterior sample)
            assert np.isfinite(tok[f"psnr_{decode}"]) and 0 < tok[f"ssim_{decode}"] <= 1
        ev = json.loads((clone / "metrics/evaluation" / p / f"{RUN}.json").read_text())
        assert np.isfinite(ev["fd_classifier"]) and "fid_inception" not in ev
        assert all(np.isfinite(ev[f"recon_{k}_{d}"]) for k in ("psnr", "rfd_classifier") for d in ("mode", "sample"))
        assert all(np.isfinite(ev[f"tf_{part}_{kind}"]) for part in ("radial", "tangential")
                   for kind in ("error", "floor", "excess"))
        with np.load(clone / "outputs/samples" / p / RUN / "samples.npz") as npz:
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
    assert changed_stages(run(["dvc", "status", "dvc.yaml", "--json"], clone, env)) == set()


@pytest.mark.slow
def test_sampling_change_invalidates_only_downstream_stages(dag):
    clone, env, _ = dag
    params_path = clone / "params.yaml"
    original = params_path.read_text()
    try:
        data = yaml.safe_load(original)
        data["sampling"]["cfg_scale"] = 4.5
        params_path.write_text(yaml.safe_dump(data, sort_keys=False))
        assert changed_stages(run(["dvc", "status", "dvc.yaml", "--json"], clone, env)) == SAMPLING_DOWNSTREAM
    finally:
        params_path.write_text(original)


@pytest.mark.slow
def test_notebook_runs_on_smoke_outputs(dag, monkeypatch):
    """The README's notebook command (section 5) through papermill's Python API, from the clone's root:
    `papermill notebooks/analysis.ipynb outputs/analysis.ipynb -p root . -p params_file params.yaml
    -p figures outputs/analysis -p primary_metric fd_classifier`."""
    import papermill

    clone, env, _ = dag
    figures = clone / "outputs/analysis"
    shutil.rmtree(figures, ignore_errors=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])  # the kernel inherits it
    nb = papermill.execute_notebook(
        str(clone / "notebooks/analysis.ipynb"), str(clone / "outputs/analysis.ipynb"),
        parameters={"root": ".", "params_file": "params.yaml", "figures": "outputs/analysis",
                    "primary_metric": "fd_classifier"},
        cwd=str(clone), kernel_name="python3", execution_timeout=NOTEBOOK_TIMEOUT_S, progress_bar=False)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    tags = [c.metadata.get("tags") for c in nb.cells if c.cell_type == "code"][:2]
    assert tags == [["parameters"], ["injected-parameters"]]
    assert {"metric_vs_cfg.png", "recon_vs_generation.png", "norm_trajectories.png"} <= {
        f.name for f in figures.iterdir()}


@pytest.mark.slow
def test_code_edit_invalidates_exactly_the_stages_that_run_it(dag):
    """Editing the AR sampler reruns what samples (training media, sampling, evaluation, sweep, steps)
    and nothing upstream: no tokenizer is retrained, no data re-prepared."""
    clone, env, _ = dag
    sampler = clone / "sphereard/ar/sampler.py"
    original = sampler.read_text()
    try:
        sampler.write_text(original + "\n# an edit\n")
        changed = changed_stages(run(["dvc", "status", "dvc.yaml", "--json"], clone, env))
    finally:
        sampler.write_text(original)
    # the report imports the steps study's module, which imports the sampler
    expected = run_stages(("train_ar", "sample", "evaluate")) | {"sweep", "steps", "report"}
    assert changed == expected, changed ^ expected


README = REPO / "README.md"
NOT_RUN = {  # documented command (substring) -> why this test cannot run it; every other one runs
    "sphereard.convert preflight": "flow 7 needs the authors' released weights, the ADM batch and ImageNet "
                                   "(tests/test_pretrained_dag.py runs the same DAG on a synthetic checkpoint)",
    "dvc repro pretrained/dvc.yaml": "flow 7, as above",
    "dvc metrics show pretrained/": "flow 7, as above",
    "make study": "flow 8 is the ~1-hour multi-seed study; study/dvc.yaml is dvc.yaml's stages on other params "
                  "(tests/test_stage_deps.py checks the derivation; this test runs those stages on smoke)",
}
EXPERIMENTS = {"cfg-4.5": 4.5, "cfg-1.5": 1.5}  # the README's two experiments


def documented_commands(section: str = "## User flows") -> list[str]:
    """Every command line of the README's ```bash blocks in `section` (continuations joined)."""
    body = README.read_text().split(section, 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for block in re.findall(r"```bash\n(.*?)```", body, re.S)
             for line in block.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def fresh_shell(clone: Path, home: Path) -> dict:
    """A new login's environment: no venv on PATH, nothing of the test process's settings."""
    home.mkdir(exist_ok=True)
    (home / ".gitconfig").write_text("[user]\n\tname = Researcher\n\temail = researcher@example.com\n")
    return {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "TERM": "dumb"}


def with_venv(clone: Path) -> None:
    """The clone's `.venv` is the test's environment (what `make venv` builds), kept out of git."""
    venv = clone / ".venv"
    if not venv.exists():
        venv.symlink_to(Path(sys.prefix), target_is_directory=True)
        with open(clone / ".git/info/exclude", "a") as f:
            f.write("/.venv\n")


@pytest.fixture(scope="module")
def flows(dag, tmp_path_factory):
    """The README's user-flow commands, copied as written, each in a fresh shell that first enters the
    environment the way the README says (`source .venv/bin/activate`)."""
    clone, _, _ = dag
    with_venv(clone)
    env = fresh_shell(clone, tmp_path_factory.mktemp("home"))
    # the researcher commits the results of `dvc repro` (smoke params included) before experimenting
    subprocess.run(["bash", "-c", "git add -A && git commit -qm 'smoke results'"], cwd=clone, env=env, check=True)
    outputs = {}
    commands = documented_commands()
    assert all(any(key in cmd for cmd in commands) for key in NOT_RUN), "NOT_RUN names a command the README lacks"
    for cmd in commands:
        if any(key in cmd for key in NOT_RUN):
            continue
        proc = subprocess.run(["bash", "-c", f"source .venv/bin/activate && {cmd}"], cwd=clone, env=env,
                              capture_output=True, text=True, timeout=DAG_TIMEOUT_S)
        assert proc.returncode == 0, f"README command `{cmd}` failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        outputs[cmd] = proc.stdout
    return clone, env, outputs


@pytest.mark.slow
def test_readme_flows_run_as_written_from_a_fresh_shell(flows):
    clone, env, outputs = flows
    ran = {cmd.split(" #")[0].strip() for cmd in outputs}  # without the README's trailing comments
    assert {"dvc repro", "dvc metrics show"} <= ran and any(c.startswith("dvc exp run") for c in ran)
    assert any(c.startswith("papermill") or "papermill" in c for c in ran), "the notebook command runs"
    # the flows end where they began: the committed state, nothing for DVC to rerun
    assert changed_stages(run([str(VENV_BIN / "dvc"), "status", "dvc.yaml", "--json"], clone, env)) == set()
    # without activating anything: the stage commands still find the project's Python (scripts/python);
    # --single-item: rerun the report stage alone (a plain --force reruns the whole DAG below it)
    proc = subprocess.run([".venv/bin/dvc", "repro", "--force", "--single-item", "report"], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=DAG_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "scripts/python -m pipelines.report" in proc.stdout


@pytest.mark.slow
def test_experiments_compare_with_their_own_metrics(flows):
    """Each `dvc exp run` commits its own metrics files: `dvc exp show` has every experiment's numbers."""
    clone, env, outputs = flows
    proc = subprocess.run(["bash", "-c", "source .venv/bin/activate && dvc exp show --json"], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = {}
    for baseline in json.loads(proc.stdout):
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev["data"]
                if rev.get("name") in EXPERIMENTS:
                    found[rev["name"]] = data
    assert set(found) == set(EXPERIMENTS), f"experiments in `dvc exp show`: {sorted(found)}"
    for name, cfg_scale in EXPERIMENTS.items():
        data = found[name]
        assert data["params"]["params.yaml"]["data"]["sampling"]["cfg_scale"] == cfg_scale
        for p in POSTERIORS:
            metrics = data["metrics"][f"metrics/evaluation/{p}/{RUN}.json"]["data"]
            assert np.isfinite(metrics["fd_classifier"]), (name, p)
            assert all(isinstance(v, (int, float)) for v in metrics.values()), "metrics files hold numbers only"
    # each experiment has its own files (the smoke generators barely use the class, so CFG hardly moves
    # their metrics; the sampling run's timings always differ)
    sampling = {name: found[name]["metrics"][f"metrics/sampling/spherical/{RUN}.json"]["data"] for name in EXPERIMENTS}
    assert sampling["cfg-4.5"]["generate_s"] != sampling["cfg-1.5"]["generate_s"]
    changed = next(out for cmd, out in outputs.items() if cmd.startswith("dvc exp show --only-changed"))
    assert "sampling.cfg_scale" in changed.splitlines()[0] and "metrics/sampling/" not in changed
    table = next(out for cmd, out in outputs.items() if cmd.startswith("dvc exp show --drop"))
    header = table.splitlines()[0]
    assert "sampling.cfg_scale" in header and f"metrics/evaluation/{POSTERIORS[0]}/{RUN}.json:fd_classifier" in header
    rows = {name: line for line in table.splitlines() for name in EXPERIMENTS if f"[{name}]" in line}
    assert set(rows) == set(EXPERIMENTS) and "!" not in "".join(rows.values()), table
    baseline = next(line for line in table.splitlines() if line.startswith("| main") or line.startswith("| master"))
    assert "!" not in baseline, "the committed baseline has its metrics too"


@pytest.mark.slow
def test_one_posterior_without_sweep_reproduces(dag):
    clone, env, _ = dag
    params_path = clone / "params.yaml"
    data = yaml.safe_load(params_path.read_text())
    data["tokenizer"]["posteriors"] = ["spherical"]
    data["sweep"]["enabled"] = False
    params_path.write_text(yaml.safe_dump(data, sort_keys=False))
    log = run(["dvc", "repro"], clone, env)
    assert "Running stage 'report'" in log and "train_vae@gaussian" not in log  # neither gaussian nor gaussian_norm
    # the tokenizer block changed: the persisted checkpoints of the old run are not reused
    assert "removed; training starts from step 0" in log
    assert "Sweep disabled" in (clone / "reports/report.md").read_text()
    assert changed_stages(run(["dvc", "status", "dvc.yaml", "--json"], clone, env)) == set()
