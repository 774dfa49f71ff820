"""The three panels (accuracy, gradient alignment, loss) on one iteration axis, from runs' histories.

No Streamlit and no Redis here, so every chart of a run is unit-testable from a list of event dicts. One
figure builder (`run_figure`) serves the live view, the compare overlay and the small multiples, so the
three can never drift apart; the sweep's per-ε panels reuse its traces (`metric_trace`).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from app.history import SMOOTHING, RunHistory
from app.markers import ROWS, co_marker, panel_lines, warning_marker
from app.palette import CO_COLOR, RUN_PALETTE, WARNING_COLOR, legible
from app.spec import Figure, axis, domains, ref, template_spec, title

# Each metric's colour on the live view, whichever series draws it (the eval, the dense probe, the replay).
METRIC_COLORS = {
    "pgd_acc": "#d62728",
    "fgsm_acc": "#ff7f0e",
    "clean_acc": "#1f77b4",
    "train_acc": "#9e9e9e",
    "cos_fgsm_pgd": "#9467bd",
    "cos_grad_random": "#2ca02c",
    "train_loss": "#37474f",
    "reg": "#17becf",
}


@dataclass(frozen=True)
class Metric:
    column: str
    name: str
    row: int  # 1 accuracy, 2 alignment, 3 loss
    source: str  # "evals" (sparse: drawn with markers), "probes" (dense probe: thin), "metrics" (every it)
    # or "window" (the eval at every iteration of the CO window)
    dash: str = "solid"  # the line style that tells metrics apart when colour tells runs apart
    symbol: str = "circle"  # and the marker of evaluation points
    overlay: bool = True  # drawn when several runs share the panels
    zero_is_absent: bool = False  # an all-zero series means "not used" (the GradAlign term without GradAlign)

    @property
    def color(self) -> str:
        """The metric's colour, the same from every source (METRIC_COLORS)."""
        return METRIC_COLORS[self.column]


METRICS = (
    Metric("pgd_acc", "PGD", 1, "evals"),  # first: it stands for its run in an overlay's legend
    Metric("fgsm_acc", "FGSM", 1, "evals", "dash", "diamond"),
    Metric("clean_acc", "clean", 1, "evals", "dot", "square"),
    Metric("train_acc", "train (adversarial batches)", 1, "metrics", "dashdot", overlay=False),
    Metric("cos_fgsm_pgd", "cos(δ FGSM, δ PGD)", 2, "evals"),
    Metric("cos_grad_random", "cos(∇x, ∇x+η)", 2, "evals", "dot", "diamond"),
    Metric("train_loss", "train loss", 3, "metrics"),
    Metric("reg", "regulariser (GradAlign, ELLE)", 3, "metrics", "dot", zero_is_absent=True),
    # The dense probe on training images, thin and under the evals' markers (which stay authoritative).
    Metric("pgd_acc", "PGD (dense probe, train)", 1, "probes"),
    Metric("fgsm_acc", "FGSM (dense probe, train)", 1, "probes", "dash"),
    Metric("cos_fgsm_pgd", "cos(δ FGSM, δ PGD) (probe)", 2, "probes"),
    Metric("cos_grad_random", "cos(∇x, ∇x+η) (probe)", 2, "probes", "dot"),
    # The eval itself at every iteration of the window CO's onset was placed in (onset_replay).
    Metric("pgd_acc", "PGD (eval at every iteration, CO window)", 1, "window", overlay=False),
    Metric("fgsm_acc", "FGSM (eval at every iteration, CO window)", 1, "window", overlay=False),
)
PANEL_SPACING = 0.07  # between two panels, a fraction of the plot's height
OVERLAY_ACCURACY_TITLE = "Accuracy: clean, FGSM and PGD on the eval subset"
PANELS = (
    ("Accuracy: clean, FGSM and PGD on the eval subset; train on adversarial batches", "accuracy"),
    ("Gradient alignment", "cosine"),
    ("Training loss", "loss"),
)


@dataclass(frozen=True)
class View:
    """How the user asked to see the panels (the live view's controls, kept in the page's URL)."""

    smoothing: float = SMOOTHING  # EMA weight of the per-iteration curves, 0 = raw
    log_loss: bool = False  # the loss panel on a log scale
    mark: int | None = None  # an iteration to mark on every panel (the snapshot slider's)
    dark: bool = False  # Streamlit's dark theme: a dark chart template
    x_range: tuple[float, float] | None = None  # the range zoomed to
    clock: bool = False  # wall-clock seconds on the x axis instead of iterations (where times are known)


