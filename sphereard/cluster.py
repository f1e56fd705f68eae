"""Checks of the Ray cluster-launcher files (cluster.yaml: AWS, cluster-gcp.yaml: GCP), and the GCP file's
project id.

    python -m sphereard.cluster check cluster.yaml cluster-gcp.yaml
    python -m sphereard.cluster render-gcp [--project ID] [--out cluster-gcp.local.yaml]

`check` (exit 2 with one line per problem) validates a file against Ray's own schema (after Ray fills in
its provider defaults, as `ray up` does), finds placeholder identifiers (made-up AMI / file-system /
subnet ids, `<...>`, REPLACE, ...), checks that every package a setup command installs is pinned in
requirements.lock or requirements-cluster.lock, that the provider's SDK is installed on the head, that
every node starts Ray from one venv on the shared file system (one code path), and that the GPU nodes fit
the lock (driver >= 580; GCP node types declare their CPUs and GPUs).
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from sphereard.errors import UserError
from sphereard.utils.io import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ("requirements.lock", "requirements-cluster.lock")
PROVIDER_SDK = {"aws": "boto3", "gcp": "google-api-python-client"}
COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands")
SHARED = "/shared/"
MIN_DRIVER = 580  # NVIDIA driver the lock's torch 2.14.1 (CUDA 13 runtime) needs
PLACEHOLDERS = {
    r"\bami-[0-9a-f]{8,17}\b": "an AMI id (use the resolve:ssm: alias)",
    r"\bfs-[0-9a-f]{8,17}\b": "a file-system id",
    r"\b(subnet|sg|vpc)-[0-9a-f]{8,17}\b": "a network id",
    r"<[^<>\s]+>": "a <placeholder>",
    r"(?i)\b(replace[_ -]?me|your[-_ ](project|bucket|key|ami|id)|changeme|todo|fixme|xxxx+)\b": "placeholder text",
    r"0123456789|deadbeef": "a made-up id",
}


def load(path: str | Path) -> tuple[dict, str]:
    """(config, text) of a cluster file; UserError naming it when missing or not a YAML mapping."""
    path = Path(path)
    try:
        text = path.read_text()
        config = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"{path}: not a readable YAML file ({e.__class__.__name__})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: must hold a mapping (a Ray cluster config)")
    return config, text


def schema_problems(config: dict) -> list[str]:
    """Ray's own validation of the config, after its provider defaults are filled in (as `ray up` does)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    filled = dict(config)
    if filled.get("provider", {}).get("type") == "gcp" and filled["provider"].get("project_id") is None:
        filled["provider"] = {**filled["provider"], "project_id": "render-gcp-fills-this"}  # checked apart
    try:
        validate_config(prepare_config(filled))
    except Exception as e:  # jsonschema's ValidationError, Ray's ValueError / RuntimeError
        return [f"Ray's schema: {str(e).splitlines()[0]}"]
    return []


def placeholder_problems(text: str) -> list[str]:
    """Lines holding something that looks like a value to be replaced."""
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        code = line.split("#", 1)[0] if not line.lstrip().startswith("- ") else line  # commands may hold '#'
        for pattern, what in PLACEHOLDERS.items():
            if re.search(pattern, code):
                problems.append(f"line {number}: {what}: {line.strip()}")
    return problems


def locked_packages(root: Path = ROOT) -> dict[str, str]:
    """name (normalised) -> version of every pin in the lock files."""
    pins = {}
    for lock in LOCKS:
        for line in (root / lock).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                name, version = line.split("==", 1)
                pins[normalise(name)] = version.strip()
    return pins


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.split("[", 1)[0]).lower().strip()


def commands(config: dict) -> list[str]:
    """Every command of the file; a YAML item that did not parse as a string (`a: b` inside it makes a
    mapping) is kept as its text, so the checks see it and `command_problems` names it."""
    return [c if isinstance(c, str) else repr(c) for key in COMMAND_KEYS for c in config.get(key) or []]


def command_problems(config: dict) -> list[str]:
    return [f"{key}: item {item!r} is not a string (quote it: ': ' made YAML read a mapping)"
            for key in COMMAND_KEYS for item in config.get(key) or [] if not isinstance(item, str)]


def pip_installs(command: str) -> tuple[list[str], list[str]]:
    """(requirement files, package specs) of every `pip install` in a shell command."""
    files, packages = [], []
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    parts, current = [], []
    for token in lexer:  # split at ;, &&, ||, | (outside quotes)
        if set(token) <= set(";&|()"):
            parts.append(current)
            current = []
        else:
            current.append(token)
    for words in parts + [current]:
        if not any(w.endswith("pip") or w.endswith("pip3") for w in words) or "install" not in words:
            continue
        args = words[words.index("install") + 1:]
        i = 0
        while i < len(args):
            if args[i] in ("-r", "--requirement", "-c", "--constraint"):
                files.append(args[i + 1])
                i += 2
                continue
            if not args[i].startswith("-"):
                packages.append(args[i])
            i += 1
    return files, packages


