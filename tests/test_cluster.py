"""The cluster-launcher files: both validate against Ray's own schema (with Ray's provider defaults filled
in, as `ray up` does), hold no placeholder identifiers, install only pinned packages (the lock files), put
the provider's SDK on the head, and start Ray from one venv on the shared file system. The checker itself
is shown to catch each kind of problem, and `render-gcp` fills the project id."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sphereard.cluster import check, locked_packages, normalise, render_gcp
from sphereard.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
FILES = ("cluster.yaml", "cluster-gcp.yaml")


@pytest.mark.parametrize("name", FILES)
def test_cluster_file_passes_every_check(name):
    assert check(ROOT / name) == []


def test_cli_check_exits_0_for_the_committed_files():
    out = subprocess.run([sys.executable, "-m", "sphereard.cluster", "check", *FILES], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count(": ok") == 2


def test_cluster_lock_agrees_with_the_main_lock_and_the_extra():
    main = {normalise(line.split("==")[0]): line.split("==")[1].strip()
            for line in (ROOT / "requirements.lock").read_text().splitlines() if "==" in line and
            not line.startswith("#")}
    cluster = {normalise(line.split("==")[0]): line.split("==")[1].strip()
               for line in (ROOT / "requirements-cluster.lock").read_text().splitlines() if "==" in line and
               not line.startswith("#")}
    assert not {k for k in cluster if k in main and main[k] != cluster[k]}  # no conflicting pins
    pyproject = (ROOT / "pyproject.toml").read_text()
    extra = pyproject[pyproject.index("cluster = ["):].split("]", 1)[0]
    for sdk in ("boto3", "google-api-python-client"):
        assert f'"{sdk}"' in extra and sdk in locked_packages()


def _broken(tmp_path, name, edit) -> list[str]:
    config = yaml.safe_load((ROOT / name).read_text())
    edit(config)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return check(path)


def test_checker_catches_each_kind_of_problem(tmp_path):
    def placeholder(c):
        c["available_node_types"]["head"]["node_config"]["ImageId"] = "ami-0a0b1c2d3e4f5a6b7"

    def unpinned(c):
        c["head_setup_commands"].append("pip install requests-oauthlib")

    def wrong_version(c):
        c["head_setup_commands"].append("pip install boto3==1.0.0")

    def other_file(c):
        c["setup_commands"].append("pip install -r requirements.in")

    def no_sdk(c):
        c["head_setup_commands"] = [x for x in c["head_setup_commands"] if "requirements-cluster.lock" not in x]

    def two_code_paths(c):
        c["worker_start_ray_commands"] = ["ray stop", "ray start --address=$RAY_HEAD_IP:6379"]

    def bad_schema(c):
        c["available_node_types"]["head"]["bogus_key"] = 1

    def old_driver(c):
        c["setup_commands"] = [x for x in c["setup_commands"] if "nvidia-smi" not in x]

    def yaml_mapping(c):
        c["setup_commands"].append({"echo a": "b"})

    cases = {yaml_mapping: "is not a string", old_driver: "older than 580", placeholder: "an AMI id",
             unpinned: "not pinned", wrong_version: "not pinned",
             other_file: "not a lock file", no_sdk: "must install boto3", two_code_paths: "one venv",
             bad_schema: "Ray's schema"}
    for edit, expected in cases.items():
        problems = _broken(tmp_path, "cluster.yaml", edit)
        assert any(expected in p for p in problems), (edit.__name__, problems)


def test_checker_catches_gcp_node_problems(tmp_path):
    def undeclared(c):
        c["available_node_types"]["gpu_worker"]["resources"] = {}

    def old_image(c):
        disk = c["available_node_types"]["head"]["node_config"]["disks"][0]["initializeParams"]
        disk["sourceImage"] = disk["sourceImage"].replace("nvidia-580", "nvidia-570")

    assert any("GCP needs resources" in p for p in _broken(tmp_path, "cluster-gcp.yaml", undeclared))
    assert any("driver 570 < 580" in p for p in _broken(tmp_path, "cluster-gcp.yaml", old_image))


def test_render_gcp_fills_the_project_id(tmp_path):
    text = render_gcp("sphereard-test-123", ROOT / "cluster-gcp.yaml")
    config = yaml.safe_load(text)
    assert config["provider"]["project_id"] == "sphereard-test-123"
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert check(path) == []
    with pytest.raises(UserError, match=r"^--project='Bad_Project'"):
        render_gcp("Bad_Project", ROOT / "cluster-gcp.yaml")
