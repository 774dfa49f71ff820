"""Submitting runs to RQ, and the user's controls: cancel, resume, delete.

A job is an RQ job serialised with RQ's JSONSerializer (nothing is unpickled from Redis) whose only
arguments are the run id and the attempt number: the config is read from the run's record when the job
starts. Each attempt of a run is its own RQ job, `<run id>-<attempt>`, so a failure RQ reports can always be
traced back to the run.
"""

from __future__ import annotations

import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import redis
from redis.client import Pipeline
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from jobs import keys
from jobs.limits import check as check_limits
from jobs.paths import run_dir
from jobs.registry import (
    CANCELLABLE,
    RESUMABLE,
    InvalidTransition,
    Record,
    RunNotFound,
    RunStatus,
    attempt_of,
    parse,
    read,
    transition,
)
from trainer.config import ConfigError, RunConfig, make_config
from trainer.events import printable
from trainer.fork import check_fork, checkpoint_files, eval_iterations, seed_fork

RUN_JOB = "jobs.worker.run_job"
JOB_ID = re.compile(r"([0-9a-f]{12})-([1-9][0-9]*)")
STOP_TTL_S = 86_400  # a pending cancel outlives any plausible wait for the worker to see it
RESULT_TTL_S = 7 * 86_400  # RQ's own records of finished and failed jobs; the run registry keeps the rest


class RunJob(Job):
    """An RQ job that can only call run_job: a payload naming any other function, or any callback (RQ
    imports and calls those too), fails before anything is imported."""

    @property
    def func(self):
        if self.func_name != RUN_JOB or self.instance is not None:
            raise ValueError(f"malformed job payload: not a codash job ({self.func_name!r})")
        callbacks = [name for name in self._callback_names() if name]
        if callbacks:
            raise ValueError(f"malformed job payload: codash jobs have no callbacks ({callbacks[0]!r})")
        if len(self.args) != 2 or self.kwargs:
            raise ValueError(
                f"malformed job payload: run_job takes (run id, attempt), got {len(self.args)} argument(s)"
                f" and keywords {sorted(self.kwargs)}"
            )
        return super().func

    def _callback_names(self) -> tuple[str | None, ...]:
        return (self._success_callback_name, self._failure_callback_name, self._stopped_callback_name)

    # codash queues no callbacks: whatever a job record names here is never imported, whatever path asks
    success_callback = failure_callback = stopped_callback = property(lambda self: None)

    @property
    def description(self) -> str | None:
        return self._description

    @description.setter
    def description(self, text: str | None) -> None:
        """The worker logs a job's description: one printable line, so a record cannot forge log lines or
        send terminal escapes."""
        self._description = None if text is None else printable(text)[:200]


def rq_queue(r: redis.Redis, name: str) -> Queue:
    return Queue(name, connection=r, serializer=JSONSerializer, job_class=RunJob)


def job_id(run_id: str, attempt: int) -> str:
    return f"{run_id}-{attempt}"


def run_of_job(rq_job_id: str) -> tuple[str, int] | None:
    """(run id, attempt) of an RQ job id, None for a job that is not codash's."""
    match = JOB_ID.fullmatch(rq_job_id)
    return (match[1], int(match[2])) if match else None


def check_name(field: str, value: str) -> str:
    if not isinstance(value, str) or not keys.NAME.fullmatch(value):
        raise ConfigError(f"{field}: must be 1-64 letters, digits or _ . : - (got {value!r})")
    return value


