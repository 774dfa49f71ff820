"""Runs: every run in one sortable, filterable table; tick rows to open, compare, tag, export or delete them.

The table refreshes itself (app.refresh) while any run can still change, so status, progress and results
are never stale; the filters and the selection stay as they are.
"""

from __future__ import annotations

import contextlib

import streamlit as st

from app import forks, nav, notes, state
from app.chart import dark_theme, live_chart
from app.export import runs_zip
from app.refresh import while_live
from app.results import RESULTS, numeric_settings, result_figure, result_points
from app.tables import COLUMNS, MISSING, MORE, ORDER, runs_frame
from app.text import differing_fields, md_escape
from jobs import api
from trainer.events import events_csv, events_jsonl

FILTERS = ("status", "method", "dataset", "model")
REFRESH_S = 2.0
PICKED = "runs.picked"  # the ids of a group ticked at once, until the table next draws
SHOWN = "runs.shown"  # the ids of the table's rows as last drawn, by table key
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
    columns = st.columns([1.2, *[2] * len(FILTERS), 2, 3], vertical_alignment="bottom")
    columns[0].button("Refresh", icon=":material/refresh:", key="runs.refresh")
    filters = {
        name: column.multiselect(name, sorted(frame[name].dropna().unique()), key=f"runs.filter.{name}")
        for column, name in zip(columns[1:], FILTERS, strict=False)
    }
    text = columns[-1].text_input("search", key="runs.search", placeholder="label, id, sweep, tag or note")
    lineage = forks.lineage_choice(runs, columns[-2])
    extra = st.multiselect("more columns", MORE, key="runs.columns", placeholder="add columns")
    extra = ["fork of", *(c for c in extra if c != "fork of")] if lineage else extra
    while_live(_table, True, REFRESH_S, filters, text, extra, lineage)


def _table(filters: dict[str, list[str]], text: str, extra: list[str], lineage: str | None) -> bool:
    """The table and the actions on its selection. It always refreshes (returns True): runs arrive from
    other tabs, the CLI and sweeps even when every run shown has ended."""
    r = state.connection()
    runs = api.list_runs(r)
    frame = runs_frame(runs)
    frame["open"] = "live?run=" + frame["id"]
    if lineage:
        frame = frame[frame["id"].isin({run.id for run in api.lineage(r, lineage)})]
    for name, chosen in filters.items():
        if chosen:
            frame = frame[frame[name].isin(chosen)]
    if text:
        haystack = frame[list(SEARCHED)].fillna("").astype(str).agg(" ".join, axis=1)
        frame = frame[haystack.str.contains(text, case=False, regex=False)]
    by_id = {run.id: run for run in runs}
    shown = [by_id[run_id] for run_id in frame["id"]]
    _group_choice(shown)
    settings = [name for name in differing_fields([run.config for run in shown]) if name not in frame]
    frame = frame.assign(**{name: [_cell(getattr(run.config, name)) for run in shown] for name in settings})
    table_key = f"runs.table.{st.session_state.get('runs.version', 0)}"
    selected_ids = _keep_ticks_on_their_runs(table_key, frame["id"].tolist())
    st.dataframe(
        frame,
        key=table_key,
        on_select="rerun",
        selection_mode="multi-row",
        hide_index=True,
        column_config=COLUMNS,
        column_order=ORDER + settings + extra,
        placeholder=MISSING,
        width="stretch",
    )
    differ = f" Also shown, the settings these runs differ in: {', '.join(settings)}." if settings else ""
    st.caption(f"{len(frame)} run(s). Click a column header to sort; tick rows to act on them.{differ}")
    if selected_ids:
        _actions(r, [by_id[run_id] for run_id in selected_ids])
    with st.expander("A final result against a setting, across the runs shown"):
        _results(shown, frame)
    return True


def _cell(value: object) -> object:
    """A setting as a table cell: numbers stay numbers (sortable), anything else is its text."""
    return value if isinstance(value, int | float | str) or value is None else str(value)


def _group_choice(shown: list[api.Run]) -> None:
    """Tick a whole group at once: a sweep, a lineage (a run, its ancestors and its forks) or a tag."""
    groups = run_groups(shown)
    if not groups:
        return
    st.selectbox(
        "tick a group",
        list(groups),
        index=None,
        key="runs.group",
        placeholder="tick a sweep, a lineage or a tag at once",
        format_func=lambda name: f"{name} ({len(groups[name])} runs)",
        on_change=_tick_group,
        args=(groups,),
    )