@dataclass(frozen=True)
class Series:
    """One run as drawn: its legend label, its history and (on Compare) its colour from run_colors."""

    label: str
    history: RunHistory
    color: str | None = None


def run_figure(
    series: Sequence[Series],
    uirevision: str,
    height: int = 760,
    compact: bool = False,
    axes: dict[str, list[float]] | None = None,
    view: View = View(),
) -> Figure:
    """Accuracy, alignment and loss panels on a shared iteration axis, with a CO marker on every panel.

    One run: a colour per metric, each panel with its own legend. Several runs: a colour per run and a
    line style per metric, one legend of runs (clicking a run hides all its lines) and a style key per panel.
    `axes` fixes ranges (shared_axes) so that small multiples side by side are drawn to one scale; `view`
    is how the user chose to look (smoothing, log-scale loss, a marked iteration, dark theme, zoom).
    """
    overlay = len(series) > 1
    titles = [title for title, _ in PANELS] if not compact else [name.capitalize() for _, name in PANELS]
    # the training accuracy is left out of overlays: the title says only what is drawn (a compact overlay
    # keeps its one word: the long title runs off a phone)
    if overlay and not compact:
        titles[0] = OVERLAY_ACCURACY_TITLE
    fig: Figure = {"data": [], "layout": _layout(titles, uirevision, height, overlay, compact, view.dark)}
    drawn: set[Metric] = set()
    clock = view.clock and not overlay and bool(series) and bool(series[0].history.clock)
    x = "seconds" if clock else "iteration"

    def at(history: RunHistory, iteration: int) -> float:
        """Where an iteration sits on the x axis."""
        return float(history.seconds([iteration])[0]) if clock else iteration

    co_labels = warnings = 0  # CO and warning markers drawn so far: each run's labels sit below the last's
    for index, run in enumerate(series):
        color = run.color or RUN_PALETTE[index % len(RUN_PALETTE)]
        frames = frames_of(run.history, view.smoothing)
        first = True
        for metric in METRICS:
            if overlay and not metric.overlay:
                continue
            frame = frames[metric.source]
            if not has_values(frame, metric):
                continue
            trace = metric_trace(
                frame,
                x,
                metric,
                run.label,
                color if overlay else None,
                not overlay or first,
                compact,
                view.dark,
            )
            fig["data"].append({**trace, "xaxis": "x", "yaxis": ref("y", metric.row)})
            first = False
            drawn.add(metric)
        if run.history.co_iteration is not None:
            co, interval, band = run.history.co_iteration, run.history.co_interval, None
            if interval is not None and not overlay:  # one band per run would bury an overlay's curves
                band = (at(run.history, interval[0]), at(run.history, interval[1]))
            x_co, marker_color = at(run.history, co), color if overlay else CO_COLOR
            co_marker(fig, x_co, co, marker_color, run.label, overlay, band, co_labels, compact)
            co_labels += 1
        if run.history.warning is not None:
            x_warned = at(run.history, run.history.warning["iteration"])
            marker_color = color if overlay else legible(WARNING_COLOR, view.dark)
            warning_marker(fig, x_warned, run.history, marker_color, run.label, overlay, warnings, compact)
            warnings += 1
    layout = fig["layout"]
    if overlay:
        fig["data"] += _style_key([metric for metric in METRICS if metric in drawn])
    elif series and series[0].history.metrics and not series[0].history.evals:
        layout["annotations"] += _first_eval_note(series[0].history)
    if not overlay and series and series[0].color:  # a small multiple wears its run's colour on top
        layout["shapes"].append(
            {
                "type": "rect",
                "xref": "paper",
                "yref": "paper",
                "x0": 0,
                "x1": 1,
                "y0": 1.045,
                "y1": 1.06,
                "line": {"width": 0},
                "fillcolor": series[0].color,
                "name": "run colour",
            }
        )
    for name, value in (axes or {}).items():
        layout[name]["range"] = value
    if view.log_loss:
        layout["yaxis3"]["type"] = "log"
    if view.x_range is not None:
        layout["xaxis"].update(range=list(view.x_range), autorange=False)
    if view.mark is not None and series:  # the evaluation shown under "Inside the model"
        _mark(fig, at(series[0].history, view.mark), view.mark)
    if clock:
        layout["xaxis"]["title"]["text"] = "wall clock (s since the first iteration)"
    return fig


