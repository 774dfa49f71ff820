"""The dashboard in a real browser: `codash up --workers 2` (what `make up` runs, with a second worker) on a
free port against the test's embedded Redis, Chromium driving. `codash up` must answer /_stcore/health
within 60 s.

One flow, as a user meets it: pick the FGSM digits preset in the form and launch it; the live chart shows the
PGD line and, updated in place, the catastrophic-overfitting marker; **Rescue** forks the run from before the
collapse with GradAlign on, and the fork holds (its PGD accuracy well above its collapsed parent's at the same
evaluation, past the collapse) while the parent goes on collapsing beside it. Both runs are then cancelled,
and the parent's "Inside the model" shows its filters and perturbations at its last evaluation. Every wait is
on a Streamlit element or on the runs' stored events, each bounded by what is left of BUDGET_S.

Screenshots (kept after the run): the parent's live view (test-artifacts/screenshot.png), its "Inside the
model" (inside.png) and Compare with parent and fork (fork.png); with CODASH_UPDATE_SCREENSHOT=1 both runs
train to their end, their final evaluations are checked, and the pictures go to docs/ (the README's). Needs
Debian's Chromium at /usr/bin/chromium: skipped without it, except on CI (CI=true), where a missing browser
fails the test.
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
from conftest import CHARTS, CHROMIUM, ROOT, chromium_profile, wait_for

from codash.up import dashboard_healthy
from jobs import api
from jobs.server import free_port
from trainer.config import lambda_of_eps

BUDGET_S = 900  # parent to its collapse, then parent and fork side by side to HOLD_EVALS evaluations past it
UPDATE_SCREENSHOT = os.environ.get("CODASH_UPDATE_SCREENSHOT") == "1"
PICTURES = {  # test artifact, the README's copy
    "live": (ROOT / "test-artifacts" / "screenshot.png", ROOT / "docs" / "screenshot.png"),
    "inside": (ROOT / "test-artifacts" / "inside.png", ROOT / "docs" / "inside.png"),
    "fork": (ROOT / "test-artifacts" / "fork.png", ROOT / "docs" / "fork.png"),
}
PRESET = "Digits: FGSM catastrophic overfitting"
HOLD_EVALS = 2  # the fork is compared with its parent at the second evaluation after the parent's onset
HOLDS_BY = 0.1  # there, the fork's live PGD accuracy is at least this far above its collapsed parent's

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
    """`codash up --port P --workers 2`: a fork trains while its parent goes on collapsing."""
    with codash_up(redis_home, tmp_path, "--workers", "2") as url:
        yield url


def time_left(budget_s: float) -> Callable[[], float]:
    """Milliseconds left of a budget that starts now (at least 1), for Playwright's timeouts."""
    deadline = time.monotonic() + budget_s
    return lambda: max(1.0, deadline - time.monotonic()) * 1000


def open_page(playwright, profile: Path):
    """Debian's Chromium, headless, with one page at the size of the README's screenshots."""
    browser = chromium_profile(playwright, profile, viewport={"width": 1400, "height": 1250})
    return browser, browser.pages[0]


def shown(locator, what: str, timeout_ms: float):
    """`locator` once visible; fails with `what` (not Playwright's selector dump) when it is not in time."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        locator.first.wait_for(state="visible", timeout=timeout_ms)
    except PlaywrightTimeout:
        pytest.fail(f"not shown after {timeout_ms / 1000:.0f} s: {what}")
    return locator.first


def events_until(r, run_id: str, iteration: int) -> list[dict] | None:
    """The run's events up to its evaluation at `iteration`; None until that evaluation is stored."""
    events = api.all_events(r, run_id)
    for n, event in enumerate(events):
        if event["type"] == "eval" and event["iteration"] == iteration:
            return events[: n + 1]
    return None


def of_type(r, run_id: str, kind: str) -> list[dict]:
    return [event for event in api.all_events(r, run_id) if event["type"] == kind]


def screenshot(page, picture: str) -> None:
    artifact, readme = PICTURES[picture]
    artifact.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(artifact))
    if UPDATE_SCREENSHOT:
        page.screenshot(path=str(readme))


