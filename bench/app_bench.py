"""Dashboard benchmark (not a test): page render time with 200 runs stored, and event-to-chart latency.

    python -m bench app [--runs 200] [--renders 20] [--events 20] [--no-browser]

1. Render time: each page rendered by Streamlit's AppTest (the server-side script run that produces
   everything the browser is sent), against an embedded Redis holding `--runs` runs with full event streams
   (a digits-sized run each: ~700 metrics events, 14 evals, a CO event, a final event). A cold render is a
   new session (it reads every event it shows); a warm render is the same session's next rerun (only new
   stream entries are read). Target: p95 < 1 s. The page scripts are compiled once for the process, as the
   server does (AppTest alone would compile them at every run).
2. Event-to-chart latency: a real `streamlit run` server and headless Chromium on the live view of a
   running run; each sample writes one eval event through the worker's own writer and times until the
   chart in the browser holds that point. Writes are spaced randomly so they land anywhere in the refresh
   cycle. Target: p95 < 2 s.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tests' builders of realistic runs: one definition of each

import conftest as runs  # noqa: E402
import pytest  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from bench.timer import now, timed  # noqa: E402
from codash.up import dashboard_healthy  # noqa: E402
from jobs import api  # noqa: E402
from jobs.server import ensure_server, free_port, stop_server  # noqa: E402

MAIN = ROOT / "app" / "main.py"


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    median = statistics.median(ordered)
    return f"p50 {median:.3f} s  p95 {p95:.3f} s  max {ordered[-1]:.3f} s  (n={len(ordered)})"


def populate(r, n_runs: int) -> dict[str, str]:
    """n_runs digits-sized runs (a tenth of them running, the rest finished, the last 15 a sweep)."""
    started, ids, stored = now(), [], 0
    for index in range(n_runs):
        events = runs.co_run_events(total=690, co_at=150) if index % 2 else _healthy_events(690)
        status = api.RunStatus.RUNNING if index % 10 == 0 else api.RunStatus.FINISHED
        events = events if status == api.RunStatus.FINISHED else events[:-1]
        sweep = "bench" if index >= n_runs - 15 else None
        ids.append(runs.store_run(r, events, status=status, sweep_id=sweep))
        stored += len(events)
    print(f"stored {n_runs} runs with {stored:,} events in {now() - started:.1f} s")
    return {"finished": ids[1], "running": ids[0], "compare": f"{ids[1]},{ids[2]},{ids[3]}"}


def _healthy_events(total: int) -> list[dict]:
    events = [runs.config_event(total=total, grad_align_lambda=2.0)]
    for it in range(1, total + 1):
        events.append(runs.metrics_event(it, reg=0.05))
        if it % 50 == 0 or it == total:
            events.append(runs.eval_event(it, pgd=0.4))
    return [*events, runs.final_event(None, pgd=0.4)]


def time_renders(label: str, make: Callable[[], AppTest], renders: int) -> None:
    cold, warm = [], []
    for _ in range(renders):
        at = make()
        with timed(cold):
            at.run()
        assert not at.exception, [e.value for e in at.exception]
        with timed(warm):
            at.run()
    print(f"  {label:<34} cold {percentiles(cold)}")
    print(f"  {'':<34} warm {percentiles(warm)}")


def bench_renders(ids: dict[str, str], renders: int) -> None:
    def page(path: str | None = None, **query: str) -> Callable[[], AppTest]:
        def make() -> AppTest:
            at = AppTest.from_file(str(MAIN), default_timeout=60)
            at.query_params.update(query)
            if path:  # AppTest switches pages only after a first run
                at.run()
                at.switch_page(path)
            return at

        return make

    print("render time (AppTest, server side):")
    with pytest.MonkeyPatch.context() as patch:
        runs.compile_page_scripts_once(patch)
        time_renders("launch", page(), renders)
        time_renders("runs (table of all runs)", page("views/runs.py"), renders)
        time_renders("live (finished run, 720 events)", page(run=ids["finished"]), renders)
        time_renders("live (running run)", page(run=ids["running"]), renders)
        time_renders("compare (3 runs)", page(compare=ids["compare"]), renders)
        time_renders("sweep (15 runs)", page(sweep="bench"), renders)


def bench_latency(r, n_events: int) -> None:
    from playwright.sync_api import sync_playwright

    run_id = runs.store_run(
        r,
        [runs.config_event(total=100_000)] + [runs.metrics_event(it) for it in range(1, 101)],
        api.RunStatus.RUNNING,
    )
    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", str(MAIN), "--server.port", str(port)]
    command += ["--server.headless", "true", "--browser.gatherUsageStats", "false"]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait(lambda: dashboard_healthy(url), 60)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(runs.CHROMIUM), args=runs.CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.goto(f"{url}/live?run={run_id}")
            page.frame_locator(runs.CHARTS).locator(".legendtext").first.wait_for()
            frame = next(frame for frame in page.frames if "live_plotly" in frame.url)
            shows = "it => (document.getElementById('chart')._fullData || []).some(t => t.name === 'PGD' && "
            shows += "Array.from(t.x).includes(it))"  # _fullData: the arrays as plotted (decoded)
            latencies = []
            for index in range(n_events):
                time.sleep(random.uniform(0.2, 1.3))
                iteration = 100 + 10 * (index + 1)
                with timed(latencies):
                    runs.append(
                        r, run_id, [runs.metrics_event(iteration), runs.eval_event(iteration, pgd=0.4)]
                    )
                    frame.wait_for_function(shows, arg=iteration, polling="raf", timeout=30_000)
            browser.close()
        print(f"event-to-chart latency (browser): {percentiles(latencies)}")
    finally:
        server.terminate()
        server.wait(timeout=10)


def _wait(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the dashboard did not start")
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--renders", type=int, default=20)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--no-browser", action="store_true", help="skip the latency part (needs Chromium)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="codash-bench-") as home:
        os.environ["CODASH_HOME"] = home
        os.environ.pop("REDIS_URL", None)
        ensure_server(Path(home))
        try:
            r = api.connect()
            ids = populate(r, args.runs)
            bench_renders(ids, args.renders)
            if not args.no_browser:
                bench_latency(r, args.events)
        finally:
            stop_server(Path(home))


if __name__ == "__main__":
    main()
