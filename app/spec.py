"""Plotly figures as plotly.js reads them, built as plain dicts: {"data": [traces], "layout": {...}}.

plotly.py's object model validates every property as it is set and copies the whole template into every
figure: 0.2 s for one run's three panels, 0.14 s for "inside the model", paid on every refresh of a live
page. Built as dicts they take 0.02 s; the tests read every such figure back through plotly.py, which
validates it (tests/conftest.py).
"""

from __future__ import annotations

import functools
from typing import Any

from app.palette import template

Figure = dict[str, Any]


def domains(count: int, spacing: float) -> list[list[float]]:
    """Where `count` subplots side by side (or stacked, top first) sit along [0, 1] with `spacing` between
    two, as make_subplots places them: [start, end] each, left to right (reversed: top to bottom)."""
    size = (1 - spacing * (count - 1)) / count
    return [[index * (size + spacing), min(1.0, index * (size + spacing) + size)] for index in range(count)]


def ref(letter: str, index: int) -> str:
    """The index-th (1-based) x or y axis as traces, shapes and annotations name it: "x", "y2", ..."""
    return f"{letter}{'' if index == 1 else index}"


def axis(letter: str, index: int) -> str:
    """The index-th (1-based) x or y axis as the layout keys it: "xaxis", "yaxis2", ..."""
    return ref(letter, index).replace(letter, f"{letter}axis", 1)


def title(text: str, x: float, y: float, xanchor: str, size: int) -> dict[str, Any]:
    """A subplot's title: an annotation whose bottom sits at `y` (its subplot's top), in paper coordinates."""
    return {
        "text": text,
        "x": x,
        "xanchor": xanchor,
        "xref": "paper",
        "y": y,
        "yanchor": "bottom",
        "yref": "paper",
        "showarrow": False,
        "font": {"size": size},
    }


@functools.cache
def template_spec(dark: bool) -> dict[str, Any]:
    """palette.template(dark) as plotly.js reads it: made once, read only."""
    import plotly.io as pio

    return pio.templates[template(dark)].to_plotly_json()


@functools.cache
def colorscale(name: str) -> list[list[Any]]:
    """A colour scale of plotly.py's by name, as [position, colour] pairs (plotly.js knows other names)."""
    import plotly.colors

    return plotly.colors.get_colorscale(name)
