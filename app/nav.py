"""Page registry and navigation, so views can send the user to another page with its query parameters.

Pages are identified by their url_path; a run's live view is `/live?run=ID`, a comparison
`/compare?compare=ID,ID`. At the root URL, those query parameters open their page, so `/?run=ID` works too.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

import streamlit as st

TITLES = {
    "launch": ("Launch", ":material/rocket_launch:"),
    "live": ("Live run", ":material/monitoring:"),
    "runs": ("Runs", ":material/table_rows:"),
    "compare": ("Compare", ":material/compare_arrows:"),
    "sweep": ("Sweep ε", ":material/scatter_plot:"),
}
# the page a shared link's query parameter asks for, when the link points at the root URL
PARAM_PAGES = {"run": "live", "compare": "compare", "sweep": "sweep"}


VIEWS = Path(__file__).parent / "views"


def page(name: str, default: bool = False) -> st.Page:
    """Each page is a views/<name>.py module that renders itself when Streamlit runs it as a script."""
    title, icon = TITLES[name]
    return st.Page(VIEWS / f"{name}.py", title=title, icon=icon, url_path=name, default=default)


def pages() -> list[st.Page]:
    return [page(name, default=name == "launch") for name in TITLES]


def follow_shared_link(current: st.Page, query_params: Mapping[str, str]) -> None:
    """At the root URL, `?run=ID`, `?compare=...` or `?sweep=...` open the page that shows them, with the
    link's other parameters (a shared view's zoom and smoothing)."""
    if current.url_path == "":
        for param, name in PARAM_PAGES.items():
            if param in query_params:
                go(name, **{key: query_params[key] for key in query_params})


def go(name: str, **query_params: str) -> NoReturn:
    st.switch_page(page(name), query_params=query_params)
