"""`codash up`: the whole stack on one machine — Redis, workers and the dashboard — under one supervisor.

It starts what is missing (the embedded Redis unless REDIS_URL is set; two workers per visible GPU, or one
CPU worker; the Streamlit app), restarts a child that dies, and on Ctrl-C or SIGTERM stops everything it
started: workers first (their runs checkpoint and become resumable), then the app, then the Redis it
started. A lock file in CODASH_HOME makes a second `codash up` find the first and say where it is.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import app
from app.guard import SERVE_HOST_ENV
from app.password import PASSWORD_ENV, generated_password, password_problem
from jobs.paths import codash_home
from jobs.server import PASSWORD_FILE, public_url, start_server, stop_server, tcp_url

APP_SCRIPT = Path(app.__file__).resolve().with_name("server.py")  # main.py behind app.guard, as a path
UP_FILE = "up.json"
HEALTH_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
# Two captured ResNet-18 FGSM runs on one H200 train 1.32x as many images per second as one; four, no more
# than two (docs/benchmarks.md, shared notes): a sweep's runs go two to a GPU.
WORKERS_PER_GPU = 2
RESTART_LIMIT = 5  # restarts per child; past it the child is left down and the fault reported
# What a GPU driver creates: NVIDIA's control device, ROCm's kernel driver, WSL's GPU bridge.
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")
TRUSTED_PROXIES_ENV = "CODASH_TRUSTED_PROXIES"  # comma-separated addresses or networks of reverse proxies


class AlreadyRunning(RuntimeError):
    pass


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen | None = None
    restarts: int = 0
    env: dict[str, str] = field(default_factory=dict)
    hidden: tuple[str, ...] = ()  # variables of this process the child must not see

    def environment(self) -> dict[str, str]:
        return {name: value for name, value in {**os.environ, **self.env}.items() if name not in self.hidden}

    def start(self) -> None:
        # A session of its own: a Ctrl-C in the terminal reaches only the supervisor, which stops the
        # children in order (workers must checkpoint before Redis goes away).
        self.process = subprocess.Popen(self.argv, env=self.environment(), start_new_session=True)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def is_loopback(host: str) -> bool:
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        return False
    return all(address.startswith("127.") or address == "::1" for address in addresses)


def visible_gpus() -> int:
    """CUDA devices torch sees; 0 without importing torch (2.5 s here) on a host with no GPU device node."""
    if not any(Path(node).exists() for node in GPU_DEVICE_NODES):
        return 0
    import torch

    return torch.cuda.device_count()


def plan_workers(count: int | None) -> list[str]:
    """Devices for the workers, spread over the visible GPUs in turn: WORKERS_PER_GPU per GPU by default,
    else one CPU worker."""
    gpus = visible_gpus()
    if count is None:
        count = WORKERS_PER_GPU * gpus or 1
    return [f"cuda:{i % gpus}" if gpus else "cpu" for i in range(count)]


def worker_env(devices: list[str]) -> dict[str, str]:
    """CPU workers split the cores between them: each of N gets cores/N torch threads, where each would
    otherwise take them all and N workers would contend for every core. OMP_NUM_THREADS, if set, wins."""
    cpu_workers = devices.count("cpu")
    if not cpu_workers or "OMP_NUM_THREADS" in os.environ:
        return {}
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // cpu_workers))}


def app_env(host: str) -> dict[str, str]:
    """The dashboard's own environment: the address it serves, and the proxies whose forwarded headers
    (X-Forwarded-For) it believes: only those CODASH_TRUSTED_PROXIES names. uvicorn's default believes any
    client on loopback, which would let one guess passwords under a fresh address each time."""
    return {SERVE_HOST_ENV: host, "FORWARDED_ALLOW_IPS": os.environ.get(TRUSTED_PROXIES_ENV, "")}


def app_argv(host: str, port: int) -> list[str]:
    return [
        sys.executable, "-m", "streamlit", "run", str(APP_SCRIPT),
        "--server.address", host,
        "--server.port", str(port),
        "--server.headless", "true",
        "--server.enableXsrfProtection", "true",
        "--server.maxUploadSize", "1",  # MB, the least Streamlit takes; app.guard closes the endpoint too
        "--browser.gatherUsageStats", "false",
        "--global.developmentMode", "false",
        "--client.toolbarMode", "viewer",
    ]  # fmt: skip


def dashboard_healthy(url: str) -> bool:
    """Whether the Streamlit server at `url` answers its health check (HTTP 200 on /_stcore/health)."""
    with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
        return reply.status == 200
    return False


def wait_healthy(url: str, app: Child, timeout: float = HEALTH_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not app.alive():
            raise RuntimeError("the dashboard exited while starting; see its output above")
        if dashboard_healthy(url):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the dashboard did not answer at {url} within {timeout:g} s")


@contextlib.contextmanager
def single_instance(home: Path):
    """Hold CODASH_HOME/up.lock for the life of the stack; a second `codash up` gets AlreadyRunning."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(home / "up.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = home / UP_FILE
            where = json.loads(info.read_text()) if info.exists() else {}
            raise AlreadyRunning(
                f"codash is already running at {where.get('url', '?')} (pid {where.get('pid', '?')}); "
                "stop it with Ctrl-C in its terminal or `kill` that pid"
            ) from None
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                (home / UP_FILE).unlink()


