"""`codash worker`: an RQ worker that trains one run at a time on one device.

A worker trains on one device; a GPU can take several (two per GPU by default under `codash up`: one
captured ResNet-18 run leaves an H200 far from busy). On a host with 4 GPUs:

    for i in 0 1 2 3; do for k in a b; do
        codash worker --device cuda:$i --name "$(hostname)-gpu$i$k" &
    done; done

(`CUDA_VISIBLE_DEVICES=$i codash worker --device cuda:0` does the same and also hides the other GPUs from
each process.) Workers on several hosts share one Redis through REDIS_URL, and their checkpoints through
CODASH_RUNS_DIR on a shared volume, so a run interrupted on one host can be resumed on another.

It is an rq.SimpleWorker: the job runs in the worker process rather than a forked child, because CUDA does
not survive fork() and a warm CUDA context is worth keeping between runs; so a kill of the worker is a kill
of its run. A worker warms up before it announces itself (trainer.fast.warm_up, logged: torch.optim's
first use, and CUDA and cuDNN on a GPU), so its first run starts as quickly as later ones. A heartbeat
thread beats for the worker and its run (TTL $CODASH_HEARTBEAT_TIMEOUT, default 10 s) and reaps runs
whose worker stopped beating.
SIGTERM or Ctrl-C stops the current run at its next iteration with a checkpoint (status `interrupted`,
resumable), then the worker exits.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import redis
import torch
from redis.backoff import ConstantBackoff
from redis.retry import Retry
from rq.exceptions import AbandonedJobError, DeserializationError
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker

from jobs import keys, limits, stream
from jobs.api import JOB_ERRORS, connect
from jobs.paths import run_dir
from jobs.queue import RunJob, check_name, run_of_job
from jobs.registry import Fenced, Record, RunStatus, read, reap, transition
from jobs.stream import StreamSink
from jobs.worker_flags import HELP, add_worker_flags
from trainer.checkpoint import BEST_FILE, LAST_FILE, PREVIOUS_FILE, load_checkpoint
from trainer.cli import EXPECTED_ERRORS, run
from trainer.config import ConfigError, make_config
from trainer.events import one_line
from trainer.fast import warm_up
from trainer.loop import resolve_device, train

HEARTBEAT_TIMEOUT_ENV = "CODASH_HEARTBEAT_TIMEOUT"
STOP_POLL_S = 0.2  # how often should_stop asks Redis whether the run was cancelled
REDIS_RETRY_S = 0.25  # between reconnection attempts while Redis is away
RQ_HEARTBEAT_S = 60.0  # keeps RQ's own record of a long job alive (RQ would call it abandoned after 7 min)


def heartbeat_timeout() -> float:
    """Seconds without a heartbeat after which a worker and its run count as dead."""
    text = os.environ.get(HEARTBEAT_TIMEOUT_ENV, "10")
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.5 <= value <= 3600:
        raise ConfigError(f"{HEARTBEAT_TIMEOUT_ENV}: must be seconds in [0.5, 3600] (got {text!r})")
    return value


def worker_device(name: str | None) -> str:
    """The device a worker trains on: 'auto' becomes cuda if there is one, else cpu."""
    device = make_config({"device": name or "auto"}).device  # errors name the field and its allowed values
    return str(resolve_device(device))


def failure_reason(exc: BaseException) -> str:
    """What a failed run's record says; running out of memory (CUDA or host) also says what to change."""
    text = one_line(exc)
    out_of_memory = isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError) or any(
        sign in text for sign in ("out of memory", "can't allocate memory", "not enough memory")
    )
    if out_of_memory:
        text = (
            f"out of memory on {'the GPU' if 'CUDA' in text else 'the host'}: lower batch_size (or use a "
            f"smaller model); {text}"
        )
    return text[:1000]


def run_job(run_id: str, attempt: int) -> str:
    """The RQ job function (queue.RUN_JOB): one attempt of a run, trained by the worker executing it."""
    worker = CodashWorker.active
    if worker is None:
        raise RuntimeError("run_job runs only inside `codash worker`")
    return worker.run(run_id, attempt)


