"""The run and worker registry: one Redis hash per run, which the dashboard and the CLI read.

RQ's own job registries describe attempts at executing a function; this registry describes runs as a user
sees them (status, config, progress, results) and outlives any number of attempts. Every status change goes
through `transition`, an optimistic WATCH/MULTI transaction, so a worker, a reaper and a user acting on the
same run at the same moment can never both win.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis
from redis.client import Pipeline

from jobs import keys
from trainer.config import ConfigError, RunConfig, make_config
from trainer.events import BadEvent, parse_event


class RunStatus(StrEnum):
    """A run's status as a user sees it; stored in the run's hash as its plain string value."""

    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    # Shown for a run whose record cannot be parsed (garbage written into Redis), with the reason as its
    # error; never stored, no transition leads to or from it, and such a run can only be deleted.
    UNREADABLE = "unreadable"


# What each status allows. Every rule about statuses is one of these sets: the queue enforces them
# (jobs.queue), the dashboard offers its buttons and refreshes by them (app/views).
TERMINAL = frozenset(set(RunStatus) - {RunStatus.QUEUED, RunStatus.RUNNING})  # no worker will change it
RESUMABLE = frozenset({RunStatus.INTERRUPTED, RunStatus.CANCELLED, RunStatus.FAILED})  # from a checkpoint
CANCELLABLE = frozenset({RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.INTERRUPTED})  # cancel changes them
MAX_TAGS, MAX_TAG_CHARS, MAX_NOTE_CHARS = 12, 32, 2000
TAG = re.compile(rf"^[\w.+=:/-]{{1,{MAX_TAG_CHARS}}}$")
LOST = "its worker stopped sending heartbeats (killed, crashed or cut off from Redis)"

Record = dict[str, str]  # a run's hash, decoded; "" stands for None


class RunNotFound(KeyError):
    def __init__(self, run_id: str):
        super().__init__(run_id)
        self.run_id = run_id

    def __str__(self) -> str:  # KeyError would print the repr of its argument
        return f"no run with id {self.run_id!r}"


class InvalidTransition(ValueError):
    """An action the run's current status does not allow, e.g. resuming a finished run."""


class Fenced(Exception):
    """This worker's attempt no longer owns the run: it was reaped, resumed elsewhere or deleted."""


