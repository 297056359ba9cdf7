"""The Kubernetes base ships a config that blobserve accepts."""

from __future__ import annotations

from pathlib import Path

from blobserve.config import load_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "k8s"


def test_the_deployed_config_loads() -> None:
    config = load_config(str(DEPLOY / "config.json"))

    assert config.readiness_probe_addr == ":8086"
    assert config.docker_auth == "/mnt/pull-secret/config.json"
    assert config.blob_space.location == "/mnt/cache/blobserve"
