"""Both cluster launcher files pass Ray's own validator, offline (as Ray's tests do)."""

from pathlib import Path

import pytest
import yaml

from tune.ray_private import validate_cluster_config

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster.local.yaml"])
def test_ray_validates_the_cluster_file(name):
    config = yaml.safe_load((REPO / name).read_text())
    validate_cluster_config(config)


def test_aws_file_has_cpu_and_gpu_worker_types_and_mlflow_on_the_head():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    types = config["available_node_types"]
    assert {"head", "cpu_worker", "gpu_worker"} <= set(types)
    assert "g5" in types["gpu_worker"]["node_config"]["InstanceType"]
    head_cmds = " ".join(config["head_start_ray_commands"])
    assert "mlflow/server.sh" in head_cmds and "0.0.0.0" not in head_cmds
    assert "--dashboard-host=127.0.0.1" in head_cmds


def test_local_file_uses_the_on_prem_provider_without_node_types():
    config = yaml.safe_load((REPO / "cluster.local.yaml").read_text())
    assert config["provider"]["type"] == "local"
    assert "available_node_types" not in config


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster.local.yaml"])
def test_mlflow_on_loopback_and_every_node_gets_the_ray_token(name):
    """The driver (on the head) is MLflow's only client; token auth needs the token and the mode
    on every node (a joining node or driver does not switch token mode on by itself)."""
    config = yaml.safe_load((REPO / name).read_text())
    server = [c for c in config["head_start_ray_commands"] if "server.sh" in c and "--daemon" in c]
    assert len(server) == 1 and "--host" not in server[0]  # server.sh's default: 127.0.0.1
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("RAY_AUTH_MODE=token" in c for c in config["setup_commands"])
