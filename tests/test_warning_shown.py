"""Where the CO early warning and the autopilot's switch show: the run's history, the live panels, Compare's
overlay, the sweep's charts, the tables, the registry, the CLI and the export."""

from __future__ import annotations

import io
import json
import zipfile

from conftest import (
    co_event,
    config_event,
    eval_event,
    final_event,
    metrics_event,
    read_back,
    run_figure,
    warning_event,
)

from app.export import runs_zip
from app.history import RunHistory
from app.palette import DARK_PLOT, MIN_CONTRAST, WARNING_COLOR, contrast
from app.panels import Series, View
from app.sweep_charts import SweepCurve, sweep_curves_figure, sweep_figure
from app.tables import runs_frame, sweep_frame
from codash.cli import format_table
from jobs import api, stream
from jobs.queue import job_id, rq_queue
from jobs.registry import transition
from jobs.stream import StreamSink
from trainer.cli import ProgressSink, final_summary
from trainer.config import make_config
from trainer.events import make_event, parse_event
from trainer.warning import MEDIAN_LEAD, warning_words


def final_without_co(pgd: float = 0.2) -> dict:
    return {**final_event(None, pgd), "last": {"clean_acc": 0.9, "pgd_acc": pgd, "autoattack_acc": None}}


def rescue_event(it: int, lam: float = 5.66) -> dict:
    return make_event("rescue", iteration=it, grad_align_lambda=lam, step="eager", step_reason="cpu")


def warned_events(warn_at: int | None = 40, co_at: int | None = 80, total: int = 100, **config) -> list[dict]:
    """A run whose alignment falls: warned at `warn_at`, collapsed at `co_at` (None: never)."""
    events = [config_event(total=total, **config)]
    for it in range(1, total + 1):
        events.append(metrics_event(it))
        if it % 20 == 0:
            collapsed = co_at is not None and it >= co_at
            events.append(eval_event(it, pgd=0.01 if collapsed else 0.4, fgsm=0.9 if collapsed else 0.45))
            if it == warn_at:
                events.append(warning_event(it))
            if it == co_at:
                events.append(co_event(it))
    return [*events, final_event(co_at)]


def history_of(events: list[dict]) -> RunHistory:
    history = RunHistory()
    history.extend(events)
    return history


def markers(fig, name: str) -> list:
    return [shape for shape in fig.layout.shapes if shape.name == name]


def labels(fig, name: str) -> list[str]:
    return [annotation.text for annotation in fig.layout.annotations if annotation.name == name]


def test_the_history_keeps_the_warning_and_the_switch_and_a_resume_before_them_drops_them():
    events = warned_events(warn_at=40)
    history = history_of([*events[:-1], rescue_event(40)])
    assert history.warning["iteration"] == 40 and history.rescue["grad_align_lambda"] == 5.66
    history.extend([config_event(start=40)])  # resumed from the warning's checkpoint: both stay
    assert history.warning is not None and history.rescue is not None
    history.extend([config_event(start=20)])  # resumed from before them: recomputed, so gone
    assert history.warning is None and history.rescue is None


def test_the_live_panels_draw_an_amber_line_at_the_warning_on_every_panel():
    history = history_of(warned_events(warn_at=40, co_at=80))
    fig = run_figure([Series("fgsm", history)], uirevision="r")
    lines = markers(fig, "co_warning")
    assert [line.x0 for line in lines] == [40, 40, 40]
    assert {line.line.color for line in lines} == {WARNING_COLOR} and {line.line.dash for line in lines} == {
        "dashdot"
    }
    assert [line.x0 for line in markers(fig, "co")] == [80, 80, 80]  # CO's own line stays
    assert labels(fig, "co_warning")[0] == "CO warning @ 40"
    dark = run_figure([Series("fgsm", history)], uirevision="r", view=View(dark=True))
    for drawn, plot_area in ((fig, (255, 255, 255)), (dark, DARK_PLOT)):  # 3:1 on either theme
        color = markers(drawn, "co_warning")[0].line.color
        assert contrast(tuple(int(color[i : i + 2], 16) for i in (1, 3, 5)), plot_area) >= MIN_CONTRAST
    without = run_figure([Series("fgsm", history_of(warned_events(warn_at=None)))], uirevision="r")
    assert not markers(without, "co_warning")


def test_an_autopilot_runs_warning_line_says_gradalign_went_on():
    history = history_of([*warned_events(warn_at=40, co_at=None)[:-1], rescue_event(40)])
    fig = run_figure([Series("auto", history)], uirevision="r")
    assert labels(fig, "co_warning")[0] == "CO warning @ 40 · GradAlign on"


def test_compare_marks_each_runs_warning_in_its_colour_and_names_the_run():
    warned = history_of(warned_events(warn_at=40, co_at=80))
    quiet = history_of(warned_events(warn_at=None, co_at=None, grad_align_lambda=4))
    fig = run_figure(
        [Series("fgsm", warned, "#1b9e77"), Series("ga <b>4</b>", quiet, "#e7298a")], uirevision="c"
    )
    lines = markers(fig, "co_warning")
    assert [line.x0 for line in lines] == [40] * 3 and {line.line.color for line in lines} == {"#1b9e77"}
    assert labels(fig, "co_warning")[0] == "warning · fgsm @ 40"
    compact = run_figure(
        [Series("fgsm", warned, "#1b9e77"), Series("q", quiet)], uirevision="c", compact=True
    )
    assert labels(compact, "co_warning") == ["warning @ 40"] * 3


