"""What a new user is told and offered: honest presets and estimates, failed runs, the final
evaluation's progress, words that match the pictures. AppTest against a real Redis, as test_app_pages.
"""

from __future__ import annotations

import io
import json
import time
import zipfile

import pytest
from conftest import (
    TINY,
    append,
    co_run_events,
    config_event,
    eval_event,
    final_event,
    metrics_event,
    run_figure,
    running_events,
    snapshot_event,
    store_run,
)
from test_app_pages import app, charts, numbers

from app import estimate
from app.export import runs_zip
from app.history import SMOOTHING, RunHistory
from app.palette import CO_COLOR, RUN_PALETTE, run_colors, template
from app.panels import METRICS, Series, View
from app.text import md_escape
from jobs import api
from jobs.limits import cost
from jobs.queue import job_id, rq_queue
from jobs.registry import transition
from trainer.config import make_config
from trainer.events import make_event
from trainer.final import FINAL_PROGRESS_STEPS
from trainer.presets import PRESETS

RESNET_PRESET = "CIFAR-10 ResNet-18: FGSM + GradAlign λ=0.2, ε=8/255 (paper)"


# --- presets that cannot run here, fields the model ignores, names that say everything ---


@pytest.mark.parametrize("name", list(PRESETS))
def test_a_preset_name_says_the_method_and_gradalign_it_turns_on(name):
    config = make_config(PRESETS[name])
    assert estimate_method_word(config) in name
    if config.uses_grad_align:
        assert f"GradAlign λ={config.grad_align_lambda:g}" in name
    else:
        assert "GradAlign" not in name


def estimate_method_word(config) -> str:
    return {"fgsm": "FGSM", "pgd": f"PGD-{config.pgd_steps}"}[config.method]


def test_resnet_presets_disable_the_conv_fields_and_say_why(r):
    at = app().run()
    assert not at.number_input(key="launch.n_filters").disabled  # the CNN preset
    at.selectbox(key="launch.preset").set_value(RESNET_PRESET).run()
    for key in ("n_layers", "n_filters"):
        widget = at.number_input(key="launch." + key)
        assert widget.disabled and "preact_resnet18 has a fixed architecture" in widget.help


def test_every_required_number_box_left_blank_disables_launch_with_a_message_beside_it(r):
    """Each box the form's method reads, cleared (what the browser sends for blank or typed text: the
    browser half is tests/e2e/test_browser_ux.py): its own message in its column, Launch disabled,
    no "Will run:", and the restored value enables Launch again. Nothing is queued."""
    at = app().run()
    boxes = [box.key for box in at.number_input if box.proto.placeholder == "required" and not box.disabled]
    assert {"launch.eps", "launch.seed", "launch.eval_pgd_steps", "launch.final_pgd_restarts"} <= set(boxes)
    for key in boxes:
        before = at.number_input(key=key).value
        at.number_input(key=key).set_value(None).run()
        beside = {
            column.get("number_input")[0].key: [e.value for e in column.get("error")]
            for column in at.columns
            if column.get("number_input")
        }
        assert [message for errors in beside.values() for message in errors] == beside[key], key
        [message] = beside[key]
        assert message.startswith("blank or not a number"), (key, message)
        assert at.button(key="launch.submit").disabled, key
        assert not [m for m in at.markdown if "Will run:" in m.value], key
        at.number_input(key=key).set_value(before).run()
        assert not at.button(key="launch.submit").disabled, key
        assert [m for m in at.markdown if "Will run:" in m.value], key
    assert api.list_runs(r) == []


def test_cifar_without_its_files_and_resnet_on_cpu_warn_before_launch(r, tmp_path, monkeypatch):
    monkeypatch.setenv("CODASH_DATA_DIR", str(tmp_path / "data"))
    at = app().run()
    assert not [w for w in at.warning if "not on this machine" in w.value]  # digits is bundled
    at.selectbox(key="launch.preset").set_value(RESNET_PRESET).run()
    warnings = [w.value for w in at.warning]
    [missing] = [w for w in warnings if "not on this machine" in w]
    assert f"`{tmp_path / 'data' / 'cifar-10-batches-py' / 'data_batch_1'}`" in missing
    [slow] = [w for w in warnings if "No GPU worker is alive" in w]
    config = make_config(PRESETS[RESNET_PRESET])
    guess = estimate.expected(config, [], gpu=False)
    assert guess.seconds > 86400 and f"about {estimate.format_hours(guess.seconds)}" in slow
    assert "11,700 iterations" in slow  # 30 epochs of 50,000 // 128
    assert not at.button(key="launch.submit").disabled  # a warning, not a refusal: the worker may have them