@dataclass(frozen=True)
class Run:
    id: str
    status: RunStatus
    config: RunConfig
    created_at: float
    started_at: float | None
    finished_at: float | None
    worker: str | None
    device: str | None
    iteration: int
    total_iterations: int | None
    co_iteration: int | None
    final: dict | None
    error: str | None
    sweep_id: str | None
    attempt: int = 1  # 1 + the number of resumes
    queue: str = keys.DEFAULT_QUEUE
    tags: tuple[str, ...] = ()  # the user's labels for the run (annotate)
    note: str = ""  # the user's free-text note
    elapsed_before: float = 0.0  # seconds the earlier attempts ran (a resumed run's clock goes on from there)
    warning_iteration: int | None = None  # the CO early warning's eval (trainer.warning), None without one

    def elapsed_s(self, now: float) -> float | None:
        """Seconds the run has run, all its attempts together; None before it first started."""
        if self.started_at is None:
            return self.elapsed_before or None
        return self.elapsed_before + (self.finished_at or now) - self.started_at

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (what `codash status` prints)."""
        data = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return {**data, "config": self.config.model_dump(mode="json")}


@dataclass(frozen=True)
class WorkerInfo:
    name: str
    device: str
    host: str
    state: str  # idle | busy
    current_run: str | None
    queues: tuple[str, ...] = ()
    pid: int | None = None


def read(r: redis.Redis, run_id: str) -> Record | None:
    if not isinstance(run_id, str) or not keys.RUN_ID.fullmatch(run_id):
        return None
    return _decode(r.hgetall(keys.run(run_id))) or None


def get_run(r: redis.Redis, run_id: str) -> Run | None:
    record = read(r, run_id)
    if record and record.get("status") == RunStatus.RUNNING and not r.exists(keys.heartbeat(run_id)):
        reap_one(r, run_id)
        record = read(r, run_id)
    return parse(record) if record else None


def list_runs(r: redis.Redis, limit: int | None = None) -> list[Run]:
    """Newest first, in two round trips however many runs there are: ZREVRANGE, then pipelined HGETALLs."""
    if limit is not None and limit <= 0:
        return []
    reap(r)
    ids = r.zrevrange(keys.RUNS, 0, -1 if limit is None else limit - 1)
    return load_many(r, (run_id.decode() for run_id in ids))


def sweep_runs(r: redis.Redis, sweep_id: str) -> list[Run]:
    """The runs of a sweep in the order they were submitted (the order of its eps grid)."""
    reap(r)
    return load_many(r, (run_id.decode() for run_id in r.zrange(keys.sweep(sweep_id), 0, -1)))


def lineage(r: redis.Redis, run_id: str) -> list[Run]:
    """The run's family, oldest first: its first known ancestor and every run forked from it, transitively.

    A deleted ancestor's forks stay one family while its children set lasts (until the last one is deleted).
    """
    root, seen = run_id, {run_id}
    while (record := read(r, root)) is not None:
        parent = parse(record).config.parent
        if parent is None or parent in seen or not (r.exists(keys.run(parent), keys.children(parent))):
            break
        root = parent
        seen.add(parent)
    family, frontier = [root], [root]
    while frontier:
        with r.pipeline(transaction=False) as pipe:
            for parent in frontier:
                pipe.zrange(keys.children(parent), 0, -1)
            found = [child.decode() for children in pipe.execute() for child in children]
        frontier = [child for child in dict.fromkeys(found) if child not in family]
        family += frontier
    return sorted(load_many(r, family), key=lambda run: run.created_at)


def load_many(r: redis.Redis, run_ids: Iterable[str]) -> list[Run]:
    """The runs of ids read from Redis (an index, a sweep, a children set): an id that is not a run id's form
    (`../../x` planted in an index) is no run, so it never reaches a key, a path or an export."""
    run_ids = [run_id for run_id in run_ids if keys.RUN_ID.fullmatch(run_id)]
    with r.pipeline(transaction=False) as pipe:
        for run_id in run_ids:
            pipe.hgetall(keys.run(run_id))
        records = pipe.execute()
    return [parse(_decode(record), run_id) for run_id, record in zip(run_ids, records, strict=True) if record]


def parse(record: Record, run_id: str | None = None) -> Run:
    """The run a record describes; a record with a bad field is an unreadable run naming the field, so one
    corrupted hash never hides (or breaks the pages of) every other run."""
    run_id = run_id or record.get("id", "")
    try:
        return _parse(record, run_id)
    except ValueError as exc:
        return Run(
            id=run_id,
            status=RunStatus.UNREADABLE,
            config=_config(record.get("config", "{}")),
            created_at=_number(record, "created_at", float, lenient=True) or 0.0,
            started_at=None,
            finished_at=None,
            worker=None,
            device=None,
            iteration=0,
            total_iterations=None,
            co_iteration=None,
            final=None,
            error=f"unreadable record: {exc}",
            sweep_id=None,
        )


def _parse(record: Record, run_id: str) -> Run:
    text = record.get("status", "")
    try:
        status = RunStatus(text)
    except ValueError:
        raise ValueError(f"status: {text!r:.40} is not a run status") from None
    for name in ("sweep_id", "queue"):
        if record.get(name) and not keys.NAME.fullmatch(record[name]):
            raise ValueError(f"{name}: {record[name]!r:.40} is not a name")
    final = None
    if record.get("final"):
        try:
            final = parse_event(record["final"])
        except BadEvent as exc:
            raise ValueError(f"final: {exc}") from None
        if final["type"] != "final":
            raise ValueError(f"final: a {final['type']} event")
    return Run(
        id=run_id,
        status=status,
        config=_config(record.get("config", "{}")),
        created_at=_number(record, "created_at", float) or 0.0,
        started_at=_number(record, "started_at", float),
        finished_at=_number(record, "finished_at", float),
        worker=record.get("worker") or None,
        device=record.get("device") or None,
        iteration=_number(record, "iteration") or 0,
        total_iterations=_number(record, "total_iterations"),
        co_iteration=_number(record, "co_iteration"),
        warning_iteration=_number(record, "warning_iteration"),
        final=final,
        error=record.get("error") or None,
        sweep_id=record.get("sweep_id") or None,
        attempt=_number(record, "attempt") or 1,
        queue=record.get("queue") or keys.DEFAULT_QUEUE,
        tags=_stored_tags(record.get("tags", "")),
        note=record.get("note", "")[:MAX_NOTE_CHARS],
        elapsed_before=_number(record, "elapsed_before", float) or 0.0,
    )


def _stored_tags(text: str) -> tuple[str, ...]:
    """Tags as stored (a JSON list); anything else written into the hash reads as no tags."""
    try:
        stored = json.loads(text) if text else []
        return parse_tags(stored) if isinstance(stored, list) else ()
    except ValueError:
        return ()


def parse_tags(tags: str | Iterable[str]) -> tuple[str, ...]:
    """'co, seed-sweep' or a list, as distinct tags; raises ValueError naming what is wrong and allowed."""
    items = tags.split(",") if isinstance(tags, str) else list(tags)
    if not all(isinstance(item, str) for item in items):
        raise ValueError("tags: each tag must be text")
    cleaned = tuple(dict.fromkeys(item.strip() for item in items if item.strip()))
    if len(cleaned) > MAX_TAGS:
        raise ValueError(f"tags: at most {MAX_TAGS} tags (got {len(cleaned)})")
    for tag in cleaned:
        if not TAG.match(tag):
            raise ValueError(
                f"tags: {tag[:40]!r} is not allowed; a tag is 1 to {MAX_TAG_CHARS} letters, digits "
                "or . _ + = : / -"
            )
    return cleaned


def annotate(r: redis.Redis, run_id: str, tags: str | Iterable[str], note: str) -> Run:
    """Set a run's tags and note (the user's, not the worker's: any status); returns the updated run.

    Raises ValueError for tags or a note out of bounds, RunNotFound for a run that is gone (never
    recreating a deleted run's hash).
    """
    cleaned = parse_tags(tags)
    if len(note) > MAX_NOTE_CHARS:
        raise ValueError(f"note: at most {MAX_NOTE_CHARS:,} characters (got {len(note):,})")
    hidden = [char for char in note if char not in "\n\t" and not char.isprintable()]
    if hidden:  # an escape sequence or a bidi override would change how the note (and what follows) reads
        raise ValueError(f"note: only visible text, lines and tabs (got U+{ord(hidden[0]):04X})")
    key = keys.run(run_id)

    def apply(pipe: Pipeline) -> None:
        if not keys.RUN_ID.match(run_id) or not pipe.exists(key):
            raise RunNotFound(run_id)
        pipe.multi()
        pipe.hset(key, mapping={"tags": json.dumps(list(cleaned)), "note": note})

    r.transaction(apply, key)
    run = load_many(r, [run_id])
    if not run:
        raise RunNotFound(run_id)
    return run[0]


def _status(text: str) -> RunStatus:
    """The stored status; one that is missing or not a RunStatus (a corrupted record) reads as failed."""


def _number(record: Record, name: str, kind: Callable = int, lenient: bool = False) -> Any:
    """A numeric field ("" is None); garbage raises ValueError naming the field (None when lenient)."""
    text = record.get(name)
    if not text:
        return None
    try:
        value = kind(text)
        if not math.isfinite(value) or value < 0:
            raise ValueError
    except (ValueError, OverflowError):
        if lenient:
            return None
        raise ValueError(f"{name}: {text!r:.40} is not a {'whole ' if kind is int else ''}number") from None
    return value


def attempt_of(record: Record) -> int:
    """The record's attempt number, 1 when it is unreadable (so an unreadable run can still be deleted)."""
    return _number(record, "attempt", lenient=True) or 1


def _config(text: str) -> RunConfig:
    """The stored config; a corrupted one (its run failed, saying why) keeps its valid fields for lists."""
    try:
        return make_config(text)
    except ConfigError:
        try:
            data = json.loads(text)
        except ValueError:
            data = {}
        data = data if isinstance(data, dict) else {}
        return make_config({k: v for k, v in data.items() if k in RunConfig.model_fields and _valid(k, v)})


def _valid(field: str, value: Any) -> bool:
    try:
        make_config({field: value})
    except ConfigError:
        return False
    return True


def transition(
    r: redis.Redis,
    run_id: str,
    allowed: Iterable[str],
    fields: dict[str, Any] | Callable[[Record], dict[str, Any]],
    *,
    attempt: int | None = None,
    heartbeat: tuple[str, int] | None = None,
    unless_alive: bool = False,
    also: Callable[[Pipeline, Record], None] | None = None,
) -> Record | None:
    """Set `fields` (a new status among them) if the run's status is in `allowed`; returns the old record.

    `attempt` fences off a stale worker; `unless_alive` lets the reaper act only once the run's heartbeat
    has expired; a run entering `running` gets its first heartbeat `(worker, ttl_ms)` in the same step, so
    no reader can see it running without one; a run leaving it loses its heartbeat and any pending cancel.
    `also` adds commands to the same transaction.
    Returns None (and changes nothing) when the run is missing or not in an allowed state.
    """
    key, beat = keys.run(run_id), keys.heartbeat(run_id)
    allowed = frozenset(allowed)

    def apply(pipe: Pipeline) -> Record | None:
        record = _decode(pipe.hgetall(key))
        if record.get("status") not in allowed:
            return None
        if attempt is not None and record.get("attempt") != str(attempt):
            return None
        if unless_alive and pipe.exists(beat):
            return None
        new = fields(record) if callable(fields) else fields
        pipe.multi()
        pipe.hset(key, mapping=new)
        if new["status"] == RunStatus.RUNNING:
            pipe.sadd(keys.RUNNING, run_id)
            pipe.set(beat, heartbeat[0], px=heartbeat[1])
        else:
            pipe.srem(keys.RUNNING, run_id)
            pipe.delete(beat, keys.stop(run_id))  # a pending cancel is spent once the run stops
        if also is not None:
            also(pipe, record)
        return record

    return r.transaction(apply, key, beat, value_from_callable=True)


def write_if_owner(r: redis.Redis, run_id: str, attempt: int, write: Callable[[Pipeline], None]) -> None:
    """Run `write`'s commands atomically, only while `attempt` is the running attempt of the run.

    A worker that lost its run (reaped while frozen, then resumed elsewhere, or deleted) raises Fenced
    instead of appending to a stream that now belongs to another attempt.
    """
    key = keys.run(run_id)

    def apply(pipe: Pipeline) -> None:
        status, current = pipe.hmget(key, "status", "attempt")
        if status != RunStatus.RUNNING.encode() or current != str(attempt).encode():
            raise Fenced(f"run {run_id} attempt {attempt} is no longer running here")
        pipe.multi()
        write(pipe)

    r.transaction(apply, key)


def reap(r: redis.Redis) -> list[str]:
    """Mark running runs whose heartbeat expired `interrupted` (or `cancelled` if a cancel was pending)."""
    run_ids = sorted(run_id.decode() for run_id in r.smembers(keys.RUNNING))
    with r.pipeline(transaction=False) as pipe:
        for run_id in run_ids:
            pipe.exists(keys.heartbeat(run_id))
        alive = pipe.execute()
    dead = [run_id for run_id, beating in zip(run_ids, alive, strict=True) if not beating]
    return [run_id for run_id in dead if reap_one(r, run_id)]


def reap_one(r: redis.Redis, run_id: str) -> bool:
    cancelled = bool(r.exists(keys.stop(run_id)))
    fields = {
        "status": RunStatus.CANCELLED if cancelled else RunStatus.INTERRUPTED,
        "finished_at": time.time(),
        "error": "" if cancelled else LOST,
    }
    return transition(r, run_id, {RunStatus.RUNNING}, fields, unless_alive=True) is not None


def workers(r: redis.Redis) -> list[WorkerInfo]:
    """Live workers (their hash expires a heartbeat timeout after their last beat), by name."""
    names = sorted(name.decode() for name in r.smembers(keys.WORKERS))
    with r.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(keys.worker(name))
        records = [_decode(record) for record in pipe.execute()]
    gone = [name for name, record in zip(names, records, strict=True) if not record]
    if gone:
        r.srem(keys.WORKERS, *gone)
    return [
        WorkerInfo(
            name=name,
            device=record.get("device", ""),
            host=record.get("host", ""),
            state=record.get("state", "idle"),
            current_run=record.get("current_run") or None,
            queues=tuple(filter(None, record.get("queues", "").split(","))),
            pid=_number(record, "pid", lenient=True),
        )
        for name, record in zip(names, records, strict=True)
        if record
    ]


def _decode(raw: dict[bytes, bytes]) -> Record:
    return {key.decode(errors="replace"): value.decode(errors="replace") for key, value in raw.items()}
