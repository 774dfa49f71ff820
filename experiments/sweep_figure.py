"""The README's sweep figure: the default digits sweep over seeds 0–2, launched from the Sweep page as a user
would, measured on the real stack.

    export CODASH_HOME=$(mktemp -d) OMP_NUM_THREADS=1
    codash up --port 8765 --workers 1 &       # embedded Valkey, one worker, the dashboard
    python -m experiments.sweep_figure http://127.0.0.1:8765 [--sweep ID]

Opens the Sweep page in Debian's Chromium (/usr/bin/chromium), keeps every default (preset "Digits: FGSM
catastrophic overfitting", its methods, ε grid, epochs and the digits λ(ε)), types seeds 0, 1, 2 and presses
Launch, unless --sweep names a sweep already launched (to take the figure again). Then waits for every run
to end (--now: takes the sweep as it stands), saves the page's charts to docs/sweep.png (1280 px wide) and
prints, per method and ε, the mean final PGD accuracy over seeds, the CO count and λ as the README's
Markdown table, and the sweep's wall time.
The runs take about an hour on one CPU worker.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the browser's one definition

from conftest import CHARTS, CHROMIUM, CHROMIUM_ARGS  # noqa: E402

from app.tables import sweep_frame  # noqa: E402
from jobs import api  # noqa: E402

SEEDS = "0, 1, 2"
FIGURE = Path(__file__).resolve().parent.parent / "docs" / "sweep.png"
POLL_S = 30


def launch(page, url: str) -> str:
    """The Sweep page's defaults with SEEDS typed in; returns the sweep's id from the page it opens."""
    page.goto(f"{url}/sweep")
    button = page.get_by_role("button", name=re.compile(r"^Launch \d+ runs?$"))
    single = int(re.search(r"\d+", button.inner_text(timeout=60_000)).group())
    field = page.get_by_role("textbox", name="seeds", exact=True)
    field.fill(SEEDS)
    field.press("Enter")
    seeds = len(SEEDS.split(","))
    page.get_by_role("button", name=f"Launch {single * seeds} runs").click(timeout=30_000)
    page.wait_for_url(re.compile(r"sweep=[0-9a-f]{8}"), timeout=60_000)
    return re.search(r"sweep=([0-9a-f]{8})", page.url).group(1)


def wait_until_done(r, sweep_id: str) -> list[api.Run]:
    while True:
        runs = api.sweep_runs(r, sweep_id)
        done = sum(run.status in api.TERMINAL for run in runs)
        print(f"{time.strftime('%H:%M:%S')} {done} of {len(runs)} runs done", flush=True)
        if done == len(runs):
            return runs
        time.sleep(POLL_S)


def screenshot(page, url: str, sweep_id: str) -> None:
    """The finished sweep's page, from its title to the last chart (the page scrolls inside Streamlit's
    container, so the window is made tall enough to hold it all)."""
    page.set_viewport_size({"width": 1280, "height": 3000})
    page.goto(f"{url}/sweep?sweep={sweep_id}")
    charts = page.locator(CHARTS)
    charts.first.wait_for(timeout=60_000)
    for index in range(charts.count()):
        page.frame_locator(CHARTS).nth(index).locator(".main-svg").first.wait_for(timeout=60_000)
    page.wait_for_timeout(2000)  # the last redraw
    last = charts.nth(charts.count() - 1).bounding_box()
    clip = {"x": 0, "y": 0, "width": 1280, "height": last["y"] + last["height"]}
    page.screenshot(path=str(FIGURE), clip=clip)


def table(runs: list[api.Run]) -> str:
    """Per method × ε: mean final PGD accuracy over seeds, runs with CO of all, λ (README's Markdown)."""
    points = sweep_frame(runs, {})
    rows = ["| method | ε | final PGD acc (mean over seeds) | CO | λ |", "|---|---|---|---|---|"]
    for (method, eps), group in points.groupby(["method", "eps"], sort=True):
        seeds = ", ".join(f"{value:.3f}" for value in group["pgd_acc"])
        lam = (
            ", ".join(f"{value:.3g}" for value in sorted(set(group["lambda"])))
            if group["lambda"].any()
            else "—"
        )
        rows.append(
            f"| {method} | {eps:g} | {group['pgd_acc'].mean():.3f} ({seeds}) "
            f"| {int(group['co'].sum())}/{len(group)} | {lam} |"
        )
    failed = [run.id for run in runs if run.status != "finished"]
    if failed:
        rows.append(f"\nnot finished, left out of the table: {len(failed)}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the dashboard, e.g. http://127.0.0.1:8765")
    parser.add_argument("--sweep", help="a sweep already launched: only wait for it and take the figure")
    parser.add_argument(
        "--now", action="store_true", help="take the figure and table as they stand (partial)"
    )
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    r = api.connect()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        sweep_id = args.sweep or launch(page, args.url)
        print(f"sweep {sweep_id}", flush=True)
        page.goto("about:blank")  # the open page would redraw every 2 s: CPU the runs need
        runs = api.sweep_runs(r, sweep_id) if args.now else wait_until_done(r, sweep_id)
        screenshot(page, args.url, sweep_id)
        browser.close()
    started = min(run.started_at or run.created_at for run in runs)
    ended = max(run.finished_at or time.time() for run in runs)
    print(table(runs))
    print(f"wall time: {(ended - started) / 60:.0f} min from the first run's start to the last one's end")


if __name__ == "__main__":
    main()