def test_expected_time_is_scaled_from_finished_runs_of_the_same_kind(r):
    store_run(r, [config_event(total=100, max_iters=100), final_event(None)])  # 12 s for its work
    finished = api.list_runs(r)
    per_pass = 12.0 / cost(finished[0].config, "cpu").work  # a CPU run: no onset replay by default
    config = make_config({"epochs": 30})  # 30 × (1500 // 64) = 690 iterations, FGSM: the same kind
    guess = estimate.expected(config, finished, gpu=False)
    assert guess.seconds == pytest.approx(per_pass * cost(config, "cpu").work)
    assert guess.measured and "1 finished run" in guess.basis
    store_run(r, [config_event(total=100, max_iters=100, method="pgd", pgd_steps=10), final_event(None)])
    finished = api.list_runs(r)
    pgd10 = next(run.config for run in finished if run.config.method == "pgd")
    pgd5 = make_config({"method": "pgd", "pgd_steps": 5})
    pgd = estimate.expected(pgd5, finished, gpu=False)
    assert pgd.seconds == pytest.approx(
        12.0 / cost(pgd10, "cpu").work * cost(pgd5, "cpu").work
    )  # PGD's steps
    assert not estimate.expected(make_config({"method": "fgsm_rs"}), finished, gpu=False).measured
    assert estimate.expected(config, finished, gpu=True) is None  # nothing measured on a GPU, no guess there
    assert not estimate.expected(make_config({"n_filters": 64}), finished, gpu=False).measured
    assert estimate.expected(make_config({"model": "lenet"}), finished, gpu=False) is None  # no CPU figure


# --- words that match the pictures ---


def test_inside_the_model_caption_tells_this_runs_story(r):
    collapsed = co_run_events(total=100, co_at=60)
    collapsed.insert(-1, snapshot_event(40))
    collapsed.insert(-1, snapshot_event(80))
    run_id = store_run(r, collapsed)
    at = app(run=run_id).run()
    captions = " ".join(caption.value for caption in at.caption)
    assert "After this run's catastrophic overfitting at iteration 60" in captions
    at.select_slider(key=f"live.snapshot.{run_id}").set_value(40).run()
    captions = " ".join(caption.value for caption in at.caption)
    assert "Before this run's catastrophic overfitting at iteration 60" in captions

    held = running_events(total=100, until=40, grad_align_lambda=2.0) + [snapshot_event(40)]
    at = app(run=store_run(r, held, status="running")).run()
    captions = " ".join(caption.value for caption in at.caption)
    assert "has not overfitted catastrophically" in captions and "After" not in captions


def test_the_accuracy_title_names_what_it_plots_and_iteration_is_spelled_out(r):
    run_id = store_run(r, co_run_events(total=100, co_at=60))
    at = app(run=run_id).run()
    figure = charts(at)["live.chart"]
    title = figure["layout"]["annotations"][0]["text"]
    drawn = {trace["name"] for trace in figure["data"] if trace["yaxis"] == "y"}
    assert drawn == {"PGD", "FGSM", "clean", "train (adversarial batches)"}
    assert all(word in title for word in ("clean", "FGSM", "PGD", "train"))
    labels = [metric.label for metric in at.metric]
    assert "PGD accuracy (early-stopped, iteration 40)" in labels
    assert not [label for label in labels if " it " in label]


def test_an_overlay_title_leaves_out_the_training_accuracy_it_does_not_draw(r):
    first, second = store_run(r, co_run_events()), store_run(r, running_events(), status="running")
    overlay = charts(app(compare=f"{first},{second}").run())["compare.overlay"]
    assert "train" not in overlay["layout"]["annotations"][0]["text"]
    assert not [trace for trace in overlay["data"] if trace.get("name") == "train (adversarial batches)"]


# --- a failed run ---