def check_port(host: str, port: int) -> None:
    """Refuse a port something else listens on: the dashboard would not start, and a health check answered
    by the other server (another Streamlit) would announce a stack that is not there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is free
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise RuntimeError(
                f"--port {port}: {host}:{port} is in use by another program ({exc.strerror}); choose another "
                "port, or stop that program"
            ) from None


def check_password(host: str, password: str | None) -> None:
    """A dashboard beyond loopback needs a password, and any password must be long enough; the error
    offers a freshly generated one."""
    problem = password_problem(password) if password else None
    if not password and not is_loopback(host):
        problem = f"--host {host} would expose the dashboard to the network without a password"
    if problem:
        raise RuntimeError(
            f"{problem}: set {PASSWORD_ENV}, for example {PASSWORD_ENV}={generated_password()} (generated "
            "just now), or keep the default --host 127.0.0.1 without one"
        )


def up(
    host: str, port: int, workers: int | None, no_worker: bool, redis_tcp: tuple[str, int] | None = None
) -> int:
    """`redis_tcp`: the embedded Redis also listens there, for workers on other hosts (by default it has
    only its Unix socket: jobs.server says why)."""
    check_password(host, os.environ.get(PASSWORD_ENV))
    home = codash_home()
    with single_instance(home):
        check_port(host, port)
        started_redis = False
        redis_url = os.environ.get("REDIS_URL")
        if redis_url and redis_tcp:
            raise RuntimeError("--redis-tcp is for the embedded Redis; REDIS_URL names a server of your own")
        if not redis_url:
            redis_url, started_redis = start_server(home, redis_tcp)
        env = {"REDIS_URL": redis_url}
        worker_argv = [sys.executable, "-m", "jobs.worker", "--device"]
        devices = [] if no_worker else plan_workers(workers)
        workers_env = {**env, **worker_env(devices)}
        children = [
            Child(f"worker {i} ({device})", [*worker_argv, device], env=workers_env, hidden=(PASSWORD_ENV,))
            for i, device in enumerate(devices)
        ]
        app = Child("dashboard", app_argv(host, port), env={**env, **app_env(host)})
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        stopping = []

        def request_stop(signum, frame):
            stopping.append(signum)

        previous_handlers = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for child in (*children, app):
                child.start()
            wait_healthy(url, app)
            (home / UP_FILE).write_text(json.dumps({"url": url, "pid": os.getpid()}))
            print(f"codash is up: {url}", flush=True)
            print(f"  redis   {public_url(redis_url)}{' (embedded)' if started_redis else ''}", flush=True)
            if redis_tcp:
                print(f"  redis   {tcp_url(redis_tcp)} for other hosts (password in {home / PASSWORD_FILE})")
            print(f"  workers {len(children) or 'none (--no-worker)'}", flush=True)
            print("Press Ctrl-C to stop.", flush=True)
            while not stopping:
                for child in (*children, app):
                    if not child.alive() and child.restarts < RESTART_LIMIT:
                        child.restarts += 1
                        print(f"codash up: {child.name} exited; restarting it", file=sys.stderr, flush=True)
                        child.start()
                time.sleep(0.5)
        finally:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            stop_children(children)
            stop_children([app])
            if started_redis:
                stop_server(home)
    return 0


def stop_children(children: list[Child]) -> None:
    """SIGTERM, then SIGKILL whatever has not exited after STOP_TIMEOUT_S: nothing is left behind."""
    running = [child for child in children if child.alive()]
    for child in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in running:
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(
                f"codash up: {child.name} did not stop within {STOP_TIMEOUT_S:g} s; killing it",
                file=sys.stderr,
                flush=True,
            )
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.process.pid, signal.SIGKILL)
            child.process.wait()
