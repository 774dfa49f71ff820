"""How every process reaches Redis: REDIS_URL when set, else the embedded server under CODASH_HOME."""

from __future__ import annotations

import os

import redis

from jobs.server import ensure_server, warn_if_vulnerable

_checked: set[str] = set()  # servers whose release this process has looked at


def connect(url: str | None = None) -> redis.Redis:
    """A client for `url`, else $REDIS_URL (redis:// or rediss://), else the embedded server (started
    if need be).

    Responses stay bytes (decode_responses=False) because RQ stores zlib-compressed job data in the same
    database; every function in `jobs` decodes what it reads, so callers never see bytes.
    A server given by URL is not codash's to refuse, but one with known unfixed vulnerabilities is logged
    as an error, once per process.
    """
    url = url or os.environ.get("REDIS_URL") or ensure_server()
    client = redis.Redis.from_url(url, health_check_interval=30)
    if url not in _checked:
        _checked.add(url)
        warn_if_vulnerable(client, url)
    return client
