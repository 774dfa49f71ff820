"""Out of memory, as a GPU runs out of memory: a batch too large for what the worker may allocate.

The worker's address space for data is capped (RLIMIT_DATA, set from outside on the running process) at
what it uses plus 0.5 GiB; a PreAct ResNet-18 step on a batch of 1,024 needs more than 1.3 GiB. The run
must end `failed` with the allocator's reason, and the same worker must go on to finish the next run.
"""

from __future__ import annotations

import resource

import pytest
import torch

from jobs import api
from trainer.config import make_config

from .conftest import TINY, snapshot, wait_status

pytestmark = pytest.mark.timeout(180)

HEADROOM = 512 * 2**20


def data_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmData in /proc/<pid>/status")


def test_a_batch_too_large_for_memory_fails_its_run_and_the_worker_serves_on(r, worker_pool, figures):
    [worker] = worker_pool.spawn("oom1")
    warm = api.submit(r, make_config(TINY))  # torch and the data set loaded: the cap is on top of those
    assert wait_status(r, warm, {"finished", "failed"}, 60).status == "finished"
    before = snapshot(r)
    pid = worker.process.pid
    limit = data_bytes(pid) + HEADROOM
    resource.prlimit(pid, resource.RLIMIT_DATA, (limit, limit))
    figures.fault(f"RLIMIT_DATA {limit / 2**30:.1f} GiB on the worker")

    huge = make_config({**TINY, "model": "preact_resnet18", "batch_size": 1024, "max_iters": 5})
    run_id = api.submit(r, huge)
    failed = wait_status(r, run_id, {"failed", "finished"}, 120)
    figures.fault("PreAct ResNet-18 step on a batch of 1,024")
    assert failed.status == "failed", failed
    assert "memory" in failed.error.lower() and "\n" not in failed.error, failed.error
    assert "batch_size" in failed.error  # the hint: what to lower
    assert worker.alive()

    after = api.submit(r, make_config({**TINY, "seed": 1}))
    done = wait_status(r, after, {"finished", "failed"}, 60)
    assert (done.status, done.worker) == ("finished", "oom1")
    now = snapshot(r)
    for run in before.records:
        assert now.records[run] == before.records[run] and now.streams[run] == before.streams[run]
    figures.check(before.events)


def test_a_cuda_out_of_memory_error_reads_the_same_way():
    """CUDA's own exception type (no GPU needed to raise it): the record names the GPU and the fix."""
    from jobs.worker import failure_reason

    error = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB on GPU 0")
    reason = failure_reason(error)
    assert reason.startswith("out of memory on the GPU: lower batch_size")
    assert "Tried to allocate 2.00 GiB" in reason and "\n" not in reason
    assert failure_reason(ValueError("bad")) == "ValueError: bad"
