"""Plotly figures from a run's history: the three panels, the model's insides, the sweep chart.

No Streamlit and no Redis here, so every chart the dashboard shows is unit-testable from a list of event
dicts. One figure builder (`run_figure`) serves the live view, the compare overlay and the small multiples,
so the three can never drift apart.
"""

from __future__ import annotations

import hashlib
import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.history import SMOOTHING, RunHistory

METHOD_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
CO_COLOR = "#b30000"
WARNING_COLOR = "#c77800"  # amber, 3:1 against the light plot area (the CO early warning)
# Run colours on Compare: none is a metric's colour on the live view (red is PGD there, never a run).
RUN_PALETTE = ("#1b9e77", "#e7298a", "#e6ab02", "#8c510a", "#0b3d91", "#762a83", "#7fbc41", "#01665e")


def run_colors(run_ids: Sequence[str]) -> dict[str, str]:
    """Each run's colour, from its id (a hash into RUN_PALETTE): the same on every page and in any order.

    Two runs in one view whose ids hash to the same colour are told apart the same way every time: in id
    order, the later one takes the next colour not yet taken.
    """
    colors: dict[str, str] = {}
    for run_id in sorted(set(run_ids)):
        slot = int(hashlib.sha256(run_id.encode()).hexdigest(), 16) % len(RUN_PALETTE)
        taken = set(colors.values())
        for step in range(len(RUN_PALETTE)):
            color = RUN_PALETTE[(slot + step) % len(RUN_PALETTE)]
            if color not in taken or len(taken) >= len(RUN_PALETTE):
                break
        colors[run_id] = color
    return colors


# --- the three-panel figure ---


@dataclass(frozen=True)
class Metric:
    column: str
    name: str
    row: int  # 1 accuracy, 2 alignment, 3 loss
    source: str  # "evals" (sparse: drawn with markers), "probes" (dense probe: thin), "metrics" (every it)
    # or "window" (the eval at every iteration of the CO window)
    color: str
    dash: str = "solid"  # the line style that tells metrics apart when colour tells runs apart
    symbol: str = "circle"  # and the marker of evaluation points
    overlay: bool = True  # drawn when several runs share the panels
    zero_is_absent: bool = False  # an all-zero series means "not used" (the GradAlign term without GradAlign)


