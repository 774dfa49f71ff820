"""app/tables.py and app/sweep_charts.py: the runs' tables and the sweep's charts, from runs and their
events; no Redis."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import config_event, eval_event, final_event, probe_event, read_back
from test_app_figures import FakeRun, history_of, source_of, traces_by_name

from app.sweep_charts import SweepCurve, sweep_curves_figure, sweep_figure
from app.tables import runs_frame, sweep_frame
from trainer.config import make_config


def test_runs_frame_has_one_row_per_run_with_progress_and_results():
    finished = FakeRun(
        "a",
        "finished",
        make_config({"grad_align_lambda": 2, "eps": 0.2, "n_filters": 4}),
        iteration=100,
        finished_at=1_700_000_100.0,
        co_iteration=None,
        final={"last": {"clean_acc": 0.8, "pgd_acc": 0.4}},
    )
    running = FakeRun("b", "running", make_config({"dataset": "cifar10", "eps": "8/255"}), co_iteration=40)
    queued = FakeRun(
        "c", "queued", make_config({"eps": 0.2}), started_at=None, iteration=0, total_iterations=None
    )
    frame = runs_frame([finished, running, queued], now=1_700_000_070.0)
    assert frame["id"].tolist() == ["a", "b", "c"]
    assert frame["progress"].tolist() == [1.0, 0.5, 0.0]
    assert frame["ε"].tolist() == ["0.2", "8/255", "0.2"]
    assert frame["λ"].tolist() == [2.0, 0.0, 0.0]
    assert frame["CO iteration"].tolist()[1] == 40 and pd.isna(frame["CO iteration"].iloc[0])
    assert frame["PGD acc"].iloc[0] == 0.4 and pd.isna(frame["PGD acc"].iloc[1])
    assert frame["elapsed"].tolist() == ["1:30", "1:00", "–"]
    assert frame["model"].iloc[0] == "cnn 1×4"
    assert runs_frame([]).empty


def test_sweep_frame_uses_final_pgd_or_the_latest_eval_and_marks_co():
    base = {"dataset": "cifar10"}
    runs = [
        FakeRun(
            "a",
            "finished",
            make_config({**base, "eps": "8/255"}),
            final=json.loads(json.dumps(final_event(60))),
        ),
        FakeRun("b", "running", make_config({**base, "eps": "4/255"})),
        FakeRun("c", "queued", make_config({**base, "eps": "2/255"})),
        FakeRun(
            "d",
            "finished",
            make_config({**base, "eps": "8/255", "grad_align_lambda": 0.2}),
            final=final_event(None, pgd=0.45),
        ),
    ]
    running = history_of([config_event(), eval_event(20, 0.3), eval_event(40, 0.35)])
    points = sweep_frame(runs, {"b": running})
    assert set(points["run_id"]) == {"a", "b", "d"}
    row = points.set_index("run_id")
    assert row.loc["a", "pgd_acc"] == 0.01 and row.loc["a", "co"] and row.loc["a", "done"]
    assert row.loc["b", "pgd_acc"] == 0.35 and not row.loc["b", "done"] and not row.loc["b", "co"]
    assert row.loc["a", "x"] == pytest.approx(8) and row.loc["b", "x"] == pytest.approx(4)
    assert row.loc["d", "method"] == "FGSM+GradAlign" and row.loc["a", "method"] == "FGSM"

    fig = read_back(sweep_figure(points, natural_units=True, uirevision="s"))
    fgsm = next(trace for trace in fig.data if trace.name == "FGSM (runs)")
    assert list(fgsm.x) == pytest.approx([4 - 0.16, 8 - 0.16])  # dodged left of its ε: two methods drawn
    assert list(fig.layout.xaxis.tickvals) == [4, 8]
    assert list(fgsm.marker.symbol) == ["circle-open", "x"]
    assert [row[0] for row in fgsm.customdata] == ["b", "a"]
    assert fig.layout.xaxis.title.text == "ε (×1/255)"


def test_sweep_figure_draws_the_mean_over_seeds_and_a_mark_per_seed_run():
    def run(run_id, eps, seed, pgd, co=None):
        config = make_config({"eps": eps, "seed": seed})
        return FakeRun(run_id, "finished", config, final=final_event(co, pgd=pgd))

    runs = [run("a", 0.1, 0, 0.4), run("b", 0.1, 1, 0.2), run("c", 0.2, 0, 0.3), run("d", 0.2, 1, 0.0, co=60)]
    fig = read_back(sweep_figure(sweep_frame(runs, {}), natural_units=False, uirevision="s"))
    traces = traces_by_name(fig)
    mean, marks = traces["FGSM"], traces["FGSM (runs)"]
    assert mean.mode == "lines" and list(mean.x) == pytest.approx([0.1, 0.2])
    assert list(mean.y) == pytest.approx([0.3, 0.15])
    assert marks.mode == "markers" and not marks.showlegend and marks.legendgroup == mean.legendgroup
    assert list(marks.y) == pytest.approx([0.4, 0.2, 0.3, 0.0])
    assert list(marks.marker.symbol) == ["circle", "circle", "circle", "x"]
    assert [row[3] for row in marks.customdata] == [0, 1, 0, 1]
    assert "seed %{customdata[3]}" in marks.hovertemplate
    assert marks.x[0] < 0.1 < marks.x[1]  # a method's seeds side by side around its ε


def test_sweep_curves_draw_each_runs_probe_under_its_evals_in_the_panel_of_its_eps():
    def curve(method, eps, seed, collapse_at):
        events = [config_event(total=100, eps=eps, seed=seed)]
        events += [probe_event(it, 0.4 if it < collapse_at else 0.0) for it in range(2, 101, 2)]
        events += [eval_event(it, 0.4 if it < collapse_at else 0.0) for it in range(20, 101, 20)]
        return SweepCurve(method, eps, f"{eps:g}", seed, history_of(events))

    curves = [
        curve("FGSM", eps, seed, 50 if eps > 0.1 else 999) for eps in (0.05, 0.1, 0.2, 0.3) for seed in (0, 1)
    ]
    curves.append(curve("PGD-10", 0.3, 0, 999))
    fig = read_back(sweep_curves_figure(curves, uirevision="u"))
    titles = [annotation.text for annotation in fig.layout.annotations]
    assert titles == ["ε = 0.05", "ε = 0.1", "ε = 0.2", "ε = 0.3"]  # a panel per ε, 3 a row
    dense = [trace for trace in fig.data if source_of(trace) == "probes"]
    evals = [trace for trace in fig.data if source_of(trace) == "evals"]
    assert len(dense) == len(evals) == 9  # a probe line and an eval line per run
    assert all(trace.mode == "lines" and trace.zorder < 0 for trace in dense)
    assert all(trace.mode == "lines+markers" and trace.zorder == 0 for trace in evals)
    fgsm_at_02 = [
        trace for trace in dense if "FGSM · seed" in trace.hovertemplate and "ε 0.2" in trace.hovertemplate
    ]
    assert len(fgsm_at_02) == 2 and {trace.xaxis for trace in fgsm_at_02} == {"x3"}
    assert list(fgsm_at_02[0].y)[23:26] == [0.4, 0.0, 0.0]  # the collapse at iteration 50, every 2
    pgd = [trace for trace in fig.data if trace.name == "PGD-10"]
    assert {trace.xaxis for trace in pgd} == {"x4"} and pgd[0].line.color != dense[0].line.color
    assert [trace.name for trace in fig.data if trace.showlegend] == ["FGSM", "PGD-10"]  # a legend per method


def below_zero_px(fig, axis) -> float:
    """How many pixels of plot area lie below accuracy 0 on a y axis (its share of the plot's height)."""
    plot = fig.layout.height - fig.layout.margin.t - fig.layout.margin.b
    low, high = axis.range
    bottom, top = axis.domain or (0, 1)
    return -low * plot * (top - bottom) / (high - low)


def test_a_run_at_pgd_accuracy_zero_is_drawn_whole_on_the_sweeps_charts():
    runs = [FakeRun("a", "finished", make_config({"eps": 0.2}), final=final_event(60, pgd=0.0))]
    fig = read_back(sweep_figure(sweep_frame(runs, {}), natural_units=False, uirevision="s"))
    marks = traces_by_name(fig)["FGSM (runs)"]
    assert list(marks.y) == [0.0] and marks.cliponaxis is False
    half = marks.marker.size / 2 + marks.marker.line.width
    assert below_zero_px(fig, fig.layout.yaxis) >= half  # the ✕'s lower half, below the axis's 0
    events = [config_event(total=100, eps=0.2), *(eval_event(it, 0.0) for it in range(20, 101, 20))]
    curves = read_back(
        sweep_curves_figure([SweepCurve("FGSM", 0.2, "0.2", 0, history_of(events))], uirevision="u")
    )
    [evals] = [trace for trace in curves.data if trace.mode == "lines+markers"]
    assert set(evals.y) == {0.0}
    assert below_zero_px(curves, curves.layout.yaxis) >= evals.marker.size / 2 + evals.line.width
