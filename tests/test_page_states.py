"""Every page stays correct while the live refresh changes what it shows, in every state a run can be in:
actions act on the runs the user picked, never on the rows that now sit where those runs were; every page
renders every run state and every URL parameter the app writes (AppTest against a real Redis).
"""

from __future__ import annotations

import json
import time

import pytest
from conftest import (
    append,
    co_run_events,
    config_event,
    eval_event,
    final_event,
    metrics_event,
    probe_event,
    running_events,
    snapshot_event,
    store_run,
)
from streamlit.testing.v1 import AppTest
from test_app_pages import app, charts, numbers

from jobs import api, keys
from jobs.registry import transition
from trainer.config import make_config
from trainer.fork import EVALS_DIR


def runs_page(r) -> AppTest:
    at = app().run()
    at.switch_page("views/runs.py").run()
    assert not at.exception
    return at


def tick(at: AppTest, rows: list[int]) -> None:
    """What the browser sends when the user ticks rows: their numbers in the table it last drew."""
    key = [k for k in at.session_state if k.startswith("runs.table")][0]
    at.session_state[key] = {"selection": {"rows": rows, "columns": [], "cells": []}}
    at.run()


def finish(r, run_id: str, status: api.RunStatus = api.RunStatus.FINISHED) -> None:
    """What the worker does when a run ends."""
    transition(r, run_id, {api.RunStatus.RUNNING}, {"status": status, "finished_at": time.time()}, attempt=1)


def shown_ids(at: AppTest) -> list[str]:
    return at.dataframe[0].value["id"].tolist()


def test_a_new_run_arriving_between_tick_and_delete_does_not_move_the_selection(r):
    older, newer = store_run(r, co_run_events()), store_run(r, co_run_events())
    at = runs_page(r)
    assert shown_ids(at) == [newer, older]
    tick(at, [1])  # the older run
    arrived = api.submit(r, make_config({"method": "pgd", "eps": 0.2}))
    at.run()  # the 2 s refresh: the new run takes the first row
    assert shown_ids(at) == [arrived, newer, older]
    assert older in " ".join(md.value for md in at.markdown)  # the dialog names the run it will delete
    at.button(key="runs.delete").click().run()
    assert not at.exception
    assert {run.id for run in api.list_runs(r)} == {arrived, newer}


def test_a_run_leaving_the_status_filter_keeps_the_others_ticked_and_raises_nothing(r):
    finished = store_run(r, co_run_events())
    first = store_run(r, running_events(), status="running")
    second = store_run(r, running_events(), status="running")
    at = runs_page(r)
    at.multiselect(key="runs.filter.status").set_value(["running"]).run()
    assert shown_ids(at) == [second, first]
    tick(at, [0, 1])
    finish(r, second)  # leaves the filter: the table now holds one row
    at.run()
    assert not at.exception
    assert shown_ids(at) == [first]
    at.button(key="runs.delete").click().run()
    assert not at.exception
    assert {run.id for run in api.list_runs(r)} == {finished, second}


def test_the_wall_clock_axis_draws_every_panel_of_a_running_and_a_finished_run(r):
    events = co_run_events()
    events.insert(5, probe_event(4, pgd=0.4))
    finished = store_run(r, events)
    running = store_run(r, [*running_events(), probe_event(40, pgd=0.4)], status="running")
    for run_id in (finished, running):
        at = app(run=run_id, xaxis="clock").run()
        assert not at.exception, run_id
        figure = charts(at)["live.chart"]
        assert figure["layout"]["xaxis"]["title"]["text"].startswith("wall clock")


def test_a_forks_empty_panels_name_its_own_first_evaluation(r):
    """A fork from iteration 150 with eval_every 50 evaluates first at 200, not at 50."""
    events = [
        config_event(start=150, total=300, eval_every=50),
        *(metrics_event(it) for it in range(151, 160)),
    ]
    fork = store_run(r, events, status="running")
    at = app(run=fork).run()
    notes = [
        a["text"] for a in charts(at)["live.chart"]["layout"]["annotations"] if a.get("name") == "pending"
    ]
    assert notes[0] == "robust accuracy: first evaluation at iteration 200"


def test_a_refused_tag_edit_and_the_typed_text_outlast_the_live_refresh(r):
    run_id = store_run(r, running_events(), status="running")
    at = app(run=run_id).run()
    tags = [f"t{n}" for n in range(13)]
    at.text_input(key=f"live.tags.{run_id}").set_value(", ".join(tags))
    at.button[[b.label for b in at.button].index("Save tags and note")].click().run()
    append(r, run_id, [metrics_event(41)])  # the run moves on; the page refreshes
    at.run()
    at.run()
    assert not at.exception
    assert any("Not saved" in error.value and "at most 12 tags" in error.value for error in at.error)
    assert at.text_input(key=f"live.tags.{run_id}").value == ", ".join(tags)  # what the user typed
    assert api.get_run(r, run_id).tags == ()
    at.text_input(key=f"live.tags.{run_id}").set_value("co")
    at.button[[b.label for b in at.button].index("Save tags and note")].click().run()
    at.run()
    assert not at.error and api.get_run(r, run_id).tags == ("co",)


