"""The fork flow in a real browser: launch the FGSM digits preset, wait for the CO marker, click the live
view's one-click rescue (a fork from the last evaluation before CO with GradAlign on), and see the fork hold
while its parent collapses.

`codash up --workers 2` (both futures train at once) against the test's embedded Redis. Every wait is on a
Streamlit element or on the runs' stored events, each bounded by what is left of BUDGET_S, so a missing
element fails with what was awaited instead of hanging. The fork and its parent are compared at the same
evaluation, HOLD_EVALS evaluations past the parent's collapse; both runs are then cancelled. Saves the
Compare page (parent and rescued fork overlaid, the fork point marked) to test-artifacts/fork.png and, with
CODASH_UPDATE_SCREENSHOT=1, to docs/fork.png (the README's): for that picture both runs train to their end
and their final evaluations are checked too. Needs Debian's Chromium, like test_browser.py.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CHARTS, CHROMIUM_ARGS, ROOT, wait_for
from test_browser import chromium, codash_up, time_left  # noqa: F401 (a fixture)

from jobs import api
from trainer.config import lambda_of_eps
from trainer.presets import DEFAULT_PRESET, PRESETS

BUDGET_S = 900  # parent (690 iterations) and fork (from 150) side by side, final evaluations: 290-640 s here
ARTIFACT = ROOT / "test-artifacts" / "fork.png"
README_SCREENSHOT = ROOT / "docs" / "fork.png"
UPDATE_SCREENSHOT = os.environ.get("CODASH_UPDATE_SCREENSHOT") == "1"
HOLD_EVALS = 3  # the fork is compared with its parent at the third evaluation after the parent's onset
HOLDS_BY = 0.1  # there, the fork's live PGD accuracy is at least this far above its collapsed parent's

pytestmark = pytest.mark.timeout(BUDGET_S + 90)


@pytest.fixture
def dashboard(redis_home: Path, tmp_path: Path) -> Iterator[str]:
    """`codash up --port P --workers 2`: the fork trains while its parent goes on collapsing."""
    with codash_up(redis_home, tmp_path, "--workers", "2") as url:
        yield url


def shown(locator, what: str, timeout_ms: float):
    """`locator` once visible; fails with `what` (not Playwright's selector dump) when it is not in time."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        locator.first.wait_for(state="visible", timeout=timeout_ms)
    except PlaywrightTimeout:
        pytest.fail(f"not shown after {timeout_ms / 1000:.0f} s: {what}")
    return locator.first


def last_eval(r, run_id: str) -> dict:
    return [event for event in api.all_events(r, run_id) if event["type"] == "eval"][-1]


def events_until(r, run_id: str, iteration: int) -> list[dict] | None:
    """The run's events up to its evaluation at `iteration`; None until that evaluation is stored."""
    events = api.all_events(r, run_id)
    for n, event in enumerate(events):
        if event["type"] == "eval" and event["iteration"] == iteration:
            return events[: n + 1]
    return None


def final(r, run_id: str) -> dict:
    return next(event for event in api.all_events(r, run_id) if event["type"] == "final")


def test_rescue_a_collapsing_run_in_the_browser_and_the_fork_holds(chromium, dashboard):  # noqa: F811
    from playwright.sync_api import sync_playwright

    deadline = time.monotonic() + BUDGET_S
    left_ms = time_left(BUDGET_S)
    r = api.connect()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(dashboard)
        launch = page.get_by_role("button", name="Launch run")  # the form opens on the FGSM preset
        shown(launch, "the launch form's Launch button", left_ms()).click()
        page.wait_for_url(re.compile(r"/live\?run=[0-9a-f]{12}$"), timeout=left_ms())
        parent = page.url.rsplit("=", 1)[1]
        launched = api.get_run(r, parent).config
        assert launched.method == "fgsm" and not launched.uses_grad_align

        lam = lambda_of_eps("grad_align_lambda", "digits", PRESETS[DEFAULT_PRESET]["eps"])
        rescue = page.get_by_role("button", name=re.compile(r"^Rescue: fork from iteration [\d,]+ with"))
        label = shown(rescue, "the rescue button, once the live view marks CO", left_ms()).inner_text()
        at = int(re.search(r"iteration ([\d,]+)", label).group(1).replace(",", ""))
        assert label.endswith(f"GradAlign λ={lam:g}"), label
        co = api.get_run(r, parent).co_iteration
        assert co is not None and at < co  # forked before the collapse
        rescue.first.click()
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

        page.goto("about:blank")  # a live view left open re-renders its charts: CPU the two runs need
        every = launched.eval_every
        held = (co // every + HOLD_EVALS) * every  # an evaluation of both runs, well past the collapse
        assert held < api.get_run(r, parent).total_iterations
        streams = {}
        for run_id, name in ((parent, "parent"), (child, "fork")):
            streams[name] = wait_for(
                lambda run_id=run_id: (
                    events_until(r, run_id, held) or api.get_run(r, run_id).status in api.TERMINAL
                ),
                max(1.0, deadline - time.monotonic()),
                f"the {name} run's evaluation at iteration {held}",
                interval=0.5,
            )
            assert streams[name] is not True, f"the {name} run ended first: {api.get_run(r, run_id)}"
        parent_pgd, child_pgd = (streams[name][-1]["pgd_acc"] for name in ("parent", "fork"))
        assert [event["type"] for event in streams["fork"]].count("co") == 0
        assert child_pgd >= parent_pgd + HOLDS_BY, (parent_pgd, child_pgd)
        print(f"fork at {at} (CO {co}), λ={lam:g}: PGD accuracy at {held}: parent {parent_pgd:.2f}, ", end="")
        print(f"fork {child_pgd:.2f}; {BUDGET_S - (deadline - time.monotonic()):.0f} s")

        for run_id, name in ((parent, "parent"), (child, "fork")):
            if not UPDATE_SCREENSHOT:
                api.cancel(r, run_id)  # what was to be seen is seen: the compare page shows the runs so far
            wait_for(
                lambda run_id=run_id: api.get_run(r, run_id).status in api.TERMINAL,
                max(1.0, deadline - time.monotonic()),
                f"the {name} run to {'finish' if UPDATE_SCREENSHOT else 'stop'}",
                interval=0.5,
            )
        if UPDATE_SCREENSHOT:  # the README's picture: both runs to their end
            for run_id in (parent, child):
                assert api.get_run(r, run_id).status == "finished", api.get_run(r, run_id).error
            parent_pgd, child_pgd = last_eval(r, parent)["pgd_acc"], last_eval(r, child)["pgd_acc"]
            assert final(r, parent)["co_detected"] and not final(r, child)["co_detected"]
            assert child_pgd >= parent_pgd + HOLDS_BY, (parent_pgd, child_pgd)

        page.goto(f"{dashboard}/compare?compare={parent},{child}")
        shown(page.get_by_test_id("stDataFrame"), "the Compare page's table", left_ms())
        plot = page.frame_locator(CHARTS).first.locator("#chart .main-svg")
        shown(plot, "the Compare page's overlay drawn", left_ms())
        page.wait_for_timeout(1500)  # Plotly's transitions settle
        ARTIFACT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACT))
        if UPDATE_SCREENSHOT:
            page.screenshot(path=str(README_SCREENSHOT))
        browser.close()
    r.close()
