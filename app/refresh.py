"""One auto-refresh for every page that shows runs which can still change (live, compare, sweep)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import streamlit as st


def while_live(panel: Callable[..., bool], live: bool, every_s: float, *args: Any) -> None:
    """Show `panel(*args)` as a fragment that reruns every `every_s` seconds while `live`.

    `panel` returns whether what it showed can still change. When that differs from `live`, the whole page
    reruns once, so the fragment is defined again with its timer started or stopped: a finished run costs
    no refreshes, a resumed one starts refreshing.
    """

    @functools.wraps(panel)  # the fragment keeps the panel's name: Streamlit identifies fragments by it
    def fragment(*args: Any) -> None:
        if panel(*args) != live:
            st.rerun()

    st.fragment(fragment, run_every=every_s if live else None)(*args)
