"""What streaming metrics to Redis costs: training overhead, and latency to a live reader. Not a test.

1. Overhead: one digits config trained in this process with no sink, and with what a worker adds
   (StreamSink writing to a real local redis-server, plus the StopFlag polling for a cancel), alternately,
   after a warm-up; median wall time of each. Target: at most 5 % slower.
2. Latency: a reader in another process is blocked in XREAD (api.read_events with block_ms); this process
   XADDs events one every 2 ms carrying their send time; the reader notes when it holds each one (same host
   clock). Target: p95 at most 100 ms on loopback. Also shown, through the StreamSink: non-metric events are
   sent at once; metrics wait for the sink's batch (FLUSH_S) by design.

    .venv/bin/python bench/stream_bench.py [--iterations 300] [--repeats 3] [--events 1000] [--threads N]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from bench.timer import timed  # noqa: E402
from jobs import api, keys, registry  # noqa: E402
from jobs.server import ensure_server, stop_server  # noqa: E402
from jobs.stream import FIELD, StreamSink  # noqa: E402
from trainer.events import encode  # noqa: E402

CONFIG = {
    "dataset": "digits",
    "method": "fgsm",
    "eps": 0.2,
    "eval_every": 50,
    "eval_points": 256,
    "final_eval_points": 64,
    "final_pgd_steps": 5,
    "final_pgd_restarts": 1,
    "device": "cpu",
}


def start_attempt(r, config) -> str:
    """A running run record, as a worker's claim leaves it, so the sink's fenced writes are accepted."""
    run_id = api.submit(r, config, queue="bench-nobody-serves-this")
    fields = {"status": api.RunStatus.RUNNING, "started_at": time.time(), "worker": "bench", "device": "cpu"}
    assert registry.transition(
        r, run_id, {api.RunStatus.QUEUED}, fields, attempt=1, heartbeat=("bench", 3_600_000)
    )
    return run_id


class Timed:
    """Wraps a callable and adds up the time the training thread spends in it."""

    def __init__(self, target):
        self.target, self.seconds = target, 0.0

    def __call__(self, *args):
        spent: list[float] = []
        try:
            with timed(spent):
                return self.target(*args)
        finally:
            self.seconds += spent[0]


def overhead(r, iterations: int, repeats: int) -> None:
    """Wall time with and without the worker's instrumentation, alternating, and the time spent inside it.

    On a busy machine the wall times are noisy; the time inside the sink and stop-flag calls is not.
    """
    import torch

    from jobs.worker import StopFlag
    from trainer.config import make_config
    from trainer.loop import train

    config = make_config({**CONFIG, "max_iters": iterations})
    train(config)  # warm-up: data set, kernels, allocator
    walls: dict[str, list[float]] = {"no sink": [], "stream sink": []}
    inside: list[float] = []
    for _ in range(repeats):
        for mode in walls:
            sink = stop = None
            if mode == "stream sink":
                run_id = start_attempt(r, config)
                sink = Timed(StreamSink(r, run_id, 1))
                stop = Timed(StopFlag(r, run_id, 1, threading.Event()))
            with timed(walls[mode]):
                assert train(config, sink, should_stop=stop) is not None
                if sink is not None:
                    sink.target.close()
            if sink is not None:
                inside.append(sink.seconds + stop.seconds)
    base = statistics.median(walls["no sink"])
    threads = torch.get_num_threads()
    print(f"overhead: digits, {iterations} iterations, median of {repeats}, torch threads {threads}")
    for mode, values in walls.items():
        median = statistics.median(values)
        runs = ", ".join(f"{value:.2f}" for value in values)
        print(f"  {mode:12s} {median:6.2f} s  ({runs})  {100 * (median / base - 1):+.1f} %")
    spent = statistics.median(inside)
    print(f"  inside sink and stop flag: {1000 * spent:.1f} ms a run, {100 * spent / base:.2f} % of it")


def read_latencies(url: str, run_id: str, n: int, ready, results) -> None:
    """Reader process: blocked in XREAD until each event arrives; returns arrival - send time per event."""
    r = api.connect(url)
    latencies, after = [], "0-0"
    ready.set()
    while len(latencies) < n:
        events, after = api.read_events(r, run_id, after, block_ms=5000)
        now = time.time()
        latencies += [(event["type"], now - event["sent"]) for event in events]
    results.put(latencies)


def latency(r, url: str, n: int, through_sink: bool) -> list[tuple[str, float]]:
    from trainer.config import make_config

    run_id = start_attempt(r, make_config(CONFIG))
    context = multiprocessing.get_context("spawn")
    ready, results = context.Event(), context.Queue()
    reader = context.Process(target=read_latencies, args=(url, run_id, n, ready, results))
    reader.start()
    ready.wait()
    time.sleep(0.5)  # the reader is blocked in XREAD by now
    sink = StreamSink(r, run_id, 1) if through_sink else None
    for i in range(1, n + 1):
        kind = "eval" if i % 50 == 0 else "metrics"  # the trainer's mix: an eval every 50 iterations
        event = {"type": kind, "iteration": i, "sent": time.time()}
        if sink is not None:
            sink(event)
        else:
            r.xadd(keys.stream(run_id), {FIELD: encode(event)})
        time.sleep(0.002)
    if sink is not None:
        sink.close()
    values = results.get(timeout=60)
    reader.join()
    return values


def percentiles(values: list[float]) -> str:
    ms = sorted(1000 * value for value in values)
    p50, p95 = ms[len(ms) // 2], ms[min(len(ms) - 1, int(0.95 * len(ms)))]
    return f"p50 {p50:7.2f} ms  p95 {p95:7.2f} ms  max {ms[-1]:7.2f} ms  (n={len(ms)})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="codash-bench-") as home:
        url = ensure_server(Path(home))
        r = api.connect(url)
        try:
            overhead(r, args.iterations, args.repeats)
            raw = latency(r, url, args.events, through_sink=False)
            print(f"latency XADD -> reader blocked in XREAD: {percentiles([value for _, value in raw])}")
            sunk = latency(r, url, args.events, through_sink=True)
            for kind in ("eval", "metrics"):
                values = [value for event_kind, value in sunk if event_kind == kind]
                print(f"latency through StreamSink, {kind:7s}: {percentiles(values)}")
        finally:
            stop_server(Path(home))


if __name__ == "__main__":
    main()
