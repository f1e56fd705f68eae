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