METRICS = (
    Metric("pgd_acc", "PGD", 1, "evals", "#d62728"),  # first: it stands for its run in an overlay's legend
    Metric("fgsm_acc", "FGSM", 1, "evals", "#ff7f0e", "dash", "diamond"),
    Metric("clean_acc", "clean", 1, "evals", "#1f77b4", "dot", "square"),
    Metric("train_acc", "train (adversarial batches)", 1, "metrics", "#9e9e9e", "dashdot", overlay=False),
    Metric("cos_fgsm_pgd", "cos(δ FGSM, δ PGD)", 2, "evals", "#9467bd"),
    Metric("cos_grad_random", "cos(∇x, ∇x+η)", 2, "evals", "#2ca02c", "dot", "diamond"),
    Metric("train_loss", "train loss", 3, "metrics", "#37474f"),
    Metric("reg", "regulariser (GradAlign, ELLE)", 3, "metrics", "#17becf", "dot", zero_is_absent=True),
    # The dense probe on training images, thin and under the evals' markers (which stay authoritative).
    Metric("pgd_acc", "PGD (dense probe, train)", 1, "probes", "#d62728"),
    Metric("fgsm_acc", "FGSM (dense probe, train)", 1, "probes", "#ff7f0e", "dash"),
    Metric("cos_fgsm_pgd", "cos(δ FGSM, δ PGD) (probe)", 2, "probes", "#9467bd"),
    Metric("cos_grad_random", "cos(∇x, ∇x+η) (probe)", 2, "probes", "#2ca02c", "dot"),
    # The eval itself at every iteration of the window CO's onset was placed in (onset_replay).
    Metric("pgd_acc", "PGD (eval at every iteration, CO window)", 1, "window", "#d62728", overlay=False),
    Metric("fgsm_acc", "FGSM (eval at every iteration, CO window)", 1, "window", "#ff7f0e", overlay=False),
)
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
) -> go.Figure:
    """Accuracy, alignment and loss panels on a shared iteration axis, with a CO marker on every panel.

    One run: a colour per metric, each panel with its own legend. Several runs: a colour per run and a
    line style per metric, one legend of runs (clicking a run hides all its lines) and a style key per panel.
    `axes` fixes ranges (shared_axes) so that small multiples side by side are drawn to one scale; `view`
    is how the user chose to look (smoothing, log-scale loss, a marked iteration, dark theme, zoom).
    """
    overlay = len(series) > 1
    titles = [title for title, _ in PANELS] if not compact else [axis.capitalize() for _, axis in PANELS]
    # the training accuracy is left out of overlays: the title says only what is drawn (a compact overlay
    # keeps its one word: the long title runs off a phone)
    if overlay and not compact:
        titles[0] = OVERLAY_ACCURACY_TITLE
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.07, subplot_titles=titles)
    drawn: set[Metric] = set()
    clock = view.clock and not overlay and bool(series) and bool(series[0].history.clock)
    x = "seconds" if clock else "iteration"

    def at(history: RunHistory, iteration: int) -> float:
        """Where an iteration sits on the x axis."""
        return float(history.seconds([iteration])[0]) if clock else iteration

    co_labels = warnings = 0  # CO and warning markers drawn so far: each run's labels sit below the last's
    for index, run in enumerate(series):
        color = run.color or RUN_PALETTE[index % len(RUN_PALETTE)]
        frames = _frames(run.history, view.smoothing)
        first = True
        for metric in METRICS:
            if overlay and not metric.overlay:
                continue
            frame = frames[metric.source]
            if not _has_values(frame, metric):
                continue
            fig.add_trace(
                _trace(
                    frame,
                    x,
                    metric,
                    run.label,
                    color if overlay else None,
                    not overlay or first,
                    compact,
                    view.dark,
                ),
                row=metric.row,
                col=1,
            )
            first = False
            drawn.add(metric)
        if run.history.co_iteration is not None:
            co, interval, band = run.history.co_iteration, run.history.co_interval, None
            if interval is not None and not overlay:  # one band per run would bury an overlay's curves
                band = (at(run.history, interval[0]), at(run.history, interval[1]))
            x_co, marker_color = at(run.history, co), color if overlay else CO_COLOR
            _co_marker(fig, x_co, co, marker_color, run.label, overlay, band, co_labels, compact)
            co_labels += 1
        if run.history.warning is not None:
            warned = run.history.warning["iteration"]
            marker_color = color if overlay else legible(WARNING_COLOR, view.dark)
            texts = _warning_texts(run.history, run.label, overlay, compact)
            x_warned = at(run.history, warned)
            vertical_marker(
                fig, x_warned, marker_color, "dashdot", texts, "top left", warnings, name="co_warning"
            )
            warnings += 1
    if overlay:
        _style_key(fig, [metric for metric in METRICS if metric in drawn])
    elif series and series[0].history.metrics and not series[0].history.evals:
        _first_eval_note(fig, series[0].history)
    if not overlay and series and series[0].color:  # a small multiple wears its run's colour on top
        fig.add_shape(
            type="rect",
            xref="paper",
            yref="paper",
            x0=0,
            x1=1,
            y0=1.045,
            y1=1.06,
            line_width=0,
            fillcolor=series[0].color,
            name="run colour",
        )
    _layout(fig, uirevision, height, overlay, compact, view.dark)
    for name, value in (axes or {}).items():
        fig.update_layout({name: {"range": value}})
    mark = at(series[0].history, view.mark) if view.mark is not None and series else None
    _apply_view(fig, view, mark)
    if clock:
        fig.update_xaxes(title_text="wall clock (s since the first iteration)", row=3, col=1)
    _one_x_axis(fig)
    return fig


def _one_x_axis(fig: go.Figure) -> None:
    """Put the three panels on one x axis (the bottom one's), so that hovering an iteration shows every
    panel's values there, for every run: Plotly's unified hover spans the subplots that share an axis
    (hoversubplots="axis"), and make_subplots gives each panel its own linked one."""
    bottom = fig.layout.xaxis3.to_plotly_json()
    refs = {"x2": "x", "x3": "x", "x2 domain": "x domain", "x3 domain": "x domain"}
    for trace in fig.data:
        trace.xaxis = "x"
    for item in (*fig.layout.shapes, *fig.layout.annotations):
        item.xref = refs.get(item.xref, item.xref)
    fig.layout.xaxis2 = fig.layout.xaxis3 = None
    fig.layout.xaxis = {**bottom, "anchor": "y3", "matches": None}
    fig.update_layout(yaxis2_anchor="x", yaxis3_anchor="x", hoversubplots="axis", hovermode="x unified")


