"""Redis restarted while a run is training, on the same data dir (AOF): nothing acknowledged is lost.

What the worker does depends on how long Redis is away, and each outcome is asserted exactly:

* A restart (SHUTDOWN, then started again at once; Redis is away for a second or so): the worker keeps
  reconnecting for as long as its heartbeat timeout (10 s by default) and the run finishes in its first
  attempt, on the same worker, with a stream identical to an undisturbed run of the same config.
* An outage longer than that (SIGTERM, and Redis kept down until the worker gives up; a 2 s heartbeat
  timeout here): the worker exits with status 2 (`codash: error: Error 111 connecting to ...`), its
  run becomes `interrupted`
  once its heartbeat has expired, and a restarted worker resumes it to the end; the stream is again an
  undisturbed run's and keeps every entry up to the checkpoint it resumed from.

Before the fault every run record and stream is read (so Redis had acknowledged all of it); right after the
restart each one is compared with what is there: the same records and the same entries, byte for byte
(the run being trained may only have grown).
"""

from __future__ import annotations

import os
import signal

import pytest
from conftest import server_pid, without_timing

from jobs import api, registry
from jobs.server import ensure_server, ping, socket_path, stop_server, stored_url
from trainer.config import make_config

from .conftest import (
    TINY,
    Figures,
    Snapshot,
    check_continuous,
    entries,
    long_tiny,
    missing,
    snapshot,
    through_last_checkpoint,
    wait_for,
    wait_status,
)

pytestmark = pytest.mark.own_redis  # each test restarts its server

HEARTBEAT_S = 2.0
TOTAL = 150


def stored_runs(r) -> dict[str, str]:
    """A finished run (which the faulted run must equal), a cancelled one, and one nobody will start."""
    finished = api.submit(r, make_config(long_tiny(TOTAL)))
    wait_status(r, finished, {"finished"}, 90)
    cancelled = api.submit(r, make_config(TINY), queue="nobody-serves-this")
    api.cancel(r, cancelled)
    queued = api.submit(r, make_config({**TINY, "seed": 7}), queue="nobody-serves-this")
    return {"finished": finished, "cancelled": cancelled, "queued": queued}


def start_training(r) -> str:
    run_id = api.submit(r, make_config(long_tiny(TOTAL)))
    wait_for(lambda: api.get_run(r, run_id).iteration >= 50, 60, "the run to pass iteration 50", 0.02)
    assert api.get_run(r, run_id).status == "running"
    return run_id


def compare_after_restart(r, before: Snapshot, training: str, figures: Figures) -> None:
    """Every record and entry read before the fault is there after it, unchanged."""
    after = snapshot(r)
    assert set(after.records) == set(before.records)
    lost = 0
    for run_id, stream in before.streams.items():
        lost += missing(stream, after.streams[run_id])
        assert after.streams[run_id][: len(stream)] == stream, f"stream of {run_id} changed"
        if run_id != training:
            assert after.records[run_id] == before.records[run_id]
            assert after.streams[run_id] == stream
    assert after.records[training]["config"] == before.records[training]["config"]
    assert int(after.records[training]["iteration"]) >= int(before.records[training]["iteration"])
    figures.check(before.events, lost)
    assert lost == 0


def test_a_quick_restart_is_ridden_out_and_the_run_finishes_in_its_first_attempt(
    redis_home, r, worker_pool, figures
):
    [worker] = worker_pool.spawn("rq1", env={"CODASH_HEARTBEAT_TIMEOUT": "10"})
    stored = stored_runs(r)
    training = start_training(r)
    before = snapshot(r)
    url = stored_url(redis_home)

    assert stop_server(redis_home)  # SHUTDOWN: Redis writes its AOF and exits
    assert not ping(url)
    assert ensure_server(redis_home) == url  # same socket, password and data dir
    figures.fault(f"SHUTDOWN + restart of Redis at iteration {before.records[training]['iteration']}")
    compare_after_restart(r, before, training, figures)

    done = wait_status(r, training, {"finished", "failed", "interrupted"}, 60)
    assert (done.status, done.attempt, done.worker, done.error) == ("finished", 1, "rq1", None)
    assert worker.alive() and [w.name for w in api.workers(r)] == ["rq1"]
    assert entries(r, training)[: len(before.streams[training])] == before.streams[training]
    events = api.all_events(r, training)
    unbroken = api.all_events(r, stored["finished"])
    assert [without_timing(e) for e in events] == [without_timing(e) for e in unbroken]
    figures.check(check_continuous(events, TOTAL))

    again = api.submit(r, make_config(TINY))  # and the worker goes on serving
    assert wait_status(r, again, {"finished", "failed"}, 60).status == "finished"


def test_a_long_outage_stops_the_worker_and_leaves_the_run_resumable(redis_home, r, worker_pool, figures):
    [worker] = worker_pool.spawn("rl1", env={"CODASH_HEARTBEAT_TIMEOUT": str(HEARTBEAT_S)})
    stored = stored_runs(r)
    training = start_training(r)
    before = snapshot(r)
    url = stored_url(redis_home)

    os.kill(server_pid(redis_home), signal.SIGTERM)  # Redis saves and exits
    wait_for(lambda: not ping(url), 10, "Redis to stop")
    figures.fault(f"SIGTERM of Redis at iteration {before.records[training]['iteration']}")
    # Redis stays away until the worker gives up (after its heartbeat timeout, 2 s here)
    wait_for(lambda: not worker.alive(), 180, "the worker to give up on Redis", 0.05)
    assert worker.process.returncode == 2
    assert f"codash: error: Error 2 connecting to {socket_path(url)}." in worker.output()  # no socket
    assert ensure_server(redis_home) == url
    compare_after_restart(r, before, training, figures)

    interrupted = wait_status(r, training, {"interrupted", "failed", "finished"}, HEARTBEAT_S + 10)
    assert (interrupted.status, interrupted.attempt, interrupted.error) == ("interrupted", 1, registry.LOST)
    assert api.workers(r) == []
    acknowledged = through_last_checkpoint(entries(r, training))
    assert acknowledged, "the run had checkpointed before the outage"

    worker_pool.spawn("rl2", env={"CODASH_HEARTBEAT_TIMEOUT": str(HEARTBEAT_S)})  # as `codash up` would
    figures.fault("worker restarted")
    api.resume(r, training)
    done = wait_status(r, training, {"finished", "failed", "interrupted"}, 60)
    assert (done.status, done.attempt, done.worker) == ("finished", 2, "rl2")
    final = entries(r, training)
    lost = missing(acknowledged, final)
    assert final[: len(acknowledged)] == acknowledged
    events = api.all_events(r, training)
    unbroken = api.all_events(r, stored["finished"])
    assert [without_timing(e) for e in events] == [without_timing(e) for e in unbroken]
    figures.check(check_continuous(events, TOTAL), lost)
    assert lost == 0
    for name in ("finished", "cancelled", "queued"):  # and the others are as they were
        assert api.get_run(r, stored[name]).status == before.records[stored[name]]["status"]
