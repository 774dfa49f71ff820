"""The dashboard's colours, one place for each: metrics, methods, runs, CO and its warning, and how a colour
is lightened to stay legible on the dark theme."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

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


def template(dark: bool) -> str:
    """Plotly's template to match Streamlit's theme (the chart's background is transparent either way)."""
    return "plotly_dark" if dark else "plotly_white"


def method_colors(methods: Iterable[str]) -> dict[str, str]:
    """A sweep's colour per method, in name order: the same on its PGD-vs-ε chart and its facets."""
    return {
        method: METHOD_COLORS[index % len(METHOD_COLORS)] for index, method in enumerate(sorted(set(methods)))
    }
