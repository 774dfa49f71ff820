"""Fork in a real browser: launch the FGSM digits preset, press "Rescue" once catastrophic overfitting is
detected, and watch the fork (GradAlign on, from the evaluation before the CO onset) hold while its parent
collapses, on Compare with the fork point marked.

`codash up --workers 2` (parent and fork train at once) against the test's embedded Redis; Chromium at
/usr/bin/chromium as in test_browser.py. Checks the runs once both have their last live evaluation (the
final PGD-50-10 evaluations may still run), then saves test-artifacts/fork.png and, with
CODASH_UPDATE_SCREENSHOT=1, docs/fork.png (meant for the README's first screen). Slow: two digits runs (about
2 minutes on an idle laptop CPU; 15 on a 2-core machine shared with other test runs).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, wait_for
from test_browser import CHARTS, PRESET, chromium, codash_up, open_page, time_left  # noqa: F401 (a fixture)

from jobs import api

BUDGET_S = 1800  # both runs: ~2 min on an idle laptop CPU, ~20 on a 2-core machine shared with other tests
ARTIFACT = ROOT / "test-artifacts" / "fork.png"
README_FORK = ROOT / "docs" / "fork.png"

pytestmark = pytest.mark.timeout(BUDGET_S + 120)


@pytest.fixture
def dashboard(redis_home: Path, tmp_path: Path) -> Iterator[str]:
    """`codash up --port P --workers 2`: parent and fork train at once."""
    with codash_up(redis_home, tmp_path, "--workers", "2") as url:
        yield url


def test_rescue_a_collapsing_fgsm_run_with_a_gradalign_fork(chromium, dashboard):  # noqa: F811
    from playwright.sync_api import sync_playwright

    left_ms = time_left(BUDGET_S)

    with sync_playwright() as playwright:
        browser, page = open_page(playwright, chromium)
        page.goto(dashboard)
        page.get_by_test_id("stSelectbox").filter(has_text="Preset").click(timeout=left_ms())
        page.get_by_role("option", name=PRESET).click()
        page.get_by_role("button", name="Launch run").click()
        page.wait_for_url(re.compile(r"/live\?run=[0-9a-f]{12}$"), timeout=left_ms())
        parent = page.url.rsplit("=", 1)[1]

        rescue = page.get_by_role("button", name=re.compile(r"^Rescue: fork from iteration"))
        rescue.wait_for(timeout=left_ms())
        r = api.connect()
        co = api.get_run(r, parent).co_iteration
        assert co is not None
        at = max(it for it in api.fork_points(parent) if it < co)
        assert rescue.inner_text().endswith(f"Rescue: fork from iteration {at:,} with GradAlign λ=4")
        rescue.click()
        page.wait_for_url(re.compile(rf"/compare\?compare={parent}(%2C|,)[0-9a-f]{{12}}$"), timeout=left_ms())
        child = re.split("%2C|,", page.url)[-1]
        overlay = page.frame_locator(CHARTS).first
        overlay.locator(".annotation-text", has_text="fork:").first.wait_for(timeout=left_ms())

        def evals(run_id: str) -> list[dict]:
            return [e for e in api.all_events(r, run_id) if e["type"] == "eval"]

        def trained(run_id: str) -> bool:  # its last live evaluation is in (the final one may still run)
            total = api.get_run(r, run_id).total_iterations
            return total is not None and any(e["iteration"] == total for e in evals(run_id))

        wait_for(lambda: trained(parent) and trained(child), left_ms() / 1000, "both to train", interval=1.0)
        parent_run, child_run = api.get_run(r, parent), api.get_run(r, child)
        # the parent collapsed; the fork, from the same weights at `at` with GradAlign, held to the end
        assert parent_run.co_iteration == co and evals(parent)[-1]["pgd_acc"] < 0.05
        assert child_run.co_iteration is None and evals(child)[-1]["pgd_acc"] > 0.05
        assert (child_run.config.parent, child_run.config.fork_iteration) == (parent, at)
        assert evals(child)[0]["iteration"] > at and child_run.config.grad_align_lambda == 4

        # one CO marker (the parent's, on each panel) and the fork's
        page.wait_for_timeout(3000)  # a refresh or two reaches the browser
        notes = overlay.locator(".annotation-text")
        texts = [notes.nth(i).inner_text() for i in range(notes.count())]
        assert sum(text.startswith("CO") for text in texts) == 3, texts
        assert sum(text.startswith("fork") for text in texts) == 3, texts
        ARTIFACT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACT))
        if os.environ.get("CODASH_UPDATE_SCREENSHOT") == "1":
            page.screenshot(path=str(README_FORK))
        browser.close()
        r.close()
