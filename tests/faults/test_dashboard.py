"""The dashboard only reads and submits: killing it touches no run, and a long queue does not stall it.

The dashboard is a real `streamlit run app/main.py` process; pages are run over its websocket, as a browser
runs them, so the figures are what a user waits for.
"""

from __future__ import annotations

import signal
import time

import pytest
from conftest import without_timing

from jobs import api
from trainer.config import make_config

from .conftest import TINY, check_continuous, entries, long_tiny, page_text, snapshot, wait_for, wait_status

pytestmark = pytest.mark.timeout(240)

TOTAL = 300
QUEUED = 100


def test_killing_the_dashboard_leaves_running_runs_untouched(r, worker_pool, dashboard, figures):
    worker_pool.spawn("d1", "d2")
    config = make_config(long_tiny(TOTAL))
    watched, reference = api.submit(r, config), api.submit(r, config)
    dashboard.start()
    wait_for(lambda: api.get_run(r, watched).iteration >= 30, 60, "the run to be training", 0.02)
    shown = page_text(dashboard.render("live", f"run={watched}"))
    assert "running" in shown and "Final evaluation" not in shown
    assert api.get_run(r, watched).status == "running"
    before = entries(r, watched)

    assert dashboard.kill(signal.SIGKILL) == -signal.SIGKILL
    figures.fault(f"SIGKILL dashboard while run at iteration {api.get_run(r, watched).iteration}")
    assert dashboard.health() is None

    done = wait_status(r, watched, {"finished", "failed", "interrupted", "cancelled"}, 90)
    assert (done.status, done.attempt, done.error) == ("finished", 1, None)
    after = entries(r, watched)
    assert after[: len(before)] == before
    events = api.all_events(r, watched)
    checked = check_continuous(events, TOTAL)
    wait_status(r, reference, {"finished"}, 90)
    assert [without_timing(e) for e in events] == [without_timing(e) for e in api.all_events(r, reference)]
    figures.check(checked, lost=len(before) - len(set(before) & set(after)))

    dashboard.start()  # a new dashboard shows the finished run
    figures.fault("dashboard restarted")
    assert "Final evaluation" in page_text(dashboard.render("live", f"run={watched}"))


def test_with_100_queued_runs_every_page_still_answers(r, dashboard, figures):
    finished = api.submit(r, make_config(TINY))  # nobody serves the default queue here: all stay queued
    queued = [api.submit(r, make_config({**TINY, "seed": i}), queue="nobody") for i in range(QUEUED - 1)]
    figures.fault(f"{QUEUED} runs queued with no worker")
    before = snapshot(r)
    startup = dashboard.start()
    timings = {"startup": startup}
    for page, query in (
        ("launch", ""),
        ("runs", ""),
        ("live", f"run={queued[0]}"),
        ("compare", f"compare={queued[0]},{queued[1]}"),
        ("sweep", ""),
    ):
        started = time.monotonic()
        text = page_text(dashboard.render(page, query, timeout=60))
        timings[page] = round(time.monotonic() - started, 2)
        assert "Traceback" not in text and "exception" not in text.lower(), text[-2000:]
        if page == "launch":  # the dashboard's queue limit (100) is reached: launching is refused, clearly
            assert "already queued" in text and "disabled: true" in text
        if page == "runs":
            assert finished in text and queued[-1] in text
    print(f"page render seconds with {QUEUED} queued runs: {timings}")
    after = snapshot(r)
    assert after.records == before.records and after.streams == before.streams
    assert api.get_run(r, finished).status == "queued" and len(api.list_runs(r)) == QUEUED
    figures.check(before.events)
