"""Every dashboard page through Streamlit's AppTest, against a real Redis (conftest's embedded server).

Runs are either real (a worker process trains them) or stored as a worker leaves them, written through the
worker's own writers (registry.transition and stream.StreamSink), so what the pages read is what they
would read in production.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    TINY,
    append,
    co_event,
    co_run_events,
    config_event,
    eval_event,
    metrics_event,
    running_events,
    snapshot_event,
    store_run,
)
from streamlit.testing.v1 import AppTest

from app.text import md_escape
from app.views.launch import ADVANCED, GROUPS
from app.views.live import STATUS_ICONS
from jobs import api, keys
from jobs.queue import job_id, rq_queue
from jobs.registry import LOST, transition
from trainer.config import RunConfig, lambda_of_eps, make_config
from trainer.fork import LINK_FIELDS
from trainer.presets import DIGITS_GRAD_ALIGN, PRESETS

MAIN = Path(__file__).resolve().parent.parent / "app" / "main.py"


def app(**query: str) -> AppTest:
    at = AppTest.from_file(str(MAIN), default_timeout=30)
    at.query_params.update(query)
    return at


def charts(at: AppTest) -> dict[str, dict]:
    """The live charts on the page by key, each as the Plotly figure it was given."""
    found = {}
    for element in at.get("component_instance"):
        args = json.loads(element.proto.json_args)
        found[args["key"]] = {**json.loads(args["spec"]), "revision": args["revision"]}
    return found


def numbers(array) -> list[float]:
    """A figure's data array as a list, whether plotly wrote it plainly or base64-packed."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).tolist()
    return list(array)


def array(data) -> np.ndarray:
    """A figure's n-dimensional data (a heatmap's z) as an array, whether plain or base64-packed."""
    if isinstance(data, dict):
        shape = [int(n) for n in str(data.get("shape", "-1")).split(",")]
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"]).reshape(shape)
    return np.asarray(data, dtype=float)


def legend_names(figure: dict) -> set[str]:
    return {trace["name"] for trace in figure["data"] if trace.get("showlegend", True)}


def co_lines(figure: dict) -> list[float]:
    return [shape["x0"] for shape in figure["layout"].get("shapes", []) if shape["type"] == "line"]


def test_the_app_never_imports_torch():
    """The dashboard talks to jobs.api only; torch (seconds to import, GBs on GPU hosts) stays in workers."""
    views = ", ".join(f"app.views.{name}" for name in ("launch", "live", "runs", "compare", "sweep"))
    code = f"import sys, app.chart, app.state, {views}; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=MAIN.parent.parent)


# --- launch ---


def test_launch_enqueues_exactly_the_validated_config_and_opens_its_live_view(r):
    at = app().run()
    assert not at.exception
    at.selectbox(key="launch.preset").set_value("Digits: FGSM + GradAlign λ=4 (rescue)").run()
    at.number_input(key="launch.eps").set_value(0.15)
    at.number_input(key="launch.seed").set_value(3)
    at.number_input(key="launch.max_iters").set_value(300)
    at.selectbox(key="launch.device").set_value("cpu")
    at.text_input(key="launch.name").set_value("my run")
    at.run()
    at.button(key="launch.submit").click().run()

    [run] = api.list_runs(r)
    changes = {"eps": 0.15, "seed": 3, "max_iters": 300, "device": "cpu", "name": "my run"}
    assert run.config == make_config({**PRESETS["Digits: FGSM + GradAlign λ=4 (rescue)"], **changes})
    assert at.query_params["run"] == run.id
    assert [header.value for header in at.header] == ["my run"]


def test_the_form_has_a_widget_for_every_config_field_exactly_once():
    """parent and fork_iteration: the fork banner's (tests/test_app_forks.py)."""
    fields = [name for _, names in GROUPS for name in names] + list(ADVANCED) + list(LINK_FIELDS)
    assert sorted(fields) == sorted(RunConfig.model_fields)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_each_preset_enqueues_its_own_config(r, preset):
    at = app().run()
    at.selectbox(key="launch.preset").set_value(preset).run()
    at.button(key="launch.submit").click().run()
    assert [run.config for run in api.list_runs(r)] == [make_config(PRESETS[preset])]