def fail_run(r, events: list[dict], error: str) -> str:
    """A run that failed after `events`, or (none) before its first event, as a missing data set does."""
    run_id = store_run(r, events or [config_event()], status="running")
    if not events:
        r.delete(f"codash:stream:{run_id}")
    transition(
        r, run_id, {"running"}, {"status": "failed", "finished_at": time.time(), "error": error}, attempt=1
    )
    return run_id


def test_a_failed_run_says_why_first_and_offers_edit_and_relaunch_not_resume(r):
    reason = "out of memory on cpu: lower batch_size <b>"
    run_id = fail_run(r, [], reason)
    at = app(run=run_id).run()
    assert not at.exception
    [error], [code] = at.error, at.code
    assert error.value.startswith("**This run failed before its first iteration.**")
    assert code.value == reason and "out of memory" not in error.value  # the reason once, verbatim
    assert charts(at) == {}  # no empty frames
    assert not [element for element in at.info if "waiting" in element.value.lower()]
    assert [button.label for button in at.button] == ["Edit and relaunch"]  # no Resume, no empty frames

    at.button(key="live.relaunch").click().run()
    assert not at.exception
    assert at.number_input(key="launch.batch_size").value == 64
    assert any(run_id in info.value for info in at.info)
    at.number_input(key="launch.batch_size").set_value(16).run()
    at.button(key="launch.submit").click().run()
    relaunched = [run for run in api.list_runs(r) if run.id != run_id]
    assert [run.config.batch_size for run in relaunched] == [16]


def test_a_run_failed_midway_keeps_its_charts_and_cancelled_runs_still_resume(r):
    failed = fail_run(r, running_events(total=100, until=40), "boom")
    at = app(run=failed).run()
    assert at.error[0].value.startswith("**This run failed at iteration 40.**")
    assert "live.chart" in charts(at)
    cancelled = store_run(r, running_events(total=100, until=40), status="cancelled")
    at = app(run=cancelled).run()
    assert [button.label for button in at.button] == ["Resume", "Save tags and note"]


# --- what a run waits for before its first picture ---


def test_before_the_first_iteration_the_page_says_what_is_happening(r):
    run_id = api.submit(r, make_config({"eps": 0.2}))
    at = app(run=run_id).run()
    assert "Waiting for a worker" in at.info[0].value and charts(at) == {}

    claim = {"status": "running", "started_at": time.time(), "worker": "w-1", "device": "cpu"}
    rq_queue(r, api.DEFAULT_QUEUE).remove(job_id(run_id, 1))
    transition(r, run_id, {"queued"}, claim, attempt=1, heartbeat=("w-1", 600_000))
    at.run()
    assert "loading digits and building the model" in at.info[0].value
    assert "first evaluation comes at iteration 50" in at.info[0].value

    append(r, run_id, [config_event(total=690, eps=0.2), *(metrics_event(it) for it in range(1, 11))])
    at.run()
    figure = charts(at)["live.chart"]
    notes = [a["text"] for a in figure["layout"]["annotations"] if a.get("name") == "pending"]
    # once, in the accuracy panel; the alignment panel says what it will show
    assert notes == [
        "robust accuracy: first evaluation at iteration 50",
        "gradient alignment: measured at each evaluation",
    ]
    append(r, run_id, [eval_event(50, 0.3)])
    at.run()
    assert not [a for a in charts(at)["live.chart"]["layout"]["annotations"] if a.get("name") == "pending"]


# --- Compare ---


def test_each_run_has_one_colour_from_its_id_none_a_metric_colour():
    ids = [f"{n:012x}" for n in range(0, 4000, 500)]
    colors = run_colors(ids)
    assert colors == run_colors(list(reversed(ids)))  # not the selection order
    assert len(set(colors.values())) == len(ids) == len(RUN_PALETTE)  # 8 runs, 8 colours
    assert not set(RUN_PALETTE) & ({metric.color for metric in METRICS} | {CO_COLOR})
    alone = {run_id: run_colors([run_id])[run_id] for run_id in ids}
    assert sum(alone[run_id] == colors[run_id] for run_id in ids) >= len(ids) // 2  # most keep their own


