"""The stages on bad inputs: exit code 2, one `error:` line on stderr, no output; and valid-input counterparts.

The per-file tables are tests/test_bad_inputs_models.py (exports, classifier, weights, checkpoints,
resume), tests/test_bad_inputs_data.py (manifests, shards, sources, latent caches) and
tests/test_bad_inputs_eval.py (ADM reference, reference statistics, samples.npz, sweep files); this
file checks their case names are unique across all of them. Some stages run in process, two as
subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import bad_inputs_helpers
import numpy as np
import pytest
import yaml
from bad_inputs_helpers import CLASSES, GREY, SIZE, copy, load_data_samples, png_bytes, samples, truncate
from test_bad_inputs_data import CASES as DATA_CASES
from test_bad_inputs_eval import CASES as EVAL_CASES
from test_bad_inputs_models import CASES as MODEL_CASES

from sphereard.ar.export import load_generator
from sphereard.errors import UserError
from sphereard.eval import build_extractor, load_classifier, load_samples_npz
from sphereard.eval.classifier import SmallCNN
from sphereard.tokenizer.export import load_tokenizer

REPO = Path(__file__).resolve().parent.parent
ws = bad_inputs_helpers.ws  # the module-scoped workspace fixture


def test_case_table_is_unique_and_complete():
    cases = MODEL_CASES + DATA_CASES + EVAL_CASES
    names = [c.name for c in cases]
    assert len(names) == len(set(names))
    assert all(c.broken and c.entry and c.fragment for c in cases)


# --- the good inputs still load (the workspace is valid; ADM grey samples read either way) -------------

def test_workspace_is_valid_and_grey_rgb_samples_read_back_as_grey(ws, tmp_path):
    vae, _ = load_tokenizer(ws / "tok", posterior="spherical")
    gen, meta = load_generator(ws / "gen", posterior="spherical")
    assert gen.arch.num_classes == CLASSES and meta["step"] == 1 and vae.arch.image_size == SIZE
    load_classifier(ws / "clf")
    images, labels = load_data_samples(samples(tmp_path))  # 3 equal channels -> the data's 1 channel
    assert images.shape == (4, SIZE, SIZE, 1) and labels.tolist() == [0, 1, 0, 1]
    images, _ = load_samples_npz(samples(tmp_path, images=GREY), image_size=SIZE, channels=1, num_classes=CLASSES)
    assert images.shape == (4, SIZE, SIZE, 1)


# --- stages: exit 2, one line on stderr, nothing written ------------------------------------------------

def stage_params(root: Path, **changes) -> Path:
    """Smoke params with every input / output under `root` (relative paths), tracking off."""
    from sphereard.profiles import materialise

    data = materialise("smoke")
    outs = {"data": "data", "tokenizer": "tok_out", "encode": "latents", "generator": "gen_out",
            "sampling": "samples", "classifier": "clf_out", "evaluation": "eval_out", "sweep": "sweep"}
    for block, out in outs.items():
        data[block]["out"] = out
    data["metrics_dir"] = "metrics"
    data["tracking"]["enabled"] = False
    for dotted, value in changes.items():
        block, key = dotted.split(".")
        data[block][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(data))
    return root / "params.yaml"


def run_stage_in_process(module, argv, monkeypatch, capsys) -> tuple[int, str]:
    from pipelines._cli import stage_main

    monkeypatch.setenv("SPHEREARD_CPU_THREADS", "1")
    monkeypatch.setattr(sys, "argv", [module.__name__, *argv])
    add_args = getattr(module, "add_posterior_arg", None) if "--posterior" in argv else None
    with pytest.raises(SystemExit) as exit_info:
        stage_main(module.__doc__, module.run, add_args)
    return exit_info.value.code, capsys.readouterr().err


def run_stage_subprocess(stage: str, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "SPHEREARD_CPU_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", f"pipelines.{stage}", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_evaluate_rejects_samples_of_another_size(ws, tmp_path, monkeypatch, capsys):
    import pipelines.evaluate as evaluate

    copy(ws, "data", tmp_path)
    (tmp_path / "samples" / "spherical" / "seed0").mkdir(parents=True)  # run seed0: the default `--seed`
    samples(tmp_path / "samples" / "spherical" / "seed0", images=np.zeros((4, 16, 16, 1), np.uint8))
    stage_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, err = run_stage_in_process(evaluate, ["--posterior", "spherical"], monkeypatch, capsys)
    assert code == 2
    assert error_lines(err) == [f"error: {Path('samples/spherical/seed0/samples.npz')}: images are 16x16, the data's "
                                "are 32x32"]
    assert "Traceback" not in err and not (tmp_path / "metrics").exists()


def test_reference_writes_nothing_when_the_adm_reference_is_not_npz(ws, tmp_path, monkeypatch):
    """The classifier statistics are computed first, but not written when the ADM reference then fails."""
    import sphereard.eval.reference as reference
    from sphereard.config import load_params

    copy(ws, "data", tmp_path)
    (tmp_path / "ref.npz").write_bytes(png_bytes())
    params = load_params(stage_params(tmp_path, **{"evaluation.extractors": ["classifier", "inception"],
                                                   "evaluation.adm_reference": str(tmp_path / "ref.npz"),
                                                   "evaluation.num_real": 4}))
    clf = SmallCNN(CLASSES, 1, SIZE, width=8, feature_dim=16)
    standin = build_extractor("classifier", classifier=clf)
    monkeypatch.setattr(reference, "build_extractors", lambda params, device: [standin, standin])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"ref\.npz: not a \.npz archive"):
        reference.write_references(params)
    assert not (tmp_path / "metrics").exists(), "no reference file of the failed run"


def test_train_classifier_stage_rejects_one_class_data(ws, tmp_path):
    copy(ws, "data1", tmp_path)
    stage_params(tmp_path, **{"data.out": "data1"})
    proc = run_stage_subprocess("train_classifier", [], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert error_lines(proc.stderr) == [f"error: {Path('data1/manifest.json')}: 1 class(es); the classifier needs "
                                        "at least 2 (a one-class dataset has nothing to classify)"]
    assert "Traceback" not in proc.stderr and not (tmp_path / "clf_out").exists()


def test_sample_stage_rejects_a_truncated_model_json(ws, tmp_path):
    shutil.copytree(ws / "gen", tmp_path / "gen_out" / "spherical" / "seed0" / "model")
    truncate(tmp_path / "gen_out" / "spherical" / "seed0" / "model" / "model.json")
    stage_params(tmp_path)
    proc = run_stage_subprocess("sample", ["--posterior", "spherical"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: {Path('gen_out/spherical/seed0/model/model.json')}: "
                                                   "not valid JSON"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "samples").exists()


def test_evaluate_runs_on_adm_rgb_samples_of_grey_data(ws, tmp_path, monkeypatch):
    """The valid counterpart: 3-channel grey samples (the ADM default) pass every check and are evaluated."""
    import pipelines.evaluate as evaluate
    import pipelines.reference as reference
    from sphereard.config import load_params
    from sphereard.eval import save_samples_npz

    copy(ws, "data", tmp_path)
    shutil.copytree(ws / "tok", tmp_path / "tok_out" / "spherical" / "seed0" / "model")
    shutil.copytree(ws / "gen", tmp_path / "gen_out" / "spherical" / "seed0" / "model")
    shutil.copytree(ws / "clf", tmp_path / "clf_out" / "model")
    params = load_params(stage_params(tmp_path, **{
        "evaluation.num_real": 8, "evaluation.kid_subset_size": 4, "evaluation.teacher_forced_images": 4,
        "evaluation.diagnostic_samples": 2, "evaluation.diagnostic_steps": 1, "evaluation.diagnostic_cfg_scales": [1.0],
        "tokenizer.eval_images": 4}))
    grey = np.random.default_rng(0).integers(0, 256, (6, SIZE, SIZE, 1), dtype=np.uint8)
    save_samples_npz(tmp_path / "samples" / "spherical" / "seed0" / "samples.npz", grey, np.arange(6) % CLASSES)
    monkeypatch.chdir(tmp_path)
    reference.run(params, SimpleNamespace())
    evaluate.run(params.for_run(0), SimpleNamespace(posterior="spherical", seed=0))  # as stage_main passes run 0
    metrics = json.loads((tmp_path / "metrics" / "evaluation" / "spherical" / "seed0.json").read_text())
    info = json.loads((tmp_path / "eval_out" / "spherical" / "seed0" / "info.json").read_text())
    assert info["num_samples"] == 6 and np.isfinite(metrics["fd_classifier"])
    assert all(isinstance(v, float) for v in metrics.values()), "metrics files hold numbers only"


def test_stage_main_prints_any_user_error_on_one_line(tmp_path, monkeypatch, capsys):
    from pipelines._cli import stage_main

    def run(params, args):
        raise UserError("outputs/x.npz: first line\n  second line")

    monkeypatch.setenv("SPHEREARD_CPU_THREADS", "1")
    monkeypatch.setattr(sys, "argv", ["stage", "--params", str(stage_params(tmp_path))])
    with pytest.raises(SystemExit) as exit_info:
        stage_main("a stage", run)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: outputs/x.npz: first line second line\n"


def test_per_run_stage_reads_the_run_of_its_seed_and_rejects_a_seed_not_in_seeds(ws, tmp_path, monkeypatch, capsys):
    """`--seed k` runs the stage on `Params.for_run(k)` (its files under `seed<k>/`); a seed that is not one
    of `seeds` is one `error:` line naming `seeds`, exit 2, nothing written."""
    import pipelines.evaluate as evaluate

    copy(ws, "data", tmp_path)
    path = stage_params(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["seeds"] = [0, 1]
    path.write_text(yaml.safe_dump(data))
    (tmp_path / "samples" / "spherical" / "seed1").mkdir(parents=True)
    samples(tmp_path / "samples" / "spherical" / "seed1", images=np.zeros((4, 16, 16, 1), np.uint8))
    monkeypatch.chdir(tmp_path)
    code, err = run_stage_in_process(evaluate, ["--posterior", "spherical", "--seed", "1"], monkeypatch, capsys)
    assert code == 2 and error_lines(err) == [
        f"error: {Path('samples/spherical/seed1/samples.npz')}: images are 16x16, the data's are 32x32"], err
    code, err = run_stage_in_process(evaluate, ["--posterior", "spherical"], monkeypatch, capsys)  # default: run 0
    assert code == 2 and error_lines(err) == [
        f"error: {Path('samples/spherical/seed0/samples.npz')}: ADM .npz file not found"], err
    code, err = run_stage_in_process(evaluate, ["--posterior", "spherical", "--seed", "2"], monkeypatch, capsys)
    assert code == 2 and error_lines(err) == ["error: seeds: run seed 2 is not one of [0, 1]"], err
    assert "Traceback" not in err and not (tmp_path / "metrics").exists() and not (tmp_path / "eval_out").exists()
