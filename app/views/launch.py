"""Launch: pick a preset, edit any RunConfig field, see problems next to the field; submit opens the run.

The form is generated from RunConfig's fields (like the CLI's flags), with three hand-made widgets: ε in the
units the literature uses for the data set, GradAlign as a toggle with the paper's λ(ε), and the device.
A None-able field left empty means "the paper's default for this method and model", as in RunConfig.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from app import estimate, forks, nav, state
from app.form_fields import KEY, PLACEHOLDER_LAMBDA, form_values, group, is_optional
from app.text import md_escape, model_name
from jobs import api
from jobs.limits import cost
from trainer.config import (
    ConfigError,
    RunConfig,
    allowed,
    make_config,
)
from trainer.datafiles import missing_files
from trainer.fork import LINK_FIELDS, check_fork
from trainer.presets import DEFAULT_PRESET, PRESET_NOTES, PRESETS

GROUPS = (
    ("Data and model", ("dataset", "model", "name", "n_layers", "n_filters")),
    (
        "Attack and defence",
        (
            "method",
            "eps",
            "grad_align_lambda",
            "elle_lambda",
            "elle_adaptive",
            "rescue",
            "free_replays",
            "nfgsm_k",
        ),
    ),
    ("Training", ("epochs", "max_iters", "batch_size", "lr", "seed")),
    ("Monitoring and hardware", ("eval_every", "eval_points", "device")),
)
ADVANCED = (
    "alpha",
    "grad_align_fraction",
    "pgd_steps",
    "pgd_alpha",
    "optimizer",
    "lr_schedule",
    "momentum",
    "weight_decay",
    "init",
    "eval_pgd_steps",
    "probe_points",
    "probe_every",
    "probe_pgd_steps",
    "onset_replay",
    "final_eval_points",
    "final_pgd_steps",
    "final_pgd_restarts",
    "autoattack",
    "amp",
    "fast_path",
)
SLOW_S = 3600  # a run expected to take longer than this on the available workers is worth a warning
SAVED = "launch.saved"  # widget state is dropped when the page is left; this copy brings the form back
ORIGIN = "launch.origin"  # the run the form was filled from, named above the form
WIDGET_KEYS = [KEY + name for name in (*RunConfig.model_fields, "eps255", "grad_align", "preset")]


def render() -> None:
    r = state.connection()
    st.title("Launch a run")
    _workers(r)
    if SAVED not in st.session_state:
        _apply_preset(DEFAULT_PRESET)
    for key, value in st.session_state[SAVED].items():
        st.session_state.setdefault(key, value)
    _follow_fork_link(r)

    if ORIGIN in st.session_state:
        st.info(st.session_state[ORIGIN], icon=":material/edit:")
    st.selectbox(
        "Preset",
        list(PRESETS),
        key=KEY + "preset",
        on_change=lambda: _apply_preset(st.session_state[KEY + "preset"]),
        help="Fills every field below; edit any of them before launching.",
    )
    if st.session_state[KEY + "preset"] in PRESET_NOTES:
        st.caption(PRESET_NOTES[st.session_state[KEY + "preset"]])
    values = form_values()
    parent = api.get_run(r, values["parent"]) if values["parent"] else None
    config, problems = _validate(values, api.queued_count(r))
    problems = _fork_problems(parent, values, config) | problems
    _fork_banner(values, parent, problems)
    for row in (GROUPS[:2], GROUPS[2:]):
        for column, (title, names) in zip(st.columns(2), row, strict=True):
            with column.container(border=True):
                group(title, names, 3, problems)
    with st.expander("Advanced: attack steps, optimizer, final evaluation"):
        group("", ADVANCED, 4, problems)

    st.divider()
    if problems:
        unplaced = [
            md_escape(f"{field}: {text}")
            for field, text in problems.items()
            if field not in RunConfig.model_fields
        ]
        st.error("  \n".join([f"Fix {len(problems)} problem(s) before launching."] + unplaced))
    else:
        st.markdown(f"**Will run:** {md_escape(config.label())} on {config.dataset}, {model_name(config)}")
        with st.expander("The complete config that will be queued"):
            st.json(config.model_dump(mode="json"))
        _cannot_run_here(r, config)
    if st.button("Launch run", type="primary", disabled=bool(problems), key=KEY + "submit"):
        run_id = api.submit(r, config)
        nav.go("live", run=run_id)
    st.session_state[SAVED] = {key: st.session_state[key] for key in WIDGET_KEYS if key in st.session_state}


def _workers(r) -> None:
    workers = api.workers(r)
    queued = api.queued_count(r)
    if not workers:
        # the command inline, not in st.code: that loads a 1.5 MB syntax highlighter into the page, ~2 s of
        # a browser's CPU on each load on a 2-core machine (docs/benchmarks.md)
        st.warning(
            "**No worker is running**, so a launched run will wait in the queue. "
            "Start one in a terminal: `codash worker` (add `--device cuda` on a GPU machine).",
            icon=":material/warning:",
        )
        return
    described = ", ".join(  # every field from Redis, as text
        f"{md_escape(w.name)} ({md_escape(w.device)}, {md_escape(w.state)})" for w in workers
    )
    st.success(f"{len(workers)} worker(s) alive: {described} · {queued} run(s) queued", icon=":material/dns:")


def _cannot_run_here(r, config: RunConfig) -> None:
    """Warn before launching what would fail or take days here: missing data files, a CPU-only worker."""
    missing = missing_files(config.dataset)
    if missing:
        listing = "  \n".join(f"`{str(path).replace('`', '')}`" for path in missing[:8])  # code: literal
        st.warning(
            f"**{config.dataset} is not on this machine**: the run will fail unless its worker has the files "
            f"(or CODASH_DOWNLOAD=1 and internet). Missing:  \n{listing}",
            icon=":material/folder_off:",
        )
    gpu = any(worker.device.startswith("cuda") for worker in api.workers(r))
    if gpu:
        return
    finished = [run for run in api.list_runs(r) if run.status == "finished"]
    guess = estimate.expected(config, finished, gpu=False)
    if guess is not None and guess.seconds > SLOW_S:
        hours, iterations = estimate.format_hours(guess.seconds), cost(config).iterations
        st.warning(
            f"**No GPU worker is alive: on a CPU this run takes about {hours}** ({iterations:,} iterations; "
            f"{guess.basis}). Start `codash worker --device cuda` on a GPU machine, or shorten it (epochs, "
            "max iterations) or evaluate less (eval every, final eval points).",
            icon=":material/hourglass_top:",
        )


# --- the form's state ---


def _apply_preset(name: str) -> None:
    """Put a preset's values (RunConfig defaults elsewhere, None = automatic) into every widget."""
    st.session_state[KEY + "preset"] = name
    _fill({field: info.get_default() for field, info in RunConfig.model_fields.items()} | PRESETS[name])