def test_compare_colours_follow_the_run_and_the_legends_cannot_collide(r):
    ids = [store_run(r, co_run_events()) for _ in range(2)]
    ids.append(store_run(r, running_events(grad_align_lambda=2.0), status="running"))
    ids.append(store_run(r, [config_event(total=100, seed=3), *running_events()[1:]], status="running"))

    def colours_in(order: list[str]) -> dict[str, str]:
        figures = charts(app(compare=",".join(order)).run())
        overlay = figures["compare.overlay"]
        by_label = {t["name"]: t["line"]["color"] for t in overlay["data"] if t.get("legendgroup") != "key"}
        small = {
            run_id: [
                s["fillcolor"]
                for s in figures[f"compare.small.{run_id}"]["layout"]["shapes"]
                if s.get("name") == "run colour"
            ]
            for run_id in order
        }
        return by_label, small, overlay

    first, small, overlay = colours_in(ids)
    again, small_again, _ = colours_in(list(reversed(ids)))
    assert first == again and small == small_again
    expected = run_colors(ids)
    assert {run_id: colour for run_id, [colour] in small.items()} == expected
    assert set(first.values()) == set(expected.values())
    # one legend beside the panels, in groups (each run, then the line-style key): nothing to overprint
    layout = overlay["layout"]
    assert layout["legend"]["x"] > 1 and layout["legend"]["groupclick"] == "togglegroup"
    assert not [key for key in layout if key.startswith("legend") and key != "legend"]
    keys = [t["name"] for t in overlay["data"] if t.get("legendgroup") == "key"]
    assert keys[:3] == ["PGD acc", "FGSM acc", "clean acc"]
    assert not set(keys) & set(first)
    # labels name what differs: GradAlign, seed, and the run id where two configs are identical
    assert any("seed=3" in label for label in first)
    assert sum("[" in label for label in first) == 2


# --- the Runs page; tags and notes ---


def select_rows(at, rows: list[int]) -> None:
    key = [k for k in at.session_state if k.startswith("runs.table")][0]
    at.session_state[key] = {"selection": {"rows": rows, "columns": [], "cells": []}}
    at.run()


def test_runs_table_fits_has_a_seed_column_and_exports_a_selection_as_one_zip(r):
    first = store_run(r, co_run_events())
    second = store_run(r, [config_event(total=100, seed=7), *running_events()[1:]], status="running")
    at = app().run()
    at.switch_page("views/runs.py").run()
    table = at.dataframe[0]
    assert table.value.set_index("id").loc[second, "seed"] == 7
    shown = list(table.proto.column_order)
    assert shown[:2] == ["open", "label"] and "seed" in shown and "id" in shown and len(shown) <= 10
    at.multiselect(key="runs.columns").set_value(["ε", "device"]).run()
    assert list(at.dataframe[0].proto.column_order)[-2:] == ["ε", "device"]

    select_rows(at, [0, 1])
    labels = [button.label for button in at.get("download_button")]
    assert labels == ["Export 2 as zip"]  # export stays with several runs selected
    api.annotate(r, first, "co, baseline", "the <b>collapse</b> at 60")
    runs = [api.get_run(r, first), api.get_run(r, second)]
    archive = zipfile.ZipFile(io.BytesIO(runs_zip(runs, lambda run_id: api.all_events(r, run_id))))
    names = set(archive.namelist())
    assert {"runs.csv", f"{first}/events.jsonl", f"{first}/events.csv", f"{second}/run.json"} <= names
    events = [json.loads(line) for line in archive.read(f"{first}/events.jsonl").decode().splitlines()]
    assert events == api.all_events(r, first)
    record = json.loads(archive.read(f"{first}/run.json"))
    assert (record["tags"], record["note"]) == (["co", "baseline"], "the <b>collapse</b> at 60")
    table_csv = archive.read("runs.csv").decode()
    assert "co, baseline" in table_csv and "seed" in table_csv.splitlines()[0]


