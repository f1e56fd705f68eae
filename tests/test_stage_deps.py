"""DVC knows every piece of code a stage runs, and nothing it does not (`scripts/stage_deps.py`)."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import stage_deps  # noqa: E402

LOADED_FILES = """
import importlib, sys
from pathlib import Path
root = Path(sys.argv[1]).resolve()
importlib.import_module(sys.argv[2])
for m in list(sys.modules.values()):
    f = getattr(m, "__file__", None)
    p = Path(f).resolve() if f else None
    if p and p.is_relative_to(root) and p.parts[len(root.parts)] in ("sphereard", "pipelines"):
        print(p.relative_to(root))
"""


def dvc_yaml() -> dict:
    return YAML().load(REPO / "dvc.yaml")


def code_deps(body) -> set[str]:
    return {d for d in body["deps"] if isinstance(d, str) and stage_deps.is_code(d)}


@pytest.mark.parametrize("pipeline", stage_deps.DVC_FILES)
def test_code_deps_of_every_stage_equal_its_import_closure(pipeline):
    """Both pipelines: the training DAG and the pretrained one (its stages run from the repo root)."""
    path = REPO / pipeline
    dvc = YAML().load(path)
    assert stage_deps.stage_root(path, dvc) == REPO
    assert stage_deps.differences(dvc, REPO) == {}, "run: python scripts/stage_deps.py --write"


def test_every_module_a_stage_loads_is_a_dependency():
    """Import each stage module in a fresh interpreter; every loaded repo file must be in its deps."""
    stages = dict(stage_deps.stage_bodies(dvc_yaml()))

    def loaded(body) -> set[str]:
        module = stage_deps.CMD_MODULE.search(body["cmd"]).group(1)
        proc = subprocess.run([sys.executable, "-c", LOADED_FILES, str(REPO), module], capture_output=True,
                              text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return set(proc.stdout.split())

    with ThreadPoolExecutor(max_workers=2) as pool:
        found = dict(zip(stages, pool.map(loaded, stages.values()), strict=True))
    for name, body in stages.items():
        assert found[name], name
        assert found[name] <= code_deps(body), f"{name}: loads {sorted(found[name] - code_deps(body))}"


def test_deps_stay_narrow_where_it_matters():
    """Editing the sampler or the flow head must not retrain tokenizers; editing the tokenizer
    must not rerun data preparation; the classifier does not depend on the generator."""
    stages = dict(stage_deps.stage_bodies(dvc_yaml()))
    for stage in ("prepare", "train_vae", "encode", "train_classifier", "reference"):
        assert not {"sphereard/ar/sampler.py", "sphereard/ar/flow.py"} & code_deps(stages[stage]), stage
    assert "sphereard/tokenizer/vae.py" not in code_deps(stages["prepare"])
    assert "sphereard/ar/sampler.py" in code_deps(stages["sample"]) and "sphereard/ar/flow.py" in code_deps(
        stages["train_ar"])


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_new_import_without_a_dvc_yaml_update_is_caught(tmp_path):
    """Function-level, relative and lazily exported imports all count."""
    write(tmp_path / "pipelines/__init__.py", "")
    write(tmp_path / "pipelines/stage.py", "def run():\n    from sphereard.pkg import thing\n")
    write(tmp_path / "pipelines/other.py", "import sphereard.pkg as p\n\ndef run():\n    return p.thing\n")
    write(tmp_path / "sphereard/__init__.py", "")
    write(tmp_path / "sphereard/pkg/__init__.py", '_EXPORTS = {"thing": "impl"}\n')
    write(tmp_path / "sphereard/pkg/impl.py", "from .helper import x\nthing = x\n")
    write(tmp_path / "sphereard/pkg/helper.py", "x = 1\n")
    write(tmp_path / "sphereard/pkg/unused.py", "y = 2\n")
    dvc = {"stages": {"s": {"cmd": "python -m pipelines.stage", "deps": ["pipelines/stage.py", "data/in"]}}}
    missing, extra = stage_deps.differences(dvc, tmp_path)["s"]
    assert missing == ["pipelines/__init__.py", "sphereard/__init__.py", "sphereard/pkg/__init__.py",
                       "sphereard/pkg/helper.py", "sphereard/pkg/impl.py"] and extra == []
    stage_deps.rewrite(dvc, tmp_path)
    assert stage_deps.differences(dvc, tmp_path) == {}
    assert dvc["stages"]["s"]["deps"][-1] == "data/in" and "sphereard/pkg/unused.py" not in dvc["stages"]["s"]["deps"]
    # `import pkg` then `pkg.thing`: every lazy export of the package counts
    assert "sphereard/pkg/impl.py" in stage_deps.code_closure("pipelines.other", tmp_path)


def test_check_mode_exits_1_and_names_the_stage(tmp_path):
    text = (REPO / "dvc.yaml").read_text().replace("      - pipelines/_cli.py\n", "", 1)
    (tmp_path / "dvc.yaml").write_text(text)
    for name in ("pipelines", "sphereard"):
        os.symlink(REPO / name, tmp_path / name)
    proc = subprocess.run([sys.executable, str(REPO / "scripts/stage_deps.py"), "--dvc-yaml",
                           str(tmp_path / "dvc.yaml")], capture_output=True, text=True)
    assert proc.returncode == 1 and "missing ['pipelines/_cli.py']" in proc.stdout, proc.stdout


@pytest.mark.parametrize("package", ["ar", "tokenizer", "eval", "data", "distributions", "nn", "sweep", "train"])
def test_lazy_package_exports_resolve(package):
    import importlib

    module = importlib.import_module(f"sphereard.{package}")
    for name in module.__all__:
        assert getattr(module, name) is not None, f"sphereard.{package}.{name}"


# --- the study pipeline: study/dvc.yaml is derived from dvc.yaml -------------------------------------------

def script_yaml() -> YAML:
    """A ruamel YAML configured as `stage_deps.main` configures it (the pipeline files' own style)."""
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def test_study_pipeline_is_the_derivation_of_dvc_yaml_and_the_check_passes(capsys):
    """The committed files pass the script's check (both pipelines' deps and the study derivation)."""
    assert stage_deps.main([]) == 0, capsys.readouterr().out
    want = stage_deps.derive_study((REPO / "dvc.yaml").read_text(), script_yaml())
    assert (REPO / stage_deps.STUDY_FILE).read_text() == want
    study = YAML().load(want)
    assert list(study["stages"]) == list(dvc_yaml()["stages"]), "every stage of dvc.yaml, in order"
    for name, stage in study["stages"].items():
        assert stage["wdir"] == "..", name
        assert f"--params {stage_deps.STUDY_PARAMS}" in stage["cmd"], name
        if "params" in stage:
            assert list(stage["params"][0]) == [stage_deps.STUDY_PARAMS], name
    assert study["stages"]["train_vae"]["matrix"] == {"posterior": "${tokenizer.posteriors}", "seed": "${seeds}"}
    assert study["stages"]["report"]["outs"] == [{stage_deps.STUDY_REPORTS: {"cache": False}}]


def test_study_check_fails_when_study_dvc_yaml_differs_from_its_derivation(tmp_path, monkeypatch, capsys):
    committed = (REPO / stage_deps.STUDY_FILE).read_text()
    edited = committed.replace("--params study/params.yaml", "--params params.yaml", 1)
    assert edited != committed
    for name, text in (("edited", edited), ("stale", committed + "# an edit\n")):
        study = tmp_path / name / "dvc.yaml"
        study.parent.mkdir()
        study.write_text(text)
        monkeypatch.setattr(stage_deps, "STUDY_FILE", str(study))  # absolute: REPO / STUDY_FILE is this copy
        assert stage_deps.main([]) == 1
        out = capsys.readouterr().out
        assert f"{study}: differs from its derivation from dvc.yaml" in out and "--write" in out, out
        assert study.read_text() == text, "the check writes nothing"
    monkeypatch.setattr(stage_deps, "STUDY_FILE", str(tmp_path / "missing" / "dvc.yaml"))
    assert stage_deps.main([]) == 1 and "differs from its derivation" in capsys.readouterr().out
    # an edit of dvc.yaml without `--write` leaves the committed study file behind its derivation
    dvc_text = (REPO / "dvc.yaml").read_text()
    changed = dvc_text.replace("pipelines.report\n", "pipelines.report --verbose\n", 1)
    assert changed != dvc_text
    assert stage_deps.derive_study(changed, script_yaml()) != committed
