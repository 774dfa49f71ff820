"""Per-session state: the Redis connection and an incremental event cache per run.

Each refresh reads only the stream entries after the last id already seen, so a live chart costs one small
XRANGE per second however long the run is.
"""

from __future__ import annotations

import os

import redis
import streamlit as st

from app.history import RunHistory
from jobs import api


@st.cache_resource(show_spinner=False)
def _connect(url: str | None, home: str | None) -> redis.Redis:
    return api.connect(url)


def connection() -> redis.Redis:
    """One client per server for the whole app: $REDIS_URL, else the embedded server under $CODASH_HOME.

    Keyed by both variables, so a process (or test) that points them elsewhere gets a client for that server.
    """
    return _connect(os.environ.get("REDIS_URL"), os.environ.get("CODASH_HOME"))


def history(r: redis.Redis, run: api.Run) -> RunHistory:
    """The run's history so far, extended by the events written since this session last looked.

    A resumed attempt rewinds the stream to its last checkpoint, so a new attempt number starts the
    cache over instead of keeping points the stream no longer has.
    """
    cache: dict[str, RunHistory] = st.session_state.setdefault("histories", {})
    run_history = cache.get(run.id)
    if run_history is None or run_history.attempt != run.attempt:
        run_history = cache[run.id] = RunHistory(attempt=run.attempt)
    bad: list[tuple[str, str]] = []
    times: list[float] = []
    events, last_id = api.read_events(r, run.id, after=run_history.last_id, bad=bad, times=times)
    run_history.extend(events, last_id, skipped=len(bad), times=times)
    return run_history


def forget(run_id: str) -> None:
    st.session_state.setdefault("histories", {}).pop(run_id, None)


def follow_url(key: str, wanted: object) -> None:
    """Let a shared link or another page's button choose what a widget shows.

    The widget keeps its own value until the URL asks for something other than what it last showed.
    """
    if st.session_state.get(key + ".url") != wanted:
        st.session_state[key] = wanted
        st.session_state[key + ".url"] = wanted


def shown_in_url(key: str, value: object) -> None:
    st.session_state[key + ".url"] = value
