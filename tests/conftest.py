"""Shared fixtures and builders: a real redis-server, real worker processes, realistic event streams.

The server is codash's own embedded one (jobs.server), with a generated password: one per test process,
emptied before each test, which has a temporary CODASH_HOME of its own (`redis_home`). Workers are real
processes running `jobs.worker.main`, forked from one that has already imported the worker
(tests/worker_zygote.py), killed at teardown. Runs are built from events as the trainer writes them
(trainer.events.make_event) and stored through the worker's own writers (registry.transition,
stream.StreamSink), so what a page or a test reads is what production reads.
bench/app_bench.py reuses the builders: one definition of each.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jobs import api
from jobs.queue import job_id, rq_queue
from jobs.registry import transition
from jobs.stream import StreamSink
from trainer.config import make_config
from trainer.events import make_event

ROOT = Path(__file__).resolve().parent.parent
# Debian's Chromium and the flags it runs headless with on a machine without a display or a network: for
# the browser tests, bench/app_bench.py and experiments/sweep_figure.py.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CHARTS = 'iframe[title="app.chart.live_plotly"]'  # the dashboard's Plotly charts, in page order


def chromium_profile(playwright, profile: Path, **options):
    """Debian's Chromium, headless, as a context on a profile kept on disk, as a user's browser is: it keeps
    V8's code cache, so the dashboard's scripts (plotly.js, 1.5 MB, in every chart's frame) are compiled
    once, not at every page load (an off-the-record context, Playwright's default, keeps none): a live
    view costs the machine ~20 % less CPU here (5.3 against 6.5 core-seconds a load, 5 loads each)."""
    return playwright.chromium.launch_persistent_context(
        str(profile), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, **options
    )


# A worker imports torch and RQ before it registers: a second or two idle, a minute on a crowded machine.
WORKER_START_S = 180

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


def compile_page_scripts_once(patch: pytest.MonkeyPatch) -> None:
    """AppTest compiles the app's page scripts on every run, into a new ScriptCache each time, where the
    server keeps one cache for its life. One cache for the process gives AppTest the server's behaviour and
    saves about a third of each render (the compile, with Streamlit's magic, of several hundred lines)."""
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache
    from streamlit.testing.v1 import app_test, local_script_runner

    scripts = ScriptCache()
    for module in (app_test, local_script_runner):
        patch.setattr(module, "ScriptCache", lambda: scripts)


@pytest.fixture(scope="session", autouse=True)
def page_scripts_compiled_once() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        compile_page_scripts_once(patch)
        yield


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
    pid = server_pid(home)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def shared_redis_home(tmp_path_factory) -> Iterator[Path]:
    """The CODASH_HOME of the embedded server that the `redis_home` tests share: one per test process (each
    xdist worker has its own base temporary directory, so its own server)."""
    from jobs.server import ensure_server

    home = tmp_path_factory.mktemp("valkey") / "home"
    ensure_server(home)
    yield home
    kill_server(home)


@pytest.fixture
def redis_home(request, tmp_path: Path, shared_redis_home: Path) -> Iterator[Path]:
    """CODASH_HOME for one test, its embedded Redis emptied (FLUSHALL) before the test.

    The server is the one the test process shares: this home's redis.url names its socket, so everything
    that discovers the server from CODASH_HOME (api.connect, `codash up`, workers) uses it, while the runs
    directory and the other files under CODASH_HOME are the test's own. A test marked `own_redis` (one that
    stops, kills or restarts the server, or reads its files) gets a server of its own instead.
    """
    import redis

    from jobs.server import URL_FILE, ensure_server

    home = tmp_path / "home"
    if request.node.get_closest_marker("own_redis"):
        with embedded_redis(home):
            yield home
        return
    url = ensure_server(shared_redis_home)  # started again if a test took it down
    home.mkdir(mode=0o700)
    with open(os.open(home / URL_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        file.write(url + "\n")  # the password, 0600 as the server's own file
    with redis.Redis.from_url(url) as client:
        client.flushall()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CODASH_HOME", str(home))
        patch.delenv("REDIS_URL", raising=False)
        patch.delenv("CODASH_RUNS_DIR", raising=False)
        yield home


@pytest.fixture
def r(redis_home: Path):
    from jobs import api

    client = api.connect()
    yield client
    client.close()


@dataclass
class Forked:
    """A worker forked by the zygote (tests/worker_zygote.py), read as the tests read a Popen: pid, poll(),
    wait(), send_signal(), returncode (the zygote, its parent, writes the exit status to `exit_file`)."""

    pid: int
    exit_file: Path

    @property
    def returncode(self) -> int | None:
        return int(self.exit_file.read_text()) if self.exit_file.exists() else None

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.returncode) is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout)
            time.sleep(0.02)
        return code

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)


class Zygote:
    """One interpreter per test process that has imported and warmed jobs.worker, and forks workers from it
    (tests/worker_zygote.py says why and how): a worker then starts in milliseconds instead of ~6 s of CPU.
    What the workers run is `jobs.worker.main`, as `python -m jobs.worker` does; the command line itself
    is what `codash up` starts in the tests of `codash up` and the browser flow."""

    def __init__(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        script = [sys.executable, str(ROOT / "tests" / "worker_zygote.py")]
        self.process = subprocess.Popen(
            script, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert self.process.stdout.readline() == b"ready\n", "the worker zygote did not start"

    def fork(self, argv: list[str], env: dict[str, str], log: Path) -> Forked:
        request = {"argv": argv, "env": env, "cwd": str(ROOT), "log": str(log)}
        self.process.stdin.write(json.dumps(request).encode() + b"\n")
        self.process.stdin.flush()
        return Forked(int(self.process.stdout.readline()), Path(f"{log}.exit"))

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture(scope="session")
def zygote() -> Iterator[Zygote]:
    forks = Zygote()
    yield forks
    forks.close()


@dataclass
class WorkerProcess:
    name: str
    process: Forked
    log: Path

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` and wait for the exit: a SIGTERM'd worker first checkpoints its run, which on a
        loaded 2-core machine can take a minute."""
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(sig)
        self.process.wait(timeout=30 if sig == signal.SIGKILL else 120)

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Workers:
    """Starts worker processes (`jobs.worker --device cpu --name N`, forked by the zygote) against the
    current CODASH_HOME; kills them at close()."""

    logs: Path
    zygote: Zygote
    started: list[WorkerProcess] = field(default_factory=list)

    def spawn(self, *names: str, queue: str | None = None, env: dict | None = None) -> list[WorkerProcess]:
        """Start one worker per name and return once all of them have registered.

        One torch thread each (two workers share two cores) and a 3 s heartbeat timeout unless `env` says.
        """
        from jobs import api

        self.logs.mkdir(parents=True, exist_ok=True)
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "CODASH_HEARTBEAT_TIMEOUT": "3", **(env or {})}
        batch = []
        for name in names:
            log = self.logs / f"{name}.log"
            argv = ["--device", "cpu", "--name", name, *(["--queue", queue] if queue else [])]
            batch.append(WorkerProcess(name, self.zygote.fork(argv, environment, log), log))
        self.started += batch
        r = api.connect()
        for worker in batch:

            def registered(worker: WorkerProcess = worker) -> bool:
                return worker.name in {info.name for info in api.workers(r)} or not worker.alive()

            wait_for(registered, WORKER_START_S, f"worker {worker.name} to register")
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
def worker_pool(tmp_path: Path, zygote: Zygote) -> Iterator[Workers]:
    """Workers for one test, against whichever server the test's CODASH_HOME points to."""
    pool = Workers(tmp_path / "worker-logs", zygote)
    yield pool
    pool.close()


# --- what the tests compare: events without their timings, the embedded server's process ---

# differ between two runs of one config: their timings, and where and by which code each ran (provenance)
TIMING_FIELDS = frozenset(
    {"train_images_per_s", "wall_s", "elapsed_s", "codash_commit", "host", "device_name"}
)


def without_timing(event: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in event.items() if key not in TIMING_FIELDS}


def server_pid(home: Path) -> int | None:
    """The embedded Redis's process id, from the pid file it writes in CODASH_HOME (to kill it in a test)."""
    from jobs.server import DATA_DIR

    with contextlib.suppress(FileNotFoundError, ValueError):
        return int((home / DATA_DIR / "redis.pid").read_text().strip())
    return None


# --- realistic runs: events as the trainer writes them, stored as a worker leaves them ---

HEARTBEAT_MS = 600_000  # a stored "running" run stays running for the whole test


def config_event(start: int = 0, total: int = 100, **config) -> dict:
    return make_event(
        "config",
        config=make_config(config).model_dump(mode="json"),
        device="cpu",
        torch_version="x",
        codash_version="x",
        codash_commit=None,
        host="test-host",
        device_name="test cpu",
        start_iteration=start,
        total_iterations=total,
        step="eager",
        step_reason="cpu",
        probe_step="eager",
        probe_step_reason="cpu",
        precision="fp32",
    )


def metrics_event(it: int, reg: float = 0.0) -> dict:
    return make_event(
        "metrics", iteration=it, epoch=it / 10, lr=1e-3, train_loss=2.0 - it / 100, train_acc=0.5, reg=reg
    )


def eval_event(it: int, pgd: float, fgsm: float = 0.5) -> dict:
    return make_event(
        "eval",
        iteration=it,
        clean_acc=0.9,
        fgsm_acc=fgsm,
        pgd_acc=pgd,
        cos_fgsm_pgd=0.8,
        cos_grad_random=0.9,
        train_pgd_acc=pgd,
    )


def probe_event(it: int, pgd: float) -> dict:
    return make_event("probe", iteration=it, fgsm_acc=0.6, pgd_acc=pgd, cos_fgsm_pgd=0.7, cos_grad_random=0.8)


def co_event(it: int, onset: int | None = None, interval: list[int] | None = None) -> dict:
    """A co event whose onset the dense probe placed at `onset` (default: the first collapsed eval), within
    `interval` over resamples of its images."""
    return make_event(
        "co",
        iteration=it,
        pgd_acc=0.01,
        best_pgd_acc=0.4,
        fgsm_acc=0.9,
        confirmed_at=it + 20,
        rule="r",
        onset_iteration=it if onset is None else onset,
        onset_rule="r",
        onset_probes=[],
        onset_evals=None,
        onset_interval=interval,
    )


def warning_event(it: int, value: float = 0.6, threshold: float = 0.75) -> dict:
    """A co_warning event as trainer.warning.COWarning gives it: the alignment fell below `threshold`."""
    from trainer.warning import RULE, SIGNAL

    return make_event("co_warning", iteration=it, signal=SIGNAL, value=value, threshold=threshold, rule=RULE)


def final_event(co: int | None, pgd: float = 0.01) -> dict:
    return make_event(
        "final",
        co_detected=co is not None,
        co_iteration=co,
        last={"clean_acc": 0.8, "pgd_acc": pgd},
        best={"clean_acc": 0.7, "pgd_acc": 0.4},
        best_iteration=40,
        attack_points=297,
        train_images_per_s=1000.0,
        wall_s=12.0,
        iterations=100,
    )


def snapshot_event(
    it: int, channels: int = 1, size: int = 16, n_filters: int | None = 16, kernel: int = 3
) -> dict:
    """A snapshot as trainer.evaluate.snapshot makes it: nested lists, deltas in units of ε, in [-1, 1]."""
    rng = np.random.default_rng(it)

    def signed(*shape: int) -> list:
        return np.round(rng.uniform(-1, 1, shape), 2).tolist()

    image = (channels, size, size)
    return make_event(
        "snapshot",
        iteration=it,
        label=3,
        predictions={"clean": 3, "fgsm": 3, "pgd": 5},
        cos_grad_random=0.25,
        image=np.round(rng.uniform(0, 1, image), 2).tolist(),
        fgsm_delta=signed(*image),
        pgd_delta=signed(*image),
        grad_x=signed(*image),
        grad_random=signed(*image),
        filters=None if n_filters is None else signed(n_filters, channels, kernel, kernel),
    )


def read_back(figure: dict[str, Any]):
    """A figure the dashboard builds as plain dicts (app.spec), read back through plotly.py's object model,
    which validates it: a misspelt property or a value out of range fails the test (the dashboard sends the
    dicts to plotly.js unchecked)."""
    import plotly.graph_objects as go

    return go.Figure(figure)


def run_figure(*args: Any, **kwargs: Any):
    """app.panels.run_figure, read back (read_back)."""
    from app import panels

    return read_back(panels.run_figure(*args, **kwargs))


def co_run_events(total: int = 100, co_at: int = 60) -> list[dict]:
    events = [config_event(total=total)]
    for it in range(1, total + 1):
        events.append(metrics_event(it))
        if it % 20 == 0:
            collapsed = it >= co_at
            events.append(eval_event(it, pgd=0.01 if collapsed else 0.4, fgsm=0.9 if collapsed else 0.45))
            if it == co_at:
                events.append(co_event(it))
    return [*events, final_event(co_at)]


def store_run(
    r, events: list[dict], status: api.RunStatus = api.RunStatus.FINISHED, sweep_id: str | None = None
) -> str:
    """Submit the run of `events`' config, then do what a worker does: claim it, stream events, finish."""
    run_id = api.submit(r, make_config(events[0]["config"]), sweep_id=sweep_id)
    rq_queue(r, api.DEFAULT_QUEUE).remove(job_id(run_id, 1))  # no worker will take it
    claim = {"status": api.RunStatus.RUNNING, "started_at": time.time() - 30, "worker": "test-worker"}
    claim["device"] = "cpu"
    transition(r, run_id, {api.RunStatus.QUEUED}, claim, attempt=1, heartbeat=("test-worker", HEARTBEAT_MS))
    append(r, run_id, events)
    if status != api.RunStatus.RUNNING:
        finished = {"status": status, "finished_at": time.time(), "error": ""}
        transition(r, run_id, {api.RunStatus.RUNNING}, finished, attempt=1)
    return run_id


def append(r, run_id: str, events: list[dict]) -> None:
    sink = StreamSink(r, run_id, attempt=1)
    for event in events:
        sink(event)
    sink.close()


def running_events(total: int = 100, until: int = 40, **config) -> list[dict]:
    events = [config_event(total=total, **config)]
    for it in range(1, until + 1):
        events.append(metrics_event(it, reg=0.1 if config.get("grad_align_lambda") else 0.0))
        if it % 20 == 0:
            events.append(eval_event(it, pgd=0.4))
    return events


@pytest.fixture
def eager_rule(monkeypatch):
    """The CO warning's rule made to fire at the second eval of a tiny run (a fall of >= -1 over one eval)."""
    from trainer import warning

    monkeypatch.setattr(warning, "FALL", -1.0)
    monkeypatch.setattr(warning, "SPAN", 20)
    monkeypatch.setattr(warning, "MIN_PEAK", 0.0)


# The suite's tiers. `make test-fast` runs the tests that need none of these; `make test` runs them all.
# A test's tier follows from where it lives and what it uses, so a new test lands in the right tier
# without being told: browser tests live in e2e/, the fault suite in faults/, and a test that takes the
# `worker_pool` or an embedded Redis (`redis_home`, `r`) fixture needs those servers. Tests that train
# beyond a few steps say so with `pytest.mark.train` (or `science`, for a claim of the paper checked over
# seeds).
TIERS = ("browser", "faults", "workers", "redis", "train", "science")


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist each test process, and the workers and servers it starts, gets its share of the
    cores: two processes that each ran torch on every core would contend for all of them.

    Every new AppTest scans the metadata of every installed package for Streamlit components (0.7 s here;
    a served dashboard scans once at start-up). The packages do not change during a test run, so the
    scan's answer is kept for the session."""
    from streamlit.components.v2 import manifest_scanner

    manifest_scanner.scan_component_manifests = functools.cache(manifest_scanner.scan_component_manifests)
    processes = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if processes > 1 and "OMP_NUM_THREADS" not in os.environ:
        import torch

        threads = max(1, (os.cpu_count() or 1) // processes)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


# The slowest tiers first: a file's place in the run (`make test`: `--no-loadscope-reorder`, so files go to
# the test processes in this order) follows its slowest tier, so the long files start first and the short
# ones fill in at the end, where the process that finishes first would otherwise wait for the other. The
# science file leads: the browser flow, next, then trains its runs beside one training process, not beside
# another browser (measured: 59 s, against 83 s beside the other browser files).
SLOWEST_FIRST = ("science", "browser", "train", "faults", "workers", "redis")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = item.path.as_posix()
        fixtures = set(getattr(item, "fixturenames", ()))
        if "/tests/e2e/" in path:
            item.add_marker(pytest.mark.browser)
        if "/tests/faults/" in path:
            item.add_marker(pytest.mark.faults)
        if fixtures & {"worker_pool", "zygote"}:
            item.add_marker(pytest.mark.workers)
        if fixtures & {"redis_home", "shared_redis_home"}:
            item.add_marker(pytest.mark.redis)
    rank: dict[Path, int] = {}  # a file's slowest tier (len(SLOWEST_FIRST): none)
    for item in items:
        tiers = [SLOWEST_FIRST.index(mark.name) for mark in item.iter_markers() if mark.name in SLOWEST_FIRST]
        rank[item.path] = min([rank.get(item.path, len(SLOWEST_FIRST)), *tiers])
    items.sort(key=lambda item: rank[item.path])  # stable: a file's tests stay together and in order


# The fault suite's figures (tests/faults/conftest.py): each test's row travels with its teardown report,
# so the table is whole when the tests ran in several processes (pytest-xdist) too.
FAULT_FIGURES: list[dict[str, Any]] = []
FAULT_FIGURES_ARTIFACT = ROOT / "test-artifacts" / "fault-figures.json"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":
        FAULT_FIGURES.extend(row for name, row in report.user_properties if name == "fault_figures")


def pytest_terminal_summary(terminalreporter) -> None:
    rows = FAULT_FIGURES
    if not rows:
        return
    write = terminalreporter.write_line
    terminalreporter.section("codash fault suite figures")
    width = max(len(row["scenario"]) for row in rows)
    write(f"{'scenario':<{width}}  faults  events checked  events lost")
    for row in rows:
        write(
            f"{row['scenario']:<{width}}  {row['faults_injected']:>6}  {row['events_checked']:>14}"
            f"  {row['events_lost']:>11}"
        )
    totals = [sum(row[key] for row in rows) for key in ("faults_injected", "events_checked", "events_lost")]
    write(f"{'total':<{width}}  {totals[0]:>6}  {totals[1]:>14}  {totals[2]:>11}")
    with contextlib.suppress(OSError):
        FAULT_FIGURES_ARTIFACT.parent.mkdir(exist_ok=True)
        FAULT_FIGURES_ARTIFACT.write_text(json.dumps(rows, indent=2) + "\n")
