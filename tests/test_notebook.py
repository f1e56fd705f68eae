"""The analysis notebook's papermill parameters and the README's command cannot drift: the first code
cell is tagged `parameters`, holds plain assignments only, and defines exactly the parameters the
README's section "5. The notebook" passes with `-p NAME VALUE`."""

import ast
import re
from pathlib import Path

import nbformat
import papermill

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks/analysis.ipynb"
README_SECTION = "### 5. The notebook"


def parameters_cell():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    return next(c for c in nb.cells if c.cell_type == "code")


def readme_section() -> str:
    text = (REPO / "README.md").read_text()
    assert README_SECTION in text, f"README.md has no section {README_SECTION!r}"
    section = text.split(README_SECTION, 1)[1]
    return re.split(r"^#{1,3} ", section, maxsplit=1, flags=re.M)[0]


def readme_command() -> str:
    commands = [line for line in readme_section().splitlines()
                if re.match(r"\s*(\S*/)?papermill\s+notebooks/analysis\.ipynb\s", line)]
    assert len(commands) == 1, f"README section 5 should give one papermill command, found {commands}"
    return commands[0]


def test_first_code_cell_is_the_papermill_parameters_cell():
    cell = parameters_cell()
    assert "parameters" in cell.metadata.get("tags", []), cell.metadata
    for stmt in ast.parse(cell.source).body:
        assert isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name), \
            f"the parameters cell holds plain `name = literal` assignments only: {ast.unparse(stmt)}"
        ast.literal_eval(stmt.value)  # a default papermill can show and override, not an expression


def test_readme_command_passes_exactly_the_notebook_parameters():
    defined = [stmt.targets[0].id for stmt in ast.parse(parameters_cell().source).body]
    assert set(defined) == set(papermill.inspect_notebook(str(NOTEBOOK))), "papermill sees other parameters"
    documented = re.findall(r"(?:-p|--parameters)\s+(\w+)\s", readme_command() + " ")
    assert sorted(documented) == sorted(defined), \
        f"README section 5 passes {documented}; the notebook's parameters cell defines {defined}"
    section = readme_section()
    for name in defined:  # each parameter is also explained in the prose, not only passed
        assert section.count(f"`{name}`") >= 1, f"README section 5 does not explain parameter `{name}`"