def test_eps_is_entered_in_255ths_on_cifar_and_the_paper_lambda_can_be_taken(r):
    at = app().run()
    at.selectbox(key="launch.preset").set_value(
        "CIFAR-10 ResNet-18: FGSM + GradAlign λ=0.2, ε=8/255 (paper)"
    ).run()
    assert at.number_input(key="launch.eps255").value == 8
    at.number_input(key="launch.eps255").set_value(16).run()
    assert any("**2**" in caption.value for caption in at.caption)  # λ(16/255) = 2
    at.button(key="launch.paper_lambda").click().run()
    at.button(key="launch.submit").click().run()
    [run] = api.list_runs(r)
    assert run.config.eps == pytest.approx(16 / 255)
    assert run.config.grad_align_lambda == 2.0


def test_on_digits_the_form_offers_the_digits_lambda_fit(r):
    at = app().run()  # digits at eps = 0.175: the paper's rule would give thousands
    suggestion = lambda_of_eps("grad_align_lambda", "digits", 0.175)
    assert any(f"Digits λ(ε) fit at ε=0.175: **{suggestion:g}**" in c.value for c in at.caption)
    at.toggle(key="launch.grad_align").set_value(True).run()
    at.button(key="launch.paper_lambda").click().run()
    assert at.number_input(key="launch.grad_align_lambda").value == suggestion


def test_on_digits_the_form_offers_elles_lambda_fit_too_and_elsewhere_no_elle_rule(r):
    at = app().run()
    assert lambda_of_eps("elle_lambda", "digits", 0.175) == 1024  # the fit passes through the ELLE preset's λ
    at.button(key="launch.elle_lambda_rule").click().run()
    assert at.number_input(key="launch.elle_lambda").value == 1024
    at.number_input(key="launch.eps").set_value(0.25).run()
    suggestion = lambda_of_eps("elle_lambda", "digits", 0.25)
    assert suggestion > 1024  # it grows with ε
    assert sum(f"Digits λ(ε) fit at ε=0.25: **{suggestion:g}**" in c.value for c in at.caption) == 1
    at.button(key="launch.elle_lambda_rule").click().run()
    at.button(key="launch.submit").click().run()
    [run] = api.list_runs(r)
    assert (run.config.eps, run.config.elle_lambda) == (0.25, suggestion)
    at = app().run()
    at.selectbox(key="launch.dataset").set_value("mnist").run()  # no ELLE rule off digits
    assert "launch.elle_lambda_rule" not in [button.key for button in at.button]


def test_the_form_says_when_the_digits_lambda_fit_is_extrapolated(r):
    at = app().run()
    at.number_input(key="launch.eps").set_value(0.3).run()
    lam = lambda_of_eps("grad_align_lambda", "digits", 0.3)
    elle = lambda_of_eps("elle_lambda", "digits", 0.3)
    captions = [c.value for c in at.caption]
    assert f"Digits λ(ε) fit at ε=0.3: **{lam:g}** (extrapolated: measured for ε = 0.15–0.25)" in captions
    assert f"Digits λ(ε) fit at ε=0.3: **{elle:g}**" in captions  # measured there: no remark


def test_out_of_range_paper_lambda_points_to_the_digits_preset_and_its_lambda(r):
    at = app().run()
    at.selectbox(key="launch.dataset").set_value("mnist").run()
    at.number_input(key="launch.eps").set_value(0.3).run()  # MNIST keeps the paper's rule: far too large
    [note] = [caption.value for caption in at.caption if "out of range" in caption.value]
    lam = PRESETS[DIGITS_GRAD_ALIGN]["grad_align_lambda"]
    assert f"“{DIGITS_GRAD_ALIGN}” uses λ={lam:g}" in note
    assert at.button(key="launch.paper_lambda").disabled


def test_an_invalid_field_is_reported_next_to_it_and_nothing_is_queued(r):
    at = app().run()
    at.number_input(key="launch.lr").set_value(0.0).run()
    assert any(error.value.startswith("Input should be greater than 0") for error in at.error)
    assert at.button(key="launch.submit").disabled  # a browser cannot click it either
    assert api.list_runs(r) == []


def test_the_launch_form_validates_its_values_once_per_render(r, monkeypatch):
    validations = []
    validate = RunConfig.model_validate.__func__

    def counted(cls, *args, **kwargs):
        validations.append(args[0])
        return validate(cls, *args, **kwargs)

    at = app().run()
    monkeypatch.setattr(RunConfig, "model_validate", classmethod(counted))
    at.number_input(key="launch.lr").set_value(0.0).run()
    assert len(validations) == 1 and validations[0]["lr"] == 0.0
    at.number_input(key="launch.lr").set_value(0.01).run()
    assert len(validations) == 2 and not at.error


