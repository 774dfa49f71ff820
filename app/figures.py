"""Plotly figures from a run's history: the three panels, the model's insides, the sweep chart.

No Streamlit and no Redis here, so every chart the dashboard shows is unit-testable from a list of event
dicts. One figure builder (`run_figure`) serves the live view, the compare overlay and the small multiples,
so the three can never drift apart.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.history import RunHistory

RUN_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
CO_COLOR = "#b30000"


# --- the three-panel figure ---


@dataclass(frozen=True)
class Metric:
    column: str
    name: str
    row: int  # 1 accuracy, 2 alignment, 3 loss
    source: str  # "evals" (sparse: drawn with markers), "probes" (dense probe: thin) or "metrics" (every it)
    color: str
    dash: str = "solid"  # the line style that tells metrics apart when colour tells runs apart
    overlay: bool = True  # drawn when several runs share the panels
    zero_is_absent: bool = False  # an all-zero series means "not used" (the GradAlign term without GradAlign)


METRICS = (
    Metric("pgd_acc", "PGD", 1, "evals", "#d62728"),  # first: it stands for its run in an overlay's legend
    Metric("fgsm_acc", "FGSM", 1, "evals", "#ff7f0e", "dash"),
    Metric("clean_acc", "clean", 1, "evals", "#1f77b4", "dot"),
    Metric("train_acc", "train (adversarial batches)", 1, "metrics", "#9e9e9e", "dashdot", overlay=False),
    Metric("cos_fgsm_pgd", "cos(δ FGSM, δ PGD)", 2, "evals", "#9467bd"),
    Metric("cos_grad_random", "cos(∇x, ∇x+η)", 2, "evals", "#2ca02c", "dot"),
    Metric("train_loss", "train loss", 3, "metrics", "#37474f"),
    Metric("reg", "regulariser (GradAlign, ELLE)", 3, "metrics", "#17becf", "dot", zero_is_absent=True),
    # The dense probe on training images, thin and under the evals' markers (which stay authoritative).
    Metric("pgd_acc", "PGD (dense probe, train)", 1, "probes", "#d62728"),
    Metric("fgsm_acc", "FGSM (dense probe, train)", 1, "probes", "#ff7f0e", "dash"),
    Metric("cos_fgsm_pgd", "cos(δ FGSM, δ PGD) (probe)", 2, "probes", "#9467bd"),
    Metric("cos_grad_random", "cos(∇x, ∇x+η) (probe)", 2, "probes", "#2ca02c", "dot"),
)
PANELS = (
    ("Robust accuracy on the eval subset", "accuracy"),
    ("Gradient alignment", "cosine"),
    ("Training loss", "loss"),
)


@dataclass(frozen=True)
class Series:
    """One run as drawn: its legend label and its history."""

    label: str
    history: RunHistory


def run_figure(
    series: Sequence[Series],
    uirevision: str,
    height: int = 760,
    compact: bool = False,
    axes: dict[str, list[float]] | None = None,
) -> go.Figure:
    """Accuracy, alignment and loss panels on a shared iteration axis, with a CO marker on every panel.

    One run: a colour per metric, each panel with its own legend. Several runs: a colour per run and a
    line style per metric, one legend of runs (clicking a run hides all its lines) and a style key per panel.
    `axes` fixes ranges (shared_axes) so that small multiples side by side are drawn to one scale.
    """
    overlay = len(series) > 1
    titles = [title for title, _ in PANELS] if not compact else [axis.capitalize() for _, axis in PANELS]
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.07, subplot_titles=titles)
    drawn: set[Metric] = set()
    for index, run in enumerate(series):
        color = RUN_COLORS[index % len(RUN_COLORS)]
        frames = _frames(run.history)
        first = True
        for metric in METRICS:
            if overlay and not metric.overlay:
                continue
            frame = frames[metric.source]
            if not _has_values(frame, metric):
                continue
            fig.add_trace(
                _trace(frame, metric, run.label, color if overlay else None, not overlay or first, compact),
                row=metric.row,
                col=1,
            )
            first = False
            drawn.add(metric)
        if run.history.co_iteration is not None:
            _co_marker(fig, run.history.co_iteration, color if overlay else CO_COLOR, run.label, overlay)
    if overlay:
        _style_key(fig, [metric for metric in METRICS if metric in drawn])
    _layout(fig, uirevision, height, overlay, compact)
    for name, value in (axes or {}).items():
        fig.update_layout({name: {"range": value}})
    return fig


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


def _frames(history: RunHistory) -> dict[str, pd.DataFrame]:
    """A run's rows as drawn, by Metric.source: each built once per figure (metrics are smoothed)."""
    return {
        "evals": history.evals_frame(),
        "metrics": history.metrics_frame(),
        "probes": history.probes_frame(),
    }