def submit(
    r: redis.Redis, config: RunConfig, sweep_id: str | None = None, *, queue: str = keys.DEFAULT_QUEUE
) -> str:
    """Record the run and enqueue its first attempt in one transaction; returns the run id (12 hex chars).

    Every path that queues a run (the form, a sweep, Rescue, `codash submit` and `fork`) comes here, so this
    deployment's limits (jobs.limits: queue length, work, stream) are checked here, once, for all of them.
    """
    if not isinstance(config, RunConfig):
        raise TypeError(f"config must be a RunConfig, got {type(config).__name__}")
    check_limits([config], queued_count(r))
    if sweep_id is not None:
        check_name("sweep_id", sweep_id)
    check_name("queue", queue)
    run_id, now = secrets.token_hex(6), time.time()
    if config.parent is not None:
        _prepare_fork(r, config, run_id)
    record = {
        "id": run_id,
        "status": RunStatus.QUEUED,
        "config": config.model_dump_json(),
        "created_at": now,
        "attempt": 1,
        "queue": queue,
        "sweep_id": sweep_id or "",
        "iteration": 0,
    }
    with r.pipeline() as pipe:  # MULTI: no run is ever visible without its job, nor a job without its run
        pipe.multi()  # explicitly, as RQ expects of a pipeline it is handed
        pipe.hset(keys.run(run_id), mapping=record)
        pipe.zadd(keys.RUNS, {run_id: now})
        if sweep_id:
            pipe.zadd(keys.sweep(sweep_id), {run_id: now})
        if config.parent is not None:
            pipe.zadd(keys.children(config.parent), {run_id: now})
        _enqueue(r, pipe, queue, run_id, 1)
        try:
            pipe.execute()
        except BaseException:
            shutil.rmtree(run_dir(run_id), ignore_errors=True)  # a fork's copy of its starting point
            raise
    return run_id


def fork(r: redis.Redis, run_id: str, at: int, *, queue: str | None = None, **changes: Any) -> str:
    """Queue a run that continues run `run_id` from its evaluation at iteration `at`, with `changes` to
    its config (e.g. grad_align_lambda=4); returns the fork's id. The name is not inherited."""
    parent = read(r, run_id)
    if parent is None:
        raise RunNotFound(run_id)
    base = parse(parent).config.model_dump(exclude={"name"})
    config = make_config({**base, **changes, "parent": run_id, "fork_iteration": at})
    return submit(r, config, queue=queue or parent.get("queue") or keys.DEFAULT_QUEUE)


def checkpoints(run_id: str) -> dict[str, Path]:
    """The run's checkpoints a user can download, by name (last, best, "iteration K"), from its directory."""
    return checkpoint_files(run_dir(run_id))


def fork_points(run_id: str) -> list[int]:
    """The iterations of run `run_id` a fork can start from (its kept evaluation checkpoints)."""
    return eval_iterations(run_dir(run_id))


def _prepare_fork(r: redis.Redis, config: RunConfig, run_id: str) -> None:
    """Check the fork against its parent and give it its own copy of the parent's checkpoint."""
    parent = read(r, config.parent)
    if parent is None:
        raise ConfigError({"parent": f"no run with id {config.parent!r} (deleted?)"})
    check_fork(parse(parent).config, config)
    seed_fork(run_dir(config.parent), config.fork_iteration, run_dir(run_id))


def cancel(r: redis.Redis, run_id: str) -> RunStatus:
    """A queued run leaves the queue and never starts; a running one stops at its next iteration.

    The worker saves a checkpoint and marks the run `cancelled` (within a second or two on CPU), so it can be
    resumed; an interrupted one becomes cancelled. Cancelling a cancelled run does nothing; a finished or
    failed one cannot be cancelled (CANCELLABLE). Returns the status the run had, to say what happened.
    """

    def cancelled(record: Record) -> dict[str, Any]:
        """An interrupted run keeps the time its attempt ended: the wait since ran nothing (its elapsed)."""
        return {"status": RunStatus.CANCELLED, "finished_at": record.get("finished_at") or time.time()}

    dequeue = lambda pipe, record: _dequeue(pipe, run_id, record)
    old = transition(r, run_id, CANCELLABLE - {RunStatus.RUNNING}, cancelled, also=dequeue)
    if old is not None:
        return RunStatus(old["status"])
    record = _existing(r, run_id)
    if record["status"] == RunStatus.RUNNING:
        r.set(keys.stop(run_id), 1, ex=STOP_TTL_S)
    elif record["status"] != RunStatus.CANCELLED:
        raise InvalidTransition(f"run {run_id} is {record['status']}: there is nothing to cancel")
    return RunStatus(record["status"])


