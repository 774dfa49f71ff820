"""How long `api.list_runs` takes with many runs stored (the Runs page lists them every refresh). Not a test:
tests/test_jobs_api.py checks the order, this prints the time. Target: under 0.5 s for 300 runs.

    .venv/bin/python -m bench.listing [--runs 300] [--repeats 5]

Submits N queued runs to a fresh embedded Redis (in a temporary CODASH_HOME; nothing trains), then times
list_runs; prints every repeat and the median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from bench.timer import timed
from jobs import api
from jobs.server import ensure_server, stop_server
from trainer.config import make_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    os.environ["CODASH_MAX_QUEUED"] = str(max(args.runs, 1))  # every run stays queued: no worker serves them
    with tempfile.TemporaryDirectory(prefix="codash-bench-") as home:
        r = api.connect(ensure_server(Path(home)))
        try:
            for seed in range(args.runs):
                api.submit(r, make_config({"dataset": "digits", "seed": seed, "device": "cpu"}))
            times = []
            for _ in range(args.repeats):
                with timed(times):
                    listed = api.list_runs(r)
                assert len(listed) == args.runs
        finally:
            r.close()
            stop_server(Path(home))
    median, shown = statistics.median(times) * 1000, ", ".join(f"{t * 1000:.0f}" for t in times)
    print(f"list_runs, {args.runs} runs: median {median:.0f} ms (repeats: {shown} ms)")


if __name__ == "__main__":
    main()
