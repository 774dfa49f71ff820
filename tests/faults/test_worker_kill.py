"""kill -9 of the worker training a run, twice: before its first checkpoint and after a later one.

Each time the run becomes `interrupted` within the heartbeat timeout; resumed, it finishes on another worker
with a stream that is exactly an unbroken run's (one config, metrics 1..N, evals where due, one final),
and no entry that was in the stream up to the checkpoint a resume continues from is lost or rewritten.
"""

from __future__ import annotations

import signal
import time

from conftest import without_timing

from jobs import api
from trainer.config import make_config

from .conftest import (
    check_continuous,
    entries,
    long_tiny,
    missing,
    through_last_checkpoint,
    wait_for,
    wait_status,
)

HEARTBEAT_S = 2.0
QUEUE = "faults-kill"
TOTAL = 150


def checkpoints(r, run_id: str) -> list[int]:
    return [event["iteration"] for event in api.read_events(r, run_id)[0] if event["type"] == "checkpoint"]


def test_kill_9_twice_then_resume_gives_an_unbroken_stream(r, worker_pool, figures):
    workers = worker_pool.spawn(
        "k1", "k2", "k3", queue=QUEUE, env={"CODASH_HEARTBEAT_TIMEOUT": str(HEARTBEAT_S)}
    )
    by_name = {worker.name: worker for worker in workers}
    config = make_config(long_tiny(TOTAL))
    victim = api.submit(r, config, queue=QUEUE)
    reference = api.submit(r, config, queue=QUEUE)  # the same run, never disturbed, trained alongside

    # fault 1: as soon as a worker has claimed the run, before it could save a checkpoint
    running = wait_status(r, victim, {"running"}, 60)
    acknowledged = through_last_checkpoint(entries(r, victim))
    by_name[running.worker].kill(signal.SIGKILL)
    killed = time.monotonic()
    figures.fault(f"SIGKILL worker {running.worker} at iteration {api.get_run(r, victim).iteration}")
    interrupted = wait_status(r, victim, {"interrupted"}, HEARTBEAT_S + 10)
    assert time.monotonic() - killed <= HEARTBEAT_S + 2.0
    assert "heartbeat" in interrupted.error and interrupted.attempt == 1
    api.resume(r, victim)

    # fault 2: on the second attempt, mid-run, after a checkpoint past the first epoch
    def second_attempt_checkpointed() -> api.Run | None:
        run = api.get_run(r, victim)
        late = run.attempt == 2 and run.status == "running" and max(checkpoints(r, victim), default=0) >= 46
        return run if late else None

    running = wait_for(second_attempt_checkpointed, 60, "attempt 2 to checkpoint past iteration 46", 0.02)
    assert running.worker != interrupted.worker
    before_kill = entries(r, victim)
    by_name[running.worker].kill(signal.SIGKILL)
    figures.fault(f"SIGKILL worker {running.worker} at iteration {api.get_run(r, victim).iteration}")
    lost = missing(acknowledged, entries(r, victim))
    acknowledged = through_last_checkpoint(before_kill)
    assert acknowledged, "attempt 2 had checkpointed"
    interrupted = wait_status(r, victim, {"interrupted"}, HEARTBEAT_S + 10)
    assert interrupted.attempt == 2 and interrupted.iteration >= 46
    api.resume(r, victim)

    done = wait_status(r, victim, {"finished"}, 90)
    survivor = next(name for name in by_name if by_name[name].alive())
    assert (done.status, done.attempt, done.iteration, done.worker) == ("finished", 3, TOTAL, survivor)
    final_entries = entries(r, victim)
    lost += missing(acknowledged, final_entries)
    assert final_entries[: len(acknowledged)] == acknowledged  # the kept prefix: same ids, same bytes

    events = api.all_events(r, victim)
    checked = check_continuous(events, TOTAL)
    assert wait_status(r, reference, {"finished"}, 60).attempt == 1
    unbroken = api.all_events(r, reference)
    assert [without_timing(e) for e in events] == [without_timing(e) for e in unbroken]
    assert done.final == events[-1]
    figures.check(checked + len(unbroken), lost)
    assert lost == 0
