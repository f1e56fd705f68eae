"""Packaging and hygiene: pyproject.toml declares what requirements.in lists (and the lock pins it), its
console scripts resolve, no module reaches into Ray's `_internal` packages, pytest hides no
DeprecationWarning wholesale, and every Makefile target is documented in `make help`."""

import ast
import importlib
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
LIBRARY_DIRS = ("sphereard", "pipelines")
# Extras requirements.lock does not cover: the cluster files' cloud SDKs (pinned in requirements-cluster.lock).
UNLOCKED_EXTRAS = {"cluster"}


def requirement_lines(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def by_name(requirements) -> dict[str, Requirement]:
    parsed = [Requirement(r) for r in requirements]
    return {canonicalize_name(r.name): r for r in parsed}


def declared() -> dict[str, Requirement]:
    """Base dependencies plus every extra the lock covers."""
    reqs = list(PROJECT["dependencies"])
    for extra, extra_reqs in PROJECT["optional-dependencies"].items():
        if extra not in UNLOCKED_EXTRAS:
            reqs += extra_reqs
    return by_name(reqs)


def test_pyproject_declares_exactly_requirements_in():
    wanted = by_name(requirement_lines(REPO / "requirements.in"))
    have = declared()
    assert sorted(set(wanted) - set(have)) == [], "in requirements.in but not in pyproject.toml"
    assert sorted(set(have) - set(wanted)) == [], "in pyproject.toml but not in requirements.in"
    differ = {name: (str(wanted[name]), str(have[name])) for name in wanted if str(wanted[name]) != str(have[name])}
    assert differ == {}, "same package, different specifier or extras (requirements.in, pyproject.toml)"


def test_lock_pins_every_requirement_within_its_specifier():
    pins = {}
    for line in requirement_lines(REPO / "requirements.lock"):
        name, _, version = line.partition("==")
        pins[canonicalize_name(name)] = version
    for name, req in by_name(requirement_lines(REPO / "requirements.in")).items():
        assert name in pins, f"{name} is not pinned in requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), f"lock pins {name}=={pins[name]}, wants {req}"


@pytest.mark.parametrize("script", sorted(PROJECT["scripts"]))
def test_console_script_resolves_to_a_callable(script):
    module_name, _, attr = PROJECT["scripts"][script].partition(":")
    assert callable(getattr(importlib.import_module(module_name), attr))


def ray_internal_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [f"{path.relative_to(REPO)}:{node.lineno}: {name}" for name in names
                  if name.split(".")[0] == "ray" and "_internal" in name.split(".")]
    return found


def test_no_module_imports_ray_internals():
    paths = [path for d in LIBRARY_DIRS for path in sorted((REPO / d).rglob("*.py"))]
    found = [hit for path in paths for hit in ray_internal_imports(path)]
    assert found == [], "import Ray's public API instead"


def test_no_blanket_deprecation_warning_filter():
    for entry in PYPROJECT["tool"]["pytest"]["ini_options"].get("filterwarnings", []):
        action, message, category, module = (entry.split(":") + ["", "", "", ""])[:4]
        if action.strip() == "ignore" and "DeprecationWarning" in category:
            assert message.strip() or module.strip(), f"{entry!r} hides every DeprecationWarning, ours too"


def test_every_make_target_is_documented():
    makefile = (REPO / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:(.*)$", makefile, re.M).group(1).split()
    documented = set(re.findall(r"^([A-Za-z_-]+):[^\n]*## ", makefile, re.M))
    assert sorted(set(phony) - documented) == [], "PHONY targets without a `## help` comment (or without a rule)"


def test_clean_outputs_keeps_source_data_and_dvc_cache():
    recipe = re.search(r"^clean-outputs:.*\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(), re.M).group(1)
    removed = [word for line in recipe.splitlines() if "rm " in line for word in line.split()[2:]]
    assert removed, recipe
    for path in (p.rstrip("/") for p in removed):
        assert not path.startswith(("data/shards", ".dvc", "metrics", "reports")), path
        assert path not in ("", ".", "data"), path


@pytest.mark.parametrize(("value", "enabled"), [(None, True), ("1", True), ("true", True), ("True", True),
                                                 ("0", False), ("false", False), ("", False)])
def test_train_v2_switch_is_read_like_ray_reads_it(monkeypatch, value, enabled):
    from sphereard.train import launch

    if value is None:
        monkeypatch.delenv(launch.TRAIN_V2_ENV, raising=False)
    else:
        monkeypatch.setenv(launch.TRAIN_V2_ENV, value)
    assert launch.train_v2_enabled() is enabled


def test_lazy_exports_are_not_shadowed_by_submodules():
    """A package's lazy export must not share its name with a submodule: importing the submodule
    would replace the export with the module (sphereard.ar.generate was once both)."""
    import importlib
    import pkgutil

    import sphereard

    for info in pkgutil.iter_modules(sphereard.__path__, "sphereard."):
        if not info.ispkg:
            continue
        package = importlib.import_module(info.name)
        exports = getattr(package, "_EXPORTS", {})
        submodules = {m.name for m in pkgutil.iter_modules(package.__path__)}
        assert not set(exports) & submodules, f"{info.name}: exports named like a submodule"
    import sphereard.ar.sample_set  # noqa: F401
    from sphereard.ar import generate
    from sphereard.ar.sampler import generate as sampler_generate
    assert generate is sampler_generate