def resume(r: redis.Redis, run_id: str) -> int:
    """Queue a new attempt of an interrupted, cancelled or failed run, continuing from its last checkpoint.

    Returns the new attempt's number. A new attempt joins the queue, so the queue's limit applies.
    """
    check_limits([parse(_existing(r, run_id)).config], queued_count(r))

    def requeued(record: Record) -> dict[str, Any]:
        attempt = attempt_of(record) + 1
        ran = parse(record).elapsed_s(time.time()) or 0.0  # the attempts so far, kept for the run's clock
        return {
            "status": RunStatus.QUEUED,
            "attempt": attempt,
            "error": "",
            "finished_at": "",
            "worker": "",
            "started_at": "",
            "elapsed_before": ran,
        }

    def enqueue_next(pipe: Pipeline, record: Record) -> None:
        attempt = attempt_of(record) + 1
        _enqueue(r, pipe, record.get("queue") or keys.DEFAULT_QUEUE, run_id, attempt)

    old = transition(r, run_id, RESUMABLE, requeued, also=enqueue_next)
    if old is None:
        status = _existing(r, run_id)["status"]
        raise InvalidTransition(f"run {run_id} is {status}: only {_either(RESUMABLE)} runs can be resumed")
    return attempt_of(old) + 1


def _either(statuses: frozenset[RunStatus]) -> str:
    """'failed, cancelled or interrupted': a set of statuses in RunStatus's order, for an error message."""
    names = [status.value for status in RunStatus if status in statuses]
    return " or ".join(filter(None, [", ".join(names[:-1]), names[-1]]))


def delete(r: redis.Redis, run_id: str) -> None:
    """Remove the run's record, stream and checkpoints, whatever its status.

    A worker still running it finds the record gone at its next check (within 0.2 s) and stops without
    writing anything more.
    """
    record = _existing(r, run_id)
    attempts = attempt_of(record)
    with r.pipeline() as pipe:
        for key in (keys.run, keys.stream, keys.stop, keys.heartbeat):
            pipe.delete(key(run_id))
        pipe.zrem(keys.RUNS, run_id)
        pipe.srem(keys.RUNNING, run_id)
        if record.get("sweep_id"):
            pipe.zrem(keys.sweep(record["sweep_id"]), run_id)
        parent = parse(record).config.parent
        if parent is not None:  # its own forks keep their link to it, and their copies of its state
            pipe.zrem(keys.children(parent), run_id)
        _dequeue(pipe, run_id, record)
        for attempt in range(1, attempts + 1):
            pipe.delete(RunJob.key_for(job_id(run_id, attempt)))
        pipe.execute()
    shutil.rmtree(run_dir(run_id), ignore_errors=True)


def queued_count(r: redis.Redis) -> int:
    """Jobs waiting in any queue codash submitted to (not yet taken by a worker)."""
    names = sorted(name.decode() for name in r.smembers(keys.QUEUES))
    with r.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.llen(rq_queue(r, name).key)
        return sum(pipe.execute())


def _existing(r: redis.Redis, run_id: str) -> Record:
    record = read(r, run_id)
    if record is None:
        raise RunNotFound(run_id)
    return record


def _enqueue(r: redis.Redis, pipe: Pipeline, queue_name: str, run_id: str, attempt: int) -> None:
    queue = rq_queue(r, queue_name)
    job = queue.create_job(
        RUN_JOB,
        args=(run_id, attempt),
        job_id=job_id(run_id, attempt),
        timeout=-1,  # a training run takes as long as it takes; cancel() is how to stop one
        result_ttl=RESULT_TTL_S,
        failure_ttl=RESULT_TTL_S,
        description=f"codash run {run_id} attempt {attempt}",
    )
    queue.enqueue_job(job, pipeline=pipe)
    pipe.sadd(keys.QUEUES, queue_name)


def _dequeue(pipe: Pipeline, run_id: str, record: Record) -> None:
    """Take the run's current job out of its queue (a no-op if a worker already took it: its claim fails).

    RQ's record of the job is left to expire rather than deleted, as a worker may be reading it right now.
    """
    current = job_id(run_id, attempt_of(record))
    pipe.lrem(Queue.redis_queue_namespace_prefix + (record.get("queue") or keys.DEFAULT_QUEUE), 0, current)
    pipe.expire(RunJob.key_for(current), RESULT_TTL_S)
