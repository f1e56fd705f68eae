"""Derive each DVC stage's code dependencies from its imports, and check or rewrite dvc.yaml.

A stage runs `python -m pipelines.<name>`; the code it can execute is that module plus every module
of this repo (`sphereard`, `pipelines`) reachable through `import` statements anywhere in a file
(function-level imports included), plus the `__init__.py` of every package on the way. That set,
as a sorted list of files, must be exactly the code part of the stage's `deps` (the entries under
`sphereard/` and `pipelines/`): then editing any executed module reruns the stage, and editing a
module it never runs does not.

    python scripts/stage_deps.py            # check dvc.yaml and pretrained/dvc.yaml: exit 1 and list the differences
    python scripts/stage_deps.py --write    # rewrite the code deps in both (comments kept)

It also owns the study pipeline `study/dvc.yaml`: dvc.yaml's stages run from the repository root
(`wdir: ..`) on `study/params.yaml` (the `study` profile), the report written to `study/reports`.
`--write` regenerates it from dvc.yaml; the check fails when it differs from that derivation.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from sphereard.utils.imports import PACKAGES, REPO, code_closure  # noqa: E402

# Both pipelines: the training DAG, and the pretrained one (stages run from the repo root, `wdir: ..`).
DVC_FILES = ("dvc.yaml", "pretrained/dvc.yaml")
STUDY_FILE, STUDY_PARAMS, STUDY_REPORTS = "study/dvc.yaml", "study/params.yaml", "study/reports"
STUDY_HEADER = f"""\
# The multi-seed study (issue 15): dvc.yaml's stages on {STUDY_PARAMS} (`python -m sphereard.profiles apply
# study --out {STUDY_PARAMS}`), run from the repository root (`wdir: ..`); report in {STUDY_REPORTS}.
#   dvc repro {STUDY_FILE}
# GENERATED from dvc.yaml by `python scripts/stage_deps.py --write`; edit dvc.yaml, not this file.
"""
CMD_MODULE = re.compile(r"python -m (pipelines\.\w+)")


def is_code(dep: str, root: Path = REPO) -> bool:
    """A Python file (or a folder) of the repo's packages: the deps this script owns; data files
    under them (none today) would be left to the hand-written part."""
    return dep.split("/")[0] in PACKAGES and (dep.endswith(".py") or (root / dep).is_dir())


def stage_bodies(dvc: dict):
    """(stage name, the mapping holding `cmd` and `deps`) for plain, `matrix` and `foreach` stages."""
    for name, stage in dvc["stages"].items():
        yield name, stage.get("do", stage)


def differences(dvc: dict, root: Path = REPO) -> dict[str, tuple[list[str], list[str]]]:
    """stage -> (missing code deps, extra code deps) where dvc.yaml differs from the import closure."""
    out = {}
    for name, body in stage_bodies(dvc):
        match = CMD_MODULE.search(body["cmd"])
        assert match, f"stage {name}: cmd must run `python -m pipelines.<stage>`"
        want = set(code_closure(match.group(1), root))
        have = {d for d in body.get("deps", []) if isinstance(d, str) and is_code(d, root)}
        if want != have:
            out[name] = (sorted(want - have), sorted(have - want))
    return out


def rewrite(dvc: dict, root: Path = REPO) -> None:
    """Replace each stage's code deps with its closure (first, sorted); other deps keep their order."""
    for _, body in stage_bodies(dvc):
        module = CMD_MODULE.search(body["cmd"]).group(1)
        others = [d for d in body.get("deps", []) if not (isinstance(d, str) and is_code(d, root))]
        deps = body["deps"]
        del deps[:]
        deps.extend(code_closure(module, root) + others)


def stage_root(path: Path, dvc: dict) -> Path:
    """The folder a pipeline file's stages run in (their common `wdir`, relative to the file): the root
    their code deps are relative to (pretrained/dvc.yaml: `wdir: ..`, the repository)."""
    wdirs = {body.get("wdir", stage.get("wdir", ".")) for name, stage in dvc["stages"].items()
             for body in (stage.get("do", stage),)}
    assert len(wdirs) == 1, f"{path}: stages must share one wdir to have one code root, got {sorted(wdirs)}"
    return (path.parent / wdirs.pop()).resolve()


def derive_study(dvc_text: str, yaml: YAML) -> str:
    """study/dvc.yaml from dvc.yaml's text: every stage gets `wdir: ..` and `--params STUDY_PARAMS` on its
    command, its params keys read from STUDY_PARAMS, and the report goes to STUDY_REPORTS."""
    dvc = yaml.load(dvc_text)
    stages = CommentedMap()
    for name, stage in dvc["stages"].items():
        body = stage.get("do", stage)
        body["cmd"] = f"{body['cmd']} --params {STUDY_PARAMS}" + (f" --out {STUDY_REPORTS}" if name == "report" else "")
        if "params" in body:
            body["params"] = [{STUDY_PARAMS: [str(k) for k in body["params"]]}]
        if name == "report":
            body["outs"] = [{STUDY_REPORTS: {"cache": False}}]
        new = CommentedMap([("wdir", "..")])
        new.update(stage)
        stages[name] = new
    out = io.StringIO()
    yaml.dump({"stages": stages}, out)
    return STUDY_HEADER + out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the files' code deps")
    parser.add_argument("--dvc-yaml", type=Path, action="append",
                        help="pipeline file (repeatable; default: " + ", ".join(DVC_FILES) + ")")
    parser.add_argument("--root", type=Path, default=None,
                        help="repository root the code paths are relative to (default: each file's stages' wdir)")
    args = parser.parse_args(argv)
    files = args.dvc_yaml or [REPO / f for f in DVC_FILES]
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)  # the file's own style
    failed = False
    for path in files:
        dvc = yaml.load(path)
        root = args.root or stage_root(path, dvc)
        if args.write:
            rewrite(dvc, root)
            yaml.dump(dvc, path)
            continue
        diff = differences(dvc, root)
        for stage, (missing, extra) in diff.items():
            print(f"{path}: stage {stage}: missing {missing or '-'}; not executed {extra or '-'}")
        failed |= bool(diff)
    if not args.dvc_yaml:  # the default files: also the study pipeline derived from dvc.yaml
        study, want = REPO / STUDY_FILE, derive_study((REPO / DVC_FILES[0]).read_text(), yaml)
        if args.write:
            study.write_text(want)
        elif not study.is_file() or study.read_text() != want:
            print(f"{study}: differs from its derivation from dvc.yaml")
            failed = True
    if failed:
        print(f"fix with: python {Path(__file__).relative_to(REPO)} --write")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
