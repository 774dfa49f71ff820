"""What the live refresh does to a user's hands, in a real browser: a selection made before a refresh is
the one acted on after it; a number box left blank or given text never becomes a number.

Reuses test_browser_ux's dashboard, browser and cleared-Redis fixtures (one dashboard for this module).
"""

from __future__ import annotations

import re

from conftest import (
    CHARTS,
    ROOT,
    append,
    co_event,
    co_run_events,
    eval_event,
    metrics_event,
    running_events,
    store_run,
    wait_for,
    warning_event,
)
from test_browser_ux import TIMEOUT_MS, box, browser, dashboard, field, home, r  # noqa: F401 (fixtures)

from app.palette import WARNING_COLOR
from jobs import api
from trainer.config import make_config
from trainer.fork import EVALS_DIR, rescue_lambda

ROW_PX = 35  # the data grid's header and row height (Streamlit's default)


def test_a_ticked_run_is_the_one_deleted_after_a_new_run_re_sorts_the_table(browser, dashboard, r):  # noqa: F811 (fixtures)
    older, newer = store_run(r, co_run_events()), store_run(r, co_run_events())
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{dashboard}/runs")
    table = page.get_by_test_id("stDataFrame")
    table.wait_for(timeout=TIMEOUT_MS)
    grid = table.locator("table")
    wait_for(lambda: older in grid.inner_text(), 60, "both runs in the table")
    where = table.bounding_box()
    page.mouse.click(where["x"] + 15, where["y"] + ROW_PX * 2 + ROW_PX / 2)  # row 2: the older run
    delete = page.get_by_role("button", name=re.compile(r"^Delete 1"))
    delete.wait_for(timeout=TIMEOUT_MS)
    arrived = api.submit(r, make_config({"method": "pgd", "eps": 0.2}))  # the refresh puts it on top
    wait_for(lambda: arrived in grid.inner_text(), 30, "the new run in the table")
    delete.click()
    dialog = page.get_by_test_id("stPopoverBody")
    dialog.get_by_text(older).wait_for(timeout=TIMEOUT_MS)  # the confirmation names the ticked run
    assert newer not in dialog.inner_text() and arrived not in dialog.inner_text()
    dialog.get_by_role("button", name="Yes, delete these").click()
    wait_for(lambda: api.get_run(r, older) is None, 30, "the ticked run to be deleted")
    assert {run.id for run in api.list_runs(r)} == {newer, arrived}
    page.close()


def test_blank_or_text_in_a_number_box_disables_launch_and_queues_nothing(browser, dashboard, r):  # noqa: F811 (fixtures)
    """What the browser makes of typed text and of a cleared box: both reach the form as blank, which names
    itself beside the box and disables Launch. Every other box does the same with a blank value
    (tests/test_app_ux.py, AppTest); here one box gets text and another is cleared."""
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(dashboard)
    launch = page.get_by_role("button", name="Launch run")
    launch.wait_for(timeout=TIMEOUT_MS)
    page.get_by_text("Advanced: attack steps").click()
    boxes = page.get_by_test_id("stNumberInput")
    wait_for(lambda: boxes.count() > 20, 30, "the advanced fields")
    for label, typed in (("ε", "abc"), ("final PGD restarts", "")):
        box = field(page, label).locator("input")
        before = box.input_value()
        box.click()
        box.press("Control+A")
        page.keyboard.type(typed) if typed else page.keyboard.press("Backspace")
        box.press("Enter")
        column = field(page, label).locator("xpath=ancestor::*[@data-testid='stColumn'][1]")
        column.get_by_test_id("stAlert").filter(has_text="blank or not a number").wait_for(timeout=TIMEOUT_MS)
        wait_for(launch.is_disabled, 30, f"Launch disabled with {label!r} = {typed!r}")
        assert "Will run:" not in page.inner_text("body")
        box.fill(before)
        box.press("Enter")
        wait_for(launch.is_enabled, 30, f"Launch enabled again after {label!r}")
    assert api.list_runs(r) == []
    page.close()


def test_the_chart_is_updated_in_place_when_co_is_declared_and_rescue_appears(browser, dashboard, r):  # noqa: F811
    run_id = store_run(r, running_events(total=100, until=40), status="running")
    evals = api.run_dir(run_id) / EVALS_DIR
    evals.mkdir(parents=True)
    for iteration in (20, 40):  # kept evaluations: what Rescue forks from
        (evals / f"{iteration}.pt").touch()
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{dashboard}/live?run={run_id}")
    chart = page.frame_locator(CHARTS).first.locator("#chart")
    chart.wait_for(timeout=TIMEOUT_MS)
    chart.evaluate("element => { window.keptAcrossRefreshes = true }")
    # From now on, every 20 ms: is the chart's frame on the page with its panels drawn?
    page.evaluate(
        """() => { window.blinks = 0; window.samples = 0; setInterval(() => {
            const frame = document.querySelector('iframe[title="app.chart.live_plotly"]');
            const inside = frame && frame.contentDocument;
            const drawn = frame && frame.getBoundingClientRect().height > 100 &&
                inside && inside.querySelectorAll('.scatterlayer .trace').length > 0;
            window.samples += 1; if (!drawn) window.blinks += 1; }, 20); }"""
    )
    collapse = [metrics_event(it) for it in range(41, 61)]
    append(r, run_id, [*collapse, eval_event(60, pgd=0.01, fgsm=0.9), co_event(60)])
    page.get_by_role("button", name=re.compile("^Rescue")).wait_for(timeout=TIMEOUT_MS)
    page.get_by_text("catastrophic overfitting at iteration 60").wait_for(timeout=TIMEOUT_MS)
    page.wait_for_timeout(3000)  # and a few refreshes after
    blinks, samples = page.evaluate("() => [window.blinks, window.samples]")
    assert samples > 50 and blinks == 0, (blinks, samples)  # the panels never left the screen
    assert chart.evaluate("element => window.keptAcrossRefreshes === true")  # the same frame, not a new one
    page.close()


