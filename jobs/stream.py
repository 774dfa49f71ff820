"""A run's metric stream: exactly the trainer's events, in order, one JSON object per Redis Stream entry.

The stream is never trimmed: it is the run's history, the same objects `codash train` writes as JSONL. Its
size is bounded instead: jobs.limits refuses a run whose stream would pass CODASH_MAX_STREAM_MB, and the
sink stops one that does anyway.
Readers fetch incrementally after the last entry id they saw.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import redis
from redis.client import Pipeline

from jobs import keys
from jobs.limits import StreamBudget
from jobs.registry import write_if_owner
from trainer.events import DENSE_EVENTS, BadEvent, Event, encode, parse_event

FIELD = "event"
FIELD_KEY = FIELD.encode()  # replies are bytes
FLUSH_S = 0.25  # metrics reach Redis at most this long after the trainer hands them over
MAX_BATCH = 2000  # events per transaction, so one flush never holds Redis for long
PAGE = 500
# The registry fields that mark where a run's events placed something (progress_fields), by the event that
# sets each: a rewind that drops that event clears its field.
MARKS = {"co": "co_iteration", "co_warning": "warning_iteration"}


class StreamSink:
    """The worker's sink for train(): appends events to the run's stream and keeps its progress current.

    Metrics and probes are batched and sent by a background thread at least every FLUSH_S; every other
    event (eval, co, checkpoint, final) is sent before train() goes on, so the stream never lags an
    evaluation, and a checkpoint event in the stream always means last.pt holds that iteration. Each batch
    is one transaction that also updates the run's progress fields, fenced on the attempt (see
    registry.write_if_owner).
    A resumed attempt passes skip_config: the stream already opens with the run's config event.
    Past CODASH_MAX_STREAM_MB of events (jobs.limits) it raises OverLimit, and the run fails saying so.
    """

    def __init__(self, r: redis.Redis, run_id: str, attempt: int, *, skip_config: bool = False):
        self.r, self.run_id, self.attempt = r, run_id, attempt
        self.skip_config = skip_config
        self.budget = StreamBudget()  # a resumed attempt starts from what the stream holds already
        self.budget.used = (r.memory_usage(keys.stream(run_id)) or 0) if skip_config else 0
        self._pending: list[str] = []
        self._progress: dict[str, Any] = {}
        self._lock = threading.Lock()  # held while sending too: batches reach the stream in order
        self._error: BaseException | None = None
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._flush_periodically, name=f"sink-{run_id}", daemon=True)
        self._thread.start()

    def __call__(self, event: Event) -> None:
        if self._error is not None:
            raise self._error
        if self.skip_config and event["type"] == "config":
            self.skip_config = False
            return
        data = encode(event)
        self.budget.spend(len(data))  # raises OverLimit: the run fails, saying why
        with self._lock:
            self._pending.append(data)
            self._progress.update(progress_fields(event))
            full = len(self._pending) >= MAX_BATCH
        if event["type"] not in DENSE_EVENTS or full:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            if not self._pending:
                return
            batch, progress = self._pending, self._progress
            self._pending, self._progress = [], {}

            def write(pipe: Pipeline) -> None:
                for data in batch:
                    pipe.xadd(keys.stream(self.run_id), {FIELD: data})
                if progress:
                    pipe.hset(keys.run(self.run_id), mapping=progress)

            write_if_owner(self.r, self.run_id, self.attempt, write)

    def close(self) -> None:
        """Send what is left; raises what the background flushes raised (e.g. Fenced)."""
        self._closed.set()
        self._thread.join()
        if self._error is not None:
            raise self._error
        self.flush()

    def _flush_periodically(self) -> None:
        while not self._closed.wait(FLUSH_S):
            try:
                self.flush()
            except Exception as exc:  # handed to the training thread at its next event
                self._error = exc
                return


def progress_fields(event: Event) -> dict[str, Any]:
    """The registry fields an event updates, so the run list shows progress without reading streams."""
    kind = event["type"]
    if kind == "config":
        return {"total_iterations": event["total_iterations"], "device": event["device"]}
    if kind == "metrics":
        return {"iteration": event["iteration"]}
    if kind == "co":
        return {"co_iteration": event.get("onset_iteration", event["iteration"])}
    if kind == "co_warning":
        return {"warning_iteration": event["iteration"]}
    if kind == "final":
        return {"final": encode(event), "iteration": event["iterations"]}
    return {}


def read_events(
    r: redis.Redis,
    run_id: str,
    after: str = "0-0",
    count: int | None = None,
    block_ms: int | None = None,
    bad: list[tuple[str, str]] | None = None,
    times: list[float] | None = None,
) -> tuple[list[Event], str]:
    """Events strictly after stream id `after`, and the last id seen (`after` itself if there are none).

    With block_ms, waits up to that long for the first new entry (XREAD BLOCK) instead of returning at once.
    An entry that is not an event (garbage written into Redis) is skipped; `bad` collects (entry id, why).
    `times` collects when each returned event reached the stream (Unix s, its entry id's clock): events
    carry no timestamp of their own (a resumed run replays identical events), and a wall-clock axis needs one.
    """
    key = keys.stream(run_id)
    if block_ms is None:
        entries = r.xrange(key, min=f"({after}", max="+", count=count)
    else:
        reply = r.xread({key: after}, count=count, block=block_ms)
        entries = reply[0][1] if reply else []
    events = []
    for entry_id, fields in entries:
        try:
            events.append(parse_event(fields.get(FIELD_KEY)))
            if times is not None:
                times.append(int(entry_id.split(b"-")[0]) / 1000)
        except BadEvent as exc:
            if bad is not None:
                bad.append((entry_id.decode(), str(exc)))
    return events, entries[-1][0].decode() if entries else after


def all_events(r: redis.Redis, run_id: str, bad: list[tuple[str, str]] | None = None) -> list[Event]:
    events, after = [], "0-0"
    while True:
        page, last = read_events(r, run_id, after, count=10 * PAGE, bad=bad)
        if last == after:
            return events
        events.extend(page)
        after = last


def _newest_first(r: redis.Redis, run_id: str) -> Iterator[tuple[bytes, Event]]:
    """(entry id, event) from the stream's end backwards, a page at a time; garbage reads as `unreadable`."""
    key, newest = keys.stream(run_id), "+"
    while page := r.xrevrange(key, max=newest, min="-", count=PAGE):
        for entry_id, fields in page:
            try:
                yield entry_id, parse_event(fields.get(FIELD_KEY))
            except BadEvent:
                yield entry_id, {"type": "unreadable"}
        newest = "(" + page[-1][0].decode()


def last_checkpoint(r: redis.Redis, run_id: str) -> int | None:
    """The iteration of the run's last checkpoint event (where a resumed attempt continues), None if none."""
    events = (event for _, event in _newest_first(r, run_id) if event["type"] == "checkpoint")
    return next(events, {"iteration": None})["iteration"]


def rewind_to_checkpoint(r: redis.Redis, run_id: str, attempt: int) -> int | None:
    """Delete every entry after the last checkpoint event: a resumed run recomputes those iterations.

    Returns that checkpoint's iteration, or None (deleting nothing) if the stream holds no checkpoint.
    Garbage after the last checkpoint goes with the rest; before it, it stays.
    """
    stale, dropped, checkpoint = [], set(), None
    for entry_id, event in _newest_first(r, run_id):
        if event["type"] == "checkpoint":
            checkpoint = event["iteration"]
            break
        stale.append(entry_id)
        dropped.add(event["type"])
    if checkpoint is None:
        return None
    progress = {"iteration": checkpoint, "final": ""}
    progress |= {field: "" for kind, field in MARKS.items() if kind in dropped}

    def write(pipe: Pipeline) -> None:
        for start in range(0, len(stale), PAGE):
            pipe.xdel(keys.stream(run_id), *stale[start : start + PAGE])
        pipe.hset(keys.run(run_id), mapping=progress)

    write_if_owner(r, run_id, attempt, write)
    return checkpoint


def clear(r: redis.Redis, run_id: str, attempt: int) -> None:
    """Empty the stream and the progress fields, for an attempt that starts the run over."""

    def write(pipe: Pipeline) -> None:
        pipe.delete(keys.stream(run_id))
        pipe.hset(
            keys.run(run_id), mapping={"iteration": 0, "final": "", **dict.fromkeys(MARKS.values(), "")}
        )

    write_if_owner(r, run_id, attempt, write)