def _apply_view(fig: go.Figure, view: View, mark: float | None) -> None:
    if view.log_loss:
        fig.update_yaxes(type="log", row=3, col=1)
    if view.x_range is not None:
        fig.update_xaxes(range=list(view.x_range), autorange=False)
    if mark is not None:  # the evaluation shown under "Inside the model"
        for row in (1, 2, 3):
            fig.add_vline(
                x=mark,
                row=row,
                col=1,
                line={"color": "#757575", "width": 1.5, "dash": "dot"},
                name="mark",
            )
        fig.add_annotation(
            x=mark,
            y=1,
            xref="x",
            yref="y domain",
            text=f"inside the model: {view.mark:,}",
            showarrow=False,
            yanchor="bottom",
            font={"size": 11, "color": "#757575"},
            name="mark",
        )


def shared_axes(series: Sequence[Series]) -> dict[str, list[float]]:
    """Ranges that hold every run: the iterations each will reach, the cosines and losses any run took.

    Drawn each to its own scale, a PGD run's alignment easing from 0.98 to 0.91 would fill its panel as
    fully as an FGSM run's collapse from 0.95 to 0.25.
    """
    last = [
        max(one.history.total_iterations or 0, *one.history.metrics, *one.history.evals, 1) for one in series
    ]
    axes = {"xaxis3": [0, max(last)]}
    drawn: dict[int, list[float]] = {2: [], 3: []}
    for one in series:
        frames = _frames(one.history)
        for metric in METRICS:
            frame = frames[metric.source]
            if metric.row in drawn and _has_values(frame, metric):
                drawn[metric.row] += frame[metric.column].dropna().tolist()
    for row, values in drawn.items():
        if values:
            low, high = min(values), max(values)
            pad = 0.05 * (high - low or 1.0)
            axes[f"yaxis{row}"] = [low - pad, high + pad]
    return axes


def _frames(history: RunHistory, smoothing: float = SMOOTHING) -> dict[str, pd.DataFrame]:
    """A run's rows as drawn, by Metric.source: each built once per figure (metrics are smoothed)."""
    return {
        "evals": history.evals_frame(),
        "metrics": history.metrics_frame(smoothing),
        "probes": history.probes_frame(),
        "window": history.window_frame(),
    }


def _has_values(frame: pd.DataFrame, metric: Metric) -> bool:
    if frame.empty or metric.column not in frame:
        return False
    values = frame[metric.column].dropna()
    return not values.empty and not (metric.zero_is_absent and (values == 0).all())


def _trace(
    frame: pd.DataFrame,
    x: str,
    metric: Metric,
    label: str,
    run_color: str | None,
    show: bool,
    compact: bool,
    dark: bool = False,
) -> go.Scatter:
    sparse, dense = metric.source == "evals", metric.source == "probes"
    opacity = (0.8 if dark else 0.45) if dense else 1.0  # faint, under the evals; on black, not too faint
    name = html.escape(label) if run_color else metric.name
    # one legend (Plotly draws no entries in a second legend here): a group per run with several runs,
    # else a group per panel, titled with the panel
    group = name if run_color or compact else PANELS[metric.row - 1][1]
    return go.Scatter(
        x=frame[x],
        y=frame[metric.column],
        name=name,
        legendgroup=group,
        legendgrouptitle_text=None if run_color or compact else group,
        showlegend=show,
        mode="lines+markers" if sparse else "lines",
        marker={"size": 5 if run_color is None else 7, "symbol": metric.symbol if run_color else "circle"},
        line={
            "color": legible(run_color or metric.color, dark, opacity),
            "dash": metric.dash if run_color else "solid",
            "width": 2.2 if sparse else 0.8 if dense else 1.4,
        },
        opacity=opacity,
        zorder=-1 if dense else 0,  # under the evals' markers
        hovertemplate=(f"{html.escape(label)} · " if run_color else "")
        + f"{metric.name}: %{{y:.3f}}<extra></extra>",
    )


DARK_PLOT = (17, 17, 17)  # plotly_dark's plot area
MIN_CONTRAST = 3.0  # WCAG's minimum for graphics against their background


def legible(color: str, dark: bool, opacity: float = 1.0) -> str:
    """`color` as drawn on the dark template: mixed with white in tenths until, at `opacity` over the plot
    area, it stands out 3:1 (a dark grey loss line on black would vanish). Unchanged on the light one."""
    if not dark:
        return color
    rgb = tuple(int(color.lstrip("#")[i : i + 2], 16) for i in (0, 2, 4))
    for tenth in range(11):
        mixed = tuple(round(c + (255 - c) * tenth / 10) for c in rgb)
        if contrast(blend(mixed, DARK_PLOT, opacity), DARK_PLOT) >= MIN_CONTRAST:
            return "#" + "".join(f"{c:02x}" for c in mixed)
    return "#ffffff"


def blend(rgb: Sequence[float], under: Sequence[float], opacity: float) -> tuple[float, ...]:
    return tuple(opacity * c + (1 - opacity) * u for c, u in zip(rgb, under, strict=True))