def test_launch_warns_when_no_worker_is_alive_and_names_the_command(r):
    at = app().run()
    assert "No worker is running" in at.warning[0].value
    assert "Start one in a terminal: `codash worker`" in at.warning[0].value
    assert not at.code  # inline: st.code would load a syntax highlighter into the page


def test_a_real_worker_run_launched_from_the_form_shows_up_live(r, worker_pool):
    """The whole path with nothing stored by hand: form -> queue -> worker -> stream -> figure."""
    worker_pool.spawn("app-worker")
    at = app().run()
    assert "1 worker(s) alive: app\\-worker (cpu, idle)" in at.success[0].value
    for key, value in {"eps": 0.2, "max_iters": 40, "eval_every": 10, "eval_points": 32}.items():
        at.number_input(key=f"launch.{key}").set_value(value)
    at.number_input(key="launch.final_eval_points").set_value(16)
    at.number_input(key="launch.final_pgd_steps").set_value(2)
    at.number_input(key="launch.final_pgd_restarts").set_value(1)
    at.run()
    at.button(key="launch.submit").click().run()
    run_id = at.query_params["run"]

    deadline = time.monotonic() + 90
    while api.get_run(r, run_id).status != "finished":
        assert time.monotonic() < deadline, worker_pool.started[0].output()
        time.sleep(0.2)
    at.run()
    figure = charts(at)["live.chart"]
    pgd = next(trace for trace in figure["data"] if trace["name"] == "PGD")
    assert numbers(pgd["x"]) == [10, 20, 30, 40]
    assert "PGD accuracy (last)" in [metric.label for metric in at.metric]


# --- live view ---


def test_live_view_draws_stored_events_with_the_co_marker_and_final_results(r):
    run_id = store_run(r, co_run_events(total=100, co_at=60))
    at = app(run=run_id).run()
    assert not at.exception
    figure = charts(at)["live.chart"]
    assert {"PGD", "FGSM", "clean", "cos(∇x, ∇x+η)", "train loss"} <= legend_names(figure)
    assert co_lines(figure) == [60, 60, 60]
    assert any("catastrophic overfitting @ 60" in a["text"] for a in figure["layout"]["annotations"])
    assert figure["layout"]["uirevision"] == run_id
    metrics = {metric.label: metric.value for metric in at.metric}
    assert metrics["catastrophic overfitting"] == "at 60"
    assert metrics["PGD accuracy (last)"] == "1.0%"
    captions = " ".join(caption.value for caption in at.caption)
    assert "PGD-50-10 (step ε/4) on the first 297 test images" in captions
    assert "the best PGD-10 accuracy on 256 training images" in captions
    assert "finished" in at.markdown[0].value
    assert not [button for button in at.button if button.label in ("Cancel", "Resume")]
    assert (
        "iteration 100 of 100 · catastrophic overfitting at iteration 60" in at.get("progress")[0].proto.text
    )


def test_the_live_view_says_how_well_the_probe_placed_the_onset(r):
    events = [e for e in co_run_events(total=100, co_at=60) if e["type"] != "co"]
    events.insert(-1, co_event(60, onset=47, interval=[40, 55]))
    at = app(run=store_run(r, events)).run()
    text = at.get("progress")[0].proto.text
    assert "catastrophic overfitting at iteration 47 (40–55 over resamples of its images)" in text
    assert len([s for s in charts(at)["live.chart"]["layout"]["shapes"] if s["type"] == "rect"]) == 3


def test_live_view_reads_only_the_events_written_since_it_last_looked(r):
    events = running_events(total=100, until=40)
    run_id = store_run(r, events, status="running")
    at = app(run=run_id).run()
    assert charts(at)["live.chart"]["revision"] == len(events)
    assert co_lines(charts(at)["live.chart"]) == []

    more = [metrics_event(it) for it in range(41, 61)] + [eval_event(60, 0.01, 0.9)]
    append(r, run_id, more)
    at.run()
    history = at.session_state["histories"][run_id]
    assert history.n_events == len(events) + len(more)  # nothing read twice
    assert history.last_id == r.xrevrange(f"codash:stream:{run_id}", count=1)[0][0].decode()
    assert sorted(history.evals) == [20, 40, 60]
    assert charts(at)["live.chart"]["revision"] == len(events) + len(more)
    assert "iteration 60 of 100" in at.get("progress")[0].proto.text


