"""Forking from the dashboard through Streamlit's AppTest, against a real Redis and a real digits run's
checkpoints: the live view's "Fork from iteration k" and one-click rescue, the launch form's fork mode and
its shareable link, the fork point on Compare, lineage on Runs."""

from __future__ import annotations

import shutil

import pytest
from conftest import store_run
from test_app_pages import app, charts

from app.forks import FORK_COLOR
from jobs import api
from trainer.config import lambda_of_eps, make_config
from trainer.presets import DEFAULT_PRESET, PRESETS

# The FGSM preset (catastrophic overfitting at iteration 200 with seed 0, README), cut at 300 iterations
# with a small final evaluation.
pytestmark = pytest.mark.timeout(900)  # the module trains one 300-iteration digits run first

CO_RUN = {
    **PRESETS[DEFAULT_PRESET],
    "max_iters": 300,
    "final_eval_points": 32,
    "final_pgd_steps": 5,
    "final_pgd_restarts": 1,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real run with its events and run directory (evaluation checkpoints at 50, 100, …, 300)."""
    from trainer.loop import train

    directory = tmp_path_factory.mktemp("co-run")
    events: list[dict] = []
    train(make_config(CO_RUN), events.append, directory)
    assert any(event["type"] == "co" and event["iteration"] == 200 for event in events)
    return events, directory


def stored(r, trained) -> str:
    """The trained run as a worker leaves it: record, stream and run directory."""
    events, directory = trained
    run_id = store_run(r, events)
    shutil.copytree(directory, api.run_dir(run_id))
    return run_id


def fork_lines(figure: dict) -> list[float]:
    shapes = figure["layout"].get("shapes", [])
    return [shape["x0"] for shape in shapes if shape["line"]["color"] == FORK_COLOR]


def test_fork_from_the_slider_opens_the_form_filled_in_and_queues_the_edited_fork(r, trained):
    parent = stored(r, trained)
    at = app(run=parent).run()
    assert not at.exception
    at.select_slider(key=f"live.snapshot.{parent}").set_value(100).run()
    assert at.button(key="live.fork").label == "Fork from iteration 100"
    at.button(key="live.fork").click().run()
    assert (at.query_params["fork"], at.query_params["at"]) == (parent, "100")
    # the form holds the parent's config and the fork point; every field stays editable
    assert at.session_state["launch.method"] == "fgsm" and at.session_state["launch.max_iters"] == 300
    assert at.selectbox(key="launch.fork_iteration").value == 100
    assert at.selectbox(key="launch.fork_iteration").options == ["50", "100", "150", "200", "250", "300"]
    assert any("Fork of" in block.value for block in at.markdown)

    at.selectbox(key="launch.model").set_value("lenet").run()  # the checkpoint cannot fit another network
    assert any("a fork keeps its parent's 'cnn'" in error.value for error in at.error)
    assert at.button(key="launch.submit").disabled
    at.selectbox(key="launch.model").set_value("cnn")
    at.toggle(key="launch.grad_align").set_value(True).run()
    at.number_input(key="launch.grad_align_lambda").set_value(4.0)
    at.selectbox(key="launch.fork_iteration").set_value(150)
    at.run()
    assert at.query_params["at"] == "150"  # the URL shares what the form holds
    at.button(key="launch.submit").click().run()

    child = next(run for run in api.list_runs(r) if run.id != parent)
    expected = {**CO_RUN, "grad_align_lambda": 4.0, "parent": parent, "fork_iteration": 150}
    assert child.config.model_dump() == make_config(expected).model_dump()
    assert at.query_params["run"] == child.id
    assert any("Fork of" in block.value and parent in block.value for block in at.markdown)


def test_a_shared_fork_link_fills_the_form_and_a_bad_one_says_so(r, trained):
    parent = stored(r, trained)
    at = app(fork=parent, at="100").run()  # the launch page is the root's
    assert at.session_state["launch.parent"] == parent and at.session_state["launch.fork_iteration"] == 100

    at = app().run()
    at.query_params.update({"fork": parent, "at": "120"})  # no checkpoint there: pick one
    at.run()
    assert at.button(key="launch.submit").disabled
    assert any("pick an iteration" in error.value for error in at.error)
    at.button(key="launch.unfork").click().run()
    assert at.session_state["launch.parent"] is None and not at.button(key="launch.submit").disabled

    at = app(fork="0" * 12, at="100").run()
    assert any("No run with id" in error.value for error in at.error)
    assert not at.button(key="launch.submit").disabled  # the form stays a plain launch form


def test_rescue_forks_before_co_with_gradalign_and_compare_marks_the_fork_runs_shows_lineage(r, trained):
    parent = stored(r, trained)
    at = app(run=parent).run()
    events = api.all_events(r, parent)
    co = next(event for event in events if event["type"] == "co")
    began = min(co["iteration"], co["onset_iteration"])  # the first collapsed eval or the probe's onset
    before = max(
        event["iteration"] for event in events if event["type"] == "eval" and event["iteration"] < began
    )
    lam = lambda_of_eps("grad_align_lambda", "digits", CO_RUN["eps"])  # the digits λ(ε) fit
    label = f"Rescue: fork from iteration {before} with GradAlign λ={lam:g}"
    assert at.button(key="live.rescue").label == label
    at.button(key="live.rescue").click().run()
    child = next(run for run in api.list_runs(r) if run.id != parent)
    assert (child.config.parent, child.config.fork_iteration) == (parent, before)
    assert child.config.grad_align_lambda == lam and child.config.method == "fgsm"
    assert at.query_params["compare"] == f"{parent},{child.id}"
    assert not at.exception
    overlay = charts(at)["compare.overlay"]
    assert fork_lines(overlay) == [before] * 3
    assert any(note["text"].startswith("fork: ") for note in overlay["layout"]["annotations"])

    other = api.submit(r, make_config({"method": "pgd"}))
    at = app().run()
    at.switch_page("views/runs.py").run()
    table = at.dataframe[0].value
    assert table.set_index("id").loc[child.id, "fork of"] == f"{parent} @ {before}"
    assert table.set_index("id").loc[parent, "forks"] == 1
    at.selectbox(key="runs.lineage").set_value(parent).run()
    assert sorted(at.dataframe[0].value["id"]) == sorted([parent, child.id])
    assert at.query_params["lineage"] == parent  # shareable
    at = app(lineage=parent).run()  # a shared root link opens Runs filtered
    assert sorted(at.dataframe[0].value["id"]) == sorted([parent, child.id]) and other != parent

    at = app(run=child.id).run()  # the fork's live view links to its parent and to the comparison
    assert any(f"live?run={parent}" in block.value for block in at.markdown)
    assert not [button for button in at.button if button.key == "live.rescue"]  # GradAlign is on already
