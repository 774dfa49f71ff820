"""Inside the model, from snapshot events: the first-layer filters as a mosaic, and one test image with its
FGSM and PGD perturbations and the loss gradients at x and at a random x+η."""

from __future__ import annotations

from typing import Any

import numpy as np

from app import spec
from app.spec import Figure, axis, colorscale, domains, ref, template_spec

CLASS_NAMES = {
    "cifar10": ("airplane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}


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
) -> Figure:
    """The first layer's filters as one tiled image (the paper's Fig. 4), each filter on its own scale.

    `narrow` (a phone): the title on two lines, below the toolbar's row.
    """
    filters = snapshot["filters"]
    n, channels, k, _ = filters.shape
    columns = filter_columns(n)
    mosaic = filter_mosaic(filters, columns)
    if channels == 3:
        trace = {"type": "image", "z": mosaic, "hoverinfo": "skip"}
    else:
        trace = {
            "type": "heatmap",
            "z": mosaic,
            "colorscale": colorscale(SIGNED_SCALE),
            "zmin": -1,
            "zmax": 1,
            "showscale": False,
            "hoverongaps": False,
            "hovertemplate": "w / max|w| of its filter: %{z:.2f}<extra></extra>",
        }
    rows = -(-n // columns)
    what = "RGB, 0 as grey" if channels == 3 else ("red > 0 > blue" if channels == 1 else "channel mean")
    gap = "<br>" if narrow else " "
    top = TOOLBAR_PX + 50 if narrow else 40
    height = top + 30 + rows * 110
    title = {"text": f"First-layer filters: {n} × {k}×{k}{gap}({what}; each on its own scale)", "x": 0}
    if narrow:
        title.update(yref="container", y=1 - TOOLBAR_PX / height, yanchor="top")
    layout = {
        "template": template_spec(dark),
        "height": height,
        "uirevision": uirevision,
        "title": title,
        "margin": {"l": 10, "r": 10, "t": top, "b": 10},
        "xaxis": {"visible": False, "constrain": "domain"},
        "yaxis": _image_y_axis(1),
    }
    return {"data": [trace], "layout": layout}


def inside_figure(
    snapshot: dict[str, Any], dataset: str, uirevision: str, narrow: bool = False, dark: bool = False
) -> Figure:
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
    widths = domains(columns, 0.08 if narrow else 0.03)
    heights = domains(rows, 0.12)[::-1]  # top row first
    data, titles = [], []
    layout: dict[str, Any] = {
        "template": template_spec(dark),
        "height": 330 if not narrow else 260 * rows + TOOLBAR_PX,
        "uirevision": uirevision,
        "margin": {"l": 10, "r": 10, "t": 70 + (TOOLBAR_PX if narrow else 0), "b": 10},
        "coloraxis": {
            "colorscale": colorscale(SIGNED_SCALE),
            "cmin": -1,
            "cmax": 1,
            "colorbar": {"thickness": 12},
        },
        "coloraxis2": {"colorscale": colorscale("gray"), "cmin": 0, "cmax": 1, "showscale": False},
    }
    for index, (key, title) in enumerate(panels, start=1):
        row, column = divmod(index - 1, columns)
        x, y = ref("x", index), ref("y", index)
        data.append({**_array_trace(snapshot[key], signed=key != "image"), "xaxis": x, "yaxis": y})
        layout[axis("x", index)] = {
            "anchor": y,
            "domain": widths[column],
            "visible": False,
            "constrain": "domain",
        }
        layout[axis("y", index)] = {"anchor": x, "domain": heights[row], **_image_y_axis(index)}
        titles.append(spec.title(title, sum(widths[column]) / 2, heights[row][1], "center", 13))
    layout["annotations"] = titles
    return {"data": data, "layout": layout}


def _array_trace(array: np.ndarray, signed: bool) -> dict[str, Any]:
    """[C][H][W] as a heatmap (one channel: signed on the diverging scale, else grey) or an RGB image."""
    if array.shape[0] == 3:
        rgb = _rgb(array) if signed else np.clip(np.rint(array * 255), 0, 255).astype(np.uint8)
        return {"type": "image", "z": rgb.transpose(1, 2, 0), "hoverinfo": "skip"}
    return {
        "type": "heatmap",
        "z": array.mean(axis=0),
        "coloraxis": "coloraxis" if signed else "coloraxis2",
        "hovertemplate": "%{z:.2f}<extra></extra>",
    }


def _image_y_axis(index: int) -> dict[str, Any]:
    """Square pixels (scaled to the index-th x axis), row 0 on top, no ticks."""
    return {
        "visible": False,
        "autorange": "reversed",
        "scaleanchor": ref("x", index),
        "constrain": "domain",
    }