# --- the property: every page, every run state, every URL parameter the app writes ---

NONSENSE = ["", "zzz", "-1", "1e999", "nan", "0123456789ab", "a,b", "<script>x</script>", "9" * 40]


def stored_states(r) -> dict[str, str]:
    """One run in every state the registry knows, as a worker leaves it (tests/conftest builders)."""
    states = {"queued": api.submit(r, make_config({"method": "pgd", "eps": 0.2}))}
    states["before first eval"] = store_run(r, running_events(until=10), status="running")
    after_co = [*co_run_events()[:-1]]  # everything but the final event: still running
    states["after CO"] = store_run(r, after_co, status="running")
    states["finished"] = store_run(r, co_run_events(), sweep_id="s1")
    for status in ("failed", "cancelled", "interrupted"):
        states[status] = store_run(r, running_events(), status=status)
    parent = states["finished"]
    (api.run_dir(parent) / EVALS_DIR).mkdir(parents=True)
    (api.run_dir(parent) / EVALS_DIR / "40.pt").touch()  # the checkpoint a fork starts from
    fork = [config_event(start=40, parent=parent, fork_iteration=40), *co_run_events()[1:]]
    fork = [event for event in fork if event.get("iteration", 41) > 40]
    states["fork"] = store_run(r, fork)
    states["damaged stream"] = store_run(r, co_run_events())
    r.xadd(keys.stream(states["damaged stream"]), {"event": "{not json"})
    r.xadd(keys.stream(states["damaged stream"]), {"nonsense": "\x00"})
    states["unreadable"] = store_run(r, co_run_events())
    r.hset(keys.run(states["unreadable"]), "final", "{not json")
    return states


def assert_renders(at: AppTest, what: str) -> None:
    at.run()
    assert not at.exception, (what, [e.value for e in at.exception])
    shown = " ".join(str(element.value) for element in [*at.markdown, *at.error, *at.warning])
    assert "Page not found" not in shown, what


def test_every_page_renders_every_run_state_with_every_url_parameter(r):
    states = stored_states(r)
    ids = list(states.values())
    view_params = {"xaxis": ["clock", "iteration"], "smooth": ["0", "0.5"], "log": ["1", "0"], "x": ["10,50"]}
    for state, run_id in states.items():
        for values in ([], *[[params[0] for params in view_params.values()]], NONSENSE[:4]):
            query = {"run": run_id, **dict(zip(view_params, values, strict=False))}
            assert_renders(app(**query), f"live {state} {query}")
        for at_value in ("40", "zzz", ""):
            assert_renders(app(fork=run_id, at=at_value), f"launch fork of {state} at {at_value!r}")
        assert_renders(app(compare=f"{run_id},{states['finished']}"), f"compare {state}")
        assert_renders(app(lineage=run_id), f"runs lineage {state}")
    assert_renders(app(compare=",".join(ids)), "compare all")
    for nonsense in NONSENSE:
        for param in ("run", "compare", "lineage", "sweep", "fork"):
            assert_renders(app(**{param: nonsense}), f"{param}={nonsense!r}")
        query = {"run": states["finished"], "xaxis": nonsense, "smooth": nonsense, "log": nonsense}
        assert_renders(app(**query, x=nonsense), f"live with view parameters {nonsense!r}")
    assert_renders(app(sweep="s1"), "sweep s1")
    for name in ("runs", "sweep", "compare", "live", "launch"):
        at = app().run()
        at.switch_page(f"views/{name}.py")
        assert_renders(at, f"page {name} without parameters")


# --- what a W&B user reaches for: settings that differ, a result against a setting, groups ticked at once ---


def finished_with(r, pgd: float, sweep_id: str | None = None, **config) -> str:
    events = [config_event(total=100, **config), *co_run_events()[1:-1], final_event(60, pgd=pgd)]
    return store_run(r, events, sweep_id=sweep_id)


def test_the_runs_table_shows_the_settings_that_differ_and_plots_a_result_against_one(r):
    runs = {
        (lam, seed): finished_with(
            r, 0.1 * lam + 0.01 * seed, grad_align_lambda=lam, seed=seed, lr=0.01 * (1 + seed)
        )
        for lam in (0.5, 1.0, 2.0)
        for seed in (0, 1)
    }
    at = runs_page(r)
    table = at.dataframe[0]
    order = list(table.proto.column_order)
    assert "lr" in order and "eps" not in order  # lr differs; ε is the same for every run
    assert table.value.set_index("id").loc[runs[(2.0, 1)], "lr"] == 0.02
    at.selectbox(key="runs.setting").set_value("grad_align_lambda").run()
    figure = charts(at)["runs.results"]
    means = [trace for trace in figure["data"] if trace["mode"] == "lines"]
    marks = [trace for trace in figure["data"] if trace["mode"] == "markers"]
    assert len(marks[0]["customdata"]) == 6  # one mark per run
    assert numbers(means[0]["x"]) == [0.5, 1.0, 2.0]
    assert numbers(means[0]["y"]) == pytest.approx([0.055, 0.105, 0.205])  # the mean over the two seeds
    assert numbers(means[0]["error_y"]["array"]) == pytest.approx([0.00707] * 3, abs=1e-4)  # their spread


