"""How every process reaches Redis: REDIS_URL when set, else the embedded server under CODASH_HOME."""

from __future__ import annotations

import os

import redis

from jobs.server import ensure_server


def connect(url: str | None = None) -> redis.Redis:
    """A client for `url`, else $REDIS_URL (redis:// or rediss://), else the embedded server (started
    if need be).

    Responses stay bytes (decode_responses=False) because RQ stores zlib-compressed job data in the same
    database; every function in `jobs` decodes what it reads, so callers never see bytes.
    """
    url = url or os.environ.get("REDIS_URL") or ensure_server()
    return redis.Redis.from_url(url, health_check_interval=30)