def test_the_co_warning_draws_an_amber_line_and_rescue_now_forks_from_its_evaluation(browser, dashboard, r):  # noqa: F811
    run_id = store_run(r, running_events(total=200, until=60), status="running")
    evals = api.run_dir(run_id) / EVALS_DIR
    evals.mkdir(parents=True)
    for iteration in (20, 40, 60):  # kept evaluations: Rescue now forks from the warning's
        (evals / f"{iteration}.pt").touch()
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{dashboard}/live?run={run_id}")
    chart = page.frame_locator(CHARTS).first.locator("#chart")
    chart.wait_for(timeout=TIMEOUT_MS)
    append(r, run_id, [warning_event(60)])  # it arrives while the page is open, before any CO
    page.get_by_text("Alignment falling: catastrophic overfitting likely within").wait_for(timeout=TIMEOUT_MS)
    rescue = page.get_by_role(
        "button", name=re.compile(r"^Rescue now: fork from iteration 60 with GradAlign")
    )
    rescue.wait_for(timeout=TIMEOUT_MS)

    def amber_lines():
        shapes = "element => (element.layout.shapes || []).filter(s => s.name === 'co_warning')"
        return chart.evaluate(shapes + ".map(s => [s.x0, s.line.color, s.line.dash])")

    wait_for(lambda: amber_lines(), TIMEOUT_MS / 1000, "the warning's line on the chart", interval=0.5)
    assert amber_lines() == [[60, WARNING_COLOR, "dashdot"]] * 3  # on every panel
    assert "CO warning @ 60" in chart.evaluate("element => element.innerText || element.textContent")
    (ROOT / "test-artifacts").mkdir(exist_ok=True)
    page.screenshot(path=str(ROOT / "test-artifacts" / "co_warning.png"), full_page=True)  # for a reviewer
    rescue.click()
    page.wait_for_url(
        re.compile(r"/compare\?compare=" + run_id + r"(%2C|,)[0-9a-f]{12}$"), timeout=TIMEOUT_MS
    )
    child = api.get_run(r, re.split("%2C|,", page.url)[-1])
    parent = api.get_run(r, run_id)
    assert (child.config.parent, child.config.fork_iteration) == (run_id, 60)
    assert child.config.grad_align_lambda == rescue_lambda(parent.config) > 0
    page.close()


def test_every_link_the_readme_and_docs_print_opens_its_page(browser, dashboard, r):  # noqa: F811
    run_id = store_run(r, co_run_events())
    evals = api.run_dir(run_id) / EVALS_DIR
    evals.mkdir(parents=True)
    (evals / "40.pt").touch()
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    links = {
        link for doc in documents for link in re.findall(r"`(/[a-z]*\?[a-z]+=[^`\s]*)`", doc.read_text())
    }
    assert {"/launch?fork=ID&at=K", "/runs?lineage=ID"} <= links
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    for link in sorted(links | {"/", "/launch", "/?fork=ID&at=K", "/?run=ID"}):
        page.goto(dashboard + link.replace("ID", run_id).replace("K", "40"))
        page.get_by_test_id("stMain").get_by_role("heading").first.wait_for(timeout=TIMEOUT_MS)
        body = page.inner_text("body")
        assert "Page not found" not in body and "Traceback" not in body, link
        if "fork=" in link:
            page.get_by_text("Fork of").first.wait_for(timeout=TIMEOUT_MS)
            assert "/launch?" in page.url, page.url
    page.close()


def test_one_hover_lists_every_panels_values_at_the_hovered_iteration(browser, dashboard, r):  # noqa: F811
    run_id = store_run(r, co_run_events())
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{dashboard}/live?run={run_id}")
    frame = page.frame_locator(CHARTS).first
    frame.locator(".legendtext", has_text=re.compile(r"^PGD$")).wait_for(timeout=TIMEOUT_MS)
    accuracy = box(frame.locator(".nsewdrag").first)  # the top panel
    offset = box(page.locator(CHARTS).first)["x"]
    at_60 = frame.locator("#chart").evaluate(
        "el => el._fullLayout.xaxis._offset + el._fullLayout.xaxis.l2p(60)"
    )
    page.mouse.move(offset + at_60, accuracy["y"] + accuracy["height"] * 0.5)  # an evaluation's iteration
    label = frame.locator(".hoverlayer .legend")
    wait_for(lambda: label.count() > 0, 30, "the unified hover label")
    text = label.first.text_content()  # an SVG group
    for name in ("PGD", "cos(∇x, ∇x+η)", "train loss"):  # accuracy, alignment and loss panels at once
        assert name in text, text
    page.close()
