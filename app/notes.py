"""A run's tags and free-text note: edited on the live view and the Runs page, stored with the run through
jobs.api (bounded there), searched on the Runs page and exported with the run; shown escaped.
"""

from __future__ import annotations

import streamlit as st

from app.text import md_escape
from jobs import api


def editor(r, run: api.Run, where: str) -> None:
    """Edit a run's tags and note (stored with the run; exported with it; searched on the Runs page)."""
    with st.form(f"{where}.annotations.{run.id}", border=True):
        st.markdown(f"**Tags and note** of {md_escape(run.config.label())}")
        tags = st.text_input(
            "tags",
            value=", ".join(run.tags),
            placeholder="comma-separated, e.g. co, baseline",
            max_chars=500,
            key=f"{where}.tags.{run.id}",
        )
        note = st.text_area(
            "note", value=run.note, max_chars=api.MAX_NOTE_CHARS, key=f"{where}.note.{run.id}"
        )
        if st.form_submit_button("Save tags and note"):
            try:
                api.annotate(r, run.id, tags, note)
            except (ValueError, api.RunNotFound) as exc:
                st.error(md_escape(str(exc)))
            else:
                st.toast("Saved.")


def shown(run: api.Run) -> str:
    """The tags and note as one escaped Markdown line ('' when there are none)."""
    parts = [" ".join(f"`{tag}`" for tag in run.tags)] if run.tags else []
    parts += [md_escape(run.note)] if run.note else []
    return " · ".join(parts)