def _layout(
    titles: list[str], uirevision: str, height: int, overlay: bool, compact: bool, dark: bool
) -> dict:
    """The three panels stacked on one x axis (the bottom one's), so that hovering an iteration shows every
    panel's values there, for every run: Plotly's unified hover spans the subplots that share an axis
    (hoversubplots="axis"). Each panel's title sits above its top left corner."""
    heights = dict(zip(ROWS, reversed(domains(len(ROWS), PANEL_SPACING)), strict=True))
    if compact:  # a small multiple or a phone: one horizontal legend at the foot, under the axis title
        legend = {"orientation": "h", "x": 0, "y": 0, "yanchor": "bottom", "yref": "container"}
    else:  # one legend beside the panels, in groups (runs, then the line-style key; or one per panel)
        legend = {
            "x": 1.01,
            "xanchor": "left",
            "y": 1,
            "yanchor": "top",
            "bgcolor": "rgba(0,0,0,0)",
            "tracegroupgap": 14,
            # with several runs a click hides a whole run; with one, a single metric
            "groupclick": "togglegroup" if overlay else "toggleitem",
            "title": {"text": "runs" if overlay else ""},
        }
    layout = {
        "template": template_spec(dark),
        "height": height,
        "uirevision": uirevision,
        "hovermode": "x unified",
        "hoversubplots": "axis",
        "margin": {"l": 60, "r": 10 if compact else 210, "t": 40, "b": COMPACT_LEGEND_PX if compact else 50},
        "font": {"size": 12 if compact else 13},
        "legend": legend,
        "xaxis": {
            "anchor": ref("y", ROWS[-1]),
            "domain": [0.0, 1.0],
            "title": {"text": "iteration"},
            "showspikes": True,
            "spikemode": "across",
            "spikethickness": 1,
        },
        "annotations": [
            title(text, 0, heights[row][1], "left", 14) for row, text in zip(ROWS, titles, strict=True)
        ],
        "shapes": [],
    }
    for row, (_, name) in zip(ROWS, PANELS, strict=True):
        layout[axis("y", row)] = {"anchor": "x", "domain": heights[row], "title": {"text": name}}
    layout["yaxis"]["range"] = [0, 1.02]
    return layout


def _mark(fig: Figure, x: float, iteration: int) -> None:
    """A dotted line on every panel at the evaluation shown under "Inside the model", labelled on the top."""
    panel_lines(fig, x, {"color": "#757575", "width": 1.5, "dash": "dot"}, "mark")
    fig["layout"]["annotations"].append(
        {
            "x": x,
            "y": 1,
            "xref": "x",
            "yref": "y domain",
            "text": f"inside the model: {iteration:,}",
            "showarrow": False,
            "yanchor": "bottom",
            "font": {"size": 11, "color": "#757575"},
            "name": "mark",
        }
    )


def shared_axes(series: Sequence[Series]) -> dict[str, list[float]]:
    """Ranges that hold every run: the iterations each will reach, the cosines and losses any run took.

    Drawn each to its own scale, a PGD run's alignment easing from 0.98 to 0.91 would fill its panel as
    fully as an FGSM run's collapse from 0.95 to 0.25.
    """
    last = [
        max(one.history.total_iterations or 0, *one.history.metrics, *one.history.evals, 1) for one in series
    ]
    axes = {"xaxis": [0, max(last)]}
    drawn: dict[int, list[float]] = {2: [], 3: []}
    for one in series:
        frames = frames_of(one.history)
        for metric in METRICS:
            frame = frames[metric.source]
            if metric.row in drawn and has_values(frame, metric):
                drawn[metric.row] += frame[metric.column].dropna().tolist()
    for row, values in drawn.items():
        if values:
            low, high = min(values), max(values)
            pad = 0.05 * (high - low or 1.0)
            axes[f"yaxis{row}"] = [low - pad, high + pad]
    return axes