def test_tags_and_notes_are_edited_searched_bounded_and_shown_escaped(r):
    run_id = store_run(r, co_run_events())
    other = store_run(r, co_run_events())
    at = app(run=run_id).run()
    at.text_input(key=f"live.tags.{run_id}").set_value("co, seed-0")
    at.text_area(key=f"live.note.{run_id}").set_value("**not bold** <script>x</script>")
    at.button[[b.label for b in at.button].index("Save tags and note")].click().run()
    run = api.get_run(r, run_id)
    assert (run.tags, run.note) == (("co", "seed-0"), "**not bold** <script>x</script>")
    at.run()
    assert md_escape("**not bold** <script>x</script>") in " ".join(m.value for m in at.markdown)

    at.text_input(key=f"live.tags.{run_id}").set_value("fine, not fine!")
    at.button[[b.label for b in at.button].index("Save tags and note")].click().run()
    assert any(md_escape("tags: 'not fine!' is not allowed") in error.value for error in at.error)
    assert api.get_run(r, run_id).tags == ("co", "seed-0")  # nothing stored is lost
    with pytest.raises(ValueError, match="note: at most 2,000 characters"):
        api.annotate(r, run_id, "", "x" * 2001)
    with pytest.raises(ValueError, match="at most 12 tags"):
        api.annotate(r, run_id, [f"t{n}" for n in range(13)], "")
    with pytest.raises(api.RunNotFound):
        api.annotate(r, "0123456789ab", "x", "")
    assert not r.exists("codash:run:0123456789ab")  # a missing run is not recreated

    runs = app().run()
    runs.switch_page("views/runs.py").run()
    runs.text_input(key="runs.search").set_value("seed-0").run()
    assert runs.dataframe[0].value["id"].tolist() == [run_id]
    runs.text_input(key="runs.search").set_value("script").run()  # the note is searched too
    assert runs.dataframe[0].value["id"].tolist() == [run_id]
    assert other


def test_tags_written_into_redis_by_hand_are_parsed_not_trusted(r):
    run_id = store_run(r, co_run_events())
    for junk in ("not json", json.dumps({"a": 1}), json.dumps(["ok", 5]), json.dumps(["<b>x</b>"])):
        r.hset(f"codash:run:{run_id}", "tags", junk)
        assert api.get_run(r, run_id).tags == ()
    r.hset(f"codash:run:{run_id}", mapping={"tags": json.dumps(["fine"]), "note": "n" * 5000})
    run = api.get_run(r, run_id)
    assert run.tags == ("fine",) and len(run.note) == api.MAX_NOTE_CHARS


# --- the final evaluation's progress ---


def test_the_final_evaluation_reports_points_attacked_last_then_best(tmp_path):
    from trainer.loop import train

    events: list[dict] = []
    config = make_config({**TINY, "final_pgd_restarts": 25, "eps": 0.3})  # 25 restarts of one batch
    train(config, events.append, tmp_path)
    progress = [event for event in events if event["type"] == "final_progress"]
    final = events[-1]
    assert final["type"] == "final" and progress  # every progress event comes before the final one
    models = progress[0]["models"]
    assert models == (1 if final["best_iteration"] == final["iterations"] else 2)
    # per model (last, then the early-stopped one when it differs): from 0, moving within the one batch as
    # its restarts run, to every point, in at most FINAL_PROGRESS_STEPS + 1 events
    order = ("last", "best")[:models]
    for which in order:
        done = [event["done"] for event in progress if event["model"] == which]
        assert done[0] == 0 and done[-1] == 64 and done == sorted(set(done)), (which, done)
        assert 2 < len(done) <= FINAL_PROGRESS_STEPS + 1
    shown = [event["model"] for event in progress]
    assert shown == sorted(shown, key=order.index)
    assert {event["points"] for event in progress} == {64}
    elapsed = [event["elapsed_s"] for event in progress]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0


def test_the_live_view_shows_the_final_evaluation_progress_and_time_left(r):
    events = running_events(total=40, until=40)
    events.append(make_event("final_progress", model="last", models=2, done=150, points=300, elapsed_s=30.0))
    run_id = store_run(r, events, status="running")
    at = app(run=run_id).run()
    bars = [bar.proto for bar in at.get("progress")]
    assert len(bars) == 2
    assert bars[1].text == (
        "final PGD-50-10 on the last model (1 of 2): 150 of 300 test images attacked · 25% of the final "
        "evaluation · about 1:30 left"
    )
    assert bars[1].value == 25  # the bar's share is said in its words
    append(
        r,
        run_id,
        [make_event("final_progress", model="best", models=2, done=300, points=300, elapsed_s=80.0)],
    )
    at.run()
    bar = at.get("progress")[1].proto
    assert (bar.value, "early-stopped (best) model (2 of 2): 300 of 300" in bar.text) == (100, True)


