"""Shared fixtures for the job system: a real redis-server and real worker processes; nothing is mocked.

Each server is codash's own embedded one (jobs.server) in a temporary CODASH_HOME, on a free port, with a
generated password; workers are `python -m jobs.worker` subprocesses, killed at teardown.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A digits run that takes about a second on one CPU core.
TINY: dict[str, Any] = {
    "dataset": "digits",
    "method": "fgsm",
    "eps": 0.2,
    "max_iters": 60,
    "eval_every": 20,
    "eval_points": 64,
    "final_eval_points": 64,
    "final_pgd_steps": 5,
    "final_pgd_restarts": 1,
    "device": "cpu",
}


@pytest.fixture
def batch():
    """32 random 8x8 one-channel images for attack tests, some pixels at the box edges (where it binds)."""
    import torch

    g = torch.Generator().manual_seed(1)
    x = torch.rand(32, 1, 8, 8, generator=g)
    x[:, :, :2] = 0.0
    x[:, :, -2:] = 1.0
    return x, torch.randint(0, 10, (32,), generator=g)


def wait_for(predicate: Callable[[], Any], timeout: float, message: str, interval: float = 0.02) -> Any:
    """Poll until `predicate` returns something truthy; fail the test with `message` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s: {message}")
        time.sleep(interval)


@contextlib.contextmanager
def embedded_redis(home: Path) -> Iterator[Path]:
    """CODASH_HOME=home with its embedded server running; REDIS_URL unset, so discovery is what is used."""
    from jobs.server import ensure_server

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CODASH_HOME", str(home))
        patch.delenv("REDIS_URL", raising=False)
        patch.delenv("CODASH_RUNS_DIR", raising=False)
        ensure_server(home)
        try:
            yield home
        finally:
            kill_server(home)


def kill_server(home: Path) -> None:
    """SIGKILL, no waiting: at teardown the data no longer matters."""
    from jobs.server import server_pid

    pid = server_pid(home)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def redis_home(tmp_path: Path) -> Iterator[Path]:
    """A fresh embedded Redis for one test."""
    with embedded_redis(tmp_path / "home") as home:
        yield home


@pytest.fixture
def r(redis_home: Path):
    from jobs import api

    client = api.connect()
    yield client
    client.close()


@dataclass
class WorkerProcess:
    name: str
    process: subprocess.Popen
    log: Path

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(sig)
        self.process.wait(timeout=30)

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Workers:
    """Starts `python -m jobs.worker` processes against the current CODASH_HOME; kills them at close()."""

    logs: Path
    started: list[WorkerProcess] = field(default_factory=list)

    def spawn(self, *names: str, queue: str | None = None, env: dict | None = None) -> list[WorkerProcess]:
        """Start one worker per name (in parallel) and return once all of them have registered.

        One torch thread each (two workers share two cores) and a 3 s heartbeat timeout unless `env` says.
        """
        from jobs import api

        self.logs.mkdir(parents=True, exist_ok=True)
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "CODASH_HEARTBEAT_TIMEOUT": "3", **(env or {})}
        batch = []
        for name in names:
            log = self.logs / f"{name}.log"
            command = [sys.executable, "-m", "jobs.worker", "--device", "cpu", "--name", name]
            command += ["--queue", queue] if queue else []
            with open(log, "w") as out:
                process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=out, stderr=out)
            batch.append(WorkerProcess(name, process, log))
        self.started += batch
        r = api.connect()
        for worker in batch:

            def registered(worker: WorkerProcess = worker) -> bool:
                return worker.name in {info.name for info in api.workers(r)} or not worker.alive()

            wait_for(registered, 60, f"worker {worker.name} to register")
            assert worker.alive(), worker.output()
        r.close()
        return batch

    def close(self) -> None:
        """Kill what is left; print each log's tail, which pytest shows when the test failed."""
        for worker in self.started:
            if worker.alive():
                worker.kill()
            print(f"--- {worker.name} ---", *worker.output().splitlines()[-15:], sep="\n")


@pytest.fixture
def worker_pool(tmp_path: Path) -> Iterator[Workers]:
    """Workers for one test, against whichever server the test's CODASH_HOME points to."""
    pool = Workers(tmp_path / "worker-logs")
    yield pool
    pool.close()
