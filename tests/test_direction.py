"""One direction: stages (pipelines/) call the library (sphereard/), never the reverse; stages are thin.

The library, and the notebook that reads the outputs, never import `pipelines`; each stage script is a
command line of fewer than MAX_STAGE_LINES lines (parse arguments, load params, call one library function)."""

import ast
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAX_STAGE_LINES = 60
NOT_STAGES = {"__init__.py", "_cli.py"}  # the package marker and the shared command-line helper


def pipelines_imports(source: str, where: str, package: str = "pipelines") -> list[str]:
    """`where:line: statement` for every `import <package>...` / `from <package>... import` in `source`."""
    found = []
    for node in ast.walk(ast.parse(source, where)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        if any(name == package or name.startswith(f"{package}.") for name in names):
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return found


def notebook_code(path: Path) -> str:
    """The notebook's code cells as one module (IPython magics and shell lines dropped)."""
    cells = json.loads(path.read_text())["cells"]
    lines = []
    for cell in (c for c in cells if c["cell_type"] == "code"):
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        lines += ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()] + [""]
    return "\n".join(lines)


def test_the_scan_finds_both_import_forms():
    source = "import os\nimport pipelines.sample as s\n\ndef f():\n    from pipelines import encode\n"
    assert pipelines_imports(source, "x.py") == ["x.py:2: import pipelines.sample as s",
                                                 "x.py:5: from pipelines import encode"]
    assert pipelines_imports("from sphereard import pipelines_like\nimport pipelinesx\n", "y.py") == []


def test_the_library_never_imports_the_stages():
    offending = []
    for path in sorted([*(REPO / "sphereard").rglob("*.py"), *(REPO / "scripts").glob("*.py")]):
        offending += pipelines_imports(path.read_text(), str(path.relative_to(REPO)))
    assert not offending, "the library imports stage scripts (move the code into sphereard/):\n" + "\n".join(offending)


def test_the_notebook_never_imports_the_stages():
    notebook = REPO / "notebooks" / "analysis.ipynb"
    if not notebook.is_file():
        pytest.skip("no notebook")
    offending = pipelines_imports(notebook_code(notebook), str(notebook.relative_to(REPO)))
    assert not offending, "\n".join(offending)


def stage_scripts() -> list[Path]:
    return sorted(p for p in (REPO / "pipelines").glob("*.py") if p.name not in NOT_STAGES)


def test_stage_scripts_are_thin():
    assert {p.stem for p in stage_scripts()} >= {"prepare", "train_vae", "encode", "train_classifier", "reference",
                                                  "train_ar", "sample", "evaluate", "sweep", "report"}
    long = [f"{p.relative_to(REPO)}: {n} lines" for p in stage_scripts()
            if (n := len(p.read_text().splitlines())) >= MAX_STAGE_LINES]
    assert not long, f"stage scripts must stay under {MAX_STAGE_LINES} lines (logic belongs in sphereard/): {long}"


def lazy_export_names(init: Path) -> set[str]:
    """The keys of the `_EXPORTS` literal of a package's __init__.py (sphereard.utils.lazy)."""
    for node in ast.walk(ast.parse(init.read_text())):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
            return {k.value for k in node.value.keys}
    return set()


def test_no_lazy_export_is_shadowed_by_a_submodule():
    """Importing `pkg.name` sets the attribute `pkg.name` to the module: a lazy export of that name breaks."""
    clashes = []
    for init in sorted((REPO / "sphereard").rglob("__init__.py")):
        submodules = {p.stem for p in init.parent.glob("*.py")} | {p.name for p in init.parent.iterdir() if p.is_dir()}
        clashes += [f"{init.relative_to(REPO)}: {name}" for name in sorted(lazy_export_names(init) & submodules)]
    assert not clashes, clashes


def test_the_report_is_read_by_its_stage_and_the_notebook_only():
    """sphereard.report reads the other packages' outputs; none of them (the sweep included) imports it,
    so the report package sits at the end of the one-direction path (docs/DESIGN.md)."""
    found = []
    for path in sorted((REPO / "sphereard").rglob("*.py")):
        if "report" not in path.relative_to(REPO / "sphereard").parts[:1]:
            found += pipelines_imports(path.read_text(), str(path.relative_to(REPO)), "sphereard.report")
    assert not found, "\n".join(found)
