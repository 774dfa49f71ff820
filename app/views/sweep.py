"""Sweep ε (the paper's Fig. 1): methods × ε × seeds as one sweep, then final PGD accuracy against ε.

Runs that hit catastrophic overfitting are drawn as ✕; runs still training show their latest eval as hollow
points, so the plot fills in live. Clicking a point opens that run. Below, each run's PGD accuracy against
the iteration, a panel per ε, shows where CO struck.
"""

from __future__ import annotations

import itertools
import time
import uuid

import streamlit as st

from app import estimate, nav, state
from app.chart import dark_theme, live_chart
from app.presets import SWEEP_PRESETS
from app.refresh import while_live
from app.sweep_charts import SweepCurve, sweep_curves_figure, sweep_figure
from app.tables import sweep_frame
from app.text import md_escape, method_family, plural
from jobs import api
from trainer.config import (
    DIGITS_LAMBDA_MEASURED,
    NATURAL_IMAGES,
    REGULARISERS,
    ConfigError,
    RunConfig,
    allowed,
    field_bounds,
    format_eps,
    lambda_extrapolated,
    lambda_of_eps,
    make_config,
    parse_eps,
)
from trainer.methods import SWEEP
from trainer.presets import DIGITS_ELLE, DIGITS_GRAD_ALIGN, PRESET_NOTES, PRESETS

REFRESH_S = 2.0
REGULARISER_NAMES = {"grad_align_lambda": "GradAlign", "elle_lambda": "ELLE"}
DEFAULT_METHODS = ["FGSM", "FGSM + GradAlign", "PGD-10"]
DEFAULT_EPS = {"natural": "2, 4, 6, 8, 10, 12, 14, 16", "fraction": "0.05, 0.1, 0.15, 0.2, 0.25, 0.3"}
KEY = "sweep."
MAX_EPS_VALUES = 32
MAX_SEEDS = 16


def render() -> None:
    r = state.connection()
    st.title("Sweep ε: robustness against attack size")
    with st.expander("New sweep", expanded=not st.query_params.get("sweep")):
        _new_sweep(r)
    sweeps = list(dict.fromkeys(run.sweep_id for run in api.list_runs(r) if run.sweep_id))  # newest first
    if not sweeps:
        st.info("No sweeps yet.")
        return
    wanted = st.query_params.get("sweep")
    state.follow_url(KEY + "shown", wanted if wanted in sweeps else sweeps[0])
    described = {sweep_id: describe_sweep(api.sweep_runs(r, sweep_id)) for sweep_id in sweeps}
    sweep_id = st.selectbox("Sweep", sweeps, key=KEY + "shown", format_func=described.get)
    st.query_params["sweep"] = sweep_id
    state.shown_in_url(KEY + "shown", sweep_id)
    runs = api.sweep_runs(r, sweep_id)
    while_live(_results, any(run.status not in api.TERMINAL for run in runs), REFRESH_S, sweep_id)


def describe_sweep(runs: list[api.Run]) -> str:
    """A sweep by what it is: 'FGSM, FGSM+GradAlign × ε 0.1–0.2 × seeds 0, 1 (digits) · 2026-11-27 18:20 UTC ·
    3 of 4 runs done'."""
    if not runs:
        return "(no runs left)"
    configs = [run.config for run in runs]
    methods = ", ".join(dict.fromkeys(method_family(config) for config in configs))
    dataset = configs[0].dataset
    grid = sorted({config.eps for config in configs})
    eps = format_eps(grid[0], dataset) + (f"–{format_eps(grid[-1], dataset)}" if len(grid) > 1 else "")
    seeds = sorted({config.seed for config in configs})
    seeds_text = ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(min(run.created_at for run in runs)))
    done = sum(run.status in api.TERMINAL for run in runs)
    return (
        f"{methods} × ε {eps} × {seeds_text} ({dataset}) · {when} UTC · "
        f"{done} of {plural(len(runs), 'run')} done"
    )


def parse_eps_list(text: str, natural: bool) -> list[float]:
    """'2, 4, 8/3' in /255 units on natural images, '0.1, 0.2' elsewhere; raises ValueError on junk (and on
    more than MAX_EPS_VALUES values)."""
    parts = [part.strip() for part in text.replace(";", ",").split(",") if part.strip()]
    if len(parts) > MAX_EPS_VALUES:
        raise ValueError(f"ε values: at most {MAX_EPS_VALUES}, got {len(parts)}")
    values = [parse_eps(part) for part in parts]
    if not values:
        raise ValueError("give at least one ε")
    return [value / 255 for value in values] if natural else values


def parse_seeds(text: str) -> list[int]:
    """'0, 1, 2' → [0, 1, 2], each within RunConfig's seed range and given once; raises ValueError naming
    the field on junk (and on more than MAX_SEEDS seeds)."""
    parts = [part.strip() for part in text.replace(";", ",").split(",") if part.strip()]
    bounds = field_bounds("seed")
    problem = None
    if not parts:
        problem = "give at least one seed"
    elif len(parts) > MAX_SEEDS:
        problem = f"at most {MAX_SEEDS}, got {len(parts)}"
    elif bad := [
        part
        for part in parts
        if not (part.isascii() and part.isdigit()) or not bounds["ge"] <= int(part) <= bounds["le"]
    ]:
        problem = f"{bad[0]!r} is not a whole number in the allowed {allowed('seed')}"
    elif len(set(map(int, parts))) < len(parts):
        problem = "each seed once"
    if problem:
        raise ValueError(f"seeds: {problem}")
    return [int(part) for part in parts]


