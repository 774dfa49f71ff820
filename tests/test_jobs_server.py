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
    stop_server,
    stored_url,
)


def test_the_embedded_server_is_private_and_started_once(redis_home, capsys):
    url = stored_url(redis_home)
    password = (redis_home / PASSWORD_FILE).read_text().strip()
    assert url.startswith(f"redis://:{password}@127.0.0.1:") and len(password) >= 32
    for name in (URL_FILE, PASSWORD_FILE, "redis/redis.conf"):
        assert stat.S_IMODE((redis_home / name).stat().st_mode) == 0o600, name
    conf = (redis_home / "redis" / "redis.conf").read_text()
    assert "appendonly yes" in conf and "appendfsync everysec" in conf and "bind 127.0.0.1" in conf

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
    monkeypatch.setenv("REDIS_URL", stored_url(redis_home).replace("/0", "/3"))
    assert api.connect().connection_pool.connection_kwargs["db"] == 3
    assert api.connect(stored_url(redis_home)).connection_pool.connection_kwargs["db"] == 0


def test_stopped_and_started_again_it_keeps_port_password_and_data(redis_home):
    url = stored_url(redis_home)
    with api.connect() as client:
        client.xadd("s", {"event": "{}"})
    assert stop_server(redis_home) and not ping(url)
    assert not stop_server(redis_home)
    assert ensure_server(redis_home) == url
    with api.connect() as client:
        assert client.xlen("s") == 1


def test_a_stale_url_file_starts_a_new_server(redis_home):
    kill_server(redis_home)  # killed without a word: the URL file stays behind
    wait_for(lambda: not ping(stored_url(redis_home)), 10, "the killed server to stop answering")
    assert ensure_server(redis_home).startswith("redis://:") and ping(stored_url(redis_home))
