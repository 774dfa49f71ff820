"""Page registry and navigation, so views can send the user to another page with its query parameters.

Pages are identified by their url_path; a run's live view is `/live?run=ID`, a comparison
`/compare?compare=ID,ID`, the launch form `/launch` (`/launch?fork=ID&at=K` for a fork). The root URL is a
hidden page that opens the page its query parameters ask for (`/?run=ID` opens the live view), else Launch.
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
PARAM_PAGES = {"run": "live", "compare": "compare", "sweep": "sweep", "lineage": "runs", "fork": "launch"}


VIEWS = Path(__file__).parent / "views"


def page(name: str) -> st.Page:
    """Each page is a views/<name>.py module that renders itself when Streamlit runs it as a script."""
    title, icon = TITLES[name]
    return st.Page(VIEWS / f"{name}.py", title=title, icon=icon, url_path=name)


def pages() -> list[st.Page]:
    """The root is not a page of its own: it forwards (follow_shared_link), so every page has its path."""
    root = st.Page(lambda: None, title="codash", url_path="home", default=True, visibility="hidden")
    return [root, *(page(name) for name in TITLES)]


def follow_shared_link(current: st.Page, query_params: Mapping[str, str]) -> None:
    """At the root URL, `?run=ID`, `?compare=...`, `?fork=...` or `?sweep=...` open the page that shows them,
    with the link's other parameters (a shared view's zoom and smoothing); a bare root opens Launch."""
    if current.url_path == "":
        name = next((name for param, name in PARAM_PAGES.items() if param in query_params), "launch")
        go(name, **{key: query_params[key] for key in query_params})


def go(name: str, **query_params: str) -> NoReturn:
    st.switch_page(page(name), query_params=query_params)