def sweep_configs(
    base: dict,
    methods: list[str],
    eps_values: list[float],
    seeds: list[int],
    rule: bool,
    fixed: dict[str, float],
    method_fields: dict[str, dict] | None = None,
) -> list[RunConfig]:
    """One config per (method, ε, seed); raises ConfigError naming the first combination that cannot run.

    GradAlign's and ELLE's λ follow trainer.config.lambda_of_eps when `rule` is on and the data set has a
    rule for it, else `fixed` (by field). `method_fields` (a sweep preset's) adds fields per method, e.g.
    the paper's larger lr for GradAlign.
    """
    configs = []
    for method, eps, seed in itertools.product(methods, eps_values, seeds):
        name, line = SWEEP[method]
        weights = dict.fromkeys(REGULARISERS, 0.0)
        if line.regulariser is not None:
            by_rule = lambda_of_eps(line.regulariser, base["dataset"], eps) if rule else None
            weights[line.regulariser] = fixed[line.regulariser] if by_rule is None else by_rule
        extra = (method_fields or {}).get(method, {})
        values = {**base, "method": name, **line.fields, **extra, "eps": eps, **weights, "seed": seed}
        try:
            configs.append(make_config({**values, "name": ""}))
        except ConfigError as exc:
            raise ConfigError(f"{method} at ε={format_eps(eps, base['dataset'])}: {exc}") from None
    return configs


def _has_rule(base: dict) -> bool:
    """λ(ε) is the default where it is calibrated: the digits fit, and the paper's rule on natural images."""
    return base["dataset"] == "digits" or base["dataset"] in NATURAL_IMAGES


def _base(name: str) -> dict:
    return SWEEP_PRESETS[name]["base"] if name in SWEEP_PRESETS else PRESETS[name]


def _apply_base(name: str) -> None:
    """A sweep preset fills the whole form; a run preset is only the base (and the λ toggle's default)."""
    natural = _base(name)["dataset"] in NATURAL_IMAGES
    preset = SWEEP_PRESETS.get(name)
    st.session_state[KEY + "paper"] = preset["paper_lambda"] if preset else _has_rule(_base(name))
    st.session_state[KEY + "epochs"] = make_config(_base(name)).epochs
    st.session_state[KEY + "seeds"] = str(make_config(_base(name)).seed)
    if preset:
        st.session_state[KEY + "methods"] = list(preset["methods"])
        st.session_state[KEY + ("eps255" if natural else "eps")] = preset["eps"]


