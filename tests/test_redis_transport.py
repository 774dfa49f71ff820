"""Where the embedded Redis's password goes: over a Unix socket in a 0700 directory by default, never to a
TCP port that codash's server may no longer hold; over TCP only when asked, for workers on other hosts."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
import redis
from conftest import TINY, embedded_redis, kill_server, server_pid, wait_for

from codash.cli import main
from codash.up import up
from jobs import api
from jobs.server import (
    DATA_DIR,
    PASSWORD_FILE,
    SOCKET_NAME,
    SOCKET_PATH_MAX,
    URL_FILE,
    ensure_server,
    free_port,
    parse_tcp,
    ping,
    redis_server_binary,
    socket_path,
    stop_server,
    stored_url,
)
from trainer.config import make_config


class Squatter:
    """A TCP server on 127.0.0.1:port that records every connection and what it sends, and answers nothing:
    whoever binds a port codash's server left."""

    def __init__(self, port: int):
        self.server = socket.create_server(("127.0.0.1", port))
        self.server.settimeout(0.05)
        self.connections = 0
        self.received = bytearray()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = self.server.accept()
            except TimeoutError:
                continue
            self.connections += 1
            threading.Thread(target=self.read, args=(connection,), daemon=True).start()

    def read(self, connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            connection.settimeout(5)
            while chunk := connection.recv(4096):
                self.received += chunk

    def __enter__(self) -> Squatter:
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()
        self.server.close()


@pytest.fixture
def home(tmp_path: Path, monkeypatch) -> Path:
    """CODASH_HOME for a test that starts its server itself; whatever it started is killed at the end."""
    home = tmp_path / "home"
    monkeypatch.setenv("CODASH_HOME", str(home))
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("CODASH_RUNS_DIR", raising=False)
    yield home
    kill_server(home)


@pytest.mark.own_redis
def test_the_embedded_server_has_no_tcp_listener_and_a_private_socket(r, redis_home):
    url = stored_url(redis_home)
    password = (redis_home / PASSWORD_FILE).read_text().strip()
    sock = redis_home / DATA_DIR / SOCKET_NAME
    assert url == f"unix://:{password}@{sock}?db=0" and socket_path(url) == sock
    assert r.config_get("port")["port"] == "0"  # no TCP at all
    assert r.config_get("unixsocketperm")["unixsocketperm"] == "700"
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700 and sock.parent.stat().st_uid == os.getuid()
    assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) & 0o077 == 0
    if shutil.which("ss"):
        listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
        assert f"pid={server_pid(redis_home)}," not in listening  # nothing of the server's on TCP


@pytest.mark.own_redis
def test_a_socket_directory_others_can_write_to_is_refused(redis_home):
    data = redis_home / DATA_DIR
    data.chmod(0o755)  # read and enter: others could not plant a socket yet, but it is not 0700 either
    with pytest.raises(RuntimeError, match=r"mode 0755, not 0700.*chmod 700"):
        api.connect()
    with pytest.raises(RuntimeError, match="not 0700"):
        ensure_server(redis_home)
    data.chmod(0o700)
    assert api.connect().ping()


@pytest.mark.own_redis
@pytest.mark.skipif(os.getuid() != 0, reason="giving a directory to another user needs root")
def test_a_socket_directory_of_another_user_is_refused(redis_home):
    data = redis_home / DATA_DIR
    os.chown(data, 65534, -1)
    try:
        with pytest.raises(RuntimeError, match="belongs to uid 65534"):
            api.connect()
    finally:
        os.chown(data, 0, -1)


def test_a_tcp_url_an_older_codash_stored_never_gets_the_password(home, capsys):
    """An older codash stored redis://:pw@127.0.0.1:PORT/0; its server is gone and someone holds the port."""
    home.mkdir(mode=0o700)
    password = "5e" * 24
    (home / PASSWORD_FILE).write_text(password + "\n")
    port = free_port()
    (home / URL_FILE).write_text(f"redis://:{password}@127.0.0.1:{port}/0\n")
    with Squatter(port) as squatter:
        assert main(["runs"]) == 0
        assert api.connect().ping()
        assert stop_server(home) and ensure_server(home)
    assert squatter.connections == 0 and password.encode() not in squatter.received
    assert stored_url(home).startswith(f"unix://:{password}@")  # the same password, on the socket


