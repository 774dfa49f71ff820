"""The benchmarks' one timer.

CUDA runs asynchronously, so a reading on a CUDA device first waits for the work queued on it. On a CPU
shared with other jobs, `cpu=True` reads this process's CPU time instead of the wall clock (a one-thread
benchmark's CPU time does not grow when other jobs take the cores).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def now(device: Any = None, cpu: bool = False) -> float:
    """Seconds on a clock that only differences mean something on."""
    if device is not None and str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)
        return time.perf_counter()
    return time.process_time() if cpu else time.perf_counter()


@contextmanager
def timed(seconds: list[float], device: Any = None, cpu: bool = False) -> Iterator[None]:
    """Append to `seconds` how long the block took (see `now`), even when it raises."""
    started = now(device, cpu)
    try:
        yield
    finally:
        seconds.append(now(device, cpu) - started)
