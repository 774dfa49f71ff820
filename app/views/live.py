"""Live view of one run (`?run=ID`): status, progress, the three panels with the CO marker, the model's
first-layer filters and one image's perturbations at any evaluation, final results.

The panel refreshes every REFRESH_S seconds while the run can still change (app.refresh), reading only the
events after the last one it has shown; the chart updates in place (app.chart) and keeps its zoom because
its uirevision is the run id.
"""

from __future__ import annotations

import math
import time

import pandas as pd
import streamlit as st

from app import forks, nav, notes, state
from app.chart import dark_theme, live_chart
from app.history import PROVENANCE, SMOOTHING, RunHistory, first_eval_after
from app.inside import filters_figure, inside_figure
from app.panels import Series, View, run_figure
from app.refresh import while_live
from app.tables import MISSING
from app.text import format_duration, md_escape, model_name, percent, snapshot_label
from app.views import launch
from jobs import api
from trainer.co import interval_words

REFRESH_S = 1.0
X_AXES = ("iteration", "wall clock")
STATUS_ICONS = {
    api.RunStatus.QUEUED: ":material/hourglass_empty:",
    api.RunStatus.RUNNING: ":material/directions_run:",
    api.RunStatus.FINISHED: ":material/check_circle:",
    api.RunStatus.FAILED: ":material/error:",
    api.RunStatus.CANCELLED: ":material/cancel:",
    api.RunStatus.INTERRUPTED: ":material/pause_circle:",
    api.RunStatus.UNREADABLE: ":material/report:",
}


def render() -> None:
    r = state.connection()
    run_id = st.query_params.get("run")
    if not run_id:
        _pick_run(r)
        return
    run = api.get_run(r, run_id)
    if run is None:
        st.error(f"No run with id {md_escape(run_id)}: it may have been deleted.")
        _pick_run(r)
        return
    while_live(_panel, run.status not in api.TERMINAL, REFRESH_S, run_id)


def _pick_run(r) -> None:
    runs = api.list_runs(r, limit=200)
    if not runs:
        st.info("No runs yet: launch one on the Launch page.")
        return
    labels = {run.id: f"{run.config.label()} · {run.status} · {run.id}" for run in runs}
    choice = st.selectbox("Run", list(labels), format_func=labels.get, index=None, placeholder="Pick a run")
    if choice:
        nav.go("live", run=choice)


def _panel(run_id: str) -> bool:
    """The run as it is now; returns whether it can still change."""
    r = state.connection()
    run = api.get_run(r, run_id)
    if run is None:
        st.error("This run was deleted.")
        return False
    history = state.history(r, run)
    st.header(md_escape(run.config.label()), anchor=False)
    # Whatever comes and goes above the chart (a failure, the CO warning, Rescue) stays in one block:
    # the chart's place on the page never moves, so a refresh updates it instead of drawing it anew.
    with st.container():
        if notes.shown(run):
            st.markdown(notes.shown(run))
        if run.status == "failed":
            _failure(run, history)
        forks.lineage_caption(r, run)
        _status(r, run, history)
        forks.rescue_action(r, run, history)
    if not history.metrics and not history.evals:  # nothing to draw: say what is happening instead
        if run.status != "failed":
            st.info(_waiting_for(r, run, history), icon=":material/hourglass_top:")
        return run.status not in api.TERMINAL
    view = _view_controls(_shown_snapshot(run, history))
    series = [Series(run.config.label(), history)]
    action = live_chart(
        run_figure(series, uirevision=run_id, view=view),
        key="live.chart",
        download_name=f"codash-{run_id}-accuracy-alignment-loss",
        revision=history.n_events,
        narrow=run_figure(series, uirevision=run_id, compact=True, height=820, view=view),
    )
    if "x_range" in action:
        _keep_zoom(action["x_range"])
    _inside(run, history, view.dark)
    if run.final:
        _final(run.final, run.config)
    with st.expander("Tags and note"):
        notes.editor(r, run, "live")
    with st.expander("Config"):
        st.json(run.config.model_dump(mode="json"))
    with st.expander("Provenance and checkpoints"):
        _provenance(run, history)
        _checkpoints(run)
    return run.status not in api.TERMINAL