def test_launch_the_fgsm_preset_watch_it_collapse_and_rescue_it(chromium, dashboard, tmp_path):
    from playwright.sync_api import sync_playwright

    left_ms = time_left(BUDGET_S)
    r = api.connect()
    with sync_playwright() as playwright:
        browser, page = open_page(playwright, tmp_path / "chromium")
        page.goto(dashboard)
        preset = page.get_by_test_id("stSelectbox").filter(has_text="Preset")
        preset.click(timeout=left_ms())
        page.get_by_role("option", name=PRESET).click()
        page.get_by_role("button", name="Launch run").click()
        page.wait_for_url(re.compile(r"/live\?run=[0-9a-f]{12}$"), timeout=left_ms())
        parent = page.url.rsplit("=", 1)[1]
        launched = api.get_run(r, parent).config
        assert launched.method == "fgsm" and not launched.uses_grad_align

        # the live view, from launch to the collapse: the marker arrives in the chart that was drawn first
        chart = page.frame_locator(CHARTS).first
        chart.locator(".legendtext", has_text=re.compile(r"^PGD$")).wait_for(timeout=left_ms())
        plot = chart.locator("#chart")
        plot.evaluate("element => { element.dataset.mark = 'mounted once' }")
        marker = chart.locator(".annotation-text", has_text="catastrophic overfitting")
        shown(marker, "the catastrophic-overfitting marker on the live chart", left_ms())
        assert plot.get_attribute("data-mark") == "mounted once"  # updated in place: zoom kept, no flicker

        lam = lambda_of_eps("grad_align_lambda", "digits", launched.eps)
        rescue = page.get_by_role("button", name=re.compile(r"^Rescue: fork from iteration [\d,]+ with"))
        label = shown(rescue, "the rescue button, once the live view marks CO", left_ms()).inner_text()
        at = int(re.search(r"iteration ([\d,]+)", label).group(1).replace(",", ""))
        assert label.endswith(f"GradAlign λ={lam:g}"), label
        co = api.get_run(r, parent).co_iteration
        assert co is not None and at < co  # forked before the collapse
        rescue.click()
        page.wait_for_url(re.compile(rf"/compare\?compare={parent}%2C[0-9a-f]{{12}}$"), timeout=left_ms())
        child = page.url.rsplit("%2C", 1)[1]

        page.goto(f"{dashboard}/live?run={child}")
        lineage = (
            page.get_by_test_id("stMarkdown")
            .filter(has_text="Fork of")
            .filter(has_text=f"at iteration {at:,}")
        )
        shown(lineage, f"the fork's live view naming its parent and iteration {at}", left_ms())
        assert lineage.first.locator(f'a[href*="run={parent}"]').count() == 1
        config = api.get_run(r, child).config
        assert (config.parent, config.fork_iteration, config.grad_align_lambda) == (parent, at, lam)

        # the fork holds: both runs at one evaluation well past the parent's collapse
        page.goto("about:blank")  # a live view left open re-renders its charts: CPU the two runs need
        held = (co // launched.eval_every + HOLD_EVALS) * launched.eval_every
        assert held < api.get_run(r, parent).total_iterations
        streams = {}
        for run_id, name in ((parent, "parent"), (child, "fork")):
            streams[name] = wait_for(
                lambda run_id=run_id: (
                    events_until(r, run_id, held) or api.get_run(r, run_id).status in api.TERMINAL
                ),
                left_ms() / 1000,
                f"the {name} run's evaluation at iteration {held}",
                interval=0.5,
            )
            assert streams[name] is not True, f"the {name} run ended first: {api.get_run(r, run_id)}"
        parent_pgd, child_pgd = (streams[name][-1]["pgd_acc"] for name in ("parent", "fork"))
        assert [event["type"] for event in streams["fork"]].count("co") == 0
        assert child_pgd >= parent_pgd + HOLDS_BY, (parent_pgd, child_pgd)
        print(f"fork at {at} (CO {co}), λ={lam:g}: PGD accuracy at {held}: parent {parent_pgd:.2f}, ", end="")
        print(f"fork {child_pgd:.2f}; {BUDGET_S - left_ms() / 1000:.0f} s")

        # what was to be seen is seen: both runs stop there (for the README's pictures, at their end)
        for run_id, name in ((parent, "parent"), (child, "fork")):
            if not UPDATE_SCREENSHOT:
                api.cancel(r, run_id)
            wait_for(
                lambda run_id=run_id: api.get_run(r, run_id).status in api.TERMINAL,
                left_ms() / 1000,
                f"the {name} run to {'finish' if UPDATE_SCREENSHOT else 'stop'}",
                interval=0.5,
            )
        if UPDATE_SCREENSHOT:
            for run_id in (parent, child):
                assert api.get_run(r, run_id).status == "finished", api.get_run(r, run_id).error
            parent_pgd, child_pgd = (of_type(r, run_id, "eval")[-1]["pgd_acc"] for run_id in (parent, child))
            assert (
                of_type(r, parent, "final")[0]["co_detected"]
                and not of_type(r, child, "final")[0]["co_detected"]
            )
            assert child_pgd >= parent_pgd + HOLDS_BY, (parent_pgd, child_pgd)

        # the parent's live view past its collapse, and inside the model at its last evaluation
        page.goto(f"{dashboard}/live?run={parent}")
        shown(page.frame_locator(CHARTS).first.locator(".annotation-text"), "the parent's chart", left_ms())
        last = of_type(r, parent, "snapshot")[-1]["iteration"]
        assert last > co
        inside = page.frame_locator(CHARTS).nth(2).locator("#chart")
        wait_for(
            lambda: inside.get_attribute("data-revision") == str(last),
            30,
            "the perturbation images of the last evaluation",
            interval=0.5,
        )
        page.wait_for_timeout(1500)  # Plotly's transitions settle
        screenshot(page, "live")
        filters = page.frame_locator(CHARTS).nth(1).locator("#chart")
        assert filters.locator(".gtitle", has_text="First-layer filters").count() == 1
        assert inside.locator(".annotation-text", has_text="PGD δ/ε").count() == 1
        heading = page.get_by_role("heading", name="Inside the model")
        heading.evaluate("element => element.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(500)
        screenshot(page, "inside")

        # Compare: parent and rescued fork overlaid, the fork point marked
        page.goto(f"{dashboard}/compare?compare={parent},{child}")
        shown(page.get_by_test_id("stDataFrame"), "the Compare page's table", left_ms())
        shown(page.frame_locator(CHARTS).first.locator("#chart .main-svg"), "the overlay drawn", left_ms())
        page.wait_for_timeout(1500)
        screenshot(page, "fork")
        browser.close()
    r.close()
