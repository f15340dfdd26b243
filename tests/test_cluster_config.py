"""cluster.yaml parses, uses a real Ray image matching the pinned Ray, and names real entrypoints."""

import re
from pathlib import Path

import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_is_a_current_ray_launcher_config():
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "setup_commands"):
        assert key in cfg
    image = cfg["docker"]["image"]
    assert re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py311-gpu", image), image
    assert image.split(":")[1].split("-")[0] == ray.__version__ == "2.60.0"
    assert "ray-ml" not in image
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    gpu = [t for n, t in types.items() if n != cfg["head_node_type"]]
    assert gpu and all(t["max_workers"] >= 1 for t in gpu)
    assert any("pip install" in c and "raeae" in c for c in cfg["setup_commands"])


def test_readme_job_commands_name_existing_entrypoints():
    readme = (ROOT / "README.md").read_text()
    scripts = set(re.findall(r"python (jobs/\w+\.py)", readme))
    assert {"jobs/train.py", "jobs/restore.py", "jobs/nightly.py"} <= scripts
    for s in scripts:
        assert (ROOT / s).exists(), s
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f"ray[data,train,default]=={ray.__version__}" in pyproject


def test_cluster_yaml_passes_rays_own_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(yaml.safe_load((ROOT / "cluster.yaml").read_text())))


def test_cluster_yaml_is_secure_by_default():
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    head = " ".join(cfg["head_start_ray_commands"])
    workers = " ".join(cfg["worker_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head  # loopback: reached by SSH forward
    assert "RAY_AUTH_MODE=token ray start --head" in head
    assert "RAY_AUTH_MODE=token ray start --address" in workers
    assert cfg["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"  # one token on every node
    assert any("export RAY_AUTH_MODE=token" in c for c in cfg["setup_commands"])
