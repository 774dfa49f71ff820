"""app/history.py, panels.py, markers.py, inside.py, sweep_charts.py, tables.py, text.py: events in, what
the dashboard shows out; no Redis."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pandas as pd
import plotly.io as pio
import pytest
from conftest import (
    co_event,
    co_run_events,
    config_event,
    eval_event,
    final_event,
    metrics_event,
    probe_event,
    read_back,
    run_figure,
    snapshot_event,
)

from app.history import MAX_LINE_POINTS, RunHistory, downsample
from app.panels import Series, View, shared_axes
from app.sweep_charts import SweepCurve, sweep_curves_figure, sweep_figure
from app.tables import sweep_frame
from app.text import distinguishing_labels, format_duration, md_escape, method_label
from jobs.api import Run
from trainer.config import make_config
from trainer.events import events_csv, events_jsonl, read_jsonl
from trainer.presets import DEFAULT_PRESET, DIGITS_GRAD_ALIGN, PRESETS


def history_of(events: list[dict]) -> RunHistory:
    history = RunHistory()
    history.extend(events, "1-1")
    return history


def source_of(trace) -> str | None:
    """Which series of a run a trace draws (evals, probes, metrics, window), from its metadata."""
    return (trace.meta or {}).get("source")


def traces_by_name(fig) -> dict:
    return {trace.name: trace for trace in fig.data}


def test_history_collects_each_kind_and_the_stream_position():
    history = history_of(co_run_events())
    assert (history.total_iterations, history.device, history.last_id) == (100, "cpu", "1-1")
    assert history.iteration == 100
    assert sorted(history.evals) == [20, 40, 60, 80, 100]
    assert history.co_iteration == 60
    assert history.final["co_iteration"] == 60
    assert history.latest_eval()["iteration"] == 100


def test_history_extends_incrementally_like_one_read():
    events = co_run_events()
    whole, pieces = history_of(events), RunHistory()
    for start in range(0, len(events), 7):
        pieces.extend(events[start : start + 7], f"0-{start}")
    assert (pieces.metrics, pieces.evals, pieces.co, pieces.final) == (
        whole.metrics,
        whole.evals,
        whole.co,
        whole.final,
    )
    assert pieces.n_events == len(events)


def test_resumed_run_replaces_the_replayed_iterations():
    """An attempt stopped at 70 with CO at 60; resumed from the checkpoint at 50, it recomputes 51..."""
    first = [config_event(total=100)] + [metrics_event(it) for it in range(1, 71)]
    first += [eval_event(40, 0.4), eval_event(60, 0.01, 0.9), co_event(60)]
    history = history_of(first)
    history.extend([config_event(start=50, total=100), metrics_event(51, reg=0.5)])
    assert history.iteration == 51
    assert history.metrics[51]["reg"] == 0.5
    assert sorted(history.evals) == [40]
    assert history.co is None


def test_dense_probes_are_drawn_thin_under_the_evals_and_the_co_marker_sits_at_their_onset():
    events = co_run_events()
    events = [e for e in events if e["type"] != "co"]
    events.insert(-1, co_event(60, onset=47))
    events[-1:-1] = [probe_event(it, 0.4 if it < 47 else 0.02) for it in range(2, 101, 2)]
    history = history_of(events)
    assert history.co_iteration == 47 and len(history.probes) == 50
    fig = run_figure([Series("FGSM", history)], uirevision="u")
    traces = traces_by_name(fig)
    dense, evals = traces["PGD (dense probe, train)"], traces["PGD"]
    assert len(dense.x) == 50 and dense.mode == "lines" and dense.zorder < evals.zorder
    assert dense.line.width < evals.line.width and dense.yaxis == evals.yaxis == "y"
    assert traces["cos(∇x, ∇x+η) (probe)"].yaxis == "y2"
    assert {shape.x0 for shape in fig.layout.shapes if shape.type == "line"} == {47}
    overlay = run_figure([Series("a", history), Series("b", history)], uirevision="u")
    assert sum(source_of(trace) == "probes" for trace in overlay.data) == 8  # 4 probe metrics x 2 runs
    history.extend([config_event(start=50, total=100)])  # a resume drops the replayed probes
    assert max(history.probes) == 50


def test_the_co_onset_interval_is_shaded_behind_the_marker_of_a_single_run_and_follows_the_clock():
    """The band is where the onset falls over resamples of the probe's images; on the wall-clock axis the
    marker and the band sit at the seconds of their iterations (the run took 0.5 s an iteration)."""
    events = [e for e in co_run_events() if e["type"] != "co"]
    events.insert(-1, co_event(60, onset=47, interval=[40, 55]))
    history = RunHistory()
    history.extend(events, "1-1", times=[1000.0 + 0.5 * e.get("iteration", 0) for e in events])
    assert history.co_interval == (40, 55)
    fig = run_figure([Series("FGSM", history)], uirevision="u")
    bands = [shape for shape in fig.layout.shapes if shape.type == "rect"]
    assert len(bands) == 3 and all((band.x0, band.x1) == (40, 55) for band in bands)
    assert {shape.x0 for shape in fig.layout.shapes if shape.type == "line"} == {47}
    timed = run_figure([Series("FGSM", history)], uirevision="u", view=View(clock=True))
    assert {shape.x0 for shape in timed.layout.shapes if shape.type == "line"} == {23.0}  # (47 - 1) / 2
    assert {(shape.x0, shape.x1) for shape in timed.layout.shapes if shape.type == "rect"} == {(19.5, 27.0)}
    overlay = run_figure([Series("a", history), Series("b", history)], uirevision="u")
    assert not [shape for shape in overlay.layout.shapes if shape.type == "rect"]  # one band per run: noise
    assert history_of(co_run_events()).co_interval is None  # no interval (no probe, or an older run)


def test_the_eval_at_every_iteration_of_the_co_window_is_drawn_on_a_single_run_only():
    """onset_evals (the eval replayed on kept weights) as PGD and FGSM lines over the window; a row that is
    not [iteration, pgd_acc, fgsm_acc] is left out; an overlay and a run without it draw none."""
    events = [e for e in co_run_events() if e["type"] != "co"]
    rows = [[it, 0.3 - 0.01 * (it - 41), 0.5 + 0.01 * (it - 41)] for it in range(41, 61)]
    events.insert(-1, {**co_event(60, onset=47), "onset_evals": [*rows, [61]]})
    history = history_of(events)
    assert history.window_frame()["iteration"].tolist() == list(range(41, 61))
    fig = run_figure([Series("FGSM", history)], uirevision="u")
    window = {trace.name: trace for trace in fig.data if "CO window" in trace.name}
    assert set(window) == {
        "PGD (eval at every iteration, CO window)",
        "FGSM (eval at every iteration, CO window)",
    }
    pgd = window["PGD (eval at every iteration, CO window)"]
    assert list(pgd.x) == list(range(41, 61)) and list(pgd.y) == pytest.approx([row[1] for row in rows])
    without = history_of([{**e, "onset_evals": None} if e["type"] == "co" else e for e in events])
    assert without.window_frame().empty
    assert len(run_figure([Series("FGSM", without)], uirevision="u").data) == len(fig.data) - 2
    overlay = run_figure([Series("a", history), Series("b", history)], uirevision="u")
    assert len(overlay.data) == len(
        run_figure([Series("a", without), Series("b", without)], uirevision="u").data
    )


def test_downsample_bins_means_and_keeps_the_last_iteration():
    frame = pd.DataFrame({"iteration": range(1, 1001), "train_loss": [float(i % 2) for i in range(1000)]})
    small = downsample(frame, 100)
    assert len(small) == 100
    assert small["train_loss"].tolist() == pytest.approx([0.5] * 100)
    assert small["iteration"].iloc[-1] == 1000
    assert downsample(frame, 5000) is frame


def test_long_runs_are_drawn_with_a_bounded_number_of_points():
    history = history_of([config_event(total=20_000)] + [metrics_event(it) for it in range(1, 20_001)])
    fig = run_figure([Series("long", history)], uirevision="u")
    assert len(traces_by_name(fig)["train loss"].x) <= MAX_LINE_POINTS


def test_single_run_figure_has_three_panels_colours_per_metric_and_a_co_marker_on_each():
    fig = run_figure([Series("FGSM ε=0.2", history_of(co_run_events()))], uirevision="run-1")
    traces = traces_by_name(fig)
    assert {"clean", "FGSM", "PGD", "train (adversarial batches)", "train loss"} <= set(traces)
    assert "regulariser (GradAlign, ELLE)" not in traces  # all zero: the run has no regulariser
    assert len({traces[name].line.color for name in ("PGD", "FGSM", "clean")}) == 3  # told apart by colour
    assert [fig.layout[f"yaxis{n}"].title.text for n in ("", "2", "3")] == ["accuracy", "cosine", "loss"]
    assert fig.layout.xaxis.title.text == "iteration"
    assert list(traces["PGD"].x) == [20, 40, 60, 80, 100]
    assert {traces["PGD"].yaxis, traces["cos(∇x, ∇x+η)"].yaxis, traces["train loss"].yaxis} == {
        "y",
        "y2",
        "y3",
    }
    # one iteration axis for every panel, so one hover lists every panel's values at an iteration
    assert {trace.xaxis for trace in fig.data} == {"x"}
    assert not {"xaxis2", "xaxis3"} & set(fig.to_plotly_json()["layout"])
    assert (fig.layout.hovermode, fig.layout.hoversubplots, fig.layout.xaxis.anchor) == (
        "x unified",
        "axis",
        "y3",
    )
    lines = [shape for shape in fig.layout.shapes if shape.type == "line"]
    assert sorted(shape.yref for shape in lines) == ["y domain", "y2 domain", "y3 domain"]
    assert all(shape.x0 == shape.x1 == 60 for shape in lines)
    labels = [a.text for a in fig.layout.annotations if "@ 60" in (a.text or "")]
    assert len(labels) == 3 and any("catastrophic overfitting" in text for text in labels)
    assert fig.layout.uirevision == "run-1"


def test_no_co_no_marker_and_the_grad_align_term_is_drawn_when_used():
    events = [config_event(grad_align_lambda=2.0)] + [metrics_event(it, reg=0.1) for it in range(1, 41)]
    fig = run_figure([Series("GA", history_of([*events, eval_event(20, 0.4)]))], uirevision="u")
    assert not fig.layout.shapes
    assert "regulariser (GradAlign, ELLE)" in traces_by_name(fig)


def test_empty_history_gives_an_empty_but_valid_figure():
    fig = run_figure([Series("queued", RunHistory())], uirevision="u")
    assert len(fig.data) == 0 and fig.layout.yaxis.title.text == "accuracy"


def test_overlay_colours_runs_styles_metrics_and_lists_each_run_once():
    co, rescued = history_of(co_run_events()), history_of([config_event(), eval_event(20, 0.4)])
    fig = run_figure([Series("FGSM", co), Series("FGSM+GradAlign λ=2", rescued)], uirevision="c")
    run_traces = [trace for trace in fig.data if trace.legendgroup != "key"]
    by_run = {}
    for trace in run_traces:
        by_run.setdefault(trace.legendgroup, set()).add(trace.line.color)
    assert set(by_run) == {"FGSM", "FGSM+GradAlign λ=2"} and all(
        len(colors) == 1 for colors in by_run.values()
    )
    assert by_run["FGSM"] != by_run["FGSM+GradAlign λ=2"]
    shown = [trace.name for trace in run_traces if trace.showlegend]
    assert sorted(shown) == ["FGSM", "FGSM+GradAlign λ=2"]
    pgd = [t for t in run_traces if "· PGD:" in t.hovertemplate]
    assert {t.line.dash for t in pgd} == {"solid"}
    assert all("train (adv" not in t.hovertemplate for t in run_traces)  # too noisy to overlay
    assert len([s for s in fig.layout.shapes if s.type == "line"]) == 3  # only the CO run has markers
    key = [trace.name for trace in fig.data if trace.hoverinfo == "skip"]
    assert key == [
        "PGD acc",
        "FGSM acc",
        "clean acc",
        "cos(δ FGSM, δ PGD)",
        "cos(∇x, ∇x+η)",
        "train loss",
    ]  # no GradAlign


def test_user_labels_are_html_escaped_in_figures():
    fig = run_figure(
        [Series("<b>x</b>", history_of(co_run_events())), Series("y", history_of([config_event()]))], "u"
    )
    assert any(trace.name == "&lt;b&gt;x&lt;/b&gt;" for trace in fig.data)
    assert not any("<b>" in (a.text or "") for a in fig.layout.annotations)


def test_small_multiples_share_one_scale_for_iterations_cosines_and_losses():
    collapsed = [
        {**event, "cos_grad_random": 0.2} if event["type"] == "eval" and event["iteration"] >= 60 else event
        for event in co_run_events(total=100, co_at=60)
    ]
    early = [config_event(total=200), *(metrics_event(it) for it in range(1, 41)), eval_event(20, pgd=0.4)]
    series = [Series("FGSM", history_of(collapsed)), Series("PGD-10", history_of(early))]
    axes = shared_axes(series)
    assert axes["xaxis"] == [0, 200]  # where the longer run will end, not where it is
    low, high = axes["yaxis2"]
    assert low < 0.2 < 0.9 < high < 1.0  # the collapse and the steady cosines on one scale
    figures = [run_figure([one], "u", compact=True, axes=axes).layout for one in series]
    assert [list(f.yaxis2.range) for f in figures] == [axes["yaxis2"]] * 2
    assert [list(f.xaxis.range) for f in figures] == [[0, 200]] * 2


def test_distinguishing_labels_name_only_what_differs():
    fgsm = make_config({"eps": 0.15})
    rescued = make_config({"eps": 0.15, "grad_align_lambda": 2})
    assert distinguishing_labels([fgsm, rescued]) == ["FGSM", "FGSM+GradAlign λ=2"]
    assert distinguishing_labels([fgsm, make_config({"eps": 0.2})]) == ["FGSM ε=0.15", "FGSM ε=0.2"]
    cifar = [make_config({"dataset": "cifar10", "eps": f"{k}/255", "seed": k}) for k in (4, 8)]
    assert distinguishing_labels(cifar) == ["FGSM ε=4/255 seed=4", "FGSM ε=8/255 seed=8"]
    assert distinguishing_labels([make_config({"method": "pgd", "eps": 0.2}), fgsm]) == [
        "PGD-10 ε=0.2",
        "FGSM ε=0.15",
    ]
    assert distinguishing_labels([fgsm, fgsm], ["aaaaaaaaaa", "bbbbbbbbbb"]) == [
        "FGSM [aaaaaaaa]",
        "FGSM [bbbbbbbb]",
    ]
    named = [make_config({"name": "mine"}), make_config({"name": "yours", "seed": 1})]
    assert distinguishing_labels(named) == ["mine: FGSM seed=0", "yours: FGSM seed=1"]  # what differs, too
    assert distinguishing_labels([fgsm]) == ["FGSM ε=0.15"]


def test_distinguishing_labels_skip_fields_a_run_does_not_read():
    presets = [
        make_config(PRESETS[name]) for name in (DEFAULT_PRESET, DIGITS_GRAD_ALIGN, "Digits: PGD-5 baseline")
    ]
    assert distinguishing_labels(presets) == ["FGSM", "FGSM+GradAlign λ=4", "PGD-5"]  # pgd_alpha: PGD's only
    steps = [make_config({"method": m, "alpha": a}) for m, a in (("fgsm", 1.0), ("fgsm_rs", 1.25))]
    assert distinguishing_labels([*steps, make_config({"method": "pgd"})]) == [
        "FGSM alpha=1",
        "FGSM-RS alpha=1.25",
        "PGD-10",
    ]
    half = make_config({"grad_align_lambda": 2, "grad_align_fraction": 0.5})
    assert distinguishing_labels([make_config({}), half]) == ["FGSM", "FGSM+GradAlign λ=2 (50% batch)"]


def test_method_label_drops_eps_and_name():
    assert method_label(make_config({"name": "x", "grad_align_lambda": 0.5})) == "FGSM+GradAlign λ=0.5"


def test_exports_round_trip():
    events = co_run_events(total=20, co_at=20)
    assert read_jsonl(io.StringIO(events_jsonl(events))) == events
    frame = pd.read_csv(io.StringIO(events_csv(events)))
    assert len(frame) == len(events)
    assert {"type", "iteration", "pgd_acc", "config.eps", "last.pgd_acc"} <= set(frame.columns)


def test_exports_leave_snapshot_arrays_out_of_the_csv_only():
    events = co_run_events(total=20, co_at=20)
    events.insert(3, snapshot_event(20))
    assert read_jsonl(io.StringIO(events_jsonl(events))) == events
    frame = pd.read_csv(io.StringIO(events_csv(events)))
    assert len(frame) == len(events) - 1 and "snapshot" not in set(frame["type"])
    assert not {"image", "filters", "grad_x"} & set(frame.columns)


# --- inside the model ---


def test_md_escape_neutralises_markdown_and_html():
    assert md_escape("[x](javascript:y) **b** <img>") == r"\[x\]\(javascript\:y\) \*\*b\*\* \<img\>"
    assert md_escape("plain words 42") == "plain words 42"


def test_format_duration():
    assert [format_duration(s) for s in (None, 5, 65, 3725)] == ["–", "0:05", "1:05", "1:02:05"]


@dataclass(frozen=True)
class FakeRun:
    """The fields of jobs.api.Run that the tables read (tables.py duck-types runs)."""

    id: str
    status: str
    config: object
    created_at: float = 1_700_000_000.0
    started_at: float | None = 1_700_000_010.0
    finished_at: float | None = None
    worker: str | None = "w"
    device: str | None = "cpu"
    iteration: int = 50
    total_iterations: int | None = 100
    co_iteration: int | None = None
    warning_iteration: int | None = None
    final: dict | None = None
    error: str | None = None
    sweep_id: str | None = None
    tags: tuple[str, ...] = ()
    note: str = ""
    elapsed_before: float = 0.0

    elapsed_s = Run.elapsed_s  # the real rule, on these fields


def luminance(rgb: tuple[float, ...]) -> float:
    """WCAG 2's relative luminance of an sRGB colour (0-255 channels), computed here, not by the code under
    test."""
    linear = [c / 255 / 12.92 if c <= 0.04045 * 255 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def channels(color: str) -> tuple[float, ...]:
    if color.startswith("#"):
        return tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))
    return tuple(float(c) for c in color[color.index("(") + 1 : -1].split(","))  # rgb(17,17,17)


def drawn_colors(fig) -> list[tuple[str, str, float]]:
    """Every line and marker colour a figure draws (legend-only traces too: a click shows them), with the
    trace's opacity."""
    found = []
    for trace in fig.data:
        opacity = trace.opacity if trace.opacity is not None else 1.0
        for color in (trace.line.color, trace.marker.color):
            for one in color if isinstance(color, list | tuple) else [color]:
                if isinstance(one, str):
                    found.append((trace.name, one, opacity))
    return found


