"""Real workers (`python -m jobs.worker`) training real digits runs against a real redis-server.

Two workers serve the module; tests that kill workers start their own on a queue of their own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest.mock import ANY

import pytest
from conftest import TINY, Workers, embedded_redis, server_pid, wait_for, without_timing
from rq.job import Job
from test_checkpoint import plant

from jobs import api, keys, queue
from jobs.server import ensure_server, ping, stored_url
from trainer.checkpoint import load_model
from trainer.config import make_config
from trainer.events import read_jsonl

pytestmark = pytest.mark.workers  # starts worker processes

LONG = {**TINY, "epochs": 200, "max_iters": None}  # 4,600 iterations (the limits allow 200 epochs)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    with embedded_redis(tmp_path_factory.mktemp("jobs") / "home") as home:
        yield home


@pytest.fixture(scope="module")
def pool(home: Path, zygote) -> Workers:
    """Two workers; an empty CODASH_DATA_DIR makes a run on mnist fail as a missing data set."""
    empty = home.parent / "no-data"
    empty.mkdir()
    workers = Workers(home.parent / "logs", zygote)
    workers.spawn("w1", "w2", env={"CODASH_DATA_DIR": str(empty)})
    yield workers
    workers.close()


@pytest.fixture
def r(home: Path):
    client = api.connect()
    yield client
    client.close()


def wait_status(r, run_id: str, statuses: set[str], timeout: float) -> api.Run:
    def ended():
        run = api.get_run(r, run_id)
        return run if run.status in statuses else None

    return wait_for(ended, timeout, f"run {run_id} to become {statuses}: {api.get_run(r, run_id)}")


def codash_train(config: dict, tmp_path: Path) -> list[dict]:
    """The same config run by `codash train --out F --run-dir D` (the command's main, in this process, with
    the workers' one torch thread: on CPU, the thread count changes the order of float reductions, and so
    the last bits of every loss)."""
    import torch

    from codash import cli

    out = tmp_path / "train.jsonl"
    argv = ["train", "--quiet", "--out", str(out), "--run-dir", str(tmp_path)]
    argv += [part for key, value in config.items() for part in ("--" + key.replace("_", "-"), str(value))]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    with open(out) as file:
        return read_jsonl(file)


def test_a_submitted_run_streams_exactly_what_codash_train_writes(r, pool, tmp_path):
    run_id = api.submit(r, make_config(TINY))
    run = wait_status(r, run_id, {"finished"}, 120)
    events = api.all_events(r, run_id)
    assert [without_timing(e) for e in events] == [without_timing(e) for e in codash_train(TINY, tmp_path)]
    assert run.final == events[-1] and run.error is None
    assert (run.iteration, run.total_iterations, run.device, run.attempt) == (60, 60, "cpu", 1)
    assert run.worker in {"w1", "w2"} and run.started_at < run.finished_at
    warmed = [f"Worker {w.name}: warmed up on cpu in" in w.output() for w in pool.started]  # before a run
    assert all(warmed)
    assert load_model(api.run_dir(run_id), "best") is not None


def test_two_workers_train_two_runs_at_once(r, pool):
    configs = [{**TINY, "max_iters": 150, "seed": 1}, {**TINY, "max_iters": 150, "device": "auto"}]
    ids = [api.submit(r, make_config(config)) for config in configs]
    first, second = (wait_status(r, run_id, {"finished"}, 120) for run_id in ids)
    assert {first.worker, second.worker} == {"w1", "w2"}
    assert first.started_at < second.finished_at and second.started_at < first.finished_at
    assert second.config.device == "auto" and second.device == "cpu"  # the worker's --device decides


def test_cancel_stops_a_running_run_within_2s_and_a_queued_run_never_starts(r, pool):
    running = [api.submit(r, make_config({**LONG, "seed": seed})) for seed in (1, 2)]  # every worker busy
    for run_id in running:
        wait_for(lambda run_id=run_id: api.get_run(r, run_id).iteration > 0, 60, "training to start")
    waiting = api.submit(r, make_config(LONG))
    api.cancel(r, waiting)
    assert api.get_run(r, waiting).status == "cancelled" and api.queued_count(r) == 0

    requested = time.monotonic()
    api.cancel(r, running[0])
    cancelled = wait_status(r, running[0], {"cancelled", "failed", "finished"}, 10)
    latency = time.monotonic() - requested
    assert cancelled.status == "cancelled" and latency <= 2.0, f"{cancelled.status} after {latency:.2f} s"
    api.delete(r, running[1])  # deleting a running run stops it too, and leaves nothing behind
    wait_for(lambda: {w.state for w in api.workers(r)} == {"idle"}, 10, "the deleted run's worker to stop")
    assert api.get_run(r, running[1]) is None and not api.run_dir(running[1]).exists()
    assert not r.exists(keys.stream(running[1]))

    time.sleep(1.0)  # both workers are idle now: a run still in the queue would have started
    never = api.get_run(r, waiting)
    assert (never.status, never.started_at, never.worker) == ("cancelled", None, None)
    assert api.read_events(r, waiting) == ([], "0-0")
    events = api.all_events(r, running[0])  # stopped on a checkpoint, so it can be resumed
    assert (events[-1]["type"], events[-1]["iteration"]) == ("checkpoint", cancelled.iteration)


def test_failing_runs_say_why_and_the_workers_keep_serving(r, pool, tmp_path):
    """Malformed configs and job payloads written into Redis, a missing data set: each fails in one line."""
    config = make_config(TINY)
    names = ("config", "payload", "foreign", "record", "callback")
    held = {name: api.submit(r, config, queue="held") for name in names}
    marker = tmp_path / "pwned"

    def job_key(name: str) -> str:
        return Job.key_for(queue.job_id(held[name], 1))

    r.hset(keys.run(held["config"]), "config", json.dumps({**TINY, "eps": 7}))
    r.hset(job_key("payload"), "data", b"\x00 not json")
    r.hset(job_key("foreign"), "data", json.dumps(["os.system", None, [f"touch {marker}"], {}]))
    r.hset(job_key("record"), "status", "no-such-status")
    forged = {"success_callback_name": "builtins.print", "failure_callback_name": "os.system"}
    r.hset(job_key("callback"), mapping={**forged, "stopped_callback_name": "this.s"})
    missing = api.submit(r, make_config({**TINY, "dataset": "mnist"}))
    while r.lmove("rq:queue:held", "rq:queue:" + keys.DEFAULT_QUEUE):  # now the workers see them
        pass

    errors = {name: wait_status(r, run_id, {"failed"}, 60).error for name, run_id in held.items()}
    assert errors["config"].startswith("ConfigError: eps:")
    assert "allowed: range [0.0, 1.0]" in errors["config"]
    assert errors["payload"].startswith("malformed job payload: JSONDecodeError")
    assert "not a codash job ('os.system')" in errors["foreign"] and not marker.exists()
    assert errors["record"].startswith("malformed job record: ValueError")
    assert "codash jobs have no callbacks ('builtins.print')" in errors["callback"]
    error = wait_status(r, missing, {"failed"}, 60).error
    assert error.startswith("DatasetMissing: data set 'mnist' not found") and "\n" not in error

    good = api.submit(r, config)
    assert wait_status(r, good, {"finished"}, 60).final is not None
    assert all(worker.alive() for worker in pool.started)
    assert {worker.name for worker in api.workers(r)} == {"w1", "w2"}


def test_a_queued_run_beyond_the_limits_fails_naming_the_field(r, pool, monkeypatch):
    """Queued under a looser limit than its worker's (the operator lowered it after): the worker refuses."""
    heavy = {**TINY, "max_iters": 200, "eval_every": 1, "eval_points": 1500, "eval_pgd_steps": 1000}
    monkeypatch.setenv("CODASH_MAX_WORK", "1e12")  # this process's limit, at submit; the workers keep theirs
    run_id = api.submit(r, make_config(heavy))
    error = wait_status(r, run_id, {"failed"}, 60).error
    assert error.startswith("OverLimit: eval_every: this run would take ~"), error
    assert "CODASH_MAX_WORK" in error and api.all_events(r, run_id) == []


