"""Forking from the dashboard: the live view's actions, the launch form's fork mode, lineage on Runs and
Compare.

"Fork from iteration k" opens the launch form at `?fork=RUN&at=K` (a shareable link), filled in with the
run's config; "Rescue" queues, in one click, a fork from the last evaluation before catastrophic
overfitting with GradAlign on, and opens the comparison of the two futures.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import NoReturn

import redis
import streamlit as st

from app import nav
from app.history import RunHistory
from app.markers import vertical_marker
from app.spec import Figure
from app.text import md_escape
from jobs import api
from trainer.config import ConfigError
from trainer.fork import last_before, rescue_lambda
from trainer.warning import warning_words

FORK, AT, LINEAGE = "fork", "at", "lineage"  # query parameters: the launch form's, the Runs page's
FORK_COLOR = "#5e35b1"


def requested(query_params: Mapping[str, str]) -> tuple[str, int] | None:
    """The (run id, iteration) a `?fork=RUN&at=K` link asks to fork, None without (or with a bad) one.

    The values come from the browser: K must be an iteration; whether the run exists (api.get_run checks
    the id's form) and has a checkpoint at K is the form's to say.
    """
    run_id, at = query_params.get(FORK), query_params.get(AT, "")
    if not run_id or not at.isdigit() or len(at) > 9:
        return None
    return run_id, int(at)


def rescue_point(run: api.Run, collapse_began: int | None) -> int | None:
    """The evaluation to rescue a collapsed run from: the last one with a checkpoint before the collapse
    began (trainer.co.collapse_began)."""
    if collapse_began is None or run.config.uses_grad_align:
        return None
    return last_before(api.fork_points(run.id), collapse_began)


def rescue_label(run: api.Run, at: int, now: bool = False) -> str:
    name = "Rescue now" if now else "Rescue"
    return f"{name}: fork from iteration {at:,} with GradAlign λ={rescue_lambda(run.config):g}"


# --- the live view ---


def rescue_action(r: redis.Redis, run: api.Run, history: RunHistory) -> None:
    """After CO: one click queues the rescue fork and opens the comparison of parent and fork. Before it,
    once the early warning has fired: what it says, and Rescue now, from the warning's evaluation (or the
    last one kept before it); an autopilot run says it switched instead."""
    if history.co is None and history.warning is not None:
        _warned(r, run, history)
        return
    at = rescue_point(run, history.collapse_began)
    if at is not None:
        _rescue_button(r, run, at, now=False)


def _warned(r: redis.Redis, run: api.Run, history: RunHistory) -> None:
    words = warning_words(history.warning)
    if history.rescue is not None:
        words += f" The autopilot turned GradAlign on (λ={history.rescue['grad_align_lambda']:g}) after it."
        st.info(md_escape(words), icon=":material/auto_mode:")
        return
    st.warning(md_escape(words), icon=":material/warning:")
    if run.config.uses_grad_align or run.config.rescue == "auto":  # GradAlign on already, or about to be
        return
    at = last_before(api.fork_points(run.id), history.warning["iteration"] + 1)
    if at is not None:
        _rescue_button(r, run, at, now=True)


def _rescue_button(r: redis.Redis, run: api.Run, at: int, now: bool) -> None:
    """Queue the rescue fork from `at` and open the comparison of parent and fork."""
    if st.button(rescue_label(run, at, now), type="primary", icon=":material/call_split:", key="live.rescue"):
        try:
            child = api.fork(r, run.id, at=at, grad_align_lambda=rescue_lambda(run.config))
        except (ConfigError, api.RunNotFound) as exc:  # deleted, or its checkpoint thinned away meanwhile
            st.error(md_escape(str(exc)))
            return
        nav.go("compare", compare=f"{run.id},{child}")


def fork_action(run: api.Run, iteration: int) -> None:
    """Below the snapshot slider: fork from the evaluation shown, in the launch form."""
    points = api.fork_points(run.id)
    reason = "" if iteration in points else f"No checkpoint kept at iteration {iteration:,}. "
    if st.button(
        f"Fork from iteration {iteration:,}",
        icon=":material/call_split:",
        key="live.fork",
        disabled=bool(reason),
        help=reason + "Opens the launch form with this run's config: change anything (GradAlign, λ, ε, lr) "
        "and the fork continues from this evaluation's weights, optimizer state and data order.",
    ):
        open_form(run.id, iteration)


def open_form(run_id: str, at: int) -> NoReturn:
    nav.go("launch", **{FORK: run_id, AT: str(at)})


def lineage_caption(r: redis.Redis, run: api.Run) -> None:
    """Where a run comes from and what was forked from it, with links to their live views."""
    parts = []
    if run.config.parent is not None:
        parent = api.get_run(r, run.config.parent)
        name = md_escape(parent.config.label()) if parent else "a deleted run"
        link = f"[{name}](live?run={run.config.parent})" if parent else name
        parts.append(f"Fork of {link} at iteration {run.config.fork_iteration:,}")
        if parent:
            parts.append(f"[compare with it](compare?compare={run.config.parent},{run.id})")
    children = [one for one in api.lineage(r, run.id) if one.config.parent == run.id]
    if children:
        links = ", ".join(
            f"[{md_escape(one.config.label())} @ {one.config.fork_iteration:,}](live?run={one.id})"
            for one in children
        )
        ids = ",".join([run.id, *(one.id for one in children)])
        parts.append(f"forks: {links} · [compare all](compare?compare={ids})")
    if parts:
        st.markdown(":material/call_split: " + " · ".join(parts))


# --- Compare ---


def mark_forks(fig: Figure, runs: Sequence[api.Run], labels: Sequence[str], compact: bool = False) -> None:
    """A dotted line at each fork's starting iteration, on every panel, naming the fork and its parent.

    `compact` (the phone layout) labels each line only "fork @ k": the names would run off the chart, and
    the legend already names each fork with its iteration.
    """
    names = {run.id: label for run, label in zip(runs, labels, strict=True)}
    for run in runs:
        if run.config.parent is None:
            continue
        parent = html.escape(names.get(run.config.parent, "its parent"))
        short = f"fork @ {run.config.fork_iteration:,}"
        text = (
            short
            if compact
            else f"fork: {html.escape(names[run.id])} from {parent} @ {run.config.fork_iteration:,}"
        )
        texts = (text, short)
        vertical_marker(fig, run.config.fork_iteration, FORK_COLOR, "dot", texts, "bottom left", name="fork")


# --- Runs ---


def _family_name(by_id: Mapping[str, api.Run], run_id: str) -> str:
    return f"{by_id[run_id].config.label()} · {run_id}" if run_id in by_id else f"deleted run {run_id}"


def lineage_choice(runs: Sequence[api.Run], column) -> str | None:
    """The run whose family (ancestors and forks) the Runs table shows, chosen here or by `?lineage=ID`."""
    parents = {run.config.parent for run in runs} - {None}
    families = sorted({run.id for run in runs if run.config.parent} | parents)
    by_id = {run.id: run for run in runs}
    wanted = st.query_params.get(LINEAGE)
    if wanted in families and st.session_state.get("runs.lineage.url") != wanted:
        st.session_state["runs.lineage"] = st.session_state["runs.lineage.url"] = wanted
    choice = column.selectbox(
        "lineage",
        families,
        key="runs.lineage",
        index=None,
        placeholder="all runs",
        format_func=lambda run_id: _family_name(by_id, run_id),
        help="Only this run's family: the run it was forked from and every run forked from it.",
    )
    if choice is None:
        st.query_params.pop(LINEAGE, None)
    else:
        st.query_params[LINEAGE] = choice
    return choice