def _tick_group(groups: dict[str, list[str]]) -> None:
    st.session_state[PICKED] = groups[st.session_state["runs.group"]]
    st.session_state["runs.group"] = None  # a choice, not a state: the ticks show what is selected


def run_groups(runs: list[api.Run]) -> dict[str, list[str]]:
    """The groups among `runs` with two or more runs, by name: sweeps, lineages (by their root) and tags."""
    by_id = {run.id: run for run in runs}

    def root(run: api.Run) -> api.Run:
        while run.config.parent in by_id:
            run = by_id[run.config.parent]
        return run

    groups: dict[str, list[str]] = {}
    for run in runs:
        names = [f"sweep {run.sweep_id}"] if run.sweep_id else []
        if run.config.parent or any(one.config.parent == run.id for one in runs):
            names.append(f"lineage of {root(run).config.label()} · {root(run).id}")
        names += [f"tag {tag}" for tag in run.tags]
        for name in names:
            groups.setdefault(name, []).append(run.id)
    return {name: ids for name, ids in sorted(groups.items()) if len(ids) > 1}


def _results(shown: list[api.Run], frame) -> None:
    """Any final result against any setting the shown runs differ in (app.results)."""
    settings = numeric_settings(shown)
    if not settings:
        st.caption("The runs shown differ in no numeric setting: filter or search for runs that do.")
        return
    left, right = st.columns(2)
    result = left.selectbox("result", list(RESULTS), key="runs.result")
    setting = right.selectbox("setting", settings, key="runs.setting")
    points = result_points(shown, frame, result, setting)
    if points.empty:
        st.caption(f"No run shown has a final {result} yet.")
        return
    live_chart(
        result_figure(points, result, setting, dark_theme()),
        "runs.results",
        f"codash-{result}-against-{setting}",
        revision=len(points),
    )
    st.caption(
        f"{len(points)} run(s), one mark each, coloured by method; a line joins each method's mean over the "
        "runs at a setting (their seeds), with their standard deviation as error bars."
    )


def _keep_ticks_on_their_runs(table_key: str, ids: list[str]) -> list[str]:
    """The ticked runs, by id, with the table's ticks moved to where those runs are now.

    The browser reports ticks as row numbers of the table it last drew. A refresh re-sorts the rows (a new
    run arrives, a run leaves a status filter), so the row numbers are mapped to ids through the rows as
    last drawn, and written back as the new rows' numbers before the table is drawn again. A ticked run
    that left the table is no longer ticked: nothing acts on a run the user cannot see.
    """
    drawn = st.session_state.get(SHOWN, {}).get(table_key, [])
    widget = st.session_state.get(table_key)
    rows = list(widget["selection"]["rows"]) if widget else []
    ticked = [drawn[row] for row in rows if 0 <= row < len(drawn)]
    ticked = st.session_state.pop(PICKED, ticked)  # a group ticked at once replaces the ticks
    where = {run_id: row for row, run_id in enumerate(ids)}
    selected = [run_id for run_id in ticked if run_id in where]
    if [where[run_id] for run_id in selected] != rows:
        st.session_state[table_key] = {"selection": {"rows": [where[run_id] for run_id in selected]}}
    st.session_state[SHOWN] = {table_key: ids}
    return selected


def _actions(r, selected: list[api.Run]) -> None:
    """Every action takes the ids it was drawn with (the callbacks' args), never the table's row numbers."""
    ids = [run.id for run in selected]
    named = ", ".join(f"{run.config.label()} ({run.id})" for run in selected)
    st.caption(f"Selected: {md_escape(named)}")
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
        st.markdown(f"Delete **{len(ids)} run(s)** with their events and checkpoints:")
        st.markdown(
            "\n".join(f"- {md_escape(f'{run.config.label()} · {run.id}')} · {run.status}" for run in selected)
        )
        st.caption("A running one stops within a second.")
        st.button("Yes, delete these", type="primary", key="runs.delete", on_click=_delete, args=(ids,))
    if len(selected) == 1:
        notes.editor(r, selected[0], "runs")


def _delete(run_ids: list[str]) -> None:
    """The runs the confirm dialog named when it was clicked (its args), whatever the table shows now."""
    r = state.connection()
    for run_id in run_ids:
        with contextlib.suppress(api.RunNotFound):  # already gone: the goal is reached
            api.delete(r, run_id)
        state.forget(run_id)
    st.session_state["runs.version"] = st.session_state.get("runs.version", 0) + 1  # a fresh selection
    st.toast(f"Deleted {len(run_ids)} run(s): {', '.join(run_ids)}")


if __name__ == "__main__":  # run by st.navigation as a page script
    render()
