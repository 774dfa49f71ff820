"""Launch: pick a preset, edit any RunConfig field, see problems next to the field; submit opens the run.

The form is generated from RunConfig's fields (like the CLI's flags), with three hand-made widgets: ε in the
units the literature uses for the data set, GradAlign as a toggle with the paper's λ(ε), and the device.
A None-able field left empty means "the paper's default for this method and model", as in RunConfig.
"""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

import streamlit as st

from app import estimate, forks, nav, state
from app.text import md_escape, model_name
from jobs import api
from jobs.limits import cost
from trainer.config import (
    DIGITS_LAMBDA_MEASURED,
    NATURAL_IMAGES,
    ConfigError,
    RunConfig,
    allowed,
    format_eps,
    lambda_extrapolated,
    lambda_of_eps,
    make_config,
)
from trainer.datafiles import missing_files
from trainer.fork import LINK_FIELDS, check_fork
from trainer.methods import MODEL_FIELDS, USED_BY, reads
from trainer.presets import DEFAULT_PRESET, DIGITS_ELLE, DIGITS_GRAD_ALIGN, PRESET_NOTES, PRESETS

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
LABELS = {
    "name": "Name (optional)",
    "n_layers": "conv layers",
    "n_filters": "filters per layer",
    "alpha": "FGSM step (× ε)",
    "pgd_steps": "PGD steps (pgd training)",
    "pgd_alpha": "PGD step (× ε)",
    "grad_align_lambda": "GradAlign λ",
    "grad_align_fraction": "GradAlign batch share",
    "elle_lambda": "ELLE λ (0 = off)",
    "elle_adaptive": "ELLE-A: adaptive λ (ELLE λ is its max)",
    "rescue": "autopilot: GradAlign λ(ε) from the CO warning on",
    "probe_points": "dense probe: train images",
    "probe_every": "dense probe every (iterations)",
    "probe_pgd_steps": "dense probe PGD steps",
    "onset_replay": "CO onset on the eval at every iteration",
    "max_iters": "max iterations (optional)",
    "batch_size": "batch size",
    "lr": "learning rate",
    "lr_schedule": "lr schedule",
    "weight_decay": "weight decay",
    "init": "weight initialisation",
    "eval_every": "eval every (iterations)",
    "eval_points": "eval subset size",
    "eval_pgd_steps": "eval PGD steps",
    "final_eval_points": "final eval points (PGD)",
    "final_pgd_steps": "final PGD steps",
    "final_pgd_restarts": "final PGD restarts",
    "autoattack": "AutoAttack final eval (slow)",
    "free_replays": "Free AT replays m",
    "nfgsm_k": "N-FGSM noise k (× ε)",
    "amp": "bf16 autocast (CUDA)",
    "fast_path": "CUDA graph fast path",
}
FORMATS = {"eps": "%.3f", "momentum": "%.2f"}
KEY = "launch."
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
    values = _form_values()
    parent = api.get_run(r, values["parent"]) if values["parent"] else None
    config, problems = _validate(values, api.queued_count(r))
    problems = _fork_problems(parent, values, config) | problems
    _fork_banner(values, parent, problems)
    for row in (GROUPS[:2], GROUPS[2:]):
        for column, (title, names) in zip(st.columns(2), row, strict=True):
            with column.container(border=True):
                _group(title, names, 3, problems)
    with st.expander("Advanced: attack steps, optimizer, final evaluation"):
        _group("", ADVANCED, 4, problems)

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
        st.warning(
            "**No worker is running**, so a launched run will wait in the queue. "
            "Start one in a terminal (add `--device cuda` on a GPU machine):",
            icon=":material/warning:",
        )
        st.code("codash worker", language="bash")
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


PLACEHOLDER_LAMBDA = 1.0  # GradAlign's λ while it is off: switching it on replaces it with λ(ε)


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


def _form_values() -> dict[str, Any]:
    """The RunConfig fields as the form holds them now (not yet validated)."""
    values = {name: st.session_state.get(KEY + name) for name in RunConfig.model_fields}
    if values["dataset"] in NATURAL_IMAGES:
        eps255 = st.session_state.get(KEY + "eps255")
        values["eps"] = None if eps255 is None else eps255 / 255
    if not st.session_state.get(KEY + "grad_align"):
        values["grad_align_lambda"] = 0.0
    if not reads("rescue", values["method"], False, values["model"]):  # its widget is disabled there
        values["rescue"] = "off"
    return values


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
        if value is None and not _optional(name)
    }


