"""The code a module can run: its file plus every module of this repo (`sphereard`, `pipelines`)
reachable through `import` statements anywhere in a file (function-level imports included), with
the `__init__.py` of every package on the way and the submodules behind lazy package exports
(`sphereard.utils.lazy`). Read from the source (ast), nothing is imported.

Used for DVC code deps (`scripts/stage_deps.py`) and the training fingerprint (`train/fingerprint.py`).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the folder holding sphereard/ and pipelines/
PACKAGES = ("sphereard", "pipelines")


def module_file(name: str, root: Path = REPO) -> Path | None:
    """`a.b` -> root/a/b.py or root/a/b/__init__.py (None when it is not a module of this repo)."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def lazy_exports_of(package: str, root: Path = REPO) -> dict[str, str]:
    """The `_EXPORTS` literal (name -> submodule) of a package's `__init__.py` (`sphereard.utils.lazy`)."""
    path = module_file(package, root)
    if path is None or path.name != "__init__.py":
        return {}
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def _imported_names(path: Path, module: str, root: Path = REPO) -> set[str]:
    """Module names a file may import: `import x.y`, `from x import y` (y may be a module or a lazy
    export of package x, which imports x.<its submodule>), relative imports."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):  # `import pkg` may reach any lazy export as `pkg.name`
            for alias in node.names:
                names.add(alias.name)
                names.update(f"{alias.name}.{sub}" for sub in lazy_exports_of(alias.name, root).values())
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            lazy = lazy_exports_of(base, root)
            names.update(f"{base}.{lazy.get(alias.name, alias.name)}" for alias in node.names)
    return names


def code_closure(module: str, root: Path = REPO) -> list[str]:
    """Repo-relative files a `python -m <module>` run can execute (sorted)."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__, then c
            prefix = ".".join(parts[:i])
            path = module_file(prefix, root)
            if path is not None and prefix not in seen:
                seen[prefix] = path
                todo.extend(_imported_names(path, prefix, root))
    return sorted(str(p.relative_to(root)) for p in seen.values())
