"""A final result against a setting, across runs: the Runs page's hyperparameter view.

One mark per run, coloured by method (GradAlign's λ is a setting here, not part of the method), and per
method the mean of the runs that share a setting (their seeds) with the spread as error bars: "final PGD
accuracy against λ" reads as a curve with its seed-to-seed noise.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from app.palette import method_colors
from app.spec import Figure, template_spec
from app.text import differing_fields, method_family

if TYPE_CHECKING:
    from jobs.api import Run

# The results a run ends with, by their Runs-table column (app.tables.runs_frame), and how each is drawn.
RESULTS = {"PGD acc": ".0%", "clean acc": ".0%", "AA acc": ".0%", "CO iteration": ",d"}


def numeric_settings(runs: Sequence[Run]) -> list[str]:
    """The config fields the runs differ in and that are numbers in every run that reads them: what a
    result can be plotted against."""

    def number(value: object) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    return [
        field
        for field in differing_fields([run.config for run in runs])
        if all(number(getattr(run.config, field)) for run in runs)
    ]


def result_points(runs: Sequence[Run], table: pd.DataFrame, result: str, setting: str) -> pd.DataFrame:
    """A row per run that has the result: its method, the setting's value and the result."""
    values = table.set_index("id")[result]
    rows = [
        {
            "id": run.id,
            "label": run.config.label(),
            "method": method_family(run.config),
            "x": getattr(run.config, setting),
            "y": values.get(run.id),
            "seed": run.config.seed,
        }
        for run in runs
    ]
    points = pd.DataFrame(rows, columns=["id", "label", "method", "x", "y", "seed"])
    return points[points["y"].notna()].astype({"x": float, "y": float})


def result_figure(points: pd.DataFrame, result: str, setting: str, dark: bool = False) -> Figure:
    """The runs' marks and, per method, the mean at each setting with the runs' standard deviation."""
    data = []
    colors = method_colors(points["method"])
    for method, group in points.groupby("method", sort=True):
        color = colors[method]
        summary = group.groupby("x")["y"].agg(["mean", "std", "count"]).reset_index()
        data.append(
            {
                "type": "scatter",
                "x": summary["x"].to_numpy(),
                "y": summary["mean"].to_numpy(),
                "error_y": {"type": "data", "array": summary["std"].fillna(0).to_numpy(), "visible": True},
                "mode": "lines",
                "line": {"color": color, "width": 2},
                "name": f"{html.escape(method)}: mean over runs",
                "legendgroup": method,
                "customdata": summary["count"].to_numpy(),
                "hovertemplate": f"{html.escape(method)} · {setting}=%{{x:g}}: mean %{{y:{RESULTS[result]}}} "
                "over %{customdata} run(s)<extra></extra>",
            }
        )
        data.append(
            {
                "type": "scatter",
                "x": group["x"].to_numpy(),
                "y": group["y"].to_numpy(),
                "mode": "markers",
                "marker": {"color": color, "size": 9, "line": {"width": 1, "color": "white"}},
                "name": html.escape(method),
                "legendgroup": method,
                "customdata": group[["id", "seed"]].to_numpy(),
                "text": [html.escape(label) for label in group["label"]],
                "hovertemplate": f"%{{text}} · seed %{{customdata[1]}} · %{{customdata[0]}}<br>"
                f"{setting}=%{{x:g}}: %{{y:{RESULTS[result]}}}<extra></extra>",
            }
        )
    y_axis = {"title": {"text": f"final {result}" if result != "CO iteration" else result}}
    if RESULTS[result].endswith("%"):
        y_axis.update(tickformat=".0%", rangemode="tozero")
    layout = {
        "template": template_spec(dark),
        "paper_bgcolor": "rgba(0,0,0,0)",
        "height": 420,
        "margin": {"l": 60, "r": 20, "t": 30, "b": 50},
        "xaxis": {"title": {"text": setting}},
        "yaxis": y_axis,
        "legend": {"orientation": "h", "y": -0.2},
        "hovermode": "closest",
    }
    return {"data": data, "layout": layout}
