"""`codash up`: the whole stack from one command, one instance per CODASH_HOME, nothing left behind."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY, server_pid, wait_for

from codash import up as up_module
from codash.up import dashboard_healthy
from jobs.server import free_port

pytestmark = pytest.mark.timeout(180)


def codash(*args: str, env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "codash", *args], env=env, cwd=ROOT, capture_output=True, text=True, **kwargs
    )


def children_of(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def healthy(port: int) -> bool:
    return dashboard_healthy(f"http://127.0.0.1:{port}")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    environment = {**os.environ, "CODASH_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    for name in ("REDIS_URL", "CODASH_PASSWORD", "CODASH_RUNS_DIR"):
        environment.pop(name, None)
    return environment


def environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(pair.decode(errors="replace").split("=", 1) for pair in pairs if b"=" in pair)


@pytest.mark.workers  # the whole stack: Redis, a worker, the dashboard
def test_up_serves_the_dashboard_runs_jobs_and_stops_everything(env, tmp_path):
    env = {**env, "CODASH_PASSWORD": "correct horse battery"}
    port = free_port()
    log = (tmp_path / "up.log").open("w")
    argv = [sys.executable, "-m", "codash", "up", "--port", str(port)]
    up = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=log)
    try:
        wait_for(lambda: healthy(port), 60, "the dashboard to answer /_stcore/health")
        wait_for(lambda: "codash is up" in (tmp_path / "up.log").read_text(), 10, "the URL to be printed")

        second = codash("up", "--port", str(free_port()), env=env, timeout=60)
        assert second.returncode == 0 and "already running" in second.stdout
        assert f"127.0.0.1:{port}" in second.stdout

        from jobs import api
        from jobs.server import stored_url
        from trainer.config import make_config

        home = Path(env["CODASH_HOME"])
        r = api.connect(stored_url(home))
        run_id = api.submit(r, make_config(TINY))
        wait_for(lambda: api.get_run(r, run_id).status == "finished", 90, "up's worker to finish a run")
        r.close()

        started = children_of(up.pid) | {server_pid(home)}
        assert len(started) == 3  # redis (daemonised, so found by pid file), one CPU worker, the app
        commands = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children_of(up.pid)}
        [worker] = [pid for pid, command in commands.items() if b"jobs.worker" in command]
        [dashboard] = [pid for pid, command in commands.items() if b"streamlit" in command]
        assert "CODASH_PASSWORD" not in environ(worker)  # a worker has no use for it
        assert environ(dashboard)["CODASH_PASSWORD"] == "correct horse battery"
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0
        wait_for(lambda: not any(alive(pid) for pid in started), 10, "every started process to exit")
        assert not healthy(port)
    finally:
        if up.poll() is None:
            up.kill()
        log.close()


def test_a_child_that_ignores_sigterm_is_killed_and_named(monkeypatch, capsys):
    monkeypatch.setattr(up_module, "STOP_TIMEOUT_S", 0.5)
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True)"
    argv = [sys.executable, "-c", code + "; time.sleep(60)"]
    stubborn = up_module.Child("worker 0 (cpu)", argv)
    stubborn.process = subprocess.Popen(argv, stdout=subprocess.PIPE, start_new_session=True)
    assert stubborn.process.stdout.readline() == b"ready\n"  # its handler is set
    up_module.stop_children([stubborn])
    assert stubborn.process.returncode == -signal.SIGKILL
    assert "codash up: worker 0 (cpu) did not stop within 0.5 s; killing it" in capsys.readouterr().err


def test_up_refuses_to_expose_the_dashboard_without_a_password_and_offers_one(env):
    result = codash("up", "--host", "0.0.0.0", "--port", str(free_port()), env=env, timeout=60)
    assert result.returncode == 2
    offered = re.search(r"CODASH_PASSWORD=([A-Za-z0-9_-]{24}) \(generated just now\)", result.stderr)
    assert offered, result.stderr
    assert not (Path(env["CODASH_HOME"]) / "up.json").exists()


def test_up_refuses_a_short_password(env):
    env = {**env, "CODASH_PASSWORD": "xyz"}
    result = codash("up", "--port", str(free_port()), env=env, timeout=60)
    assert result.returncode == 2 and "must be at least 12 characters (got 3)" in result.stderr


@pytest.mark.parametrize(("flag", "value"), [("--port", "0"), ("--port", "70000"), ("--workers", "-1")])
def test_up_rejects_bad_flags_naming_them(env, flag, value):
    result = codash("up", flag, value, env=env, timeout=60)
    assert result.returncode == 2 and flag in result.stderr


def test_codash_up_runs_two_workers_per_gpu_by_default(monkeypatch):
    monkeypatch.setattr(up_module, "visible_gpus", lambda: 2)
    assert up_module.plan_workers(None) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert up_module.plan_workers(3) == ["cuda:0", "cuda:1", "cuda:0"]
    monkeypatch.setattr(up_module, "visible_gpus", lambda: 1)
    assert up_module.plan_workers(4) == ["cuda:0"] * 4
    monkeypatch.setattr(up_module, "visible_gpus", lambda: 0)
    assert up_module.plan_workers(None) == ["cpu"]
    assert up_module.WORKERS_PER_GPU == 2


def test_a_host_without_gpu_device_nodes_is_counted_without_importing_torch(monkeypatch):
    """Nor does the supervisor import Streamlit: each costs a `codash up` about a second before it starts."""
    if not any(Path(node).exists() for node in up_module.GPU_DEVICE_NODES):  # this host, as `codash up` runs
        probe = "import sys; from codash import up; print(up.plan_workers(None), 'torch' in sys.modules, "
        probe += "'streamlit' in sys.modules)"
        result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True)
        assert result.stdout.split() == ["['cpu']", "False", "False"], result.stderr
    monkeypatch.setattr(up_module, "GPU_DEVICE_NODES", ("/nonexistent/nvidiactl",))
    assert up_module.visible_gpus() == 0
    monkeypatch.setattr(up_module, "GPU_DEVICE_NODES", (os.devnull,))  # a node there: torch is asked
    import torch

    assert up_module.visible_gpus() == torch.cuda.device_count()


def test_cpu_workers_split_the_cores_unless_omp_num_threads_is_set(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert up_module.worker_env(["cpu", "cpu"]) == {"OMP_NUM_THREADS": "4"}
    assert up_module.worker_env(["cpu"] * 3) == {"OMP_NUM_THREADS": "2"}
    assert up_module.worker_env(["cpu"] * 16) == {"OMP_NUM_THREADS": "1"}
    assert up_module.worker_env(["cuda:0", "cuda:0"]) == {}  # GPU workers: torch's CPU threads barely work
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert up_module.worker_env(["cpu", "cpu"]) == {}  # the user's choice reaches the workers as it is


def test_up_refuses_a_port_another_server_holds(env):
    """Someone else's server on the port would answer the health check: up must not say it is up."""
    port = free_port()
    other = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=ROOT
    )
    try:
        wait_for(lambda: not up_module_port_free(port), 30, "the other server to listen")
        result = codash("up", "--port", str(port), "--no-worker", env=env, timeout=60)
        assert result.returncode != 0 and "codash is up" not in result.stdout
        assert f"--port {port}: 127.0.0.1:{port} is in use by another program" in result.stderr
    finally:
        other.terminate()
        other.wait(timeout=10)


def up_module_port_free(port: int) -> bool:
    try:
        up_module.check_port("127.0.0.1", port)
    except RuntimeError:
        return False
    return True
