"""The fault-injection suite: real processes (redis-server, `python -m jobs.worker`, `streamlit run`), real
faults (SIGKILL, SIGTERM, SHUTDOWN, an address-space cap), loopback only, every wait bounded.

Each test records its figures (faults injected, events checked, events lost) with the `figures` fixture; the
table is printed at the end of the session and written to test-artifacts/fault-figures.json.

"Events lost" counts stream entries a reader had already seen (so Redis had acknowledged them) that are
missing, or changed, afterwards. A resumed attempt deliberately rewinds the stream to its last checkpoint
(those iterations are recomputed, bit for bit), so across a resume only the entries up to that checkpoint
count as acknowledged; the continuity checks (metrics 1..N, evals where due) cover the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, TINY, wait_for

from codash.up import dashboard_healthy
from jobs import api, keys
from jobs.limits import Limits
from jobs.server import free_port

# A digits run of N iterations: about 10 ms per iteration on one core, so it is still running when the
# fault hits. Evaluations every 25 iterations; a checkpoint at every epoch end (23 iterations at batch 64).
EVAL_EVERY = 25


def long_tiny(iterations: int = 300, **changes: Any) -> dict[str, Any]:
    return {**TINY, "max_iters": iterations, "eval_every": EVAL_EVERY, **changes}


# --- figures ---


@dataclass
class Figures:
    scenario: str
    faults: list[str] = field(default_factory=list)
    checked: int = 0
    lost: int = 0

    def fault(self, what: str) -> None:
        self.faults.append(what)

    def check(self, events: int, lost: int = 0) -> None:
        self.checked += events
        self.lost += lost


@pytest.fixture
def figures(request) -> Iterator[Figures]:
    """The test's figures, handed to the session's table (tests/conftest.py) with its teardown report."""
    figures = Figures(request.node.name)
    yield figures
    row = {
        "scenario": figures.scenario,
        "faults_injected": len(figures.faults),
        "faults": figures.faults,
        "events_checked": figures.checked,
        "events_lost": figures.lost,
    }
    request.node.user_properties.append(("fault_figures", row))
    print(f"figures: {json.dumps(row)}")


# --- environment ---


@pytest.fixture(autouse=True)
def _open_dashboard(monkeypatch) -> None:
    """No dashboard password or operator limits from the developer's shell leak into these tests."""
    for name in ("CODASH_PASSWORD", *(f"CODASH_{name.upper()}" for name in Limits.__dataclass_fields__)):
        monkeypatch.delenv(name, raising=False)


# --- reading Redis as it is ---


def entries(r, run_id: str) -> list[tuple[str, str]]:
    """The run's stream as (entry id, payload) pairs, exactly as stored."""
    return [
        (entry_id.decode(), fields.get(b"event", b"").decode(errors="replace"))
        for entry_id, fields in r.xrange(keys.stream(run_id))
    ]


def record(r, run_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in r.hgetall(keys.run(run_id)).items()}


@dataclass
class Snapshot:
    records: dict[str, dict[str, str]]
    streams: dict[str, list[tuple[str, str]]]

    @property
    def events(self) -> int:
        return sum(len(stream) for stream in self.streams.values())


def snapshot(r) -> Snapshot:
    run_ids = [run_id.decode() for run_id in r.zrange(keys.RUNS, 0, -1)]
    return Snapshot({i: record(r, i) for i in run_ids}, {i: entries(r, i) for i in run_ids})


def missing(before: list[tuple[str, str]], after: list[tuple[str, str]]) -> int:
    """Entries of `before` that `after` does not hold with the same id and payload."""
    kept = set(after)
    return sum(1 for entry in before if entry not in kept)