def fill_from(config: RunConfig, origin: str) -> None:
    """Open the form on a copy of a stored run's config ("Edit and relaunch"); `origin` says which run."""
    _fill(config.model_dump())
    st.session_state[ORIGIN] = origin


def _fill(values: dict[str, Any]) -> None:
    for field, value in values.items():
        st.session_state[KEY + field] = value
    st.session_state[KEY + "eps255"] = round(values["eps"] * 255, 3)
    st.session_state[KEY + "grad_align"] = values["grad_align_lambda"] > 0
    st.session_state[KEY + "grad_align_lambda"] = values["grad_align_lambda"] or PLACEHOLDER_LAMBDA
    st.session_state.pop(ORIGIN, None)
    st.session_state[SAVED] = {key: st.session_state[key] for key in WIDGET_KEYS if key in st.session_state}


# --- fork mode: the form holds a run's config and the fork's starting point ---


def _follow_fork_link(r) -> None:
    """`?fork=RUN&at=K` (the live view's "Fork from iteration k", or a shared link) fills the form in from
    RUN's config, once per link: edits made after that stay."""
    wanted = forks.requested(st.query_params)
    if wanted is None or st.session_state.get(KEY + "fork.url") == wanted:
        return
    st.session_state[KEY + "fork.url"] = wanted
    parent = api.get_run(r, wanted[0])
    if parent is None:
        st.error(f"No run with id {md_escape(wanted[0])} to fork: it may have been deleted.")
        return
    _fill({**parent.config.model_dump(), "name": "", "parent": parent.id, "fork_iteration": wanted[1]})


