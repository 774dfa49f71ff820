"""Time to CO, the headline number: a run is submitted to the job system, how long until its `co` event?

The whole product path is timed: api.submit -> RQ queue in Redis -> a `python -m jobs.worker` process
(started beforehand and idle, as under `codash up`) claims the run, trains it and streams its events ->
a reader blocked in XREAD holds the `co` event. The clock starts just before submit and stops when the
reader has the event; the first `config` event (the worker has started the run) and the CO iteration are
reported too.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.timer import now

ROOT = Path(__file__).resolve().parent.parent
DIGITS_PRESET = "Digits: FGSM catastrophic overfitting"


@contextlib.contextmanager
def embedded_stack(device: str, home: Path | None = None) -> Iterator[Any]:
    """An embedded Redis in a fresh CODASH_HOME and one idle worker on `device`; yields a client."""
    from jobs import api
    from jobs.server import ensure_server, stop_server

    with contextlib.ExitStack() as stack:
        if home is None:
            home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="codash-bench-"))) / "home"
        saved = {key: os.environ.get(key) for key in ("CODASH_HOME", "REDIS_URL", "CODASH_RUNS_DIR")}
        os.environ["CODASH_HOME"] = str(home)
        os.environ.pop("REDIS_URL", None)
        os.environ.pop("CODASH_RUNS_DIR", None)
        stack.callback(_restore, saved)
        ensure_server(home)
        stack.callback(stop_server, home)
        r = api.connect()
        stack.callback(r.close)
        log = open(home / "bench-worker.log", "w")  # noqa: SIM115 (closed by the stack)
        stack.callback(log.close)
        worker = subprocess.Popen(
            [sys.executable, "-m", "jobs.worker", "--device", device, "--name", "bench-worker"],
            cwd=ROOT,
            env=dict(os.environ),
            stdout=log,
            stderr=log,
        )
        stack.callback(_stop, worker)
        deadline = time.monotonic() + 120
        while "bench-worker" not in {info.name for info in api.workers(r)}:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bench worker did not start: {(home / 'bench-worker.log').read_text()}")
            time.sleep(0.05)
        yield r


def _restore(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _stop(worker: subprocess.Popen) -> None:
    worker.terminate()
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def measure(r, config: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
    """Submit `config`, wait for its `co` event (or its end); seconds from submit, then cancel the run."""
    from jobs import api
    from trainer.config import make_config

    cfg = make_config(config)
    started = now()
    run_id = api.submit(r, cfg)
    result: dict[str, Any] = {"run_id": run_id, "co_s": None, "co_iteration": None, "confirmed_at": None}
    after, deadline = "0-0", time.monotonic() + timeout
    while time.monotonic() < deadline:
        events, after = api.read_events(r, run_id, after, block_ms=1000)
        elapsed = now() - started
        for event in events:
            if event["type"] == "config" and "start_s" not in result:
                result["start_s"] = elapsed
            if event["type"] == "co":
                result.update(
                    co_s=elapsed, co_iteration=event["iteration"], confirmed_at=event.get("confirmed_at")
                )
            if event["type"] == "final":
                result["finished_s"] = elapsed
        if result["co_s"] is not None or "finished_s" in result:
            break
        record = api.get_run(r, run_id)
        if record is not None and record.status in (api.RunStatus.FAILED, api.RunStatus.INTERRUPTED):
            raise RuntimeError(f"run {run_id} {record.status}: {record.error}")
    with contextlib.suppress(Exception):
        api.cancel(r, run_id)  # the rest of the run is not timed
    return result


def digits_preset(device: str) -> dict[str, Any]:
    from trainer.presets import PRESETS

    return {**PRESETS[DIGITS_PRESET], "device": device}


def time_to_co(device: str, runs: int = 2, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """`runs` submissions in a row to one worker: the first finds it idle since start, later ones warm."""
    config = config or digits_preset(device)
    with embedded_stack(device) as r:
        results = [measure(r, config) for _ in range(runs)]
        _wait_idle(r)
    return {"preset": DIGITS_PRESET, "config": config, "runs": results}


def _wait_idle(r, timeout: float = 60.0) -> None:
    """Let the worker finish cancelling before the stack goes down (a cleaner log, nothing more)."""
    from jobs import api

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(run.status not in api.TERMINAL for run in api.list_runs(r)):
        time.sleep(0.1)


if __name__ == "__main__":
    print(time_to_co(sys.argv[1] if len(sys.argv) > 1 else "cpu"))