def through_last_checkpoint(stream: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The part of a stream a resume keeps: everything up to its last checkpoint event."""
    kinds = [json.loads(payload)["type"] for _, payload in stream]
    if "checkpoint" not in kinds:
        return []
    return stream[: len(kinds) - kinds[::-1].index("checkpoint")]


def check_continuous(events: list[dict], total: int, eval_every: int = EVAL_EVERY) -> int:
    """A finished run's stream as an unbroken run writes it; returns the number of events checked."""
    kinds = [event["type"] for event in events]
    assert kinds.count("config") == 1 and kinds[0] == "config", kinds[:3]
    assert kinds.count("final") == 1 and kinds[-1] == "final", kinds[-3:]
    assert (events[0]["start_iteration"], events[0]["total_iterations"]) == (0, total)
    assert events[-1]["iterations"] == total
    metrics = [event["iteration"] for event in events if event["type"] == "metrics"]
    assert metrics == list(range(1, total + 1)), "metrics are not exactly 1..N, each once, in order"
    evals = [event["iteration"] for event in events if event["type"] == "eval"]
    assert evals == sorted({*range(eval_every, total + 1, eval_every), total})
    checkpoints = [event for event in events if event["type"] == "checkpoint"]
    iterations = [event["iteration"] for event in checkpoints]
    assert iterations == sorted(set(iterations)) and iterations[-1] == total, iterations
    assert all(event["epoch"] == int(event["epoch"]) for event in checkpoints[:-1])  # epoch ends only
    # every event sits after the metrics of its iteration and before the next one's
    position = {event["iteration"]: i for i, event in enumerate(events) if event["type"] == "metrics"}
    for i, event in enumerate(events):
        if event["type"] in ("eval", "checkpoint", "co"):
            at = event["confirmed_at"] if event["type"] == "co" else event["iteration"]  # co names its onset
            assert position[at] < i and (at == total or i < position[at + 1]), event
    return len(events)


def wait_status(r, run_id: str, statuses: set[str], timeout: float) -> api.Run:
    def reached():
        run = api.get_run(r, run_id)
        return run if run is not None and run.status in statuses else None

    return wait_for(reached, timeout, f"run {run_id} to become {statuses}: {api.get_run(r, run_id)}", 0.05)


# --- the dashboard as a real process ---


@dataclass
class Dashboard:
    """`streamlit run app/server.py` (app/main.py behind app.guard, as `codash up` serves it) on
    127.0.0.1:port, against the Redis at redis_url."""

    redis_url: str
    log: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> float:
        """Start it and wait for HTTP 200 on /_stcore/health; returns the seconds that took."""
        command = [sys.executable, "-m", "streamlit", "run", "app/server.py", "--server.port", str(self.port)]
        command += ["--server.address", "127.0.0.1", "--server.headless", "true"]
        command += ["--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
        env = {**os.environ, "REDIS_URL": self.redis_url}
        started = time.monotonic()
        with open(self.log, "a") as out:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: self.health() == 200 or not self.alive(), timeout, "the dashboard to answer", 0.05)
        assert self.alive(), self.output()
        return time.monotonic() - started

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(sig)
        return self.process.wait(timeout=30)

    def health(self) -> int | None:
        """The HTTP status of /_stcore/health, None when nothing answers."""
        return 200 if dashboard_healthy(self.url) else None

    def render(self, page: str = "", query: str = "", timeout: float = 30) -> list:
        """Open a session over the websocket, as a browser does, and run one page to its end.

        Returns the page's deltas (streamlit Delta protos). Fails on a timeout or a closed socket.
        """
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
        from websockets.sync.client import connect

        message = BackMsg()
        message.rerun_script.query_string = query
        message.rerun_script.page_name = page
        deadline = time.monotonic() + timeout
        deltas = []
        url = f"ws://127.0.0.1:{self.port}/_stcore/stream"
        with connect(url, subprotocols=["streamlit"], open_timeout=timeout, close_timeout=1) as socket_:
            socket_.send(message.SerializeToString())
            while True:
                forward = ForwardMsg()
                forward.ParseFromString(socket_.recv(timeout=max(0.1, deadline - time.monotonic())))
                kind = forward.WhichOneof("type")
                if kind == "delta":
                    deltas.append(forward.delta)
                elif kind == "script_finished" and forward.script_finished in (
                    ForwardMsg.FINISHED_SUCCESSFULLY,
                    ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY,
                ):
                    return deltas
                elif kind == "script_finished":  # a rerun for a page switch (a shared link): keep reading
                    deltas.clear()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def close(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        print("--- streamlit ---", *self.output().splitlines()[-20:], sep="\n")


def element_kinds(deltas: list) -> list[str]:
    return [
        delta.new_element.WhichOneof("type") for delta in deltas if delta.WhichOneof("type") == "new_element"
    ]


def page_text(deltas: list) -> str:
    return "\n".join(str(delta) for delta in deltas)


@pytest.fixture
def dashboard(redis_home: Path, tmp_path: Path) -> Iterator[Dashboard]:
    from jobs.server import stored_url

    board = Dashboard(stored_url(redis_home), tmp_path / "streamlit.log")
    yield board
    board.close()