def frames_of(history: RunHistory, smoothing: float = SMOOTHING) -> dict[str, pd.DataFrame]:
    """A run's rows as drawn, by Metric.source: each built once per figure (metrics are smoothed)."""
    return {
        "evals": history.evals_frame(),
        "metrics": history.metrics_frame(smoothing),
        "probes": history.probes_frame(),
        "window": history.window_frame(),
    }


def has_values(frame: pd.DataFrame, metric: Metric) -> bool:
    if frame.empty or metric.column not in frame:
        return False
    values = frame[metric.column].dropna()
    return not values.empty and not (metric.zero_is_absent and (values == 0).all())


def metric_trace(
    frame: pd.DataFrame,
    x: str,
    metric: Metric,
    label: str,
    run_color: str | None,
    show: bool,
    compact: bool,
    dark: bool = False,
) -> dict[str, Any]:
    """One metric of one run as a Plotly scatter trace (on the figure's first axes until given others)."""
    sparse, dense = metric.source == "evals", metric.source == "probes"
    opacity = (0.8 if dark else 0.45) if dense else 1.0  # faint, under the evals; on black, not too faint
    name = html.escape(label) if run_color else metric.name
    # one legend (Plotly draws no entries in a second legend here): a group per run with several runs,
    # else a group per panel, titled with the panel
    group = name if run_color or compact else PANELS[metric.row - 1][1]
    trace = {
        "type": "scatter",
        "x": frame[x].to_numpy(),
        "y": frame[metric.column].to_numpy(),
        "name": name,
        "legendgroup": group,
        "showlegend": show,
        "mode": "lines+markers" if sparse else "lines",
        "marker": {"size": 5 if run_color is None else 7, "symbol": metric.symbol if run_color else "circle"},
        "line": {
            "color": legible(run_color or metric.color, dark, opacity),
            "dash": metric.dash if run_color else "solid",
            "width": 2.2 if sparse else 0.8 if dense else 1.4,
        },
        "opacity": opacity,
        "zorder": -1 if dense else 0,  # under the evals' markers
        "meta": {"metric": metric.column, "source": metric.source},  # what the trace is, for its readers
        "hovertemplate": (f"{html.escape(label)} · " if run_color else "")
        + f"{metric.name}: %{{y:.3f}}<extra></extra>",
    }
    if not (run_color or compact):
        trace["legendgrouptitle"] = {"text": group}
    return trace


def _first_eval_note(history: RunHistory) -> list[dict[str, Any]]:
    """Until the first evaluation the accuracy and alignment panels are empty: each says what it will show,
    and the first says when."""
    first = history.first_eval
    when = f"at iteration {first:,}" if first is not None else "soon"
    texts = (f"robust accuracy: first evaluation {when}", "gradient alignment: measured at each evaluation")
    return [
        {
            "text": text,
            "x": 0.5,
            "y": 0.5,
            "xref": "x domain",
            "yref": ref("y", row),
            "showarrow": False,
            "font": {"size": 14, "color": "#757575"},
            "name": "pending",
        }
        for row, text in zip((1, 2), texts, strict=True)
    ]


def _style_key(metrics: list[Metric]) -> list[dict[str, Any]]:
    """Grey legend-only entries that say which line style and marker is which of the metrics drawn.

    Beside each panel, apart from the runs' legend (under the panels), and named as metrics ("PGD acc"), so
    no entry reads like a run called "FGSM".
    """
    return [
        {
            "type": "scatter",
            "x": [0],  # a point, never drawn (legend-only): a trace without one gets no entry
            "y": [0],
            "xaxis": "x",
            "yaxis": ref("y", metric.row),
            "name": f"{metric.name} acc" if metric.row == 1 else metric.name,
            "mode": "lines+markers" if metric.source == "evals" else "lines",
            "line": {
                "color": "#616161",
                "dash": metric.dash,
                "width": 0.8 if metric.source == "probes" else 2,
            },
            "marker": {"symbol": metric.symbol, "size": 7},
            "legendgroup": "key",
            "legendgrouptitle": {"text": "line = metric"},
            "hoverinfo": "skip",
            "visible": "legendonly",
        }
        for metric in metrics
    ]


COMPACT_LEGEND_PX = 150  # the foot of a compact chart: tick labels, the axis title, then the legend's rows
