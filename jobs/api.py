"""The job system's public API: what the dashboard and the CLI call, and nothing else needs.

    r = api.connect()                      # REDIS_URL, else the embedded server under CODASH_HOME
    run_id = api.submit(r, config)         # 12 hex characters
    child = api.fork(r, run_id, at=150, grad_align_lambda=4.0)  # continue it from an evaluation
    events, last = api.read_events(r, run_id)              # everything so far
    events, last = api.read_events(r, run_id, after=last)  # only what came since

The client returns bytes (RQ needs that); every function here decodes, so callers only see str and dicts.
Status changes are atomic; reading a run (get_run, list_runs, sweep_runs) also marks a `running` run whose
worker stopped beating as `interrupted`. A resumed run's stream loses the entries after its last checkpoint
(they are recomputed); rows keyed by iteration make a reader's cache of them harmless.
Importing this module does not import torch.
"""

import redis

from jobs.connection import connect
from jobs.keys import DEFAULT_QUEUE
from jobs.limits import OverLimit
from jobs.limits import check as check_limits
from jobs.limits import violations as limit_violations
from jobs.paths import run_dir
from jobs.queue import cancel, checkpoints, delete, fork, fork_points, queued_count, resume, submit
from jobs.registry import (
    CANCELLABLE,
    MAX_NOTE_CHARS,
    RESUMABLE,
    TERMINAL,
    InvalidTransition,
    Run,
    RunNotFound,
    RunStatus,
    WorkerInfo,
    annotate,
    get_run,
    lineage,
    list_runs,
    sweep_runs,
    workers,
)
from jobs.stream import all_events, last_checkpoint, read_events

# What a command line reports as one line and exit status 2: a missing run, a refused status change, Redis
# gone, or bad input (a ConfigError is a ValueError).
JOB_ERRORS = (RunNotFound, InvalidTransition, redis.RedisError, ValueError)
# What a user is offered to resume (the dashboard's button, `codash resume`): the queue also resumes a failed
# run, but it would fail the same way again; the user relaunches it with an edited config instead.
USER_RESUMABLE = RESUMABLE - {RunStatus.FAILED}

__all__ = [
    "MAX_NOTE_CHARS",
    "CANCELLABLE",
    "DEFAULT_QUEUE",
    "RESUMABLE",
    "TERMINAL",
    "USER_RESUMABLE",
    "JOB_ERRORS",
    "InvalidTransition",
    "OverLimit",
    "Run",
    "RunNotFound",
    "RunStatus",
    "WorkerInfo",
    "all_events",
    "annotate",
    "cancel",
    "check_limits",
    "connect",
    "delete",
    "fork",
    "fork_points",
    "checkpoints",
    "get_run",
    "last_checkpoint",
    "lineage",
    "limit_violations",
    "list_runs",
    "queued_count",
    "read_events",
    "resume",
    "run_dir",
    "submit",
    "sweep_runs",
    "workers",
]