def _provenance(run, history: RunHistory) -> None:
    """Which code, machine and device ran each attempt (started, interrupted, resumed): from the config
    event each attempt opened with; older runs lack the fields their events did not carry yet."""
    if not history.attempts:
        st.caption("No attempt has started yet.")
        return
    frame = pd.DataFrame(history.attempts, columns=["started", *PROVENANCE])
    frame["started"] = pd.to_datetime(frame["started"], unit="s", utc=True)
    frame.insert(0, "attempt", range(1, len(frame) + 1))
    st.dataframe(
        frame,
        hide_index=True,
        placeholder=MISSING,
        column_config={"started": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss")},
    )
    now = f"{run.status} on worker {run.worker}" if run.worker else run.status
    st.caption(f"Attempt {run.attempt} is the latest: {md_escape(now)}.")


def _checkpoints(run) -> None:
    """Download any checkpoint the run kept: the last, the early-stopped best, each evaluation's."""
    files = api.checkpoints(run.id)
    if not files:
        st.caption("No checkpoint kept (yet).")
        return
    left, right = st.columns([3, 2], vertical_alignment="bottom")
    name = left.selectbox("checkpoint", list(files), key=f"live.checkpoint.{run.id}")
    path = files[name]
    right.download_button(
        "Download checkpoint",
        data=path.read_bytes,
        file_name=f"codash-{run.id}-{name.replace(' ', '-')}.pt",
        mime="application/octet-stream",
        key="live.checkpoint.download",
        help="A torch checkpoint (torch.load(path, weights_only=True)) with the model's state dict.",
    )


def _status(r, run, history: RunHistory) -> None:
    total = run.total_iterations or history.total_iterations
    iteration = max(run.iteration, history.iteration)
    left, middle, right = st.columns([2, 5, 2], vertical_alignment="center")
    with left:
        st.markdown(f"{STATUS_ICONS[run.status]} **{md_escape(run.status)}**")
        parts = [run.config.dataset, model_name(run.config)]
        parts += [f"elapsed {format_duration(run.elapsed_s(time.time()))}"]
        parts += [f"device {md_escape(run.device or history.device or '–')}"]
        parts += [f"worker {md_escape(run.worker)}"] if run.worker else []
        st.caption(" · ".join(parts))
    with middle:
        fraction = min(iteration / total, 1.0) if total else 0.0
        text = f"iteration {iteration:,} of {total:,}" if total else f"{run.status}: no iteration yet"
        if history.warning is not None:
            text += f" · CO warning at iteration {history.warning['iteration']:,}"
        if history.co_iteration is not None:
            text += f" · catastrophic overfitting at iteration {history.co_iteration:,}"
            text += interval_words(history.co_interval)
        if (
            run.status == api.RunStatus.RUNNING and total in history.evals
        ):  # the last live eval is in: the final runs
            text += f" · final evaluation: {run.config.final_measures()} of the last and the best model…"
        st.progress(fraction, text=text)
        if run.status == api.RunStatus.RUNNING and history.final_progress and not history.final:
            st.progress(*final_progress(history.final_progress, run.config.final_pgd))
    with right:
        _controls(r, run)
    if run.status == api.RunStatus.UNREADABLE and run.error:  # a failed run says why in _failure
        st.error(f"Why the run is {run.status}:", icon=":material/error:")
        st.code(run.error, language=None, wrap_lines=True)  # as text: it may quote anything from Redis
    if run.status == api.RunStatus.INTERRUPTED and run.error:  # whether resuming is worth it depends on why
        st.warning(f"Why the run was interrupted: {md_escape(run.error)}", icon=STATUS_ICONS[run.status])
    if history.skipped:
        st.caption(f"{history.skipped:,} stream entries could not be read and were skipped.")


def _view_controls(snapshot_iteration: int | None) -> View:
    """Smoothing, log-scale loss and zoom: read from the URL (a reload or a shared link shows the same)."""
    params = st.query_params
    left, middle, right, _ = st.columns([3, 2, 3, 2], vertical_alignment="bottom")
    state.follow_url("live.smoothing", url_number(params.get("smooth"), 0.0, 0.99, SMOOTHING))
    smoothing = left.slider(
        "smoothing (EMA) of the per-iteration curves",
        0.0,
        0.99,
        step=0.01,
        key="live.smoothing",
        help="TensorBoard's smoothing: the weight of the past in an exponential moving average; 0 is raw.",
    )
    state.follow_url("live.log_loss", params.get("log") == "1")
    log_loss = middle.toggle("log-scale loss", key="live.log_loss")
    state.follow_url("live.x_axis", X_AXES[1] if params.get("xaxis") == "clock" else X_AXES[0])
    x_axis = right.segmented_control("x axis", X_AXES, key="live.x_axis") or X_AXES[0]
    clock = x_axis == X_AXES[1]
    if (params.get("xaxis") == "clock") != clock:  # a zoom in iterations means nothing in seconds
        _share({"x": None})
    _share(
        {
            "smooth": f"{smoothing:g}" if smoothing != SMOOTHING else None,
            "log": "1" if log_loss else None,
            "xaxis": "clock" if clock else None,
        }
    )
    for key, value in (("live.smoothing", smoothing), ("live.log_loss", log_loss), ("live.x_axis", x_axis)):
        state.shown_in_url(key, value)
    return View(
        smoothing=smoothing,
        log_loss=log_loss,
        mark=snapshot_iteration,
        dark=dark_theme(),
        x_range=url_range(params.get("x")),
        clock=clock,
    )


def url_number(text: str | None, low: float, high: float, default: float) -> float:
    """A number from the URL (untrusted): in [low, high], else the default."""
    try:
        value = float(text) if text is not None else default
    except ValueError:
        return default
    return value if low <= value <= high else default


def url_range(text: str | None) -> tuple[float, float] | None:
    """'100,400' from the URL (untrusted) as an iteration range, None unless two finite increasing numbers."""
    try:
        low, high = (float(part) for part in (text or "").split(","))
    except ValueError:
        return None
    return (low, high) if math.isfinite(low) and math.isfinite(high) and low < high else None


def _keep_zoom(x_range: object) -> None:
    """The chart's zoom (from the browser: checked) into the URL, so a reload or a shared link keeps it."""
    valid = isinstance(x_range, list) and len(x_range) == 2
    text = (
        ",".join(f"{float(v):.6g}" for v in x_range)
        if valid and all(isinstance(v, int | float) for v in x_range)
        else None
    )
    _share({"x": text if text and url_range(text) else None})


def _share(params: dict[str, str | None]) -> None:
    for name, value in params.items():
        if value is None:
            st.query_params.pop(name, None)
        elif st.query_params.get(name) != value:
            st.query_params[name] = value


def final_progress(event: dict, attack: str) -> tuple[float, str]:
    """The final evaluation's bar: points attacked on the last model, then the best, and the time left.

    The estimate assumes every point costs the same (it does: each gets the same steps and restarts).
    """
    models, points, done = event["models"], event["points"], event["done"]
    finished = done + (points if event["model"] == "best" else 0)  # the last model's points came first
    fraction = finished / (models * points) if points else 1.0
    left = event["elapsed_s"] * (1 - fraction) / fraction if fraction else None
    which = "last model" if event["model"] == "last" else "early-stopped (best) model"
    step = f"{1 if event['model'] == 'last' else 2} of {models}"
    text = f"final {attack} on the {which} ({step}): {done:,} of {points:,} test images attacked"
    text += f" · {fraction:.0%} of the final evaluation" if models > 1 else ""  # what the bar shows
    text += f" · about {format_duration(left)} left" if left is not None else ""
    return min(fraction, 1.0), text


def _waiting_for(r, run, history: RunHistory) -> str:
    """What the run is waiting for before its first iteration, in the order a run goes through it."""
    if run.status == "queued":
        workers = api.workers(r)
        if not workers:
            return (
                "**Waiting for a worker**: none is alive yet. `codash up` starts one within about ten "
                "seconds; elsewhere start one with `codash worker`."
            )
        if all(worker.state == "busy" for worker in workers):
            return f"**Queued**: all {len(workers)} worker(s) are busy; it starts when one is free."
        return "**Queued**: a worker is picking it up."
    first = history.first_eval or first_eval_after(run.config.fork_iteration or 0, run.config.eval_every)
    if run.status == "running" and history.config is None:
        return (
            f"**Worker {md_escape(run.worker or '')} is starting the run**: loading {run.config.dataset} and "
            f"building the model. The first evaluation comes at iteration {first:,}."
        )
    if run.status == "running":
        return f"**Training has started**: the first evaluation comes at iteration {first:,}."
    return f"**{run.status}** before its first iteration."


def _failure(run, history: RunHistory) -> None:
    """A failed run says why first, and offers to relaunch it edited (resuming would fail the same way)."""
    where = f"at iteration {history.iteration:,}" if history.metrics else "before its first iteration"
    st.error(f"**This run failed {where}.** Why, as the worker recorded it:", icon=":material/error:")
    st.code(run.error or "no reason was recorded", language=None, wrap_lines=True)  # once, verbatim, as text
    reason = md_escape(run.error or "no reason was recorded")
    if st.button("Edit and relaunch", icon=":material/edit:", key="live.relaunch", type="primary"):
        launch.fill_from(run.config, f"A copy of failed run {run.id} ({reason}): edit it, then launch.")
        nav.go("launch")


def _controls(r, run) -> None:
    """Cancel while it can still run; resume from its last checkpoint once it stopped.

    Resume is offered only where stopping was the run's only problem (interrupted, cancelled): a failed run
    would fail the same way again, so it gets "Edit and relaunch" instead (_failure).
    """
    try:
        if run.status in api.CANCELLABLE and st.button("Cancel", icon=":material/stop:", key="live.cancel"):
            api.cancel(r, run.id)
            st.rerun()
        if run.status in api.USER_RESUMABLE and st.button(
            "Resume", icon=":material/play_arrow:", key="live.resume"
        ):
            api.resume(r, run.id)
            st.rerun()
    except (api.InvalidTransition, api.RunNotFound) as exc:
        st.error(md_escape(str(exc)))


def _shown_snapshot(run, history: RunHistory) -> int | None:
    """The evaluation "Inside the model" shows, decided before anything is drawn, so the chart's mark and
    the slider say the same iteration: the latest until the user moves the slider, then where they put it."""
    if not history.snapshots:
        return None
    iterations = sorted(history.snapshots)
    key, latest = f"live.snapshot.{run.id}", iterations[-1]
    followed = st.session_state.get(key + ".latest")
    if st.session_state.get(key) not in iterations or st.session_state.get(key) == followed:
        st.session_state[key] = latest
    st.session_state[key + ".latest"] = latest
    return st.session_state[key]


def _inside(run, history: RunHistory, dark: bool) -> None:
    """The first-layer filters and one eval image's perturbations and gradients, at the evaluation
    _shown_snapshot chose (a slider scrubs through them)."""
    st.subheader("Inside the model", anchor=False)
    if not history.snapshots:
        st.caption("The first-layer filters and one image's perturbations appear with the first evaluation.")
        return
    iterations = sorted(history.snapshots)
    key = f"live.snapshot.{run.id}"
    if len(iterations) > 1:
        st.select_slider(
            "Evaluation (iteration)",
            options=iterations,
            key=key,
            format_func=lambda it: snapshot_label(it, history.co_iteration),
            help="Scrub through training: compare the filters before and after catastrophic overfitting.",
        )
    iteration = st.session_state[key]
    forks.fork_action(run, iteration)
    snapshot = history.snapshots[iteration]
    revision = iteration  # which snapshot a chart shows, for the browser test
    if snapshot.get("filters") is not None:
        live_chart(
            filters_figure(snapshot, uirevision=run.id, dark=dark),
            "live.filters",
            f"codash-{run.id}-filters-iteration-{iteration}",
            revision,
            narrow=filters_figure(snapshot, uirevision=run.id, narrow=True, dark=dark),
        )
    live_chart(
        inside_figure(snapshot, run.config.dataset, uirevision=run.id, dark=dark),
        "live.inside",
        f"codash-{run.id}-perturbations-iteration-{iteration}",
        revision,
        narrow=inside_figure(snapshot, run.config.dataset, uirevision=run.id, narrow=True, dark=dark),
    )
    st.caption(inside_caption(snapshot, iteration, history.co_iteration))


def inside_caption(snapshot: dict, iteration: int, co_iteration: int | None) -> str:
    """What the pictures above show, and what this run's own story is at this evaluation."""
    what = (
        f"Iteration {iteration:,}: test image 0 of the eval subset, its FGSM and PGD perturbations (in units "
        "of ε) and the input gradients of the loss at x and at a random point x+η of the ε-ball (each "
        "divided by its largest entry). "
    )
    cos = snapshot.get("cos_grad_random")
    aligned = f" (cosine {cos:.2f})" if cos is not None else ""
    if co_iteration is None:
        return what + (
            f"This run has not overfitted catastrophically: the two gradients stay aligned{aligned}, so "
            "FGSM's one step still points where PGD's many steps go."
        )
    if iteration < co_iteration:
        return what + (
            f"Before this run's catastrophic overfitting at iteration {co_iteration:,}: the gradients are "
            f"still aligned{aligned}. Move the slider past it to see them come apart."
        )
    return what + (
        f"After this run's catastrophic overfitting at iteration {co_iteration:,} the gradient turns noisy "
        f"and points elsewhere at x+η{aligned}: FGSM's one step no longer finds the PGD perturbation."
    )


def _final(final: dict, config) -> None:
    st.subheader("Final evaluation", anchor=False)
    last, best = final.get("last") or {}, final.get("best") or {}
    columns = st.columns(5)
    columns[0].metric("clean accuracy (last)", percent(last.get("clean_acc")))
    if "clean_acc_all" in last:  # absent from runs stored when clean accuracy was on the whole test set
        columns[0].caption(f"whole test set: **{percent(last['clean_acc_all'])}**")
    columns[1].metric("PGD accuracy (last)", percent(last.get("pgd_acc")))
    columns[2].metric(
        f"PGD accuracy (early-stopped, iteration {final.get('best_iteration', 0):,})",
        percent(best.get("pgd_acc")),
    )
    for column, result in ((columns[1], last), (columns[2], best)):  # an independent check, when it ran
        if result.get("autoattack_acc") is not None:
            column.caption(f"AutoAttack: **{percent(result['autoattack_acc'])}**")
    co = final.get("co_iteration")
    columns[3].metric("catastrophic overfitting", f"at {co:,}" if final.get("co_detected") else "none")
    speed = final.get("train_images_per_s")
    columns[4].metric("training speed", f"{speed:,.0f} img/s" if speed else "–")
    st.caption(_final_caption(final, config))


def _final_caption(final: dict, config) -> str:
    """Which attack, on how many images, and what "early-stopped" picked: what the numbers above mean."""
    points = final.get("attack_points")  # absent from runs stored before the final event carried it
    images = f"the first {points:,} test images" if points is not None else "the first test images"
    attack = f"{config.final_pgd} (step ε/4)"
    attack += " and AutoAttack" if config.autoattack else ""
    clean = "the same images" if "clean_acc_all" in (final.get("last") or {}) else "the whole test set"
    return (
        f"{attack} on {images}; clean accuracy on {clean}. Early-stopped: the checkpoint with "
        f"the best PGD-{config.eval_pgd_steps} accuracy on {config.eval_points:,} training images. "
        f"Wall time {format_duration(final.get('wall_s'))}."
    )


if __name__ == "__main__":  # run by st.navigation as a page script
    render()
