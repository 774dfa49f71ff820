"""Runs: every run in one sortable, filterable table; select rows to open, compare, export or delete them."""

from __future__ import annotations

import contextlib

import streamlit as st

from app import nav, state
from app.tables import COLUMNS, MISSING, ORDER, runs_frame
from jobs import api
from trainer.events import events_csv, events_jsonl

FILTERS = ("status", "method", "dataset", "model")


def render() -> None:
    r = state.connection()
    st.title("Runs")
    frame = runs_frame(api.list_runs(r))
    if frame.empty:
        st.info("No runs yet: launch one on the Launch page.")
        return
    frame["open"] = "live?run=" + frame["id"]
    columns = st.columns([*[2] * len(FILTERS), 3, 1.2], vertical_alignment="bottom")
    for column, name in zip(columns, FILTERS, strict=False):
        chosen = column.multiselect(name, sorted(frame[name].dropna().unique()), key=f"runs.filter.{name}")
        if chosen:
            frame = frame[frame[name].isin(chosen)]
    text = columns[-2].text_input("search", key="runs.search", placeholder="label, id or sweep")
    if text:
        haystack = frame["label"] + " " + frame["id"] + " " + frame["sweep"].fillna("")
        frame = frame[haystack.str.contains(text, case=False, regex=False)]
    columns[-1].button("Refresh", icon=":material/refresh:", key="runs.refresh")

    table_key = f"runs.table.{st.session_state.get('runs.version', 0)}"
    event = st.dataframe(
        frame,
        key=table_key,
        on_select="rerun",
        selection_mode="multi-row",
        hide_index=True,
        column_config=COLUMNS,
        column_order=ORDER,
        placeholder=MISSING,
        width="stretch",
    )
    st.caption(f"{len(frame)} run(s). Click a column header to sort; tick rows to act on them.")
    selected = frame.iloc[event.selection.rows]["id"].tolist()
    if selected:
        _actions(r, selected)


def _actions(r, selected: list[str]) -> None:
    columns = st.columns(5)
    if columns[0].button("Open live view", disabled=len(selected) != 1, key="runs.open"):
        nav.go("live", run=selected[0])
    if columns[1].button(f"Compare {len(selected)}", disabled=len(selected) < 2, key="runs.compare"):
        nav.go("compare", compare=",".join(selected))
    if len(selected) == 1:
        run_id = selected[0]
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
    with columns[4].popover(f"Delete {len(selected)}", icon=":material/delete:"):
        st.write("Deletes the runs with their events and checkpoints; a running one stops within a second.")
        if st.button("Yes, delete", type="primary", key="runs.delete"):
            _delete(r, selected)


def _delete(r, run_ids: list[str]) -> None:
    for run_id in run_ids:
        with contextlib.suppress(api.RunNotFound):  # already gone: the goal is reached
            api.delete(r, run_id)
        state.forget(run_id)
    st.session_state["runs.version"] = st.session_state.get("runs.version", 0) + 1  # a fresh selection
    st.rerun()


if __name__ == "__main__":  # run by st.navigation as a page script
    render()
