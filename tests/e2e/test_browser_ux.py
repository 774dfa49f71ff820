"""What a user sees in a real browser that AppTest cannot show: what a typed value does, where messages and
toolbars land, how the pages lay out on a phone-sized screen; and what the live refresh does to a user's
hands: a selection made before a refresh is the one acted on after it, a number box left blank or given
text never becomes a number.

One dashboard (`streamlit run app/main.py`, no worker) against one embedded Redis serves the whole module;
runs are stored as a worker leaves them (tests/test_app_pages.store_run). Needs Debian's Chromium at
/usr/bin/chromium: skipped without it, except on CI (CI=true).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    CHARTS,
    CHROMIUM,
    ROOT,
    append,
    chromium_profile,
    co_event,
    co_run_events,
    config_event,
    embedded_redis,
    eval_event,
    final_event,
    metrics_event,
    running_events,
    snapshot_event,
    store_run,
    wait_for,
    warning_event,
)

from app.palette import WARNING_COLOR
from codash.up import dashboard_healthy
from jobs import api
from jobs.registry import transition
from jobs.server import free_port
from trainer.config import make_config
from trainer.fork import EVALS_DIR, rescue_lambda

TIMEOUT_MS = 150_000  # three Plotly frames on a loaded 2-core machine take a while

pytestmark = pytest.mark.timeout(420)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Iterator[Path]:
    with embedded_redis(tmp_path_factory.mktemp("ux") / "home") as home:
        yield home


@pytest.fixture(scope="module")
def dashboard(home: Path, tmp_path_factory) -> Iterator[str]:
    if not CHROMIUM.exists():
        message = f"Debian Chromium not found at {CHROMIUM} (install it with: apt-get install -y chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; the browser tests are required on CI")
        pytest.skip(f"{message}; skipping the browser tests")
    port = free_port()
    log = tmp_path_factory.mktemp("ux-log") / "streamlit.log"
    command = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "main.py")]
    command += ["--server.port", str(port), "--server.headless", "true"]
    command += ["--browser.gatherUsageStats", "false", "--global.developmentMode", "false"]
    env = {**os.environ, "CODASH_HOME": str(home)}
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: dashboard_healthy(url) or process.poll() is not None, 60, "the dashboard to serve")
        assert process.poll() is None, log.read_text()
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


class Tabs:
    """New pages in one browser profile, as a user's tabs: the dashboard's scripts (plotly.js alone is
    1.5 MB) are fetched and compiled once for the module, not once per page."""

    def __init__(self, context):
        self.context = context

    def new_page(self, viewport: dict[str, int]):
        page = self.context.new_page()
        page.set_viewport_size(viewport)
        return page


@pytest.fixture(scope="module")
def browser(dashboard, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = chromium_profile(playwright, tmp_path_factory.mktemp("chromium"))
        yield Tabs(context)
        context.close()


@pytest.fixture
def r(home):
    client = api.connect()
    for run in api.list_runs(client):
        api.delete(client, run.id)
    yield client
    client.close()


def field(page, label: str):
    """The number box labelled exactly `label` on the launch form."""
    return page.get_by_test_id("stNumberInput").filter(
        has=page.get_by_test_id("stWidgetLabel").get_by_text(label, exact=True)
    )


def type_into(page, label: str, text: str) -> None:
    box = field(page, label).locator("input")
    box.fill(text)
    box.press("Enter")


def test_out_of_range_values_are_named_next_to_their_field_and_what_is_shown_is_queued(browser, dashboard, r):
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(dashboard)
    launch = page.get_by_role("button", name="Launch run")
    launch.wait_for(timeout=TIMEOUT_MS)
    bad = {
        "ε": ("5", "less than or equal to 1"),
        "epochs": ("0", "greater than or equal to 1"),
        "batch size": ("100000", "less than or equal to 4096"),
    }
    for label, (text, says) in bad.items():
        type_into(page, label, text)
        column = page.get_by_test_id("stColumn").filter(has=field(page, label)).last
        column.get_by_test_id("stAlert").filter(has_text=says).wait_for(timeout=TIMEOUT_MS)
        assert field(page, label).locator("input").input_value().replace(",", "").startswith(text)
        wait_for(launch.is_disabled, 30, "Launch to be disabled")  # drawn after the messages above it
    page.get_by_text("Fix 3 problem(s) before launching.").wait_for()

    # One field at a time, as a user would: each Enter reruns the form, and a box typed into while that
    # rerun redraws the form can lose its text.
    fixes = {"ε": "0.15", "epochs": "2", "batch size": "32"}
    for left, (label, text) in zip((2, 1, 0), fixes.items(), strict=True):
        type_into(page, label, text)
        says = f"Fix {left} problem(s) before launching." if left else "Will run:"
        page.get_by_text(says).wait_for(timeout=TIMEOUT_MS)
    wait_for(launch.is_enabled, 30, "Launch to be enabled")
    launch.click()
    page.wait_for_url(re.compile(r"/live\?run=[0-9a-f]{12}$"), timeout=TIMEOUT_MS)
    [run] = api.list_runs(r)
    assert (run.config.eps, run.config.epochs, run.config.batch_size) == (0.15, 2, 32)
    page.close()


def test_chart_toolbars_offer_no_cloud_upload_and_name_the_png(browser, dashboard, r):
    run_id = store_run(r, co_run_events(total=100, co_at=60))
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(f"{dashboard}/live?run={run_id}")
    chart = page.frame_locator(CHARTS).first
    chart.locator(".legendtext", has_text=re.compile(r"^PGD$")).wait_for(timeout=TIMEOUT_MS)
    chart.locator("#chart").hover()
    buttons = chart.locator(".modebar-btn")
    titles = [buttons.nth(index).get_attribute("data-title") for index in range(buttons.count())]
    assert "Download plot as a PNG" in titles or "Download plot as a png" in titles, titles
    assert not [title for title in titles if "Share" in title or "Cloud" in title or "Chart Studio" in title]
    assert chart.locator(".modebar-btn.plotlyjsicon").count() == 0  # no logo link to plotly.com
    with page.expect_download() as download:
        chart.locator('.modebar-btn[data-title^="Download plot"]').click()
    assert download.value.suggested_filename == f"codash-{run_id}-accuracy-alignment-loss.png"
    config = json.loads(
        chart.locator("#chart").evaluate("element => JSON.stringify(element._context.toImageButtonOptions)")
    )
    assert config["filename"] == f"codash-{run_id}-accuracy-alignment-loss"
    page.close()


def box(locator) -> dict:
    found = locator.bounding_box()
    assert found is not None, locator
    return found


def overlap(a: dict, b: dict) -> bool:
    return (
        a["x"] < b["x"] + b["width"] - 1
        and b["x"] < a["x"] + a["width"] - 1
        and a["y"] < b["y"] + b["height"] - 1
        and b["y"] < a["y"] + a["height"] - 1
    )


def assert_apart(boxes: dict[str, dict]) -> None:
    names = list(boxes)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            assert not overlap(boxes[first], boxes[second]), (first, boxes[first], second, boxes[second])


def test_the_live_view_is_usable_on_a_phone(browser, dashboard, r):
    events = co_run_events(total=100, co_at=60)
    events[-1:-1] = [snapshot_event(40), snapshot_event(80)]
    run_id = store_run(r, events)
    page = browser.new_page(viewport={"width": 400, "height": 900})
    page.goto(f"{dashboard}/live?run={run_id}")
    page.get_by_role("heading", name="Inside the model").wait_for(timeout=TIMEOUT_MS)
    titles = {
        0: ("Accuracy", "Cosine", "Loss"),
        1: (),  # the filters: a figure title
        2: ("image · label", "FGSM δ/ε", "PGD δ/ε", "∇ℓ at x", "∇ℓ at x+η"),
    }
    for index, names in titles.items():
        frame = page.frame_locator(CHARTS).nth(index)
        chart = frame.locator("#chart")
        chart.scroll_into_view_if_needed()
        wait_for(
            lambda chart=chart: chart.get_attribute("data-layout") == "narrow", 30, f"chart {index} narrow"
        )
        boxes = {"toolbar": box(frame.locator(".modebar"))}
        for name in names:
            found = frame.locator(".annotation-text", has_text=name)
            boxes[name] = box(found.first if name != "∇ℓ at x" else found.nth(0))
        if not names:
            boxes["title"] = box(frame.locator(".gtitle"))
        assert all(b["x"] >= 0 and b["x"] + b["width"] <= 401 for b in boxes.values()), boxes
        assert_apart(boxes)
    assert page.evaluate("document.documentElement.scrollWidth") <= 400  # nothing off to the side
    page.set_viewport_size({"width": 1400, "height": 900})  # and back: the wide layout returns
    chart = page.frame_locator(CHARTS).nth(2).locator("#chart")
    wait_for(lambda: chart.get_attribute("data-layout") == "wide", 60, "the wide layout")
    page.close()


def test_compare_legends_do_not_overprint_with_four_runs(browser, dashboard, r):
    ids = [store_run(r, co_run_events()) for _ in range(2)]
    ids.append(store_run(r, [config_event(total=100, grad_align_lambda=2.0), *co_run_events()[1:]]))
    ids.append(store_run(r, [config_event(total=100, seed=3), *co_run_events()[1:]]))
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(f"{dashboard}/compare?compare={','.join(ids)}")
    frame = page.frame_locator(CHARTS).first
    frame.locator(".legendtext", has_text="PGD acc").wait_for(timeout=TIMEOUT_MS)
    texts = frame.locator(".legend .legendtext")
    entries = {texts.nth(n).text_content(): box(texts.nth(n)) for n in range(texts.count())}
    assert {"PGD acc", "FGSM acc", "clean acc"} <= set(entries) and len(entries) >= 4 + 3
    assert_apart(entries)  # every run and every key entry readable, none printed over another
    plot = box(frame.locator(".nsewdrag").first)
    assert all(b["x"] >= plot["x"] + plot["width"] - 1 for b in entries.values())  # beside the panels
    page.close()


def test_compare_with_a_fork_on_a_phone_keeps_legend_and_labels_in_view_off_the_plot(browser, dashboard, r):
    parent, twin = (store_run(r, co_run_events(total=300, co_at=200)) for _ in range(2))
    (api.run_dir(parent) / EVALS_DIR).mkdir(parents=True)
    (api.run_dir(parent) / EVALS_DIR / "140.pt").touch()
    events = [config_event(start=140, total=300, parent=parent, fork_iteration=140, grad_align_lambda=2.0)]
    fork = store_run(r, events + [metrics_event(it) for it in range(141, 161)])
    page = browser.new_page(viewport={"width": 400, "height": 800})
    page.goto(f"{dashboard}/compare?compare={parent},{twin},{fork}")
    frame = page.frame_locator(CHARTS).first
    chart = frame.locator("#chart")
    chart.wait_for(timeout=TIMEOUT_MS)
    wait_for(lambda: chart.get_attribute("data-layout") == "narrow", 60, "the narrow overlay")
    frame.locator(".legend").wait_for(timeout=TIMEOUT_MS)
    legend, title, whole = box(frame.locator(".legend")), box(frame.locator(".g-xtitle")), box(chart)
    plots = frame.locator(".nsewdrag")
    areas = [box(plots.nth(n)) for n in range(plots.count())]
    assert all(not overlap(legend, area) for area in areas), (legend, areas)  # the plot stays visible
    assert not overlap(legend, title), (legend, title)
    assert all(area["width"] > 250 for area in areas)  # not squeezed to a strip beside a legend
    labels = frame.locator(".annotation")
    for label in (box(labels.nth(n)) for n in range(labels.count())):  # no label runs off the chart
        assert whole["x"] - 1 <= label["x"] and label["x"] + label["width"] <= whole["x"] + whole["width"] + 1
    assert legend["y"] + legend["height"] <= whole["y"] + whole["height"] + 1  # the legend is not cut off
    page.close()


def test_runs_page_refreshes_itself_and_its_toolbar_leaves_refresh_free(browser, dashboard, r):
    run_id = store_run(r, running_events(total=100, until=40), status="running")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{dashboard}/runs")
    table = page.get_by_test_id("stDataFrame")
    table.wait_for(timeout=TIMEOUT_MS)
    grid = table.locator("table")
    wait_for(lambda: "running" in grid.inner_text(), 30, "the running run in the table")
    append(r, run_id, [final_event(None, 0.42)])
    transition(
        r, run_id, {"running"}, {"status": "finished", "finished_at": time.time(), "error": ""}, attempt=1
    )
    wait_for(lambda: "finished" in grid.inner_text(), 30, "the table to refresh itself")  # no click
    table.hover()
    toolbar = page.get_by_test_id("stElementToolbar").first
    toolbar.wait_for(timeout=TIMEOUT_MS)
    assert not overlap(box(toolbar), box(page.get_by_role("button", name="Refresh")))
    scroller = table.locator(".dvn-scroller")
    width, visible = scroller.evaluate("element => [element.scrollWidth, element.clientWidth]")
    assert width <= visible + 1  # every column, the id and the live-view link included, on screen
    page.close()


ROW_PX = 35  # the data grid's header and row height (Streamlit's default)


def test_a_ticked_run_is_the_one_deleted_after_a_new_run_re_sorts_the_table(browser, dashboard, r):
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


def test_blank_or_text_in_a_number_box_disables_launch_and_queues_nothing(browser, dashboard, r):
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


def test_the_chart_is_updated_in_place_when_co_is_declared_and_rescue_appears(browser, dashboard, r):
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


def test_the_co_warning_draws_an_amber_line_and_rescue_now_forks_from_its_evaluation(browser, dashboard, r):
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


def test_every_link_the_readme_and_docs_print_opens_its_page(browser, dashboard, r):
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


def test_one_hover_lists_every_panels_values_at_the_hovered_iteration(browser, dashboard, r):
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
