"""app/inside.py: the model's first-layer filters and one image's perturbations and gradients, from
snapshot events; no Redis."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import co_run_events, config_event, read_back, snapshot_event
from test_app_figures import history_of

from app.inside import filter_mosaic, filters_figure, inside_figure
from app.text import snapshot_label


def test_history_keeps_snapshots_as_arrays_and_a_resume_drops_the_replayed_ones():
    events = co_run_events(total=100, co_at=60)
    for it in (20, 40, 60, 80):
        events.insert(
            events.index(next(e for e in events if e.get("iteration") == it + 1)), snapshot_event(it)
        )
    history = history_of(events)
    assert sorted(history.snapshots) == [20, 40, 60, 80]
    snap = history.snapshots[60]
    assert snap["image"].dtype == np.float32 and snap["image"].shape == (1, 16, 16)
    assert snap["filters"].shape == (16, 1, 3, 3) and snap["predictions"]["pgd"] == 5
    history.extend([config_event(start=50, total=100)])
    assert sorted(history.snapshots) == [20, 40]


@pytest.mark.parametrize(
    ("n_filters", "channels", "kernel", "grid"),
    [(4, 3, 3, (1, 4)), (16, 1, 3, (2, 8)), (32, 1, 5, (4, 8)), (64, 3, 3, (4, 16))],
)
def test_filter_mosaic_tiles_every_filter_on_its_own_scale(n_filters, channels, kernel, grid):
    snap = history_of([snapshot_event(20, channels=channels, size=32, n_filters=n_filters, kernel=kernel)])
    filters = snap.snapshots[20]["filters"]
    rows, columns = grid
    mosaic = filter_mosaic(filters, columns)
    assert mosaic.shape[:2] == (rows * (kernel + 1) - 1, columns * (kernel + 1) - 1)
    if channels == 3:  # an RGB image with white gaps
        assert mosaic.shape[2] == 3 and mosaic.dtype == np.uint8
        first = mosaic[:kernel, :kernel].astype(float) / 127.5 - 1
        np.testing.assert_allclose(first, filters[0].transpose(1, 2, 0) / np.abs(filters[0]).max(), atol=0.01)
    else:  # signed, each filter divided by its own max |w|, NaN between filters
        tiles = [
            mosaic[r * (kernel + 1) :][:kernel, c * (kernel + 1) :][:, :kernel]
            for r in range(rows)
            for c in range(columns)
        ]
        assert len(tiles) == n_filters
        assert all(np.nanmax(np.abs(tile)) == pytest.approx(1) for tile in tiles)
        assert np.isnan(mosaic[kernel]).all()  # the gap under the first row of filters
    fig = read_back(filters_figure(snap.snapshots[20], uirevision="r"))
    assert len(fig.data) == 1 and f"{n_filters} × {kernel}×{kernel}" in fig.layout.title.text


def test_inside_figure_shows_image_perturbations_and_gradients_with_predictions():
    snap = history_of([snapshot_event(40)]).snapshots[40]
    fig = read_back(inside_figure(snap, "digits", uirevision="r"))
    assert [trace.type for trace in fig.data] == ["heatmap"] * 5
    assert all(np.shape(trace.z) == (16, 16) for trace in fig.data)
    assert [trace.coloraxis for trace in fig.data] == ["coloraxis2"] + ["coloraxis"] * 4  # grey, then signed
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (-1, 1)
    titles = [annotation.text for annotation in fig.layout.annotations]
    assert titles[0] == "image · label 3<br>predicted 3 ✓"
    assert titles[2] == "PGD δ/ε<br>predicted 5 ✗"
    assert "cos with ∇ℓ at x: 0.25" in titles[4]
    assert fig.layout.yaxis.autorange == "reversed" and fig.layout.yaxis5.scaleanchor == "x5"


def test_inside_figure_draws_colour_images_as_rgb_with_class_names():
    snap = history_of([snapshot_event(40, channels=3, size=32, n_filters=64)]).snapshots[40]
    fig = read_back(inside_figure(snap, "cifar10", uirevision="r"))
    assert [trace.type for trace in fig.data] == ["image"] * 5
    assert np.shape(fig.data[0].z) == (32, 32, 3)
    np.testing.assert_array_equal(fig.data[0].z, np.rint(snap["image"].transpose(1, 2, 0) * 255))
    assert fig.layout.annotations[0].text == "image · label cat<br>predicted cat ✓"


def test_snapshot_slider_labels_mark_catastrophic_overfitting():
    assert [snapshot_label(it, 60) for it in (40, 60, 80)] == ["40", "60 · CO", "80 · after CO"]
    assert snapshot_label(1200, None) == "1,200"