class StopFlag:
    """train()'s should_stop: true once the run is cancelled (a Redis key) or the worker is shutting down.

    Redis is asked at most every STOP_POLL_S, so the check costs nothing per iteration. The same query
    raises Fenced when this attempt no longer owns the run, so a stale worker stops before it could write
    a checkpoint over the one of the attempt that replaced it.
    """

    def __init__(self, r: redis.Redis, run_id: str, attempt: int, shutdown: threading.Event):
        self.r, self.run_id, self.attempt, self.shutdown = r, run_id, attempt, shutdown
        self.cancelled = False
        self._checked = -STOP_POLL_S

    def __call__(self) -> bool:
        if self.shutdown.is_set():
            return True
        now = time.monotonic()
        if not self.cancelled and now - self._checked >= STOP_POLL_S:
            self._checked = now
            with self.r.pipeline(transaction=False) as pipe:
                pipe.exists(keys.stop(self.run_id))
                pipe.hmget(keys.run(self.run_id), "status", "attempt")
                stop, (status, attempt) = pipe.execute()
            if status != RunStatus.RUNNING.encode() or attempt != str(self.attempt).encode():
                raise Fenced(f"run {self.run_id} attempt {self.attempt} is no longer running here")
            self.cancelled = bool(stop)
        return self.cancelled


class OutageRetry(Retry):
    """redis-py's retries, bounded by how long Redis has been away rather than by attempts per command.

    Every command of the worker (its run's writes, the heartbeats, RQ's own bookkeeping on the way out)
    reads one clock, so a worker whose Redis is gone gives up `limit` seconds after it went, not `limit`
    seconds for each command it still tries (five or so between a failed write and the exit).
    """

    def __init__(self, limit: float):
        super().__init__(ConstantBackoff(REDIS_RETRY_S), retries=-1)  # until the clock runs out
        self.limit = limit
        self.away_since: float | None = None  # when the first failure of the current outage came

    def __deepcopy__(self, memo: dict) -> OutageRetry:
        return self  # redis-py copies a connection's retry: each connection must read the same clock

    def call_with_retry(self, do, fail, *args, **kwargs):
        def attempt():
            result = do()
            self.away_since = None
            return result

        def failed(error: Exception, *count: int) -> None:
            fail(error, *count)
            now = time.monotonic()
            if self.away_since is None:
                self.away_since = now
            if now - self.away_since >= self.limit:
                raise error

        return super().call_with_retry(attempt, failed, *args, **kwargs)