def test_a_planted_checkpoint_fails_the_resumed_run_and_runs_no_code(r, pool, tmp_path):
    """A last.pt crafted to run a command (a shared runs directory is writable by others) is refused."""
    run_id = api.submit(r, make_config(TINY), queue="held")
    api.cancel(r, run_id)
    marker = tmp_path / "pwned"
    plant(api.run_dir(run_id), marker)
    api.resume(r, run_id)
    while r.lmove("rq:queue:held", "rq:queue:" + keys.DEFAULT_QUEUE):
        pass
    error = wait_status(r, run_id, {"failed"}, 60).error
    assert error.startswith("UnsafeCheckpoint: refused to load") and "posix.system" in error, error
    assert not marker.exists()
    assert all(worker.alive() for worker in pool.started)


def test_a_worker_starts_itself_without_the_command_line():
    """`python -m jobs.worker` is the worker's own entry point: jobs never imports the codash CLI above it."""
    code = (
        "import sys, jobs.worker\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'codash'], 'jobs.worker imports codash'\n"
        "jobs.worker.main(['--help'])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: python -m jobs.worker" in result.stdout
    assert all(flag in result.stdout for flag in ("--device", "--queue", "--name", "--burst", "--log-level"))


def test_a_second_worker_under_a_live_name_is_refused(pool):
    command = [sys.executable, "-m", "jobs.worker", "--device", "cpu", "--name", "w1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "codash: error: name: a live worker is called 'w1'" in result.stderr


def test_a_killed_workers_run_is_interrupted_and_resumes_without_gaps(r, pool, worker_pool):
    """kill -9 mid-run: `interrupted` within the heartbeat timeout; resumed, it equals an unbroken run (the
    same config trained meanwhile by the module's two workers, on one torch thread each as these)."""
    timeout = 2.0
    worker_pool.spawn("k1", "k2", queue="kill", env={"CODASH_HEARTBEAT_TIMEOUT": str(timeout)})
    config = {**TINY, "max_iters": 120}  # ~1.5 s of training: the kill lands after its first checkpoint (23)
    run_id = api.submit(r, make_config(config), queue="kill")
    unbroken = api.submit(r, make_config(config))

    def checkpointed():
        return any(event["type"] == "checkpoint" for event in api.read_events(r, run_id)[0])

    wait_for(checkpointed, 60, "a first checkpoint")
    run = api.get_run(r, run_id)
    assert run.status == "running", run
    victim = next(worker for worker in worker_pool.started if worker.name == run.worker)
    victim.kill(signal.SIGKILL)
    killed = time.monotonic()
    interrupted = wait_status(r, run_id, {"interrupted"}, timeout + 5)
    assert time.monotonic() - killed <= timeout + 1.0  # + slack for this poll and the scheduler
    assert "heartbeat" in interrupted.error

    api.resume(r, run_id)
    done = wait_status(r, run_id, {"finished"}, 120)
    assert (done.attempt, done.iteration) == (2, 120) and done.worker != victim.name
    events = api.all_events(r, run_id)
    assert [e["iteration"] for e in events if e["type"] == "metrics"] == list(range(1, 121))
    assert [e["type"] for e in events].count("config") == 1
    reference = api.all_events(r, wait_status(r, unbroken, {"finished"}, 120).id)
    assert [without_timing(e) for e in events] == [without_timing(e) for e in reference]

    # SIGTERM is a graceful shutdown: the run stops on a checkpoint, `interrupted` and resumable
    survivor = next(worker for worker in worker_pool.started if worker.alive())
    run_id = api.submit(r, make_config(LONG), queue="kill")
    wait_for(lambda: api.get_run(r, run_id).iteration > 0, 60, "training to start")
    survivor.kill(signal.SIGTERM)
    assert survivor.process.returncode == 0
    stopped = api.get_run(r, run_id)
    assert stopped.status == "interrupted" and "shut down" in stopped.error
    last = api.all_events(r, run_id)[-1]
    assert last == {"type": "checkpoint", "iteration": stopped.iteration, "epoch": ANY}


def test_everything_survives_a_redis_restart(r, pool, home):
    """SIGTERM the server, start it again on the same data dir: every run, status and event is there."""
    wait_for(lambda: all(run.status != "running" for run in api.list_runs(r)), 30, "no run to be running")
    api.submit(r, make_config(TINY), queue="nobody-serves-this")  # a queued run too
    before = {run.id: (run, api.all_events(r, run.id)) for run in api.list_runs(r)}
    assert {run.status for run, _ in before.values()} >= {"queued", "finished", "cancelled", "failed"}

    url = stored_url(home)
    os.kill(server_pid(home), signal.SIGTERM)
    wait_for(lambda: not ping(url), 10, "the server to stop")
    assert ensure_server(home) == url  # same socket, same password, same data dir

    after = {run.id: (run, api.all_events(r, run.id)) for run in api.list_runs(r)}
    assert after == before
    good = api.submit(r, make_config(TINY))  # and the workers reconnected
    assert wait_status(r, good, {"finished"}, 60).final is not None


@pytest.mark.parametrize("stop", ["waits for the read", "only marks (redis-py 5)"])
def test_a_worker_stops_listening_for_commands_at_once_when_the_reply_comes_first(r, monkeypatch, stop):
    """The listener thread must not start another 60 s read after the unsubscribe's reply: a worker that
    waited for it could not stop within `codash up`'s 20 s. redis-py 5's stop() takes no timeout."""
    from jobs.worker import CodashWorker

    worker = CodashWorker(["listener"], connection=r, device="cpu", name="listener")
    worker.subscribe()
    thread = worker.pubsub_thread
    if stop == "only marks (redis-py 5)":
        monkeypatch.setattr(thread, "stop", lambda: thread._running.clear())
    time.sleep(0.2)  # the thread is reading
    unsubscribe = worker.pubsub.unsubscribe

    def reply_read_first(*args, **kwargs):
        unsubscribe(*args, **kwargs)
        time.sleep(0.3)  # the thread reads the reply before RQ stops it, as on a loaded machine

    monkeypatch.setattr(worker.pubsub, "unsubscribe", reply_read_first)
    started = time.monotonic()
    worker.unsubscribe()
    assert time.monotonic() - started < 5 and not worker.pubsub_thread.is_alive()


def test_a_worker_retries_redis_for_its_timeout_in_all_not_per_command():
    """Once Redis has been away for the heartbeat timeout, every later command fails at its first try: the
    worker exits then, not after a timeout's worth of retries for each command on its way out. A reply
    starts the clock again, and every connection (redis-py copies a connection's retry) reads one clock."""
    import copy

    import redis

    from jobs.worker import REDIS_RETRY_S, OutageRetry

    retry = OutageRetry(limit=2.5 * REDIS_RETRY_S)
    assert copy.deepcopy(retry) is retry
    tries = []

    def away():
        tries.append(time.monotonic())
        raise redis.ConnectionError("away")

    def command() -> int:
        """One command while Redis is away: how many times it was tried."""
        tried = len(tries)
        with pytest.raises(redis.ConnectionError):
            retry.call_with_retry(away, lambda error: None)
        return len(tries) - tried

    assert command() >= 3 and tries[-1] - tries[0] >= retry.limit  # retried until away for the limit
    assert command() == 1  # then one try, no wait
    assert retry.call_with_retry(lambda: "reply", lambda error: None) == "reply"
    tries.clear()
    assert command() >= 3 and tries[-1] - tries[0] >= retry.limit  # a new outage: the whole limit again


def test_a_forged_job_description_cannot_forge_worker_log_lines(r, pool):
    run_id = api.submit(r, make_config(TINY), queue="held")
    forged = "\x1b[2J\x1b[31mrun_job\nw9: Job OK (forged)\u202e"
    r.hset(Job.key_for(queue.job_id(run_id, 1)), "description", forged)
    r.lmove("rq:queue:held", "rq:queue:" + keys.DEFAULT_QUEUE)
    wait_status(r, run_id, {"finished"}, 60)
    logs = "".join(worker.output() for worker in pool.started)
    assert "\\u001b[2J\\u001b[31mrun_job\\u000aw9: Job OK (forged)\\u202e" in logs
    assert "\x1b[2J" not in logs and "\nw9: Job OK (forged)" not in logs and "\u202e" not in logs