def test_every_line_stands_out_on_the_dark_theme():
    """The loss line (#37474f) and the faint dense-probe lines almost vanished on plotly_dark's black: every
    colour, as drawn over the plot area at its trace's opacity, stands out at least 3:1 (WCAG's minimum
    for graphics)."""
    background = channels(pio.templates["plotly_dark"].layout.plot_bgcolor)
    events = [*co_run_events(), *(probe_event(it, pgd=0.3) for it in range(5, 100, 5))]
    history = history_of(events)
    methods = ("standard", "fgsm", "fgsm_rs", "pgd", "free", "nfgsm", "pgd_corner", "random_corner")
    runs = [
        FakeRun(str(i), "finished", make_config({"method": m}), final=final_event(60, pgd=0.0))
        for i, m in enumerate(methods)
    ]
    figures = [
        run_figure([Series("a", history)], uirevision="u", view=View(dark=True)),
        run_figure(
            [Series("a", history, "#0b3d91"), Series("b", history, "#762a83")], "u", view=View(dark=True)
        ),
        read_back(sweep_figure(sweep_frame(runs, {}), natural_units=False, uirevision="s", dark=True)),
        read_back(
            sweep_curves_figure([SweepCurve(m, 0.1, "0.1", 0, history) for m in methods], "u", dark=True)
        ),
    ]
    drawn = [color for fig in figures for color in drawn_colors(fig)]
    assert {"#8c564b", "#616161"} <= {color for _, color, _ in drawn}  # the sweep's darkest, checked too
    plot = luminance(background)
    for name, color, opacity in drawn:
        mixed = tuple(
            opacity * c + (1 - opacity) * b for c, b in zip(channels(color), background, strict=True)
        )
        line = luminance(mixed)
        assert (max(line, plot) + 0.05) / (min(line, plot) + 0.05) >= 3.0, (name, color, opacity)
    light = run_figure([Series("a", history)], uirevision="u")
    assert {trace.line.color for trace in light.data} >= {"#37474f"}  # the light theme keeps its colours