def test_a_sweep_or_a_tag_is_ticked_at_once(r):
    in_sweep = [finished_with(r, 0.3, sweep_id="s1", seed=seed) for seed in (0, 1, 2)]
    tagged = [finished_with(r, 0.3, seed=seed) for seed in (5, 6)]
    for run_id in tagged:
        api.annotate(r, run_id, "baseline", "")
    at = runs_page(r)
    at.selectbox(key="runs.group").set_value("sweep s1").run()
    assert not at.exception
    assert at.button(key="runs.compare").label == "Compare 3"
    assert all(run_id in " ".join(c.value for c in at.caption) for run_id in in_sweep)
    at.selectbox(key="runs.group").set_value("tag baseline").run()
    at.button(key="runs.delete").click().run()
    assert {run.id for run in api.list_runs(r)} == set(in_sweep)


def test_the_charts_mark_follows_the_slider_in_the_same_refresh(r):
    events = [*running_events(until=40), snapshot_event(20), snapshot_event(40)]
    run_id = store_run(r, events, status="running")
    at = app(run=run_id).run()

    def marked() -> list[str]:
        figure = charts(at)["live.chart"]
        return [a["text"] for a in figure["layout"]["annotations"] if a.get("name") == "mark"]

    assert marked() == ["inside the model: 40"]
    append(
        r, run_id, [*(metrics_event(it) for it in range(41, 61)), eval_event(60, pgd=0.3), snapshot_event(60)]
    )
    at.run()  # the refresh that brings a new evaluation: slider and mark both move to it
    assert at.select_slider(key=f"live.snapshot.{run_id}").value == 60
    assert marked() == ["inside the model: 60"]
    at.select_slider(key=f"live.snapshot.{run_id}").set_value(20).run()
    assert marked() == ["inside the model: 20"]


def fork_comparison(r) -> tuple[str, str, str]:
    """A run, a twin that collapses at the same iteration (200), and a fork of the first from 140, running."""
    parent = store_run(r, co_run_events(total=300, co_at=200))
    twin = store_run(r, co_run_events(total=300, co_at=200))
    (api.run_dir(parent) / EVALS_DIR).mkdir(parents=True)
    (api.run_dir(parent) / EVALS_DIR / "140.pt").touch()
    events = [config_event(start=140, total=300, parent=parent, fork_iteration=140, grad_align_lambda=2.0)]
    events += [metrics_event(it) for it in range(141, 161)]
    return parent, twin, store_run(r, events, status="running")


def test_compare_with_a_fork_starts_at_zero_stacks_equal_co_labels_and_keeps_chips_current(r):
    parent, twin, fork = fork_comparison(r)
    at = app(compare=f"{parent},{twin},{fork}").run()
    assert not at.exception
    overlay = charts(at)["compare.overlay"]
    assert overlay["layout"]["xaxis"]["range"] == [0, 300]  # not widened left by the fork's label
    shifts = [a.get("yshift", 0) for a in overlay["layout"]["annotations"] if a["text"].startswith("CO · ")]
    assert len(shifts) == 2 and shifts[0] != shifts[1]  # one label per run, both readable
    small = charts(at)[f"compare.small.{fork}"]
    notes = [a["text"] for a in small["layout"]["annotations"] if a.get("name") == "pending"]
    assert notes[0] == "robust accuracy: first evaluation at iteration 150"  # the fork's own, not 50
    chips = at.multiselect(key="compare.ids")
    assert all("running" not in chips.format_func(run_id) for run_id in (parent, twin, fork))
    finish(r, fork)
    at.run()
    assert any("fork" in md.value and md.value.endswith("· finished") for md in at.markdown)


def test_compare_on_a_phone_labels_panels_co_and_forks_short_enough_to_fit(r):
    parent, twin, fork = fork_comparison(r)
    at = app(compare=f"{parent},{twin},{fork}").run()
    overlay = json.loads(at.get("component_instance")[0].proto.json_args)  # the page's first chart
    texts = [note["text"] for note in json.loads(overlay["narrow"])["layout"]["annotations"]]
    assert texts[:3] == ["Accuracy", "Cosine", "Loss"]  # one word: a long title runs off a phone's chart
    assert sorted(set(texts[3:])) == ["CO @ 200", "fork @ 140"]  # no run names: they ran off it too