def test_the_sweep_rings_warned_runs_in_amber_and_marks_where_each_was_warned():
    runs, histories = [], {}
    for index, (warn, co) in enumerate(((40, 80), (None, None))):
        run_id = f"r{index}"
        history = history_of(warned_events(warn_at=warn, co_at=co))
        runs.append(fake_run(run_id, history, seed=index))
        histories[run_id] = history
    points = sweep_frame(runs, histories)
    assert points.set_index("run_id")["warned"].to_dict() == {"r0": True, "r1": False}
    marks = next(
        trace for trace in read_back(sweep_figure(points, False, "s")).data if trace.name == "FGSM (runs)"
    )
    colors = dict(zip(marks.customdata[:, 0], marks.marker.line.color, strict=True))
    assert colors["r0"] == WARNING_COLOR and colors["r1"] != WARNING_COLOR
    curves = [SweepCurve("fgsm", 0.175, "0.175", index, histories[run.id]) for index, run in enumerate(runs)]
    warned = [
        trace for trace in read_back(sweep_curves_figure(curves, "s")).data if trace.name == "CO warning"
    ]
    assert len(warned) == 1 and list(warned[0].x) == [40] and list(warned[0].y) == [0.4]


def fake_run(
    run_id: str, history: RunHistory, seed: int = 0, warning_iteration: int | None = None
) -> api.Run:
    config = make_config({"eps": 0.175, "seed": seed})
    return api.Run(
        id=run_id,
        status=api.RunStatus.FINISHED,
        config=config,
        created_at=1.7e9,
        started_at=1.7e9,
        finished_at=1.7e9 + 60,
        worker="w",
        device="cpu",
        iteration=100,
        total_iterations=100,
        co_iteration=history.co_iteration,
        final=history.final,
        error=None,
        sweep_id=None,
        warning_iteration=warning_iteration,
    )


def test_the_tables_and_codash_runs_have_a_warned_at_column():
    history = history_of(warned_events(warn_at=40, co_at=80))
    runs = [fake_run("a1", history, warning_iteration=40), fake_run("b2", history)]
    frame = runs_frame(runs)
    assert frame["warned at"].tolist()[0] == 40 and frame["warned at"].isna().tolist() == [False, True]
    header, *rows = format_table(runs).splitlines()
    column = header.index("WARNED")
    assert [row[column:].split()[0] for row in rows] == ["40", "-"]


def test_the_registry_records_the_warning_and_a_rewind_before_it_clears_it(r):
    run_id = api.submit(r, make_config({"eps": 0.175}))
    rq_queue(r, api.DEFAULT_QUEUE).remove(job_id(run_id, 1))
    running = {"status": api.RunStatus.RUNNING}
    transition(r, run_id, {api.RunStatus.QUEUED}, running, attempt=1, heartbeat=("w", 600_000))
    sink = StreamSink(r, run_id, attempt=1)
    sink(config_event())
    sink(make_event("checkpoint", iteration=20, epoch=1))
    sink(warning_event(40))
    sink.close()
    assert api.get_run(r, run_id).warning_iteration == 40
    assert stream.rewind_to_checkpoint(r, run_id, 1) == 20
    assert api.get_run(r, run_id).warning_iteration is None


def test_codash_train_prints_the_warning_the_switch_and_both_in_its_last_line(capsys):
    config = make_config({"eps": 0.175, "rescue": "auto"})
    sink = ProgressSink(lambda event: None, config, disable=True)
    for event in [config_event(total=100), warning_event(40), rescue_event(40), final_without_co()]:
        sink(event)
    err = capsys.readouterr().err
    assert f"CO warning: {warning_words(warning_event(40))}" in err
    assert "autopilot: GradAlign λ=5.66 on after iteration 40" in err
    assert "CO warning at iteration 40 · GradAlign on from iteration 40 · no CO" in err
    assert final_summary(final_without_co(), config).endswith("no CO")  # no warning: no word of it


def test_the_warning_in_words_says_what_to_expect_and_what_was_seen():
    words = warning_words(warning_event(150, value=0.612, threshold=0.761))
    assert words.startswith(
        f"Alignment falling: catastrophic overfitting likely within ~{MEDIAN_LEAD} iterations"
    )
    assert "iteration 150 cos_grad_random was 0.612, below 0.761" in words


def test_the_export_carries_the_warning_in_the_events_and_the_runs_table():
    events = warned_events(warn_at=40, co_at=80)
    history = history_of(events)
    run = fake_run("a1b2c3d4e5f6", history, warning_iteration=40)
    archive = zipfile.ZipFile(io.BytesIO(runs_zip([run], lambda run_id: events)))
    lines = archive.read("a1b2c3d4e5f6/events.jsonl").decode().splitlines()
    warnings = [parse_event(line) for line in lines if json.loads(line)["type"] == "co_warning"]
    assert warnings == [warning_event(40)]
    assert "co_warning" in archive.read("a1b2c3d4e5f6/events.csv").decode()
    runs_csv = archive.read("runs.csv").decode().splitlines()
    header, row = runs_csv[0].split(","), runs_csv[1].split(",")
    assert row[header.index("warned at")] == "40"