def _optional(name: str) -> bool:
    """Whether None is a value of the field ("auto": the paper's default for this method and model)."""
    return type(None) in get_args(RunConfig.model_fields[name].annotation)


# --- widgets ---


def _group(title: str, names: tuple[str, ...], per_row: int, problems: dict[str, str]) -> None:
    if title:
        st.markdown(f"**{title}**")
    for start in range(0, len(names), per_row):
        for column, name in zip(st.columns(per_row), names[start : start + per_row], strict=False):
            with column:
                _field(name, problems)


def _field(name: str, problems: dict[str, str]) -> None:
    special = {"eps": _eps, "grad_align_lambda": _grad_align, "elle_lambda": _elle, "device": _device}
    if name in special:
        special[name]()
    else:
        _generic(name)
    if name in problems:
        st.error(md_escape(problems[name]), icon=":material/error:")


def _generic(name: str) -> None:
    info = RunConfig.model_fields[name]
    args = [arg for arg in get_args(info.annotation) if arg is not type(None)]
    optional = _optional(name)
    base = args[0] if optional else info.annotation
    label, key = LABELS.get(name, name), KEY + name
    auto = "Empty: the paper's default for this method and model." if optional else ""
    unused = _unused_by_this_run(name)
    help_text = " ".join(
        filter(None, [info.description and info.description.capitalize() + ".", allowed(name), auto, unused])
    )
    disabled = bool(unused)
    if get_origin(base) is Literal:
        st.selectbox(
            label,
            get_args(base),
            key=key,
            index=None if optional else 0,
            placeholder="auto",
            help=help_text,
            disabled=disabled,
        )
    elif base is bool:
        st.toggle(label, key=key, help=help_text, disabled=disabled)
    elif base is str:
        st.text_input(label, key=key, help=help_text, max_chars=80, disabled=disabled)
    else:
        st.number_input(
            label,
            key=key,
            step=1 if base is int else None,
            format=FORMATS.get(name, "%d" if base is int else "%g"),
            value=None,  # a cleared box reads as None (blank), never as a number the user did not type
            placeholder="auto" if optional else "required",
            help=help_text,
            disabled=disabled,
        )


def _unused_by_this_run(name: str) -> str:
    """Why a field does nothing with the form's current model / method / GradAlign choice ('' if used)."""
    method, model = st.session_state.get(KEY + "method"), st.session_state.get(KEY + "model")
    if reads(name, method, bool(st.session_state.get(KEY + "grad_align")), model):
        return ""
    if name == "grad_align_fraction":
        return "Used with GradAlign only."
    if name in MODEL_FIELDS:
        return f"Used by the {', '.join(MODEL_FIELDS[name])} model only; {model} has a fixed architecture."
    return f"Used by {', '.join(USED_BY[name])} only."


def _bounds(name: str) -> dict[str, float]:
    """The inclusive bounds RunConfig declares for a field (exclusive ones are left to validation)."""
    metadata = RunConfig.model_fields[name].metadata
    return {
        bound: getattr(meta, bound) for meta in metadata for bound in ("ge", "le") if hasattr(meta, bound)
    }


def _eps() -> None:
    """ε in /255 on CIFAR-10/SVHN, as a fraction on digits/MNIST; the two boxes are kept in sync."""
    if st.session_state.get(KEY + "dataset") in NATURAL_IMAGES:
        st.number_input(
            "ε (× 1/255)",
            key=KEY + "eps255",
            value=None,
            placeholder="required",
            step=1.0,
            format="%g",
            on_change=_sync_eps,
            args=("eps255",),
            help="L∞ radius in pixel levels: 8 means 8/255.",
        )
    else:
        st.number_input(
            "ε",
            key=KEY + "eps",
            value=None,
            placeholder="required",
            step=0.01,
            format=FORMATS["eps"],
            on_change=_sync_eps,
            args=("eps",),
            help="L∞ radius on [0, 1] inputs.",
        )


