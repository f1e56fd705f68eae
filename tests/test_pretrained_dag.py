"""The pretrained DAG (pretrained/dvc.yaml) end to end on CPU in a fresh clone: a random official-format
checkpoint of a small configuration is imported instead of trained, sampled with the paper's settings,
evaluated against an ADM-layout reference batch with a stand-in Inception, and reported. No root
(training) stage runs; a second repro is a no-op; switching the imported entry reruns exactly the
import and what follows it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import official_format as fmt
import pytest
import torch
import yaml
from safetensors.torch import load_file
from standins import save_standin_inception

from sphereard.export import WEIGHTS_FILE

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
FASHION = Path("/usr/share/datasets/fashion-mnist")
PIPELINE = "pretrained/dvc.yaml"
STAGES = ("prepare", "import_official", "reference", "sample", "evaluate", "report")
RUN = "spherical/seed0"  # the pipeline's one run folder (`seeds: [0]` with `official`; pretrained/dvc.yaml)
TIMEOUT_S = 1500


def run(cmd, cwd, env):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout + proc.stderr


def changed(clone, env) -> set[str]:
    """Stage names (without the file prefix) of the pretrained pipeline that `dvc status` lists."""
    return {name.split(":")[-1] for name in json.loads(run(["dvc", "status", PIPELINE, "--json"], clone, env) or "{}")}


def write_official_files(folder: Path) -> dict:
    """The tiny profile's inputs: SphereAR_tiny.pt (ema = model here, plus a distinct raw 'model'
    entry), vae.pt, a stand-in Inception and a 40-image ADM reference batch; returns the torch states."""
    folder.mkdir(parents=True, exist_ok=True)
    vae, gen = fmt.small_models(seed=0)
    ema = fmt.official_state(vae, gen)
    _, raw_gen = fmt.small_models(seed=5)  # another generator under 'model'; same S-VAE
    raw = fmt.official_state(vae, raw_gen)
    fmt.save_official(folder / "SphereAR_tiny.pt", ema, raw, fmt.run_args(gen))
    fmt.save_official(folder / "vae.pt", None, fmt.official_vae_state(vae), fmt.run_args(vae_only=True))
    save_standin_inception(folder / "inception-standin.pth")
    rng = np.random.default_rng(0)
    np.savez(folder / "ref.npz", arr_0=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8))
    return {"ema": gen.state_dict(), "model": raw_gen.state_dict()}


def same_weights(trained: Path, state: dict) -> bool:
    """The export under `trained/model` holds exactly `state`'s tensors."""
    exported = load_file(trained / "model" / WEIGHTS_FILE)
    return exported.keys() == state.keys() and all(torch.equal(exported[k], state[k]) for k in state)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    if shutil.which("git") is None:
        pytest.skip("needs git")
    if not (FASHION / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("dataset-fashion-mnist not installed")
    clone = tmp_path_factory.mktemp("pretrained") / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{clone / 'mlflow.db'}", "PYTHONPATH": str(clone)}
    states = write_official_files(clone / "data/official-tiny")
    run([sys.executable, "-m", "sphereard.profiles", "apply", "official-tiny", "--out", "pretrained/params.yaml"],
        clone, env)
    log = run(["dvc", "repro", PIPELINE], clone, env)
    return clone, env, log, states


@pytest.mark.slow
def test_pretrained_dag_imports_samples_evaluates_and_reports(pretrained):
    clone, _, log, states = pretrained
    for stage in STAGES:
        assert f"Running stage '{PIPELINE}:{stage}'" in log, stage
    assert "train_vae" not in log and not (clone / "outputs/tokenizer").exists(), "no training stage runs"
    gen_dir = clone / "outputs/official/tiny/generator" / RUN
    info = json.loads((gen_dir / "info.json").read_text())
    assert info["imported"] and info["weights"] == "auto" and "'ema'" in info["source"] and len(info["sha256"]) == 64
    assert same_weights(gen_dir, states["ema"]) and not same_weights(gen_dir, states["model"])
    sampling = json.loads((clone / "outputs/official/tiny/samples" / RUN / "info.json").read_text())["settings"]
    assert (sampling["cfg_scale"], sampling["cfg_schedule"], sampling["steps"], sampling["cfg_unit_weight"]) == (
        4.5, "linear", 100, "separate")
    with np.load(clone / "outputs/official/tiny/samples" / RUN / "samples.npz") as npz:
        assert npz["arr_0"].shape == (20, 32, 32, 3)
        norms = np.linalg.norm(npz["latents"], axis=-1)
        assert np.allclose(norms, 4.0, rtol=1e-4), "projection after CFG: every token on the radius-4 sphere"
    ev = json.loads((clone / "pretrained/metrics/evaluation" / f"{RUN}.json").read_text())
    assert np.isfinite(ev["fd_inception_unverified"]) and "fid_inception" not in ev
    assert ev["fd_inception_unverified"] > 1e-6, "the stand-in Inception's features vary (He-normal convolutions)"
    report = (clone / "pretrained/reports/report.md").read_text()
    assert "imported (not trained) from data/official-tiny/SphereAR_tiny.pt: 'ema'" in report
    assert "fid_inception" not in report and "No published FID for generator preset 'fmnist-s'" in report
    assert subprocess.run(["git", "diff", "--quiet", "--", "reports", "metrics", "dvc.lock"], cwd=clone).returncode == 0


@pytest.mark.slow
def test_pretrained_second_repro_is_a_noop_and_the_entry_switch_reruns_from_the_import(pretrained):
    clone, env, _, states = pretrained
    assert "Data and pipelines are up to date." in run(["dvc", "repro", PIPELINE], clone, env)
    assert changed(clone, env) == set()
    params = yaml.safe_load((clone / "pretrained/params.yaml").read_text())
    params["official"]["weights"] = "model"
    (clone / "pretrained/params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert changed(clone, env) == {"import_official", "report"}  # DVC lists direct changes only
    log = run(["dvc", "repro", PIPELINE], clone, env)
    ran = {stage for stage in STAGES if f"Running stage '{PIPELINE}:{stage}'" in log}
    assert ran == {"import_official", "sample", "evaluate", "report"}, ran
    assert same_weights(clone / "outputs/official/tiny/generator" / RUN, states["model"])
