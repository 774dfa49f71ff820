"""The dashboard in a real browser: `codash up` (what `make up` runs) on a free port, Chromium driving.

`codash up` starts the worker and the dashboard against the test's embedded Redis (in a temporary
CODASH_HOME) and must answer /_stcore/health within 60 s.

Launches the FGSM digits preset from the form and waits until the live chart shows the PGD line and the
catastrophic-overfitting marker, then saves a screenshot to test-artifacts/screenshot.png (kept after the
run) and, with CODASH_UPDATE_SCREENSHOT=1, to docs/screenshot.png (the README's); then scrolls to "Inside
the model" (first-layer filters and one image's perturbations, after CO) for test-artifacts/inside.png and
docs/inside.png. Needs Debian's Chromium at /usr/bin/chromium: skipped without it, except on CI (CI=true),
where a missing browser fails the test.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import CHARTS, CHROMIUM, CHROMIUM_ARGS, ROOT, wait_for

from codash.up import dashboard_healthy
from jobs import api
from jobs.server import free_port

BUDGET_S = 600  # the whole session, worker start to the finished run (probes and final eval included)
ARTIFACT = ROOT / "test-artifacts" / "screenshot.png"
README_SCREENSHOT = ROOT / "docs" / "screenshot.png"
INSIDE_ARTIFACT = ROOT / "test-artifacts" / "inside.png"
README_INSIDE = ROOT / "docs" / "inside.png"
PRESET = "Digits: FGSM catastrophic overfitting"
SHOW_UNTIL_ITERATION = 400  # let the collapse develop a little past the marker before the screenshot

pytestmark = pytest.mark.timeout(BUDGET_S + 90)


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        message = f"Debian Chromium not found at {CHROMIUM} (install it with: apt-get install -y chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; the browser test is required on CI")
        pytest.skip(f"{message}; skipping the browser test")
    return CHROMIUM


@contextlib.contextmanager
def codash_up(redis_home: Path, tmp_path: Path, *flags: str) -> Iterator[str]:
    """`codash up --port P [flags]` against the test's embedded Redis; yields the dashboard's URL."""
    port = free_port()
    log = tmp_path / "up.log"
    command = [sys.executable, "-m", "codash", "up", "--port", str(port), *flags]
    env = {**os.environ, "CODASH_HOME": str(redis_home)}
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: dashboard_healthy(url) or process.poll() is not None,
            60,
            "codash up to serve the dashboard",
        )
        assert process.poll() is None, log.read_text()
        yield url
    finally:
        process.terminate()  # SIGTERM: codash up stops its worker and the dashboard
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        print("--- codash up ---", *log.read_text().splitlines()[-20:], sep="\n")


@pytest.fixture
def dashboard(redis_home: Path, tmp_path: Path) -> Iterator[str]:
    """`codash up --port P`: one CPU worker and the dashboard."""
    with codash_up(redis_home, tmp_path) as url:
        yield url


def time_left(budget_s: float) -> Callable[[], float]:
    """Milliseconds left of a budget that starts now (at least 1), for Playwright's timeouts."""
    deadline = time.monotonic() + budget_s
    return lambda: max(1.0, deadline - time.monotonic()) * 1000


def open_page(playwright, chromium: Path):
    """Debian's Chromium, headless, with one page at the size of the README's screenshots."""
    browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
    return browser, browser.new_page(viewport={"width": 1400, "height": 1250})


def test_launch_the_fgsm_preset_and_watch_catastrophic_overfitting(chromium, dashboard, tmp_path):
    from playwright.sync_api import sync_playwright

    deadline = time.monotonic() + BUDGET_S
    left_ms = time_left(BUDGET_S)

    with sync_playwright() as playwright:
        browser, page = open_page(playwright, chromium)
        page.goto(dashboard)
        preset = page.get_by_test_id("stSelectbox").filter(has_text="Preset")
        preset.click(timeout=left_ms())
        page.get_by_role("option", name=PRESET).click()
        page.get_by_role("button", name="Launch run").click()
        page.wait_for_url(re.compile(r"/live\?run=[0-9a-f]{12}$"), timeout=left_ms())
        run_id = page.url.rsplit("=", 1)[1]

        chart = page.frame_locator(CHARTS).first
        chart.locator(".legendtext", has_text=re.compile(r"^PGD$")).wait_for(timeout=left_ms())
        plot = chart.locator("#chart")
        plot.evaluate("element => { element.dataset.mark = 'mounted once' }")
        chart.locator(".annotation-text", has_text="catastrophic overfitting").first.wait_for(
            timeout=left_ms()
        )

        r = api.connect()
        run = api.get_run(r, run_id)
        assert run.co_iteration is not None and run.config.method == "fgsm"
        # the chart was updated in place all along, not rebuilt: what keeps zoom and avoids flicker
        assert plot.get_attribute("data-mark") == "mounted once"
        wait_for(
            lambda: (
                api.get_run(r, run_id).iteration >= SHOW_UNTIL_ITERATION or time.monotonic() > deadline - 20
            ),
            BUDGET_S,
            "the run to train a little past the collapse",
            interval=0.5,
        )
        page.wait_for_timeout(1500)  # one more refresh reaches the browser
        ARTIFACT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACT))
        if os.environ.get("CODASH_UPDATE_SCREENSHOT") == "1":
            page.screenshot(path=str(README_SCREENSHOT))

        # inside the model, once the run has stopped (the page stops refreshing): the filters and the
        # perturbations at its last evaluation, after the collapse. The README's screenshots wait for the
        # whole run; the test cancels it there instead of waiting for the rest and its final evaluation.
        if os.environ.get("CODASH_UPDATE_SCREENSHOT") != "1":
            api.cancel(r, run_id)
        wait_for(
            lambda: api.get_run(r, run_id).status in api.TERMINAL,
            left_ms() / 1000,
            "the run to stop",
            interval=0.5,
        )
        last = max(e["iteration"] for e in api.all_events(r, run_id) if e["type"] == "snapshot")
        assert last > run.co_iteration
        inside = page.frame_locator(CHARTS).nth(2).locator("#chart")
        wait_for(
            lambda: inside.get_attribute("data-revision") == str(last),
            30,
            "the perturbation images of the last evaluation",
            interval=0.5,
        )
        filters = page.frame_locator(CHARTS).nth(1).locator("#chart")
        assert filters.locator(".gtitle", has_text="First-layer filters").count() == 1
        assert inside.locator(".annotation-text", has_text="PGD δ/ε").count() == 1
        heading = page.get_by_role("heading", name="Inside the model")
        heading.evaluate("element => element.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(500)
        page.screenshot(path=str(INSIDE_ARTIFACT))
        if os.environ.get("CODASH_UPDATE_SCREENSHOT") == "1":
            page.screenshot(path=str(README_INSIDE))
        browser.close()
        r.close()