def test_a_run_past_its_last_iteration_says_it_is_in_its_final_evaluation(r):
    run_id = store_run(r, running_events(total=40, until=40, autoattack=True), status="running")
    text = app(run=run_id).run().get("progress")[0].proto.text
    assert "iteration 40 of 40 · final evaluation: clean accuracy, PGD-50-10, AutoAttack" in text

    still_training = store_run(r, running_events(total=100, until=40), status="running")
    assert "final evaluation" not in app(run=still_training).run().get("progress")[0].proto.text
    finished = store_run(r, co_run_events(total=100, co_at=60))
    assert "final evaluation" not in app(run=finished).run().get("progress")[0].proto.text


def test_cancel_and_resume_from_the_live_view(r):
    run_id = api.submit(r, make_config({"eps": 0.2}))
    at = app(run=run_id).run()
    assert "Waiting for a worker" in at.info[0].value
    at.button(key="live.cancel").click().run()
    assert api.get_run(r, run_id).status == "cancelled"
    at.button(key="live.resume").click().run()
    run = api.get_run(r, run_id)
    assert (run.status, run.attempt) == ("queued", 2)


def run_with_status(r, status: api.RunStatus) -> str:
    """A run in `status` as the queue and a worker leave it; none is on RQ's queue, so no worker takes it."""
    if status != api.RunStatus.QUEUED:
        return store_run(r, running_events(total=100, until=20), status=status)
    run_id = api.submit(r, make_config({"eps": 0.2}))
    rq_queue(r, api.DEFAULT_QUEUE).remove(job_id(run_id, 1))
    return run_id


def changes(r, action, run_id: str) -> bool:
    """Whether the queue accepts `action` on the run: it changes its record or asks its worker to stop."""
    before = r.hgetall(keys.run(run_id)), r.exists(keys.stop(run_id))
    try:
        action(r, run_id)
    except api.InvalidTransition:
        return False
    rq_queue(r, api.DEFAULT_QUEUE).remove(job_id(run_id, 2))  # a resumed attempt: no worker may take it
    return (r.hgetall(keys.run(run_id)), r.exists(keys.stop(run_id))) != before


@pytest.mark.parametrize("status", list(api.RunStatus))
def test_the_live_view_offers_exactly_the_actions_the_queue_accepts(r, status):
    run_id = run_with_status(r, status)
    at = app(run=run_id).run()
    offered = {button.key for button in at.button}
    assert f"**{status}**" in at.markdown[0].value and STATUS_ICONS[status] in at.markdown[0].value
    assert ("live.cancel" in offered) == (status in api.CANCELLABLE) == changes(r, api.cancel, run_id)
    resumable = run_with_status(r, status)
    assert (status in api.RESUMABLE) == changes(r, api.resume, resumable)
    # a failed run would fail the same way again: the page offers Edit and relaunch instead
    assert ("live.resume" in offered) == (status in api.USER_RESUMABLE)
    assert ("live.relaunch" in offered) == (status == api.RunStatus.FAILED)


def test_an_interrupted_run_says_why(r):
    run_id = store_run(r, running_events(total=100, until=40), status=api.RunStatus.RUNNING)
    r.delete(keys.heartbeat(run_id))  # its worker died: the page, reading it, marks it interrupted
    at = app(run=run_id).run()
    assert "**interrupted**" in at.markdown[0].value
    assert [warning.value for warning in at.warning] == [f"Why the run was interrupted: {md_escape(LOST)}"]
    assert "live.resume" in {button.key for button in at.button}


def test_a_shared_root_link_opens_the_run_and_user_text_is_escaped(r):
    name = "**bold** <b>x</b> [link](javascript:alert(1))"
    events = co_run_events(total=40, co_at=40)
    events[0] = config_event(total=40, name=name)
    run_id = store_run(r, events)
    at = app(run=run_id).run()  # the root URL, as a shared link would be
    assert [header.value for header in at.header] == [md_escape(name)]
    figure = charts(at)["live.chart"]
    assert all("<b>" not in a["text"] for a in figure["layout"]["annotations"])


