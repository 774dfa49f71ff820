"""Compare (`?compare=ID,ID`): runs overlaid on the same three panels, then side by side as small multiples.

Legend labels name each run by only the config fields in which the runs differ. While any run can still
change, the charts refresh like the live view.
"""

from __future__ import annotations

import streamlit as st

from app import forks, state
from app.chart import dark_theme, live_chart
from app.palette import run_colors
from app.panels import Series, View, run_figure, shared_axes
from app.refresh import while_live
from app.tables import COLUMNS, MISSING, MORE, ORDER, runs_frame
from app.text import distinguishing_labels, md_escape
from jobs import api

REFRESH_S = 2.0
SMALL_MULTIPLES_PER_ROW = 3
KEY = "compare.ids"


def render() -> None:
    r = state.connection()
    st.title("Compare runs")
    runs = {run.id: run for run in api.list_runs(r)}
    wanted = list(dict.fromkeys(run_id for run_id in st.query_params.get("compare", "").split(",") if run_id))
    missing = [run_id for run_id in wanted if run_id not in runs]
    if missing:
        st.warning(f"Not found (deleted?): {md_escape(', '.join(missing))}")
    state.follow_url(KEY, [run_id for run_id in wanted if run_id in runs])
    chosen = st.multiselect(
        "Runs to compare",
        list(runs),
        key=KEY,
        # no status here: these chips are drawn once per page, the refreshed status is on each run's panel
        format_func=lambda run_id: f"{runs[run_id].config.label()} · {run_id}",
        placeholder="Pick two or more runs (or select them on the Runs page)",
    )
    if chosen:  # the URL always shares what is shown
        st.query_params["compare"] = ",".join(chosen)
    else:
        st.query_params.pop("compare", None)
    state.shown_in_url(KEY, chosen)
    if len(chosen) < 2:
        st.info("Pick at least two runs to compare.")
        return
    live = any(runs[run_id].status not in api.TERMINAL for run_id in chosen)
    while_live(_charts, live, REFRESH_S, chosen)


def _charts(run_ids: list[str]) -> bool:
    """The overlay, the table and the small multiples; returns whether any run can still change."""
    r = state.connection()
    runs = [run for run in (api.get_run(r, run_id) for run_id in run_ids) if run is not None]
    labels = distinguishing_labels([run.config for run in runs], [run.id for run in runs])
    colors = run_colors([run.id for run in runs])
    series = [
        Series(label, state.history(r, run), colors[run.id]) for label, run in zip(labels, runs, strict=True)
    ]
    revision = sum(one.history.n_events for one in series)
    view = View(dark=dark_theme())
    axes = shared_axes(series)
    # the iterations fixed, not left to autorange: a fork's label, anchored left of its line, would widen it
    iterations = {"xaxis": axes["xaxis"]}
    uirevision = "compare:" + ",".join(run_ids)
    overlay, narrow = (
        run_figure(series, uirevision=uirevision, view=view, axes=iterations, compact=compact, height=height)
        for compact, height in ((False, 760), (True, 900))
    )
    for figure, compact in ((overlay, False), (narrow, True)):
        forks.mark_forks(figure, runs, labels, compact)
    name = f"codash-compare-{'-'.join(run_ids)}-overlay"
    live_chart(overlay, "compare.overlay", name, revision, narrow=narrow)
    table = runs_frame(runs)
    table.insert(1, "legend", labels)
    in_colour = table.style.apply(lambda _: [f"color: {colors[run.id]}" for run in runs], subset=["legend"])
    st.dataframe(
        in_colour,
        hide_index=True,
        column_config=COLUMNS,
        column_order=["legend", *(c for c in ORDER + MORE if c not in ("label", "open"))],
        placeholder=MISSING,
    )

    st.subheader("Side by side", anchor=False)
    pairs = list(zip(series, runs, strict=True))
    for start in range(0, len(pairs), SMALL_MULTIPLES_PER_ROW):
        row = pairs[start : start + SMALL_MULTIPLES_PER_ROW]
        for column, (one, run) in zip(st.columns(SMALL_MULTIPLES_PER_ROW), row, strict=False):
            with column:
                st.markdown(f"**{md_escape(one.label)}** · {md_escape(run.status)}")
                if not one.history.n_events:
                    st.caption("No events yet.")
                    continue
                figure = run_figure(
                    [one], uirevision=f"small:{run.id}", height=560, compact=True, axes=axes, view=view
                )
                live_chart(
                    figure,
                    f"compare.small.{run.id}",
                    f"codash-{run.id}-accuracy-alignment-loss",
                    one.history.n_events,
                )
    return any(run.status not in api.TERMINAL for run in runs)


if __name__ == "__main__":  # run by st.navigation as a page script
    render()
