"""A Plotly chart that updates in place, for charts that refresh while a run trains.

st.plotly_chart identifies a chart by a hash of its figure, so every refresh with new points mounts a new
chart: the plot is rebuilt and the user's zoom is lost, whatever layout.uirevision says. This component
keeps one plot per key and feeds each new figure to Plotly.react, which honours uirevision.
The frontend is the page below plus plotly.js's cartesian bundle (app/vendor: the plotly.js version the
plotly package ships, with the trace types codash draws: 1.5 MB to parse in each chart's frame instead of
the full bundle's 4.8 MB), served together from a private directory each dashboard process builds for
itself. The page lives in this module, not in a data file, so every way of installing the package
(editable, wheel, Docker image) carries it.
"""

from __future__ import annotations

import atexit
import functools
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import plotly.io as pio
import streamlit as st
import streamlit.components.v1 as components

from app.spec import Figure

PLOTLY_JS = Path(__file__).parent / "vendor" / "plotly-cartesian.min.js"
# the trace types in that bundle (its package's README); a figure with any other would draw nothing
BUNDLED_TRACES = frozenset(
    {"bar", "box", "contour", "heatmap", "histogram", "histogram2d", "histogram2dcontour", "image", "pie"}
    | {"scatter", "scatterternary", "violin"}
)
FRONTEND = """<!doctype html>
<!-- codash's live Plotly chart: one persistent plot updated with Plotly.react, so layout.uirevision keeps the
     user's zoom and legend choices across refreshes and nothing is torn down (no flicker).
     Speaks Streamlit's custom-component protocol (v1) directly: no build step, no npm. -->
<html>
<head>
<meta charset="utf-8">
<script src="plotly.min.js"></script>
<style>
  html, body { margin: 0; padding: 0; background: transparent; overflow: hidden; }
  #chart { width: 100%; }
</style>
</head>
<body>
<div id="chart"></div>
<script>
  const chart = document.getElementById("chart");
  const NARROW_PX = 640;  // Streamlit stacks columns below this width: a phone, a split screen
  let lastArgs = null;
  let lastSpec = null;
  let clickBound = false;

  function send(type, payload) {
    window.parent.postMessage(Object.assign({ isStreamlitMessage: true, type: type }, payload), "*");
  }

  function onClick(event) {
    const point = event.points && event.points[0];
    if (!point || point.customdata === undefined) return;
    const data = Array.isArray(point.customdata) ? point.customdata : [point.customdata];
    // a fresh value on every click, so clicking the same point twice still reaches Python
    send("streamlit:setComponentValue", { value: { customdata: data, at: Date.now() }, dataType: "json" });
  }

  function onRelayout(update) {
    // a zoom or pan of the (shared) iteration axis, or a reset: sent so the page can keep it in its URL
    for (const axis of ["xaxis", "xaxis2", "xaxis3"]) {
      let range;
      const low = update[axis + ".range[0]"];
      if (low !== undefined) range = [low, update[axis + ".range[1]"]];
      else if (Array.isArray(update[axis + ".range"])) range = update[axis + ".range"];
      else if (update[axis + ".autorange"]) range = null;
      else continue;
      send("streamlit:setComponentValue", { value: { x_range: range, at: Date.now() }, dataType: "json" });
      return;
    }
  }

  function render(args) {
    lastArgs = args;
    // the narrow variant (when given) is the same data laid out for a small screen
    const spec = args.narrow && window.innerWidth < NARROW_PX ? args.narrow : args.spec;
    if (spec === lastSpec) return;
    lastSpec = spec;
    chart.dataset.layout = spec === args.spec ? "wide" : "narrow";
    const figure = JSON.parse(spec);
    const layout = Object.assign({}, figure.layout, { autosize: true });
    const config = Object.assign({ responsive: true }, args.config);
    Plotly.react(chart, figure.data, layout, config).then(function () {
      chart.dataset.revision = String(args.revision);
      if (!clickBound) {
        chart.on("plotly_click", onClick);
        chart.on("plotly_relayout", onRelayout);
        clickBound = true;
      }
    });
    send("streamlit:setFrameHeight", { height: layout.height || 450 });
  }

  window.addEventListener("resize", function () {
    if (lastArgs) render(lastArgs);
  });
  window.addEventListener("message", function (event) {
    if (event.data && event.data.type === "streamlit:render") render(event.data.args);
  });
  send("streamlit:componentReady", { apiVersion: 1 });
</script>
</body>
</html>
"""


@functools.cache
def _component() -> Any:
    """Assemble the frontend once per process, in a directory of its own (mkdtemp: 0700, this user's).

    A shared, guessable path in /tmp would let another user plant the page whose JavaScript runs in the
    dashboard's origin; a private copy (1.5 MB, copied once) leaves nothing to trust.
    """
    directory = Path(tempfile.mkdtemp(prefix="codash-chart-"))
    shutil.copy(PLOTLY_JS, directory / "plotly.min.js")
    (directory / "index.html").write_text(FRONTEND)
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return components.declare_component("live_plotly", path=str(directory))


def dark_theme() -> bool:
    """Whether Streamlit shows its dark theme (charts then use a dark template)."""
    return st.context.theme.type == "dark"


def plot_config(download_name: str) -> dict[str, Any]:
    """Plotly's toolbar for a private dashboard: no upload to Plotly's cloud ("Share chart…", on by default in
    this plotly.js), no logo link; the PNG download is kept, saved as `download_name`.png (made file-safe).
    """
    filename = re.sub(r"[^A-Za-z0-9._-]+", "-", download_name).strip("-.")[:120] or "codash-chart"
    return {
        "displaylogo": False,
        "showSendToCloud": False,
        "showEditInChartStudio": False,
        "modeBarButtonsToRemove": ["sendChartToCloud", "sendDataToCloud"],
        "toImageButtonOptions": {"format": "png", "filename": filename, "scale": 2},
    }


def live_chart(
    fig: Figure, key: str, download_name: str, revision: int = 0, narrow: Figure | None = None
) -> dict[str, Any]:
    """Show `fig`, updating the chart already on screen under `key`; returns the user's last action on it:
    {"customdata": [...]} for a click on a point, {"x_range": [a, b] or None} for a zoom or its reset, {}.

    `download_name` names the PNG the toolbar saves (say which run and which panel). `revision` (e.g. the
    number of events drawn) is written on the chart element, so a browser test can tell which data the
    chart is showing. `narrow`, the same chart laid out for a phone, is shown where the chart is narrower
    than 640 px (and swapped in and out as the window is resized).
    """
    for figure in (fig, narrow or {}):
        missing = {trace.get("type", "scatter") for trace in figure.get("data", [])} - BUNDLED_TRACES
        if missing:
            raise ValueError(f"trace type(s) {sorted(missing)} are not in the dashboard's plotly.js bundle")
    config = plot_config(download_name)
    action = _component()(
        spec=pio.to_json(fig, validate=False),
        narrow=pio.to_json(narrow, validate=False) if narrow is not None else None,
        config=config,
        revision=revision,
        key=key,
        default=None,
    )
    return action if isinstance(action, dict) else {}