def test_live_view_shows_the_filters_and_perturbations_of_a_real_digits_run(r, tmp_path):
    from trainer.loop import train

    events = []
    train(make_config({**TINY, "n_filters": 4}), events.append, tmp_path)  # snapshots at 20, 40, 60
    run_id = store_run(r, events)
    at = app(run=run_id).run()
    assert not at.exception
    assert "Inside the model" in [subheader.value for subheader in at.subheader]
    slider = at.select_slider(key=f"live.snapshot.{run_id}")
    assert (slider.options, slider.value) == (["20", "40", "60"], 60)  # the latest evaluation
    figures = charts(at)
    filters, inside = figures["live.filters"], figures["live.inside"]
    assert (filters["revision"], inside["revision"]) == (60, 60)
    assert "4 × 3×3" in filters["layout"]["title"]["text"]
    assert array(filters["data"][0]["z"]).shape == (3, 4 * 4 - 1)  # four 3×3 filters in a row
    assert [trace["type"] for trace in inside["data"]] == ["heatmap"] * 5
    assert all(array(trace["z"]).shape == (16, 16) for trace in inside["data"])
    image = array(inside["data"][0]["z"])
    assert image.min() >= 0 and image.max() <= 1 and image.max() > 0.5  # a digit, not noise or blank
    assert inside["layout"]["annotations"][0]["text"].startswith("image · label")

    at.select_slider(key=f"live.snapshot.{run_id}").set_value(20).run()
    assert charts(at)["live.inside"]["revision"] == 20
    assert charts(at)["live.filters"]["revision"] == 20


def test_the_snapshot_slider_follows_new_evaluations_until_moved(r):
    events = running_events(total=100, until=40)
    events.insert(events.index(events[-1]) + 1, snapshot_event(40))
    events.insert(22, snapshot_event(20))
    run_id = store_run(r, events, status="running")
    key = f"live.snapshot.{run_id}"
    at = app(run=run_id).run()
    assert at.select_slider(key=key).value == 40
    append(r, run_id, [eval_event(60, 0.3), snapshot_event(60)])
    at.run()
    assert at.select_slider(key=key).value == 60  # followed the new evaluation
    at.select_slider(key=key).set_value(20).run()
    append(r, run_id, [eval_event(80, 0.3), snapshot_event(80)])
    at.run()
    assert at.select_slider(key=key).options == ["20", "40", "60", "80"]
    assert at.select_slider(key=key).value == 20  # stays where the user put it
    assert charts(at)["live.inside"]["revision"] == 20


def test_a_run_without_snapshots_says_when_they_come(r):
    run_id = store_run(r, running_events(total=100, until=10), status="running")
    at = app(run=run_id).run()
    assert any("appear with the first evaluation" in caption.value for caption in at.caption)
    assert set(charts(at)) == {"live.chart"}


def test_a_resumed_runs_elapsed_time_counts_its_first_attempt(r):
    run_id = store_run(r, running_events(until=10), status="interrupted")  # ran about 30 s
    api.resume(r, run_id)
    claim = {"status": "running", "started_at": time.time() - 5, "worker": "w2", "device": "cpu"}
    transition(r, run_id, {"queued"}, claim, attempt=2, heartbeat=("w2", 600_000))
    at = app(run=run_id).run()
    [status] = [caption.value for caption in at.caption if "elapsed" in caption.value]
    minutes, seconds = status.split("elapsed ")[1].split(" ")[0].split(":")
    assert 35 <= 60 * int(minutes) + int(seconds) < 60  # 30 s, then 5 s and counting; not 0:05


def test_unknown_run_says_so(r):
    at = app(run="0123456789ab").run()
    assert "No run with id" in at.error[0].value


def test_fields_the_chosen_method_does_not_read_are_disabled_and_say_why(r):
    at = app().run()  # the FGSM preset
    inputs = {key: at.number_input(key="launch." + key) for key in ("free_replays", "nfgsm_k", "pgd_steps")}
    assert all(widget.disabled and "only" in widget.help for widget in inputs.values())
    assert not at.number_input(key="launch.alpha").disabled
    assert at.number_input(key="launch.grad_align_fraction").disabled  # GradAlign is off
    at.selectbox(key="launch.method").set_value("nfgsm").run()
    at.toggle(key="launch.grad_align").set_value(True).run()
    assert not at.number_input(key="launch.nfgsm_k").disabled
    assert at.number_input(key="launch.free_replays").disabled
    assert not at.number_input(key="launch.grad_align_fraction").disabled