def _has_values(frame: pd.DataFrame, metric: Metric) -> bool:
    if frame.empty or metric.column not in frame:
        return False
    values = frame[metric.column].dropna()
    return not values.empty and not (metric.zero_is_absent and (values == 0).all())


def _trace(
    frame: pd.DataFrame, metric: Metric, label: str, run_color: str | None, show: bool, compact: bool
) -> go.Scatter:
    sparse, dense = metric.source == "evals", metric.source == "probes"
    name = html.escape(label) if run_color else metric.name
    return go.Scatter(
        x=frame["iteration"],
        y=frame[metric.column],
        name=name,
        legendgroup=name,
        legend="legend" if run_color or compact else _legend_of(metric.row),
        showlegend=show,
        mode="lines+markers" if sparse else "lines",
        marker={"size": 5},
        line={
            "color": run_color or metric.color,
            "dash": metric.dash if run_color else "solid",
            "width": 2.2 if sparse else 0.8 if dense else 1.4,
        },
        opacity=0.45 if dense else 1.0,
        zorder=-1 if dense else 0,  # under the evals' markers
        hovertemplate=(f"{html.escape(label)} · " if run_color else "")
        + f"{metric.name}: %{{y:.3f}}<extra></extra>",
    )


def _legend_of(row: int) -> str:
    return "legend" if row == 1 else f"legend{row}"


def _co_marker(fig: go.Figure, iteration: int, color: str, label: str, overlay: bool) -> None:
    """A dashed vertical line at the CO iteration on each panel, labelled on each panel."""
    text = (
        f"CO · {html.escape(label)} @ {iteration:,}"
        if overlay
        else f"catastrophic overfitting @ {iteration:,}"
    )
    for row in (1, 2, 3):
        fig.add_vline(
            x=iteration,
            row=row,
            col=1,
            line={"color": color, "dash": "dash", "width": 2},
            annotation={
                "text": text if row == 1 else f"CO @ {iteration:,}",
                "font": {"color": color, "size": 12},
                "bgcolor": "rgba(255,255,255,0.8)",
            },
            annotation_position="top right",
        )


def _style_key(fig: go.Figure, metrics: list[Metric]) -> None:
    """Grey legend-only entries that say which line style is which of the metrics drawn."""
    for metric in metrics:
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                name=metric.name,
                mode="lines",
                line={
                    "color": "#616161",
                    "dash": metric.dash,
                    "width": 0.8 if metric.source == "probes" else 2,
                },
                legend=_legend_of(metric.row) if metric.row > 1 else "legend4",
                hoverinfo="skip",
            ),
            row=metric.row,
            col=1,
        )