def package_problems(config: dict, root: Path = ROOT) -> list[str]:
    """Setup commands must install only from the lock files (make venv: requirements.lock) or pinned names."""
    pins, problems = locked_packages(root), []
    head_files = []
    for command in commands(config):
        files, packages = pip_installs(command)
        for f in files:
            if Path(f).name not in LOCKS:
                problems.append(f"installs from {f}, not a lock file ({', '.join(LOCKS)}): {command}")
        for spec in packages:
            name, _, version = spec.partition("==")
            if normalise(name) not in pins or (version and pins[normalise(name)] != version):
                problems.append(f"installs {spec!r}, not pinned in {' or '.join(LOCKS)}: {command}")
        if command in (config.get("head_setup_commands") or []):
            head_files += files
    sdk = PROVIDER_SDK.get(config.get("provider", {}).get("type"))
    if sdk is not None and (normalise(sdk) not in pins or not any(Path(f).name == LOCKS[1] for f in head_files)):
        problems.append(f"the head must install {sdk} (the autoscaler's cloud client) from {LOCKS[1]}")
    if not any("make venv" in c for c in commands(config)):
        problems.append("no `make venv`: the nodes would not get requirements.lock")
    return problems


def code_path_problems(config: dict) -> list[str]:
    """Every node starts Ray from the same venv, on the shared file system."""
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in config.get(key) or []
              if "ray start" in c]
    venvs = [m.group(1) if m else "PATH's ray" for c in starts for m in [re.search(r"(\S+)/bin/ray start", c)]]
    if len(starts) < 2 or len(set(venvs)) != 1 or not venvs[0].startswith(SHARED):
        return [f"head and workers must start Ray from one venv under {SHARED} (found {sorted(set(venvs)) or 'none'})"]
    return []


def node_problems(config: dict) -> list[str]:
    """GPU nodes fit the lock: a setup command refuses a driver older than MIN_DRIVER, GCP image families name
    a new enough driver, and GCP node types declare their resources (Ray's GCP launcher does not detect
    CPUs and GPUs of ordinary VMs, so the autoscaler would never add a worker)."""
    problems = []
    if not any("nvidia-smi" in c and str(MIN_DRIVER) in c for c in config.get("setup_commands") or []):
        problems.append(f"no setup command refuses an NVIDIA driver older than {MIN_DRIVER} (the lock's torch)")
    for name, node in (config.get("available_node_types") or {}).items():
        text = yaml.safe_dump(node.get("node_config", {}))
        for driver in re.findall(r"nvidia-(\d{3})\b", text):
            if int(driver) < MIN_DRIVER:
                problems.append(f"node type {name}: image with NVIDIA driver {driver} < {MIN_DRIVER}")
        if config.get("provider", {}).get("type") == "gcp" and not node.get("resources"):
            problems.append(f"node type {name}: GCP needs resources (CPU, GPU) declared")
    return problems


def check(path: str | Path) -> list[str]:
    config, text = load(path)
    return schema_problems(config) + placeholder_problems(text) + package_problems(config) + \
        code_path_problems(config) + node_problems(config) + command_problems(config)


def gcp_project() -> str:
    """gcloud's active project; UserError when gcloud is absent or has none."""
    try:
        out = subprocess.run(["gcloud", "config", "get-value", "project"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"--project: not given and gcloud cannot tell the active project ({e})") from None
    project = out.stdout.strip()
    if out.returncode != 0 or not project or project == "(unset)":
        raise UserError("--project: not given and gcloud has no active project (gcloud config set project ID)")
    return project


def render_gcp(project: str, src: str | Path = ROOT / "cluster-gcp.yaml") -> str:
    """cluster-gcp.yaml with provider.project_id set (the rest of the file unchanged, comments kept)."""
    if not re.fullmatch(r"[a-z][a-z0-9-]{4,28}[a-z0-9]", project):
        raise UserError(f"--project={project!r}: not a GCP project id (6-30 lowercase letters, digits, hyphens)")
    text, n = re.subn(r"(?m)^(  project_id:) null\b.*$", rf"\1 {project}", Path(src).read_text())
    if n != 1:
        raise UserError(f"{src}: no `project_id: null` line under provider to fill")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Check the Ray cluster files; fill the GCP project id.")
    sub = parser.add_subparsers(dest="command", required=True)
    chk = sub.add_parser("check", help="validate cluster files (exit 2 listing the problems)")
    chk.add_argument("files", nargs="+")
    gcp = sub.add_parser("render-gcp", help="cluster-gcp.yaml with your project id")
    gcp.add_argument("--project", default=None, help="default: gcloud's active project")
    gcp.add_argument("--out", default="cluster-gcp.local.yaml")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            problems = {f: check(f) for f in args.files}
            for f, found in problems.items():
                print(f"{f}: " + ("ok" if not found else f"{len(found)} problem(s)"))
                for p in found:
                    print(f"  {p}")
            if any(problems.values()):
                sys.exit(2)
        else:
            atomic_write_text(args.out, render_gcp(args.project or gcp_project()))
            print(f"wrote {args.out}: ray up {args.out}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
