"""Vertical lines across the three panels: catastrophic overfitting (with the band its onset falls in), the
CO early warning, and (drawn by app.forks) where a fork starts. Each line and label is named ("co",
"co_warning", "fork") so that a reader of the figure finds them by name."""

from __future__ import annotations

import html

from app.history import RunHistory
from app.spec import Figure, ref

ROWS = (1, 2, 3)  # the panels, top to bottom: accuracy, alignment, loss, each with its y axis ref("y", row)


def co_marker(
    fig: Figure,
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
        fig["layout"]["shapes"] += [
            {
                "type": "rect",
                "x0": band[0],
                "x1": band[1],
                "xref": "x",
                "y0": 0,
                "y1": 1,
                "yref": f"{ref('y', row)} domain",
                "fillcolor": color,
                "opacity": 0.12,
                "line": {"width": 0},
                "layer": "below",
            }
            for row in ROWS
        ]


def warning_marker(
    fig: Figure,
    x: float,
    history: RunHistory,
    color: str,
    label: str,
    overlay: bool,
    stack: int = 0,
    compact: bool = False,
) -> None:
    """A dash-dot line at the CO early warning's evaluation (drawn at `x`), labelled to the left of it (CO's
    label is to the right of its own line, which comes later); the label says too when an autopilot run
    turned GradAlign on there."""
    iteration = history.warning["iteration"]
    short = f"warning @ {iteration:,}"
    switched = " · GradAlign on" if history.rescue is not None else ""
    if not overlay:
        text = f"CO warning @ {iteration:,}{switched}"
    else:
        text = short if compact else f"warning · {html.escape(label)} @ {iteration:,}{switched}"
    vertical_marker(fig, x, color, "dashdot", (text, short), "top left", stack, name="co_warning")


def panel_lines(fig: Figure, x: float, line: dict, name: str) -> None:
    """A vertical line at `x` across each of the three panels, in `line`'s style, named `name`."""
    fig["layout"]["shapes"] += [
        {
            "type": "line",
            "x0": x,
            "x1": x,
            "xref": "x",
            "y0": 0,
            "y1": 1,
            "yref": f"{ref('y', row)} domain",
            "line": line,
            "name": name,
        }
        for row in ROWS
    ]


def vertical_marker(
    fig: Figure,
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
    left" of the line. Drawn against the one x axis every panel shares. `name` names the
    lines and labels ("co", "co_warning", "fork"), for whoever reads the figure back."""
    top = position.startswith("top")
    panel_lines(fig, x, {"color": color, "dash": dash, "width": 2}, name)
    for row in ROWS:
        panel = f"{ref('y', row)} domain"
        fig["layout"]["annotations"].append(
            {
                "x": x,
                "xref": "x",
                "y": 1 if top else 0,
                "yref": panel,
                "text": texts[0] if row == 1 else texts[1],
                "showarrow": False,
                "xanchor": "left" if position.endswith("right") else "right",
                "yanchor": "top" if top else "bottom",
                "font": {"color": color, "size": 12},
                "bgcolor": "rgba(255,255,255,0.8)",
                "yshift": -16 * stack,
                "name": name,
            }
        )