def _layout(fig: go.Figure, uirevision: str, height: int, overlay: bool, compact: bool) -> None:
    fig.update_layout(
        template="plotly_white",
        height=height,
        uirevision=uirevision,
        hovermode="x unified",
        margin={"l": 60, "r": 10 if compact else 210, "t": 40, "b": 90 if compact else 50},
        font={"size": 12 if compact else 13},
    )
    if compact:  # a small multiple: one horizontal legend under the panels
        fig.update_layout(legend={"orientation": "h", "x": 0, "y": -0.1, "yanchor": "top"})
    else:  # each panel's legend beside it; with several runs, the runs on top and the accuracy key below
        domains = [fig.layout[f"yaxis{'' if row == 1 else row}"].domain for row in (1, 2, 3)]
        style = {"x": 1.01, "xanchor": "left", "yanchor": "top", "bgcolor": "rgba(255,255,255,0)"}
        for row, domain in enumerate(domains, start=1):
            fig.update_layout({_legend_of(row): {**style, "y": domain[1]}})
        if overlay:
            fig.update_layout(legend_title_text="runs", legend4={**style, "y": domains[0][0] + 0.12})
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


def filters_figure(snapshot: dict[str, Any], uirevision: str) -> go.Figure:
    """The first layer's filters as one tiled image (the paper's Fig. 4), each filter on its own scale."""
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
    fig.update_layout(
        template="plotly_white",
        height=70 + rows * 110,
        uirevision=uirevision,
        title={"text": f"First-layer filters: {n} × {k}×{k} ({what}; each on its own scale)", "x": 0},
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
    )
    _image_axes(fig)
    return fig


def inside_figure(snapshot: dict[str, Any], dataset: str, uirevision: str) -> go.Figure:
    """One eval image, its FGSM and PGD perturbations and the input gradients at x and x+η, side by side.

    Perturbations are drawn as δ/ε and gradients divided by their largest |entry|, all on one diverging
    scale (red > 0 > blue; RGB with 0 as grey on colour images); titles carry the predictions.
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
    fig = make_subplots(
        rows=1, cols=len(panels), subplot_titles=[title for _, title in panels], horizontal_spacing=0.03
    )
    for column, (key, _) in enumerate(panels, start=1):
        fig.add_trace(_array_trace(snapshot[key], signed=key != "image"), row=1, col=column)
    fig.update_layout(
        template="plotly_white",
        height=330,
        uirevision=uirevision,
        margin={"l": 10, "r": 10, "t": 70, "b": 10},
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


def sweep_figure(points: pd.DataFrame, natural_units: bool, uirevision: str) -> go.Figure:
    """Lines of PGD accuracy against ε per method; ✕ marks a run that hit CO, hollow marks one still running.

    Each point carries its run id as customdata, so a click (selection event) can open that run.
    """
    fig = go.Figure()
    for index, (method, group) in enumerate(points.groupby("method", sort=True)):
        color = RUN_COLORS[index % len(RUN_COLORS)]
        symbols = [
            ("x" if co else "circle") + ("" if done else "-open")
            for co, done in zip(group["co"], group["done"], strict=True)
        ]
        fig.add_trace(
            go.Scatter(
                x=group["x"],
                y=group["pgd_acc"],
                name=html.escape(method),
                mode="lines+markers",
                line={"color": color, "width": 2},
                marker={"symbol": symbols, "size": 13, "color": color, "line": {"width": 2, "color": color}},
                customdata=group[["run_id", "status", "lambda"]].to_numpy(),
                text=[html.escape(label) for label in group["label"]],
                hovertemplate="%{text}<br>PGD acc %{y:.3f}<br>λ=%{customdata[2]:g}<br>%{customdata[1]}"
                "<extra></extra>",
            )
        )
    for name, symbol in (
        ("✕ catastrophic overfitting", "x"),
        ("○ hollow: still running (latest eval)", "circle-open"),
    ):
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                name=name,
                mode="markers",
                marker={"symbol": symbol, "color": "#616161", "size": 11},
            )
        )
    fig.update_layout(
        template="plotly_white",
        height=480,
        uirevision=uirevision,
        title="Final PGD accuracy against ε",
        xaxis_title="ε (×1/255)" if natural_units else "ε",
        yaxis_title="PGD accuracy",
        yaxis_range=[0, 1.02],
        clickmode="event",
        legend={"title": {"text": "method"}},
        margin={"t": 60, "b": 50},
    )
    return fig