class CodashWorker(SimpleWorker):
    active: ClassVar[CodashWorker | None] = None  # the worker of this process, for run_job

    def __init__(self, queues: list[str], *, connection: redis.Redis, device: str, name: str | None = None):
        super().__init__(
            queues,
            name=name or f"{socket.gethostname()}.{os.getpid()}",
            connection=connection,
            serializer=JSONSerializer,
            job_class=RunJob,
            exception_handlers=[self._record_failure],
        )
        self.device = device
        timeout = heartbeat_timeout()
        # Ride out a Redis restart for as long as the heartbeats would have kept the run alive; after that
        # the run is interrupted anyway, and the worker exits (status 2) for its supervisor to restart it.
        connection.set_retry(OutageRetry(timeout))
        self.timeout_ms = int(timeout * 1000)
        self.beat_s = min(1.0, timeout / 4)
        self.current_run: str | None = None
        self.shutting_down = threading.Event()
        self._stopped = threading.Event()
        self._beats = threading.Thread(target=self._beat_forever, name="codash-heartbeat", daemon=True)

    # --- lifecycle (RQ calls these from work()) ---

    def register_birth(self) -> None:
        if self.connection.exists(keys.worker(self.name)):
            raise ConfigError(f"name: a live worker is called {self.name!r} already; choose another --name")
        started = time.perf_counter()  # warmed before the worker is announced: its first run starts warm
        warm_up(torch.device(self.device))
        self.log.info(
            "Worker %s: warmed up on %s in %.1f s%s",
            self.name,
            self.device,
            time.perf_counter() - started,
            " (CUDA and cuDNN initialised)" if self.device.startswith("cuda") else "",
        )
        self.connection.delete(self.key)  # RQ's record of a killed worker of this name lingers for minutes
        super().register_birth()
        CodashWorker.active = self
        self._beat()
        reap(self.connection)
        self._beats.start()

    def register_death(self) -> None:
        self._stopped.set()
        if self._beats.is_alive():
            self._beats.join()
        with self.connection.pipeline() as pipe:
            pipe.delete(keys.worker(self.name))
            pipe.srem(keys.WORKERS, self.name)
            pipe.execute()
        super().register_death()
        CodashWorker.active = None

    def unsubscribe(self) -> None:
        """RQ unsubscribes from its command channel, then stops the thread that listens on it, whose reads
        wait up to 60 s, and redis-py's stop() waits for the read in progress. When the thread reads the
        unsubscribe's reply before the stop (a loaded machine), it starts a new read, and the worker took up
        to a minute to exit (`codash up` kills it after 20 s). Stopping the thread first lets that reply end
        its last read."""
        if self.pubsub_thread:
            stop = self.pubsub_thread.stop
            if "timeout" in inspect.signature(stop).parameters:
                stop(timeout=0)  # marks the thread stopping, no wait
            else:
                stop()  # a redis-py whose stop() only marks the thread stopping (5.x)
        super().unsubscribe()

    def request_stop(self, signum, frame) -> None:
        self.shutting_down.set()  # the current run checkpoints at its next iteration and ends interrupted
        super().request_stop(signum, frame)

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        """RQ quits on a job whose Redis hash it cannot read; fail that job's run and keep serving instead."""
        while True:
            try:
                return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
            except Exception as exc:
                bad_job, queue = getattr(exc, "job_id", None), getattr(exc, "queue", None)
                if bad_job is None or queue is None:
                    raise
                self.log.error("Worker %s: unreadable job %s: %s", self.name, bad_job, one_line(exc))
                with self.connection.pipeline() as pipe:
                    pipe.lrem(queue.intermediate_queue_key, 0, bad_job)
                    pipe.delete(RunJob.key_for(bad_job))
                    pipe.execute()
                self._fail(bad_job, f"malformed job record: {one_line(exc)}")

    # --- running one attempt ---

    def run(self, run_id: str, attempt: int) -> str:
        if not (isinstance(run_id, str) and keys.RUN_ID.fullmatch(run_id)) or type(attempt) is not int:
            raise ValueError(f"malformed job payload: ({run_id!r}, {attempt!r}) is not (run id, attempt)")
        claimed = transition(
            self.connection,
            run_id,
            {RunStatus.QUEUED},
            {
                "status": RunStatus.RUNNING,
                "started_at": time.time(),
                "worker": self.name,
                "device": self.device,
            },
            attempt=attempt,
            heartbeat=(self.name, self.timeout_ms),
        )
        if claimed is None:
            self.log.info("Worker %s: run %s attempt %d is not queued: skipped", self.name, run_id, attempt)
            return "skipped"
        self.current_run = run_id
        try:
            status, error = self._train(claimed, run_id, attempt)
        except Fenced as exc:
            self.log.warning("Worker %s: %s; stopped without touching it", self.name, exc)
            if read(self.connection, run_id) is None:  # deleted while it ran: what it saved since goes too
                shutil.rmtree(run_dir(run_id), ignore_errors=True)
            return "fenced"
        except Exception as exc:
            self._finish(run_id, attempt, RunStatus.FAILED, failure_reason(exc))
            raise
        except BaseException:  # SystemExit from a second Ctrl-C, KeyboardInterrupt
            self._finish(run_id, attempt, RunStatus.INTERRUPTED, "the worker was killed mid-iteration")
            raise
        finally:
            self.current_run = None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # e.g. after an out-of-memory failure: the next run gets the memory
        self._finish(run_id, attempt, status, error)
        return status

    def _train(self, record: Record, run_id: str, attempt: int) -> tuple[RunStatus, str]:
        config = make_config(record.get("config", ""))
        limits.check([config])  # queued before the limits were lowered, or written into Redis by hand
        if config.device == "auto":
            config = config.model_copy(update={"device": self.device})
        directory = run_dir(run_id)
        resume = attempt > 1 and self._rewind(run_id, attempt, directory)
        sink = StreamSink(self.connection, run_id, attempt, skip_config=resume)
        stop = StopFlag(self.connection, run_id, attempt, self.shutting_down)
        try:
            final = train(config, sink, directory, stop, resume)
        except BaseException:
            with contextlib.suppress(Exception):
                sink.close()  # keep the events up to the failure; the failure itself is what matters
            raise
        sink.close()
        if final is not None:
            return RunStatus.FINISHED, ""
        if stop.cancelled:
            return RunStatus.CANCELLED, ""
        return RunStatus.INTERRUPTED, "the worker was shut down; resume to continue from the last checkpoint"

    def _rewind(self, run_id: str, attempt: int, directory: Path) -> bool:
        """Make stream and last.pt agree before a resumed attempt; False means start the run over.

        The stream is cut after its last checkpoint event. That is the iteration of last.pt, or of
        previous.pt when the worker died (or lost Redis) between saving last.pt and writing its event. With
        no matching checkpoint (none saved yet) the stream could not continue without a gap, so the run
        starts over: it is deterministic, so the results are the same.
        """
        kept = stream.rewind_to_checkpoint(self.connection, run_id, attempt)
        for which in ("last", "previous"):  # previous: last.pt was saved but its event never reached Redis
            saved = load_checkpoint(directory, which)
            if saved is not None and kept == saved["state"]["iteration"]:
                if which == "previous":
                    os.replace(directory / PREVIOUS_FILE, directory / LAST_FILE)
                return True
        stream.clear(self.connection, run_id, attempt)
        for name in (LAST_FILE, PREVIOUS_FILE, BEST_FILE):
            (directory / name).unlink(missing_ok=True)
        return False

    def _finish(self, run_id: str, attempt: int, status: RunStatus, error: str) -> None:
        fields = {"status": status, "finished_at": time.time(), "error": error}
        if transition(self.connection, run_id, {RunStatus.RUNNING}, fields, attempt=attempt) is None:
            self.log.warning("Worker %s: run %s was not running any more when it ended", self.name, run_id)

    # --- failures RQ sees before or around run_job ---

    def _record_failure(self, job, exc_type, exc_value, traceback) -> bool:
        """RQ's exception handler: make sure the run of a failed job says why (e.g. an unreadable payload)."""
        if exc_type is not AbandonedJobError:  # dead workers are the heartbeats' business
            cause = exc_value.__cause__ if isinstance(exc_value, DeserializationError) else None
            reason = f"malformed job payload: {one_line(cause)}" if cause else one_line(exc_value)
            self._fail(job.id, reason)
        return True  # go on to RQ's default handler, which logs the traceback

    def _fail(self, rq_job_id: str, reason: str) -> None:
        parsed = run_of_job(rq_job_id)
        if parsed is not None:
            run_id, attempt = parsed
            fields = {"status": RunStatus.FAILED, "finished_at": time.time(), "error": reason}
            transition(
                self.connection, run_id, {RunStatus.QUEUED, RunStatus.RUNNING}, fields, attempt=attempt
            )

    # --- heartbeats ---

    def _beat_forever(self) -> None:
        last_rq_beat = time.monotonic()
        while not self._stopped.wait(self.beat_s):
            try:
                self._beat()
                reap(self.connection)
                if self.current_run and time.monotonic() - last_rq_beat > RQ_HEARTBEAT_S:
                    last_rq_beat = time.monotonic()
                    execution = self.execution
                    job = self.get_current_job() if execution else None
                    if job is not None:
                        self.maintain_heartbeats(job, execution)
            except redis.RedisError as exc:  # Redis restarting: keep trying, the TTLs allow for it
                self.log.warning("Worker %s: heartbeat failed: %s", self.name, exc)

    def _beat(self) -> None:
        run_id = self.current_run
        info = {
            "device": self.device,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "queues": ",".join(self.queue_names()),
            "state": "busy" if run_id else "idle",
            "current_run": run_id or "",
        }
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.hset(keys.worker(self.name), mapping=info)
            pipe.pexpire(keys.worker(self.name), self.timeout_ms)
            pipe.sadd(keys.WORKERS, self.name)
            if run_id:
                pipe.set(keys.heartbeat(run_id), self.name, px=self.timeout_ms)
            pipe.execute()


def serve(args: argparse.Namespace) -> int:
    """A worker from its flags (jobs.worker_flags), serving until stopped (or, with --burst, until idle)."""
    queues = [check_name("queue", queue) for queue in args.queue or [keys.DEFAULT_QUEUE]]
    name = check_name("name", args.name) if args.name else None
    worker = CodashWorker(queues, connection=connect(), device=worker_device(args.device), name=name)
    worker.work(burst=args.burst, logging_level=args.log_level)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m jobs.worker [--device ...]`: what `codash worker` runs, without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="python -m jobs.worker", description=HELP)
    add_worker_flags(parser)
    parser.set_defaults(handler=serve)
    return run(parser, argv, expected=(*EXPECTED_ERRORS, *JOB_ERRORS))


if __name__ == "__main__":
    # Run as a script this file is `__main__`; RQ's job function looks up jobs.worker, so the worker must be
    # that module's CodashWorker, not this copy's.
    from jobs.worker import main as worker_main

    sys.exit(worker_main())