def _new_sweep(r) -> None:
    base_name = st.selectbox(
        "Based on preset",
        [*PRESETS, *SWEEP_PRESETS],
        key=KEY + "base",
        on_change=lambda: _apply_base(st.session_state[KEY + "base"]),
        help="A run preset is the config every run starts from; a sweep preset also picks methods and ε.",
    )
    base = _base(base_name)
    note = SWEEP_PRESETS[base_name].get("note") if base_name in SWEEP_PRESETS else PRESET_NOTES.get(base_name)
    if note:
        st.caption(note)
    natural = base["dataset"] in NATURAL_IMAGES
    eps_key = KEY + ("eps255" if natural else "eps")
    for key, default in {
        KEY + "methods": DEFAULT_METHODS,
        eps_key: DEFAULT_EPS["natural" if natural else "fraction"],
        KEY + "paper": _has_rule(base),
        KEY + "epochs": make_config(base).epochs,
        KEY + "seeds": str(make_config(base).seed),
    }.items():
        st.session_state.setdefault(key, default)
    columns = st.columns([3, 3, 1.3, 1.5, 2, 2, 2])
    methods = columns[0].multiselect("Methods", list(SWEEP), key=KEY + "methods")
    eps_text = columns[1].text_input(
        "ε values (× 1/255)" if natural else "ε values",
        key=eps_key,
        max_chars=400,  # MAX_EPS_VALUES values of a few characters each
        help="Comma-separated; fractions like 8/3 are fine.",
    )
    epochs = columns[2].number_input(
        "epochs", key=KEY + "epochs", step=1, help="Of every run in the sweep. " + allowed("epochs")
    )
    seeds_text = columns[3].text_input(
        "seeds",
        key=KEY + "seeds",
        max_chars=200,  # MAX_SEEDS seeds of a few digits each
        help=f"Comma-separated; every method runs at every ε once per seed. {allowed('seed')}",
    )
    digits = base["dataset"] == "digits"
    rule = columns[4].toggle(
        "λ(ε): digits fit" if digits else "GradAlign: paper λ(ε)",
        key=KEY + "paper",
        help="GradAlign's and ELLE's λ fitted on digits (docs/reproduction.md), measured for ε = "
        + " and ".join(
            f"{low:g}–{high:g} ({REGULARISER_NAMES[f]})" for f, (low, high) in DIGITS_LAMBDA_MEASURED.items()
        )
        + ", extrapolated elsewhere"
        if digits
        else "λ = 0.2·10^((ε − 8/255)/(8/255)), for GradAlign; ELLE keeps its fixed λ",
    )
    fixed = {}
    for column, (field, preset) in zip(
        columns[5:7], (("grad_align_lambda", DIGITS_GRAD_ALIGN), ("elle_lambda", DIGITS_ELLE)), strict=True
    ):
        fixed[field] = column.number_input(
            f"{REGULARISER_NAMES[field]}: fixed λ",
            min_value=0.0,
            max_value=float(field_bounds(field)["le"]),
            value=PRESETS[preset][field],
            format="%g",
            disabled=rule and lambda_of_eps(field, base["dataset"], 0.1) is not None,
            key=KEY + ("lambda" if field == "grad_align_lambda" else "elle_lambda"),
            help=f"Starts at the λ of “{preset}”; the paper's GradAlign λ(ε) is calibrated for CIFAR-10.",
        )
    method_fields = SWEEP_PRESETS.get(base_name, {}).get("method_fields")
    try:
        eps_values = parse_eps_list(eps_text, natural)
        seeds = parse_seeds(seeds_text)
        configs = sweep_configs(
            {**base, "epochs": epochs}, methods, eps_values, seeds, rule, fixed, method_fields
        )
    except ValueError as exc:  # ConfigError is one too
        st.error(md_escape(str(exc)))
        return
    workers = api.workers(r)
    finished = [run for run in api.list_runs(r) if run.status == "finished"]
    gpu = any(worker.device.startswith("cuda") for worker in workers)
    took = estimate.sweep_expected(configs, finished, gpu, len(workers))
    weights = dict.fromkeys(  # once per (method, ε), not per seed
        f"{name} λ={getattr(config, field):g} at ε={format_eps(config.eps, config.dataset)}"
        + (" (extrapolated)" if rule and lambda_extrapolated(field, config.dataset, config.eps) else "")
        for config in configs
        for field, name in REGULARISER_NAMES.items()
        if getattr(config, field) > 0
    )
    st.caption(
        f"{plural(len(configs), 'run')}, based on “{md_escape(base_name)}”. {took}"
        + (f" {md_escape('; '.join(weights))}." if weights else "")
    )
    refused = api.limit_violations(configs, api.queued_count(r))
    for field, text in refused.items():
        st.error(md_escape(f"{field}: {text}"))
    if st.button(
        f"Launch {plural(len(configs), 'run')}",
        type="primary",
        disabled=not configs or bool(refused),
        key=KEY + "submit",
    ):
        sweep_id = uuid.uuid4().hex[:8]
        for config in configs:
            api.submit(r, config, sweep_id=sweep_id)
        nav.go("sweep", sweep=sweep_id)


def _results(sweep_id: str) -> bool:
    """The sweep's chart and its runs; returns whether any run can still change."""
    r = state.connection()
    runs = api.sweep_runs(r, sweep_id)
    # every run that has ever started, for its curve (a resumed one waiting in the queue has no started_at but
    # the time its attempts ran); the PGD-vs-ε chart takes a finished run's final results
    started = [run for run in runs if run.started_at is not None or run.elapsed_before]
    histories = {run.id: state.history(r, run) for run in started}
    running = {run.id: histories[run.id] for run in runs if run.status == api.RunStatus.RUNNING}
    points = sweep_frame(runs, running)
    done = sum(run.status in api.TERMINAL for run in runs)
    st.progress(done / len(runs) if runs else 0.0, text=f"{done} of {plural(len(runs), 'run')} done")
    natural = bool(runs) and runs[0].config.dataset in NATURAL_IMAGES
    figure = sweep_figure(points, natural, uirevision=f"sweep:{sweep_id}", dark=dark_theme())
    clicked = live_chart(figure, f"sweep.chart.{sweep_id}", f"codash-sweep-{sweep_id}-pgd-vs-eps").get(
        "customdata"
    )
    if isinstance(clicked, list) and clicked and isinstance(clicked[0], str):  # from the browser: checked
        nav.go("live", run=clicked[0])
    curves = [
        SweepCurve(
            method_family(run.config),
            run.config.eps,
            format_eps(run.config.eps, run.config.dataset),
            run.config.seed,
            histories[run.id],
        )
        for run in runs
        if run.id in histories
    ]
    if curves:
        figure = sweep_curves_figure(curves, uirevision=f"sweep-curves:{sweep_id}", dark=dark_theme())
        live_chart(figure, f"sweep.curves.{sweep_id}", f"codash-sweep-{sweep_id}-pgd-vs-iteration")
    with st.expander("Click a point to open its run, or pick it here"):
        for run in runs:
            st.page_link(
                nav.page("live"),
                label=md_escape(f"{run.config.label()} · {run.status}"),
                query_params={"run": run.id},
                icon=":material/open_in_new:",
            )
    return done < len(runs)


if __name__ == "__main__":  # run by st.navigation as a page script
    render()
