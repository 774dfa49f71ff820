"""A run's tags and free-text note: edited on the live view and the Runs page, stored with the run through
jobs.api (bounded there), searched on the Runs page and exported with the run; shown escaped.

The boxes and the outcome of the last save live in the session, not in the render: the live view
refreshes every second, and what the user is typing, or why it was refused, must outlast a refresh.
"""

from __future__ import annotations

import streamlit as st

from app import state
from app.text import md_escape
from jobs import api


def editor(r, run: api.Run, where: str) -> None:
    """Edit a run's tags and note (stored with the run; exported with it; searched on the Runs page)."""
    tags, note, refused = (f"{where}.{part}.{run.id}" for part in ("tags", "note", "refused"))
    st.session_state.setdefault(tags, ", ".join(run.tags))  # the stored values, until the user edits them
    st.session_state.setdefault(note, run.note)
    with st.form(f"{where}.annotations.{run.id}", border=True):
        st.markdown(f"**Tags and note** of {md_escape(run.config.label())}")
        st.text_input("tags", placeholder="comma-separated, e.g. co, baseline", max_chars=500, key=tags)
        st.text_area("note", max_chars=api.MAX_NOTE_CHARS, key=note)
        st.form_submit_button("Save tags and note", on_click=_save, args=(run.id, tags, note, refused))
    if refused in st.session_state:
        st.error(f"Not saved: {md_escape(st.session_state[refused])}", icon=":material/error:")


def _save(run_id: str, tags: str, note: str, refused: str) -> None:
    """Store the boxes' text; a refusal is kept (shown under the form) until a save succeeds."""
    try:
        api.annotate(state.connection(), run_id, st.session_state[tags], st.session_state[note])
    except (ValueError, api.RunNotFound) as exc:
        st.session_state[refused] = str(exc)
    else:
        st.session_state.pop(refused, None)
        st.toast("Saved.")


def shown(run: api.Run) -> str:
    """The tags and note as one escaped Markdown line ('' when there are none)."""
    parts = [" ".join(f"`{tag}`" for tag in run.tags)] if run.tags else []
    parts += [md_escape(run.note)] if run.note else []
    return " · ".join(parts)