def contrast(a: Sequence[float], b: Sequence[float]) -> float:
    """WCAG's contrast ratio of two sRGB colours (0-255 channels)."""

    def luminance(rgb: Sequence[float]) -> float:
        linear = [
            (c / 255 / 12.92) if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb
        ]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def _co_marker(
    fig: go.Figure,
    x: float,
    iteration: int,
    color: str,
    label: str,
    overlay: bool,
    band: tuple[float, float] | None = None,
    stack: int = 0,
    compact: bool = False,
) -> None:
    """A dashed vertical line at the CO iteration (drawn at `x`) on each panel, labelled on each panel, and
    `band` (where the onset falls over resamples of the images it was placed on, on the x axis) shaded
    behind it. `stack` puts the labels that many lines lower: an overlay's runs that collapse at the same
    iteration keep readable labels. A compact overlay (a phone) labels each panel only "CO @ k": a run's
    name would run off the chart, and the label's colour names the run."""
    short = f"CO @ {iteration:,}"
    if not overlay:
        text = f"catastrophic overfitting @ {iteration:,}"
    else:
        text = short if compact else f"CO · {html.escape(label)} @ {iteration:,}"
    vertical_marker(fig, x, color, "dash", (text, short), "top right", stack, name="co")
    if band is not None:
        for row in (1, 2, 3):
            fig.add_vrect(
                x0=band[0],
                x1=band[1],
                row=row,
                col=1,
                fillcolor=color,
                opacity=0.12,
                line_width=0,
                layer="below",
            )


def _warning_texts(history: RunHistory, label: str, overlay: bool, compact: bool) -> tuple[str, str]:
    """The early warning's labels (top panel, the others), saying too when an autopilot run switched."""
    iteration = history.warning["iteration"]
    short = f"warning @ {iteration:,}"
    switched = " · GradAlign on" if history.rescue is not None else ""
    if not overlay:
        return f"CO warning @ {iteration:,}{switched}", short
    return (short if compact else f"warning · {html.escape(label)} @ {iteration:,}{switched}"), short


def vertical_marker(
    fig: go.Figure,
    x: float,
    color: str,
    dash: str,
    texts: tuple[str, str],
    position: str,
    stack: int = 0,
    *,
    name: str,
) -> None:
    """A vertical line at `x` on each of the three panels, the first text on the top one, the second below,
    `stack` text lines lower than the first such label; `position` is "top right", "top left" or "bottom
    left" of the line. Drawn against the one x axis every panel shares (_one_x_axis). `name` names the
    lines and labels ("co", "co_warning", "fork"), for whoever reads the figure back."""
    top = position.startswith("top")
    for row in (1, 2, 3):
        panel = f"y{'' if row == 1 else row} domain"
        fig.add_shape(
            name=name,
            type="line",
            x0=x,
            x1=x,
            xref="x",
            y0=0,
            y1=1,
            yref=panel,
            line={"color": color, "dash": dash, "width": 2},
        )
        fig.add_annotation(
            x=x,
            xref="x",
            y=1 if top else 0,
            yref=panel,
            text=texts[0] if row == 1 else texts[1],
            showarrow=False,
            xanchor="left" if position.endswith("right") else "right",
            yanchor="top" if top else "bottom",
            font={"color": color, "size": 12},
            bgcolor="rgba(255,255,255,0.8)",
            yshift=-16 * stack,
            name=name,
        )


def _first_eval_note(fig: go.Figure, history: RunHistory) -> None:
    """Until the first evaluation the accuracy and alignment panels are empty: each says what it will show,
    and the first says when."""
    first = history.first_eval
    when = f"at iteration {first:,}" if first is not None else "soon"
    texts = (f"robust accuracy: first evaluation {when}", "gradient alignment: measured at each evaluation")
    for row, text in zip((1, 2), texts, strict=True):
        fig.add_annotation(
            text=text,
            x=0.5,
            y=0.5,
            xref=f"x{'' if row == 1 else row} domain",
            yref=f"y{'' if row == 1 else row}",  # add_vline spans the panel's domain
            showarrow=False,
            font={"size": 14, "color": "#757575"},
            name="pending",
        )


