"""The sweep's charts: final PGD accuracy against ε per method (the paper's Fig. 1), and each run's PGD
accuracy against the iteration in a panel per ε."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from app.history import RunHistory
from app.palette import WARNING_COLOR, legible, method_colors
from app.panels import METRICS, frames_of, has_values, metric_trace
from app.spec import Figure, axis, domains, ref, template_spec, title

DODGE = 0.08  # how far apart methods are drawn at one ε, as a share of the ε grid's step
SEED_SPREAD = 0.4  # how far apart one method's seeds are drawn at one ε, as a share of DODGE
# PGD accuracy on the sweep's charts, with room below 0: a run collapsed to 0 (its ✕, its marks, its line)
# is drawn whole, not half cut by the axis
SWEEP_ACCURACY_RANGE = [-0.04, 1.02]


def sweep_figure(points: pd.DataFrame, natural_units: bool, uirevision: str, dark: bool = False) -> Figure:
    """Per method, a line through the mean PGD accuracy over seeds at each ε and a mark per run: ✕ for a run
    that hit CO, hollow for one still running, ringed in amber for one the CO early warning fired on.

    Each mark carries its run id as customdata, so a click (selection event) can open that run. Methods
    are drawn side by side around each ε (dodged by DODGE of the grid's step) and a method's seeds side by
    side around it, so runs at the same point, all collapsed to 0, show one ✕ each; the hover names the
    true ε and the seed.
    """
    data = []
    groups = list(points.groupby("method", sort=True))
    colors = method_colors(points["method"])
    grid = sorted(points["x"].unique())
    step = min((b - a for a, b in zip(grid, grid[1:], strict=False)), default=grid[0] if grid else 1.0)
    seeds = sorted(points["seed"].unique())
    for index, (method, group) in enumerate(groups):
        color = colors[method]
        offset = (index - (len(groups) - 1) / 2) * DODGE * step
        mean = group.groupby("x")["pgd_acc"].mean()
        data.append(
            {
                "type": "scatter",
                "x": (mean.index + offset).to_numpy(),
                "y": mean.to_numpy(),
                "name": html.escape(method),
                "legendgroup": method,
                "mode": "lines",
                "line": {"color": color, "width": 2},
                "customdata": np.stack([mean.index, group.groupby("x")["run_id"].count()], axis=-1),
                "hovertemplate": f"{html.escape(method)}<br>ε %{{customdata[0]:g}}: mean PGD acc %{{y:.3f}}"
                " over %{customdata[1]} seed(s)<extra></extra>",
            }
        )
        spread = [
            (seeds.index(seed) - (len(seeds) - 1) / 2) * SEED_SPREAD * DODGE * step for seed in group["seed"]
        ]
        symbols = [
            ("x" if co else "circle") + ("" if done else "-open")
            for co, done in zip(group["co"], group["done"], strict=True)
        ]
        data.append(
            {
                "type": "scatter",
                "x": (group["x"] + offset + spread).to_numpy(),
                "y": group["pgd_acc"].to_numpy(),
                "name": html.escape(method) + " (runs)",
                "legendgroup": method,
                "showlegend": False,
                "mode": "markers",
                "cliponaxis": False,  # drawn whole on the edge of a zoomed range too
                "marker": {
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
                "customdata": group[["run_id", "status", "lambda", "seed"]].to_numpy(),
                "text": [html.escape(label) for label in group["label"]],  # names the run's ε
                "hovertemplate": "%{text}<br>seed %{customdata[3]}<br>PGD acc %{y:.3f}"
                "<br>λ=%{customdata[2]:g}<br>%{customdata[1]}<extra></extra>",
            }
        )
    for name, symbol, line in (
        ("✕ catastrophic overfitting", "x", "#616161"),
        ("○ hollow: still running (latest eval)", "circle-open", "#616161"),
        ("amber ring: CO warning", "circle-open", legible(WARNING_COLOR, dark)),
    ):
        data.append(
            {
                "type": "scatter",
                "x": [None],
                "y": [None],
                "name": name,
                "mode": "markers",
                "marker": {
                    "symbol": symbol,
                    "color": "#616161",
                    "size": 11,
                    "line": {"width": 2, "color": line},
                },
            }
        )
    x_axis = {"title": {"text": "ε (×1/255)" if natural_units else "ε"}}
    if len(grid) <= 16:
        x_axis["tickvals"] = grid  # ticks at the true ε, between the dodged marks
    layout = {
        "template": template_spec(dark),
        "height": 480,
        "uirevision": uirevision,
        "title": {"text": "Final PGD accuracy against ε: mean over seeds (line) and each run (marks)"},
        "xaxis": x_axis,
        "yaxis": {"title": {"text": "PGD accuracy"}, "range": SWEEP_ACCURACY_RANGE},
        "clickmode": "event",
        "legend": {"title": {"text": "method"}},
        "margin": {"t": 60, "b": 50},
    }
    return {"data": data, "layout": layout}


@dataclass(frozen=True)
class SweepCurve:
    """One run of a sweep, drawn in the facet of its ε."""

    method: str
    eps: float
    eps_label: str  # as the form writes it: 0.15, 8/255
    seed: int
    history: RunHistory


FACET_COLUMNS = 3
CURVES_TITLE = "PGD accuracy during training, per ε: dense probe (thin line) under the evaluations (marks)"
PGD_EVAL = next(metric for metric in METRICS if metric.column == "pgd_acc" and metric.source == "evals")
PGD_PROBE = next(metric for metric in METRICS if metric.column == "pgd_acc" and metric.source == "probes")


def _warning_mark(curve: SweepCurve, iteration: int, color: str, dark: bool, legend: bool) -> dict[str, Any]:
    """An amber triangle on a run's eval PGD accuracy where its CO early warning fired."""
    return {
        "type": "scatter",
        "x": [iteration],
        "y": [curve.history.evals[iteration]["pgd_acc"]],
        "name": "CO warning",
        "legendgroup": "CO warning",
        "showlegend": legend,
        "mode": "markers",
        "marker": {
            "symbol": "triangle-down",
            "size": 12,
            "color": legible(WARNING_COLOR, dark),
            "line": {"width": 1.5, "color": color},
        },
        "hovertemplate": f"{html.escape(curve.method)} · seed {curve.seed}: CO warning at iteration "
        "%{x:,}<extra></extra>",
    }


def sweep_curves_figure(curves: Sequence[SweepCurve], uirevision: str, dark: bool = False) -> Figure:
    """PGD accuracy against the iteration, a small panel per ε: each run's dense probe as a thin line under
    its evaluations' markers (the live view's traces), coloured by method, so where CO strikes at each ε
    shows next to the final numbers of the PGD-vs-ε chart.

    The panels share their iteration axis down a column and their accuracy axis along a row; only the
    bottom row labels iterations and only the first column accuracy.
    """
    grid = sorted({(curve.eps, curve.eps_label) for curve in curves})
    columns = min(FACET_COLUMNS, max(1, len(grid)))
    rows = max(1, -(-len(grid) // columns))
    layout = _facets(rows, columns, [f"ε = {html.escape(label)}" for _, label in grid])
    colors = method_colors(curve.method for curve in curves)
    data = []
    shown: set[str] = set()
    warning_legend = True  # the warnings' legend entry, once
    for curve in sorted(curves, key=lambda curve: (curve.method, curve.eps, curve.seed)):
        cell = grid.index((curve.eps, curve.eps_label)) + 1
        axes = {"xaxis": ref("x", cell), "yaxis": ref("y", cell)}
        frames = frames_of(curve.history)
        for metric in (PGD_EVAL, PGD_PROBE):  # the legend shows a method by its evaluations' line
            frame = frames[metric.source]
            if not has_values(frame, metric):
                continue
            label = f"{curve.method} · seed {curve.seed} · ε {curve.eps_label}"
            trace = metric_trace(frame, "iteration", metric, label, colors[curve.method], False, True, dark)
            trace.update(
                name=html.escape(curve.method),
                legendgroup=curve.method,
                showlegend=curve.method not in shown,
                **axes,
            )
            shown.add(curve.method)
            data.append(trace)
        warning = curve.history.warning
        if warning is not None and warning["iteration"] in curve.history.evals:
            mark = _warning_mark(curve, warning["iteration"], colors[curve.method], dark, warning_legend)
            data.append({**mark, **axes})
            warning_legend = False
    layout.update(
        template=template_spec(dark),
        height=260 * rows + 110,
        uirevision=uirevision,
        title={"text": CURVES_TITLE},
        legend={"x": 1.01, "xanchor": "left", "y": 1, "yanchor": "top", "title": {"text": "method"}},
        margin={"l": 60, "r": 10, "t": 80, "b": 50},
        hovermode="closest",
    )
    return {"data": data, "layout": layout}


def _facets(rows: int, columns: int, titles: list[str]) -> dict[str, Any]:
    """A rows × columns grid of panels, titled in reading order, laid out as make_subplots(shared_xaxes,
    shared_yaxes) would: each x axis matches its column's bottom one, each y axis its row's first one."""
    widths = domains(columns, 0.03)
    heights = domains(rows, 0.12 / rows)[::-1]  # top row first
    layout: dict[str, Any] = {"annotations": []}
    for row in range(rows):
        for column in range(columns):
            cell = row * columns + column + 1
            bottom, first = (rows - 1) * columns + column + 1, row * columns + 1
            x_axis = {"anchor": ref("y", cell), "domain": widths[column]}
            y_axis = {"anchor": ref("x", cell), "domain": heights[row]}
            y_axis["range"] = SWEEP_ACCURACY_RANGE
            if row < rows - 1:
                x_axis.update(matches=ref("x", bottom), showticklabels=False)
            else:
                x_axis["title"] = {"text": "iteration"}
            if column > 0:
                y_axis.update(matches=ref("y", first), showticklabels=False)
            else:
                y_axis["title"] = {"text": "PGD accuracy"}
            layout[axis("x", cell)], layout[axis("y", cell)] = x_axis, y_axis
            if cell <= len(titles):
                center = sum(widths[column]) / 2
                layout["annotations"].append(title(titles[cell - 1], center, heights[row][1], "center", 16))
    return layout
