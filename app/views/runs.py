"""Runs: every run in one sortable, filterable table; tick rows to open, compare, tag, export or delete them.

The table refreshes itself (app.refresh) while any run can still change, so status, progress and results
are never stale; the filters and the selection stay as they are.
"""

from __future__ import annotations

import contextlib

import streamlit as st

from app import nav, notes, state
from app.export import runs_zip
from app.refresh import while_live
from app.tables import COLUMNS, MISSING, MORE, ORDER, runs_frame
from jobs import api
from trainer.events import events_csv, events_jsonl

FILTERS = ("status", "method", "dataset", "model")
REFRESH_S = 2.0
SEARCHED = ("label", "id", "sweep", "tags", "note")


def render() -> None:
    r = state.connection()
    st.title("Runs")
    runs = api.list_runs(r)
    if not runs:
        st.info("No runs yet: launch one on the Launch page.")
        return
    frame = runs_frame(runs)
    # Refresh on the left: the table's own toolbar (search, download, full screen) opens at its top right
    columns = st.columns([1.2, *[2] * len(FILTERS), 3], vertical_alignment="bottom")
    columns[0].button("Refresh", icon=":material/refresh:", key="runs.refresh")
    filters = {
        name: column.multiselect(name, sorted(frame[name].dropna().unique()), key=f"runs.filter.{name}")
        for column, name in zip(columns[1:], FILTERS, strict=False)
    }
    text = columns[-1].text_input("search", key="runs.search", placeholder="label, id, sweep, tag or note")
    extra = st.multiselect("more columns", MORE, key="runs.columns", placeholder="add columns")
    live = any(run.status not in api.TERMINAL for run in runs)
    while_live(_table, live, REFRESH_S, filters, text, extra)


def _table(filters: dict[str, list[str]], text: str, extra: list[str]) -> bool:
    """The table and the actions on its selection; returns whether any run can still change."""
    r = state.connection()
    runs = api.list_runs(r)
    frame = runs_frame(runs)
    frame["open"] = "live?run=" + frame["id"]
    for name, chosen in filters.items():
        if chosen:
            frame = frame[frame[name].isin(chosen)]
    if text:
        haystack = frame[list(SEARCHED)].fillna("").astype(str).agg(" ".join, axis=1)
        frame = frame[haystack.str.contains(text, case=False, regex=False)]
    table_key = f"runs.table.{st.session_state.get('runs.version', 0)}"
    event = st.dataframe(
        frame,
        key=table_key,
        on_select="rerun",
        selection_mode="multi-row",
        hide_index=True,
        column_config=COLUMNS,
        column_order=ORDER + extra,
        placeholder=MISSING,
        width="stretch",
    )
    st.caption(f"{len(frame)} run(s). Click a column header to sort; tick rows to act on them.")
    selected = frame.iloc[event.selection.rows]["id"].tolist()
    if selected:
        by_id = {run.id: run for run in runs}
        _actions(r, [by_id[run_id] for run_id in selected if run_id in by_id])
    return any(run.status not in api.TERMINAL for run in runs)


def _actions(r, selected: list[api.Run]) -> None:
    ids = [run.id for run in selected]
    columns = st.columns(6)
    if columns[0].button("Open live view", disabled=len(ids) != 1, key="runs.open"):
        nav.go("live", run=ids[0])
    if columns[1].button(f"Compare {len(ids)}", disabled=len(ids) < 2, key="runs.compare"):
        nav.go("compare", compare=",".join(ids))
    if len(ids) == 1:
        run_id = ids[0]
        columns[2].download_button(
            "Events as CSV",
            data=lambda: events_csv(api.all_events(r, run_id)),
            file_name=f"codash-{run_id}.csv",
            mime="text/csv",
            key="runs.csv",
        )
        columns[3].download_button(
            "Events as JSON Lines",
            data=lambda: events_jsonl(api.all_events(r, run_id)),
            file_name=f"codash-{run_id}.jsonl",
            mime="application/jsonl",
            key="runs.jsonl",
        )
    columns[4].download_button(
        f"Export {len(ids)} as zip",
        data=lambda: runs_zip(selected, lambda run_id: api.all_events(r, run_id)),
        file_name=f"codash-{len(ids)}-runs.zip" if len(ids) > 1 else f"codash-{ids[0]}.zip",
        mime="application/zip",
        key="runs.zip",
        help="runs.csv (the table, tags and notes included) and each run's record and events",
    )
    with columns[5].popover(f"Delete {len(ids)}", icon=":material/delete:"):
        st.write("Deletes the runs with their events and checkpoints; a running one stops within a second.")
        if st.button("Yes, delete", type="primary", key="runs.delete"):
            _delete(r, ids)
    if len(selected) == 1:
        notes.editor(r, selected[0], "runs")


def _delete(r, run_ids: list[str]) -> None:
    for run_id in run_ids:
        with contextlib.suppress(api.RunNotFound):  # already gone: the goal is reached
            api.delete(r, run_id)
        state.forget(run_id)
    st.session_state["runs.version"] = st.session_state.get("runs.version", 0) + 1  # a fresh selection
    st.rerun()


if __name__ == "__main__":  # run by st.navigation as a page script
    render()