def _sync_eps(changed: str) -> None:
    value = st.session_state[KEY + changed]
    if value is None:
        return
    if changed == "eps255":
        st.session_state[KEY + "eps"] = value / 255
    else:
        st.session_state[KEY + "eps255"] = round(value * 255, 3)


def _grad_align() -> None:
    """A toggle and λ, with λ(ε) offered when it is in range."""
    on = st.toggle(
        "GradAlign",
        key=KEY + "grad_align",
        on_change=_grad_align_switched,
        help="Add λ·(1 − cos(∇x, ∇x+η)) to the loss.",
    )
    st.number_input(
        LABELS["grad_align_lambda"],
        key=KEY + "grad_align_lambda",
        value=None,
        placeholder="required",
        format="%g",
        disabled=not on,
        help=allowed("grad_align_lambda"),
    )
    _lambda_rule("grad_align_lambda", on)


def _grad_align_switched() -> None:
    """Switched on over the placeholder λ (one the user did not type), GradAlign starts at the λ(ε) shown
    beside it, or at the placeholder where there is none in range."""
    lam = KEY + "grad_align_lambda"
    if st.session_state[KEY + "grad_align"] and st.session_state.get(lam) == PLACEHOLDER_LAMBDA:
        st.session_state[lam] = _suggestion("grad_align_lambda") or PLACEHOLDER_LAMBDA


def _elle() -> None:
    _generic("elle_lambda")
    _lambda_rule("elle_lambda", True)


def _suggestion(field: str) -> float | None:
    """lambda_of_eps at the form's data set and ε where it is within the field's range, else None."""
    eps, dataset = _form_values()["eps"], st.session_state.get(KEY + "dataset")
    suggestion = None if eps is None or dataset is None else lambda_of_eps(field, dataset, eps)
    return suggestion if suggestion is not None and suggestion <= _bounds(field)["le"] else None


def _lambda_rule(field: str, on: bool) -> None:
    """Offer lambda_of_eps for GradAlign's or ELLE's weight at the form's data set and ε (nothing where the
    data set has no rule for it). Out of the field's range it is explained by where the rule was fitted,
    without its value: far from that range the exponential gives numbers of thirty digits."""
    eps = _form_values()["eps"]
    dataset = st.session_state.get(KEY + "dataset")
    if eps is None or dataset is None or lambda_of_eps(field, dataset, eps) is None:
        return
    suggestion = _suggestion(field)
    digits = dataset == "digits"
    rule = "Digits λ(ε) fit" if digits else "Paper's λ(ε)"
    at = f"ε={format_eps(eps, dataset)}"
    if suggestion is not None:
        note = "tuned on CIFAR-10; a starting point here"
        note = lambda_extrapolated(field, dataset, eps) if dataset in ("cifar10", "digits") else note
        st.caption(f"{rule} at {at}: **{suggestion:g}**" + (f" ({note})" if note else ""))
    else:
        low, high = DIGITS_LAMBDA_MEASURED[field]
        fitted = f"measured for ε = {low:g}–{high:g}" if digits else "calibrated on CIFAR-10 for ε ≤ 16/255"
        preset = DIGITS_GRAD_ALIGN if field == "grad_align_lambda" else DIGITS_ELLE
        st.caption(
            f"{rule} at {at}: out of range (λ ≤ {_bounds(field)['le']:,g}); it is {fitted}. "
            f"The preset “{preset}” uses λ={PRESETS[preset][field]:g}."
        )
    st.button(
        f"Use {rule[0].lower()}{rule[1:]}",
        key=KEY + ("paper_lambda" if field == "grad_align_lambda" else f"{field}_rule"),
        disabled=not on or suggestion is None,
        on_click=lambda: st.session_state.update({KEY + field: suggestion}),
    )


def _device() -> None:
    st.selectbox(
        "device",
        ["auto", "cpu", "cuda"],
        key=KEY + "device",
        accept_new_options=True,
        help="auto picks CUDA when the worker has it; type cuda:N for a specific GPU. " + allowed("device"),
    )


if __name__ == "__main__":  # run by st.navigation as a page script
    render()
