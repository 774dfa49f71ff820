"""The Runs and Compare pages through Streamlit's AppTest, against a real Redis (see test_app_pages)."""

from __future__ import annotations

from conftest import (
    co_run_events,
    running_events,
    store_run,
)
from test_app_pages import app, charts, co_lines

from app.text import distinguishing_labels
from jobs import api
from trainer.config import make_config

# --- runs ---


def test_runs_table_filters_selects_exports_and_deletes(r):
    finished = store_run(r, co_run_events())
    running = store_run(r, running_events(grad_align_lambda=2.0), status="running")
    queued = api.submit(r, make_config({"method": "pgd", "eps": 0.2}))
    at = app().run()
    at.switch_page("views/runs.py").run()
    table = at.dataframe[0].value
    assert table["id"].tolist() == [queued, running, finished]
    assert table["CO iteration"].tolist()[2] == 60
    assert at.dataframe[0].proto.placeholder == "—"  # not "None" where a run has no value (yet)

    at.multiselect(key="runs.filter.status").set_value(["finished", "running"]).run()
    assert at.dataframe[0].value["id"].tolist() == [running, finished]

    key = [k for k in at.session_state if k.startswith("runs.table")][0]
    at.session_state[key] = {"selection": {"rows": [1], "columns": [], "cells": []}}
    at.run()
    downloads = [button.label for button in at.get("download_button")]
    assert downloads == ["Events as CSV", "Events as JSON Lines", "Export 1 as zip"]
    assert at.button(key="runs.compare").disabled
    at.button(key="runs.delete").click().run()
    assert [run.id for run in api.list_runs(r)] == [queued, running]
    assert api.read_events(r, finished) == ([], "0-0")


def test_runs_selection_opens_compare_with_a_shareable_url(r):
    first, second = store_run(r, co_run_events()), store_run(r, running_events(), status="running")
    at = app().run()
    at.switch_page("views/runs.py").run()
    key = [k for k in at.session_state if k.startswith("runs.table")][0]
    at.session_state[key] = {"selection": {"rows": [0, 1], "columns": [], "cells": []}}
    at.run()
    at.button(key="runs.compare").click().run()
    assert at.query_params["compare"] == f"{second},{first}"
    assert len(charts(at)) == 3  # the overlay and two small multiples


# --- compare ---


def test_compare_overlays_a_finished_and_a_running_run_named_by_their_differences(r):
    co = store_run(r, co_run_events())
    rescued = store_run(r, running_events(grad_align_lambda=2.0), status="running")
    at = app(compare=f"{co},{rescued}").run()
    assert not at.exception
    figures = charts(at)
    overlay = figures["compare.overlay"]
    labels = distinguishing_labels([api.get_run(r, co).config, api.get_run(r, rescued).config])
    assert labels == ["FGSM", "FGSM+GradAlign λ=2"]
    runs_legend = {
        t["name"] for t in overlay["data"] if t.get("legendgroup") != "key" and t.get("showlegend")
    }
    assert runs_legend == set(labels)
    assert co_lines(overlay) == [60, 60, 60]
    assert set(figures) == {"compare.overlay", f"compare.small.{co}", f"compare.small.{rescued}"}
    assert co_lines(figures[f"compare.small.{rescued}"]) == []
    assert at.dataframe[0].value["legend"].tolist() == labels
    assert at.dataframe[0].proto.placeholder == "—"


def test_compare_asks_for_two_runs(r):
    only = store_run(r, co_run_events())
    at = app(compare=only).run()
    assert "at least two runs" in at.info[0].value
    assert charts(at) == {}