def test_a_server_an_older_codash_started_on_tcp_moves_to_the_socket_with_its_data(home):
    """The old server still runs on TCP: it is stopped by its pid file (SIGTERM saves its AOF), not asked."""
    data = home / DATA_DIR
    data.mkdir(parents=True, mode=0o700)
    password, port = "7f" * 24, free_port()
    old = redis.Redis(host="127.0.0.1", port=port, password=password)
    legacy_conf = [
        "bind 127.0.0.1", f"port {port}", f"requirepass {password}", f'dir "{data}"', "appendonly yes",
        "daemonize yes", f'pidfile "{data / "redis.pid"}"', f'logfile "{data / "redis.log"}"',
    ]  # fmt: skip
    (data / "redis.conf").write_text("\n".join(legacy_conf) + "\n")
    subprocess.run([redis_server_binary(), str(data / "redis.conf")], check=True)
    wait_for(lambda: ping(f"redis://:{password}@127.0.0.1:{port}/0"), 30, "the old server to answer")
    old.xadd("s", {"event": "{}"})
    old_pid = server_pid(home)
    (home / PASSWORD_FILE).write_text(password + "\n")
    (home / URL_FILE).write_text(f"redis://:{password}@127.0.0.1:{port}/0\n")

    url = ensure_server(home)
    assert socket_path(url) == data / SOCKET_NAME and server_pid(home) != old_pid
    with api.connect() as client:
        assert client.xlen("s") == 1 and client.config_get("port")["port"] == "0"
    with pytest.raises(redis.ConnectionError):
        old.ping()  # nothing on the old port any more


def test_remote_workers_train_over_tcp_only_when_asked_and_a_stopped_servers_port_gets_nothing(
    home, worker_pool, capsys
):
    port = free_port()
    assert main(["redis", "--tcp", f"127.0.0.1:{port}"]) == 0
    printed = capsys.readouterr().out
    password = (home / PASSWORD_FILE).read_text().strip()
    assert f"redis://127.0.0.1:{port}/0" in printed and password not in printed
    url = stored_url(home)
    assert socket_path(url) is not None  # local processes keep the socket
    assert ensure_server(home) == url  # a plain start finds it, TCP and all
    with pytest.raises(RuntimeError, match=f"already running on TCP 127.0.0.1 port {port}"):
        ensure_server(home, tcp=("127.0.0.1", free_port()))

    remote = f"redis://:{password}@127.0.0.1:{port}/0"  # what a worker on another host sets REDIS_URL to
    worker_pool.spawn("remote", env={"REDIS_URL": remote})
    r = api.connect()
    run_id = api.submit(r, make_config(TINY))
    wait_for(lambda: api.get_run(r, run_id).status == "finished", 120, "the TCP worker to finish its run")
    assert api.get_run(r, run_id).worker == "remote"
    worker_pool.close()
    r.close()

    assert stop_server(home)
    with Squatter(port) as squatter:
        assert main(["runs"]) == 0  # starts the server again: on the socket only
        assert api.connect().config_get("port")["port"] == "0"
        assert stop_server(home)
    assert squatter.connections == 0 and password.encode() not in squatter.received


@pytest.mark.own_redis
def test_a_stale_socket_of_a_crashed_server_is_replaced(redis_home):
    sock = socket_path(stored_url(redis_home))
    kill_server(redis_home)
    wait_for(lambda: not ping(stored_url(redis_home)), 10, "the killed server to stop answering")
    assert stat.S_ISSOCK(sock.stat().st_mode)  # left behind
    assert ensure_server(redis_home) == stored_url(redis_home) and api.connect().ping()


@pytest.mark.own_redis
def test_a_server_that_is_slow_to_answer_is_waited_for_not_started_twice(redis_home):
    """PING fails while the server loads a large AOF (or is stopped, here): a second server on the same data
    would fight the first over it, and take its socket."""
    url, pid = stored_url(redis_home), server_pid(redis_home)
    os.kill(pid, signal.SIGSTOP)
    threading.Timer(3.0, os.kill, (pid, signal.SIGCONT)).start()
    try:
        assert ensure_server(redis_home) == url and server_pid(redis_home) == pid
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_codash_home_too_deep_for_a_socket_path_gets_a_private_directory(tmp_path, monkeypatch, caplog):
    short = tmp_path / "t"
    short.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(short))
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "home"
    assert len(str(deep / DATA_DIR / SOCKET_NAME)) > SOCKET_PATH_MAX
    with caplog.at_level("WARNING"), embedded_redis(deep) as home:
        url = stored_url(home)
        sock = socket_path(url)
        assert sock.parent.parent == short and stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        assert "too long for a Unix socket" in caplog.text
        assert api.connect().ping()
        assert stop_server(home) and ensure_server(home) == url  # the same directory next time


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("0.0.0.0:6379", ("0.0.0.0", 6379)),
        ("[::1]:7000", ("::1", 7000)),
        ("gpu-host:6380", ("gpu-host", 6380)),
    ],
)
def test_tcp_addresses_parse(text, address):
    assert parse_tcp(text) == address


@pytest.mark.parametrize("text", ["6379", ":6379", "host:", "host:0", "host:70000", "a b:1"])
def test_bad_tcp_addresses_are_refused(text):
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_tcp(text)


def test_up_refuses_redis_tcp_with_a_server_of_ones_own(home, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://:pw@db.example:6379/0")
    with pytest.raises(RuntimeError, match="--redis-tcp is for the embedded Redis"):
        up("127.0.0.1", free_port(), None, True, ("127.0.0.1", free_port()))