# --- what W&B and TensorBoard users reach for ---


def trace(figure: dict, name: str) -> dict:
    return next(t for t in figure["data"] if t.get("name") == name)


def test_smoothing_log_loss_and_zoom_are_kept_in_the_url(r):
    events = running_events(total=100, until=40) + [snapshot_event(20), snapshot_event(40)]
    run_id = store_run(r, events)
    at = app(run=run_id).run()
    raw = [e["train_loss"] for e in events if e["type"] == "metrics"]
    smoothed = numbers(trace(charts(at)["live.chart"], "train loss")["y"])
    assert smoothed != pytest.approx(raw)  # the default EMA
    at.slider(key="live.smoothing").set_value(0.0).run()
    assert numbers(trace(charts(at)["live.chart"], "train loss")["y"]) == pytest.approx(raw)
    at.toggle(key="live.log_loss").set_value(True).run()
    assert charts(at)["live.chart"]["layout"]["yaxis3"]["type"] == "log"
    at.session_state["live.chart"] = {"x_range": [10, 30.5], "at": 1}  # what the chart sends on a zoom
    at.run()
    assert (at.query_params["smooth"], at.query_params["log"], at.query_params["x"]) == ("0", "1", "10,30.5")

    shared = app(run=run_id, smooth="0.5", log="1", x="10,30.5").run()  # a reload, or the link shared
    figure = charts(shared)["live.chart"]
    assert shared.slider(key="live.smoothing").value == 0.5
    assert figure["layout"]["yaxis3"]["type"] == "log"
    assert figure["layout"]["xaxis"]["range"] == [10, 30.5]
    shared.session_state["live.chart"] = {"x_range": None, "at": 2}  # a double click resets the zoom
    shared.run()
    assert "x" not in shared.query_params

    junk = app(run=run_id, smooth="2", log="yes", x="5,nan").run()  # untrusted: ignored, not an error
    assert not junk.exception
    assert junk.slider(key="live.smoothing").value == SMOOTHING
    assert "range" not in charts(junk)["live.chart"]["layout"]["xaxis"]


def test_the_snapshot_slider_marks_its_iteration_on_the_panels(r):
    events = running_events(total=100, until=40) + [snapshot_event(20), snapshot_event(40)]
    run_id = store_run(r, events)
    at = app(run=run_id).run()
    at.select_slider(key=f"live.snapshot.{run_id}").set_value(20).run()
    figure = charts(at)["live.chart"]
    marks = [s["x0"] for s in figure["layout"]["shapes"] if s.get("name") == "mark"]
    assert marks == [20, 20, 20]
    assert any(a["text"] == "inside the model: 20" for a in figure["layout"]["annotations"])


def test_charts_follow_streamlits_dark_theme():
    history = RunHistory()
    history.extend(co_run_events())
    dark = run_figure([Series("x", history)], "u", view=View(dark=True))
    assert (
        dark.layout.template.layout.paper_bgcolor
        != run_figure([Series("x", history)], "u").layout.template.layout.paper_bgcolor
    )
    assert template(True) == "plotly_dark" and template(False) == "plotly_white"


def test_the_x_axis_can_be_wall_clock_from_the_streams_times(r):
    events = running_events(total=100, until=40)
    run_id = store_run(r, events)
    at = app(run=run_id, x="5,20").run()
    history = at.session_state["histories"][run_id]
    assert set(history.clock) == set(range(1, 41))  # every iteration has the time it reached the stream
    at.segmented_control(key="live.x_axis").set_value("wall clock").run()
    figure = charts(at)["live.chart"]
    assert figure["layout"]["xaxis"]["title"]["text"].startswith("wall clock")
    loss = numbers(trace(figure, "train loss")["x"])
    assert loss[0] == 0 and loss == sorted(loss) and loss[-1] < 60
    assert at.query_params["xaxis"] == "clock" and "x" not in at.query_params  # the iteration zoom is dropped
    assert charts(app(run=run_id, xaxis="clock").run())["live.chart"]["layout"]["xaxis"]["title"][
        "text"
    ].startswith("wall clock")
