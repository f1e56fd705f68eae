"""cluster.yaml (AWS) and cluster-gcp.yaml (GCP) are valid Ray 2.60 cluster-launcher configs that fit the
paper profiles."""

import copy
import json
import subprocess
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from sphereard.profiles import available_profiles, materialise

REPO = Path(__file__).resolve().parent.parent
SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
PAPER_PROFILES = [p for p in available_profiles() if p.startswith("imagenet256-sphereAR-")]  # training on a cluster
COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands")


@pytest.fixture(scope="module", params=["cluster.yaml", "cluster-gcp.yaml"])
def cluster(request) -> dict:
    config = yaml.safe_load((REPO / request.param).read_text())
    if config["provider"]["type"] == "gcp":  # `python -m sphereard.cluster render-gcp` fills it
        config["provider"]["project_id"] = "sphereard-test"
    return config


def test_cluster_yaml_matches_ray_schema(cluster):
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    errors = [f"{'/'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in validator.iter_errors(cluster)]
    assert errors == []
    # what `ray up` itself does: fill in the provider defaults, then validate (schema + node-type rules)
    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_cluster_commands_are_valid_bash(cluster):
    """Each command is one bash line (a stray ' #' in YAML would cut it short and leave a quote open)."""
    commands = [cmd for key in COMMAND_KEYS for cmd in cluster.get(key, [])]
    assert len(commands) >= 6
    for cmd in commands:
        check = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        assert check.returncode == 0, f"{cmd!r}: {check.stderr}"


def test_cluster_syncs_the_repo_and_provides_the_profiles_storage(cluster):
    for remote, local in cluster["file_mounts"].items():
        assert (REPO / local).resolve() == REPO, f"file_mounts {remote}: `ray up` runs from the repo root"
    assert ".gitignore" in cluster["rsync_filter"], "the local .venv and outputs must not be uploaded"
    setup = "\n".join(cluster["setup_commands"] + cluster["head_setup_commands"])
    assert PAPER_PROFILES, "paper presets exist"
    for name in PAPER_PROFILES:
        for stage in ("tokenizer", "generator"):
            ray_cfg = materialise(name)[stage]["train"]["ray"]
            assert ray_cfg["num_workers"] > 1 and ray_cfg["max_failures"] > 0
            assert Path(ray_cfg["storage"]).is_absolute() and ray_cfg["storage"] in setup, (name, stage)
    for cmd in cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]:
        assert "ray " not in cmd or "/shared/sphereard/.venv/bin/ray " in cmd, \
            f"{cmd!r}: every node starts the shared venv's pinned Ray (one code path)"