def _style_key(fig: go.Figure, metrics: list[Metric]) -> None:
    """Grey legend-only entries that say which line style and marker is which of the metrics drawn.

    Beside each panel, apart from the runs' legend (under the panels), and named as metrics ("PGD acc"), so
    no entry reads like a run called "FGSM".
    """
    for metric in metrics:
        fig.add_trace(
            go.Scatter(
                x=[0],  # a point, never drawn (legend-only): a trace without one gets no entry
                y=[0],
                name=f"{metric.name} acc" if metric.row == 1 else metric.name,
                mode="lines+markers" if metric.source == "evals" else "lines",
                line={
                    "color": "#616161",
                    "dash": metric.dash,
                    "width": 0.8 if metric.source == "probes" else 2,
                },
                marker={"symbol": metric.symbol, "size": 7},
                legendgroup="key",
                legendgrouptitle_text="line = metric",
                hoverinfo="skip",
                visible="legendonly",
            ),
            row=metric.row,
            col=1,
        )


COMPACT_LEGEND_PX = 150  # the foot of a compact chart: tick labels, the axis title, then the legend's rows


def _layout(fig: go.Figure, uirevision: str, height: int, overlay: bool, compact: bool, dark: bool) -> None:
    fig.update_layout(
        template=template(dark),
        height=height,
        uirevision=uirevision,
        hovermode="x unified",
        margin={"l": 60, "r": 10 if compact else 210, "t": 40, "b": COMPACT_LEGEND_PX if compact else 50},
        font={"size": 12 if compact else 13},
    )
    if compact:  # a small multiple or a phone: one horizontal legend at the foot, under the axis title
        fig.update_layout(
            legend={"orientation": "h", "x": 0, "y": 0, "yanchor": "bottom", "yref": "container"}
        )
    else:  # one legend beside the panels, in groups (runs, then the line-style key; or one per panel)
        fig.update_layout(
            legend={
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
        )
    fig.update_yaxes(title_text="accuracy", range=[0, 1.02], row=1, col=1)
    fig.update_yaxes(title_text="cosine", row=2, col=1)
    fig.update_yaxes(title_text="loss", row=3, col=1)
    fig.update_xaxes(title_text="iteration", row=3, col=1)
    fig.update_xaxes(showspikes=True, spikemode="across", spikethickness=1)
    fig.update_annotations(selector={"xref": "paper"}, x=0, xanchor="left", font_size=14)  # panel titles


# --- inside the model: first-layer filters and one image's perturbations and gradients (snapshot events) ---

CLASS_NAMES = {
    "cifar10": ("airplane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}


def template(dark: bool) -> str:
    """Plotly's template to match Streamlit's theme (the chart's background is transparent either way)."""
    return "plotly_dark" if dark else "plotly_white"


TOOLBAR_PX = 44  # Plotly's toolbar row (and a gap): on a narrow screen titles start below it
SIGNED_SCALE = "RdBu_r"  # negative blue, zero white, positive red
GAP = 255  # the white line between filters in an RGB mosaic


def filter_mosaic(filters: np.ndarray, columns: int) -> np.ndarray:
    """Filters [F][C][k][k] tiled `columns` to a row with a one-pixel gap, each scaled by its own max |w|.

    One or any number of channels but three: their mean, in [-1, 1] with NaN gaps (shape rows·(k+1)−1 ×
    columns·(k+1)−1). Three channels: an RGB image (… × 3, uint8), 0 as mid-grey, white gaps.
    """
    n, channels, k, _ = filters.shape
    scale = np.abs(filters).reshape(n, -1).max(axis=1)
    unit = filters / np.where(scale > 0, scale, 1)[:, None, None, None]
    rows = -(-n // columns)
    height, width = rows * (k + 1) - 1, columns * (k + 1) - 1
    if channels == 3:
        mosaic = np.full((height, width, 3), GAP, dtype=np.uint8)
        tiles = _rgb(unit.transpose(0, 2, 3, 1))
    else:
        mosaic = np.full((height, width), np.nan, dtype=np.float32)
        tiles = unit.mean(axis=1)
    for index in range(n):
        row, column = divmod(index, columns)
        top, left = row * (k + 1), column * (k + 1)
        mosaic[top : top + k, left : left + k] = tiles[index]
    return mosaic


def filter_columns(n: int) -> int:
    return min(n, 8 if n <= 32 else 16)


def _rgb(signed: np.ndarray) -> np.ndarray:
    """Values in [-1, 1] as 0..255 colour intensities, 0 as mid-grey."""
    return np.clip(np.rint((signed + 1) * 127.5), 0, 255).astype(np.uint8)


def filters_figure(
    snapshot: dict[str, Any], uirevision: str, narrow: bool = False, dark: bool = False
) -> go.Figure:
    """The first layer's filters as one tiled image (the paper's Fig. 4), each filter on its own scale.

    `narrow` (a phone): the title on two lines, below the toolbar's row.
    """
    filters = snapshot["filters"]
    n, channels, k, _ = filters.shape
    columns = filter_columns(n)
    mosaic = filter_mosaic(filters, columns)
    if channels == 3:
        trace: go.BaseTraceType = go.Image(z=mosaic, hoverinfo="skip")
    else:
        trace = go.Heatmap(
            z=mosaic,
            colorscale=SIGNED_SCALE,
            zmin=-1,
            zmax=1,
            showscale=False,
            hoverongaps=False,
            hovertemplate="w / max|w| of its filter: %{z:.2f}<extra></extra>",
        )
    fig = go.Figure(trace)
    rows = -(-n // columns)
    what = "RGB, 0 as grey" if channels == 3 else ("red > 0 > blue" if channels == 1 else "channel mean")
    gap = "<br>" if narrow else " "
    top = TOOLBAR_PX + 50 if narrow else 40
    fig.update_layout(
        template=template(dark),
        height=top + 30 + rows * 110,
        uirevision=uirevision,
        title={
            "text": f"First-layer filters: {n} × {k}×{k}{gap}({what}; each on its own scale)",
            "x": 0,
            **(
                {"yref": "container", "y": 1 - TOOLBAR_PX / (top + 30 + rows * 110), "yanchor": "top"}
                if narrow
                else {}
            ),
        },
        margin={"l": 10, "r": 10, "t": top, "b": 10},
    )
    _image_axes(fig)
    return fig


def inside_figure(
    snapshot: dict[str, Any], dataset: str, uirevision: str, narrow: bool = False, dark: bool = False
) -> go.Figure:
    """One eval image, its FGSM and PGD perturbations and the input gradients at x and x+η, side by side.

    Perturbations are drawn as δ/ε and gradients divided by their largest |entry|, all on one diverging
    scale (red > 0 > blue; RGB with 0 as grey on colour images); titles carry the predictions.
    `narrow` (a phone): two to a row, so no title runs into the next, and the first row below the toolbar.
    """
    names = CLASS_NAMES.get(dataset)
    label = snapshot["label"]
    predictions = snapshot.get("predictions") or {}

    def predicted(which: str) -> str:
        guess = predictions.get(which)
        if guess is None:
            return ""
        mark = "✓" if guess == label else "✗"
        return f"<br>predicted {names[guess] if names else guess} {mark}"

    cos = snapshot.get("cos_grad_random")
    panels = (
        ("image", f"image · label {names[label] if names else label}{predicted('clean')}"),
        ("fgsm_delta", f"FGSM δ/ε{predicted('fgsm')}"),
        ("pgd_delta", f"PGD δ/ε{predicted('pgd')}"),
        ("grad_x", "∇ℓ at x"),
        ("grad_random", "∇ℓ at x+η" + (f"<br>cos with ∇ℓ at x: {cos:.2f}" if cos is not None else "")),
    )
    columns = 2 if narrow else len(panels)
    rows = -(-len(panels) // columns)
    fig = make_subplots(
        rows=rows,
        cols=columns,
        subplot_titles=[title for _, title in panels],
        horizontal_spacing=0.08 if narrow else 0.03,
        vertical_spacing=0.12,
    )
    for index, (key, _) in enumerate(panels):
        row, column = divmod(index, columns)
        fig.add_trace(_array_trace(snapshot[key], signed=key != "image"), row=row + 1, col=column + 1)
    fig.update_layout(
        template=template(dark),
        height=330 if not narrow else 260 * rows + TOOLBAR_PX,
        uirevision=uirevision,
        margin={"l": 10, "r": 10, "t": 70 + (TOOLBAR_PX if narrow else 0), "b": 10},
        coloraxis={"colorscale": SIGNED_SCALE, "cmin": -1, "cmax": 1, "colorbar": {"thickness": 12}},
        coloraxis2={"colorscale": "gray", "cmin": 0, "cmax": 1, "showscale": False},
    )
    fig.update_annotations(font_size=13)
    _image_axes(fig)
    return fig


def _array_trace(array: np.ndarray, signed: bool) -> go.BaseTraceType:
    """[C][H][W] as a heatmap (one channel: signed on the diverging scale, else grey) or an RGB image."""
    if array.shape[0] == 3:
        rgb = _rgb(array) if signed else np.clip(np.rint(array * 255), 0, 255).astype(np.uint8)
        return go.Image(z=rgb.transpose(1, 2, 0), hoverinfo="skip")
    return go.Heatmap(
        z=array.mean(axis=0),
        coloraxis="coloraxis" if signed else "coloraxis2",
        hovertemplate="%{z:.2f}<extra></extra>",
    )


def _image_axes(fig: go.Figure) -> None:
    """Square pixels, row 0 on top, no ticks."""
    fig.update_xaxes(visible=False, constrain="domain")
    fig.update_yaxes(visible=False, autorange="reversed", scaleanchor="x", constrain="domain")
    for axis in range(2, len(fig.data) + 1):
        fig.update_yaxes(scaleanchor=f"x{axis}", selector={"anchor": f"x{axis}"})


# --- the sweep: final PGD accuracy against ε per method (the paper's Fig. 1) ---


def method_colors(methods: Iterable[str]) -> dict[str, str]:
    """A sweep's colour per method, in name order: the same on its PGD-vs-ε chart and its facets."""
    return {
        method: METHOD_COLORS[index % len(METHOD_COLORS)] for index, method in enumerate(sorted(set(methods)))
    }


DODGE = 0.08  # how far apart methods are drawn at one ε, as a share of the ε grid's step
SEED_SPREAD = 0.4  # how far apart one method's seeds are drawn at one ε, as a share of DODGE
# PGD accuracy on the sweep's charts, with room below 0: a run collapsed to 0 (its ✕, its marks, its line)
# is drawn whole, not half cut by the axis
SWEEP_ACCURACY_RANGE = [-0.04, 1.02]


def sweep_figure(points: pd.DataFrame, natural_units: bool, uirevision: str, dark: bool = False) -> go.Figure:
    """Per method, a line through the mean PGD accuracy over seeds at each ε and a mark per run: ✕ for a run
    that hit CO, hollow for one still running, ringed in amber for one the CO early warning fired on.

    Each mark carries its run id as customdata, so a click (selection event) can open that run. Methods
    are drawn side by side around each ε (dodged by DODGE of the grid's step) and a method's seeds side by
    side around it, so runs at the same point, all collapsed to 0, show one ✕ each; the hover names the
    true ε and the seed.
    """
    fig = go.Figure()
    groups = list(points.groupby("method", sort=True))
    colors = method_colors(points["method"])
    grid = sorted(points["x"].unique())
    step = min((b - a for a, b in zip(grid, grid[1:], strict=False)), default=grid[0] if grid else 1.0)
    seeds = sorted(points["seed"].unique())
    for index, (method, group) in enumerate(groups):
        color = colors[method]
        offset = (index - (len(groups) - 1) / 2) * DODGE * step
        mean = group.groupby("x")["pgd_acc"].mean()
        fig.add_trace(
            go.Scatter(
                x=mean.index + offset,
                y=mean.to_numpy(),
                name=html.escape(method),
                legendgroup=method,
                mode="lines",
                line={"color": color, "width": 2},
                customdata=np.stack([mean.index, group.groupby("x")["run_id"].count()], axis=-1),
                hovertemplate=f"{html.escape(method)}<br>ε %{{customdata[0]:g}}: mean PGD acc %{{y:.3f}}"
                " over %{customdata[1]} seed(s)<extra></extra>",
            )
        )
        spread = [
            (seeds.index(seed) - (len(seeds) - 1) / 2) * SEED_SPREAD * DODGE * step for seed in group["seed"]
        ]
        symbols = [
            ("x" if co else "circle") + ("" if done else "-open")
            for co, done in zip(group["co"], group["done"], strict=True)
        ]
        fig.add_trace(
            go.Scatter(
                x=group["x"] + offset + spread,
                y=group["pgd_acc"],
                name=html.escape(method) + " (runs)",
                legendgroup=method,
                showlegend=False,
                mode="markers",
                cliponaxis=False,  # drawn whole on the edge of a zoomed range too
                marker={
                    "symbol": symbols,
                    "size": 11,
                    "color": color,
                    "line": {
                        "width": 2,
                        "color": [
                            legible(WARNING_COLOR, dark) if warned else color for warned in group["warned"]
                        ],
                    },
                },
                customdata=group[["run_id", "status", "lambda", "seed"]].to_numpy(),
                text=[html.escape(label) for label in group["label"]],  # names the run's ε
                hovertemplate="%{text}<br>seed %{customdata[3]}<br>PGD acc %{y:.3f}<br>λ=%{customdata[2]:g}"
                "<br>%{customdata[1]}<extra></extra>",
            )
        )
    for name, symbol, line in (
        ("✕ catastrophic overfitting", "x", "#616161"),
        ("○ hollow: still running (latest eval)", "circle-open", "#616161"),
        ("amber ring: CO warning", "circle-open", legible(WARNING_COLOR, dark)),
    ):
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                name=name,
                mode="markers",
                marker={
                    "symbol": symbol,
                    "color": "#616161",
                    "size": 11,
                    "line": {"width": 2, "color": line},
                },
            )
        )
    fig.update_layout(
        template=template(dark),
        height=480,
        uirevision=uirevision,
        title="Final PGD accuracy against ε: mean over seeds (line) and each run (marks)",
        xaxis_title="ε (×1/255)" if natural_units else "ε",
        xaxis_tickvals=grid if len(grid) <= 16 else None,  # ticks at the true ε, between the dodged marks
        yaxis_title="PGD accuracy",
        yaxis_range=SWEEP_ACCURACY_RANGE,
        clickmode="event",
        legend={"title": {"text": "method"}},
        margin={"t": 60, "b": 50},
    )
    return fig


@dataclass(frozen=True)
class SweepCurve:
    """One run of a sweep, drawn in the facet of its ε."""

    method: str
    eps: float
    eps_label: str  # as the form writes it: 0.15, 8/255
    seed: int
    history: RunHistory


FACET_COLUMNS = 3
PGD_EVAL = next(metric for metric in METRICS if metric.column == "pgd_acc" and metric.source == "evals")
PGD_PROBE = next(metric for metric in METRICS if metric.column == "pgd_acc" and metric.source == "probes")


def _warning_mark(curve: SweepCurve, iteration: int, color: str, dark: bool, legend: bool) -> go.Scatter:
    """An amber triangle on a run's eval PGD accuracy where its CO early warning fired."""
    return go.Scatter(
        x=[iteration],
        y=[curve.history.evals[iteration]["pgd_acc"]],
        name="CO warning",
        legendgroup="CO warning",
        showlegend=legend,
        mode="markers",
        marker={
            "symbol": "triangle-down",
            "size": 12,
            "color": legible(WARNING_COLOR, dark),
            "line": {"width": 1.5, "color": color},
        },
        hovertemplate=f"{html.escape(curve.method)} · seed {curve.seed}: CO warning at iteration "
        "%{x:,}<extra></extra>",
    )


def sweep_curves_figure(curves: Sequence[SweepCurve], uirevision: str, dark: bool = False) -> go.Figure:
    """PGD accuracy against the iteration, a small panel per ε: each run's dense probe as a thin line under
    its evaluations' markers (the live view's traces), coloured by method, so where CO strikes at each ε
    shows next to the final numbers of the PGD-vs-ε chart."""
    grid = sorted({(curve.eps, curve.eps_label) for curve in curves})
    columns = min(FACET_COLUMNS, max(1, len(grid)))
    rows = max(1, -(-len(grid) // columns))
    fig = make_subplots(
        rows=rows,
        cols=columns,
        shared_xaxes=True,
        shared_yaxes=True,
        horizontal_spacing=0.03,
        vertical_spacing=0.12 / rows,
        subplot_titles=[f"ε = {html.escape(label)}" for _, label in grid],
    )
    colors = method_colors(curve.method for curve in curves)
    shown: set[str] = set()
    warning_legend = True  # the warnings' legend entry, once
    for curve in sorted(curves, key=lambda curve: (curve.method, curve.eps, curve.seed)):
        index = grid.index((curve.eps, curve.eps_label))
        frames = _frames(curve.history)
        for metric in (PGD_EVAL, PGD_PROBE):  # the legend shows a method by its evaluations' line
            frame = frames[metric.source]
            if not _has_values(frame, metric):
                continue
            label = f"{curve.method} · seed {curve.seed} · ε {curve.eps_label}"
            trace = _trace(frame, "iteration", metric, label, colors[curve.method], False, True, dark)
            trace.update(
                name=html.escape(curve.method),
                legendgroup=curve.method,
                showlegend=curve.method not in shown,
            )
            shown.add(curve.method)
            fig.add_trace(trace, row=index // columns + 1, col=index % columns + 1)
        warning = curve.history.warning
        if warning is not None and warning["iteration"] in curve.history.evals:
            mark = _warning_mark(curve, warning["iteration"], colors[curve.method], dark, warning_legend)
            fig.add_trace(mark, row=index // columns + 1, col=index % columns + 1)
            warning_legend = False
    fig.update_layout(
        template=template(dark),
        height=260 * rows + 110,
        uirevision=uirevision,
        title="PGD accuracy during training, per ε: dense probe (thin line) under the evaluations (marks)",
        legend={"x": 1.01, "xanchor": "left", "y": 1, "yanchor": "top", "title": {"text": "method"}},
        margin={"l": 60, "r": 10, "t": 80, "b": 50},
        hovermode="closest",
    )
    fig.update_yaxes(range=SWEEP_ACCURACY_RANGE)
    fig.update_yaxes(title_text="PGD accuracy", col=1)
    fig.update_xaxes(title_text="iteration", row=rows)
    return fig