def _fork_banner(values: dict[str, Any], parent: api.Run | None, problems: dict[str, str]) -> None:
    """In fork mode: the parent, the iteration to start from (any kept evaluation) and a way out."""
    if not values["parent"]:
        return
    with st.container(border=True):
        if parent is not None:
            st.markdown(
                f":material/call_split: **Fork of {md_escape(parent.config.label())}** "
                f"([{parent.id}](live?run={parent.id}), {parent.status}): starts from its weights, optimizer "
                "state and data order at the iteration below, with the config in this form. Data set, model, "
                "layers, filters and optimizer stay the parent's."
            )
            st.selectbox(
                "fork from iteration",
                api.fork_points(parent.id),
                key=KEY + "fork_iteration",
                index=None,
                placeholder="pick an evaluation",
                format_func=lambda it: f"{it:,}",
                help="The evaluations whose checkpoints the parent kept.",
            )
        for field in LINK_FIELDS:
            if field in problems:
                st.error(md_escape(problems[field]), icon=":material/error:")
        if "fork_iteration" not in problems and "parent" not in problems:  # the link shares what is shown
            link = (parent.id, values["fork_iteration"])
            st.session_state[KEY + "fork.url"] = link  # not a new link to fill the form in from
            st.query_params.update({forks.FORK: link[0], forks.AT: str(link[1])})
        st.button("Start from scratch instead", key=KEY + "unfork", on_click=_unfork)


def _unfork() -> None:
    """Leave fork mode: the form keeps its values, as a fresh run's."""
    st.session_state.update({KEY + field: None for field in LINK_FIELDS})
    st.session_state.pop(KEY + "fork.url", None)
    for param in (forks.FORK, forks.AT):
        st.query_params.pop(param, None)


def _fork_problems(parent: api.Run | None, values: dict, config: RunConfig | None) -> dict[str, str]:
    """What keeps this fork from starting, by field: a deleted parent, no checkpoint, a changed model."""
    if not values["parent"]:
        return {}
    if parent is None:
        return {"parent": "the run to fork was deleted; start from scratch instead"}
    if values["fork_iteration"] not in api.fork_points(parent.id):
        return {"fork_iteration": "pick an iteration at which the parent kept a checkpoint"}
    try:
        if config is not None:
            check_fork(parent.config, config)
    except ConfigError as exc:
        return exc.problems
    return {}


def _validate(values: dict[str, Any], queued: int) -> tuple[RunConfig | None, dict[str, str]]:
    """The config the form describes (None if invalid) and each problem keyed by field: RunConfig's ranges,
    then this deployment's limits.

    The widgets carry no min/max of their own (Streamlit's number_input would silently keep the last
    in-range value while showing the typed one), so whatever the form shows is what is validated here.
    """
    try:
        config = make_config(values)  # the one validation of this render
    except ConfigError as exc:
        return None, exc.problems | _blank(values)
    return config, api.limit_violations([config], queued)


def _blank(values: dict[str, Any]) -> dict[str, str]:
    """The required fields the user cleared, each said as such rather than as pydantic's "(got None)"."""
    return {
        name: f"blank or not a number: enter a number; allowed: {allowed(name)}"
        for name, value in values.items()
        if value is None and not is_optional(name)
    }


if __name__ == "__main__":  # run by st.navigation as a page script
    render()