def test_the_served_plotly_js_is_the_plotly_packages_version_in_its_cartesian_bundle():
    """The dashboard serves plotly.js's cartesian bundle (app/vendor), not the plotly package's full one: the
    same plotly.js release line, so the JSON plotly.py writes (its templates among it) is what it reads."""
    import re
    from pathlib import Path

    import plotly

    from app.chart import PLOTLY_JS

    def version(path: Path) -> tuple[str, str]:
        header = path.read_text(errors="replace")[:200]
        found = re.search(r"plotly\.js (?:\((\w+) - minified\) )?v(\d+)\.\d+\.\d+", header)
        assert found, header
        return found.group(1) or "full", found.group(2)

    full = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    assert version(PLOTLY_JS) == ("cartesian", version(full)[1])
    assert PLOTLY_JS.stat().st_size < full.stat().st_size / 2
    assert (PLOTLY_JS.parent / "LICENSE-plotly.js").read_text().startswith("MIT License")


def test_a_figure_with_a_trace_the_bundle_lacks_is_refused_not_drawn_blank():
    from app.chart import live_chart

    with pytest.raises(ValueError, match=r"\['scatter3d'\] are not in the dashboard's plotly.js bundle"):
        live_chart({"data": [{"type": "scatter"}, {"type": "scatter3d"}], "layout": {}}, "k", "name")
    with pytest.raises(ValueError, match="surface"):
        live_chart({"data": []}, "k", "name", narrow={"data": [{"type": "surface"}]})
