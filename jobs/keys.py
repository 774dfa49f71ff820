"""Every Redis key codash writes, in one place, so the keyspace can be read (and migrated) at a glance.

RQ keeps its own keys under `rq:`; everything of codash's is under `codash:`.
"""

from __future__ import annotations

import re

PREFIX = "codash"
RUNS = f"{PREFIX}:runs"  # sorted set: run id -> created_at (newest last)
RUNNING = f"{PREFIX}:running"  # set of run ids whose status is running (what the reaper checks)
WORKERS = f"{PREFIX}:workers"  # set of worker names; each one's hash expires when it stops beating
QUEUES = f"{PREFIX}:queues"  # set of RQ queue names runs were submitted to
DEFAULT_QUEUE = "codash"

RUN_ID = re.compile(r"[0-9a-f]{12}")  # use fullmatch: "$" would let a trailing newline through
NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")  # sweep ids, queue and worker names: safe in keys and URLs


def run(run_id: str) -> str:
    """Hash: the run's record (status, config JSON, times, progress, final results)."""
    return f"{PREFIX}:run:{run_id}"


def stream(run_id: str) -> str:
    """Stream: the trainer's events, one JSON object per entry in field `event`; never trimmed."""
    return f"{PREFIX}:stream:{run_id}"


def stop(run_id: str) -> str:
    """String: present while a cancel of the running run is pending."""
    return f"{PREFIX}:stop:{run_id}"


def heartbeat(run_id: str) -> str:
    """String with a TTL: the worker running the run; gone means the worker is gone."""
    return f"{PREFIX}:heartbeat:{run_id}"


def sweep(sweep_id: str) -> str:
    """Sorted set: the sweep's run ids -> created_at."""
    return f"{PREFIX}:sweep:{sweep_id}"


def worker(name: str) -> str:
    """Hash with a TTL: a live worker's device, host, state and current run."""
    return f"{PREFIX}:worker:{name}"
