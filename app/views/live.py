"""Live view of one run (`?run=ID`): status, progress, the three panels with the CO marker, the model's
first-layer filters and one image's perturbations at any evaluation, final results.

The panel refreshes every REFRESH_S seconds while the run can still change (app.refresh), reading only the
events after the last one it has shown; the chart updates in place (app.chart) and keeps its zoom because
its uirevision is the run id.
"""

from __future__ import annotations

import time

import streamlit as st

from app import nav, state
from app.chart import live_chart
from app.figures import Series, filters_figure, inside_figure, run_figure
from app.history import RunHistory
from app.refresh import while_live
from app.tables import elapsed_s
from app.text import format_duration, md_escape, model_name, percent, snapshot_label
from jobs import api

REFRESH_S = 1.0
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
    _status(r, run, history)
    figure = run_figure([Series(run.config.label(), history)], uirevision=run_id)
    live_chart(figure, key="live.chart", revision=history.n_events)
    _inside(run, history)
    if run.final:
        _final(run.final, run.config)
    with st.expander("Config"):
        st.json(run.config.model_dump(mode="json"))
    return run.status not in api.TERMINAL


def _status(r, run, history: RunHistory) -> None:
    total = run.total_iterations or history.total_iterations
    iteration = max(run.iteration, history.iteration)
    left, middle, right = st.columns([2, 5, 2], vertical_alignment="center")
    with left:
        st.markdown(f"{STATUS_ICONS[run.status]} **{md_escape(run.status)}**")
        parts = [run.config.dataset, model_name(run.config)]
        parts += [f"elapsed {format_duration(elapsed_s(run, time.time()))}"]
        parts += [f"device {md_escape(run.device or history.device or '–')}"]
        parts += [f"worker {md_escape(run.worker)}"] if run.worker else []
        st.caption(" · ".join(parts))
    with middle:
        fraction = min(iteration / total, 1.0) if total else 0.0
        text = f"iteration {iteration:,} of {total:,}" if total else "waiting for the first event"
        if history.co_iteration is not None:
            text += f" · catastrophic overfitting at iteration {history.co_iteration:,}"
        if (
            run.status == api.RunStatus.RUNNING and total in history.evals
        ):  # the last live eval is in: the final runs
            text += f" · final evaluation: {run.config.final_measures()} of the last and the best model…"
        st.progress(fraction, text=text)
    with right:
        _controls(r, run)
    if run.status == api.RunStatus.QUEUED and not api.workers(r):
        st.warning("No worker is alive to pick this run up. Start one with `codash worker`.")
    if run.status in (api.RunStatus.FAILED, api.RunStatus.UNREADABLE) and run.error:
        st.error(f"Why the run is {run.status}:", icon=":material/error:")
        st.code(run.error, language=None, wrap_lines=True)  # as text: it may quote anything from Redis
    if history.skipped:
        st.caption(f"{history.skipped:,} stream entries could not be read and were skipped.")


def _controls(r, run) -> None:
    """Cancel and resume exactly where the queue allows them (api.CANCELLABLE, api.RESUMABLE)."""
    try:
        if run.status in api.CANCELLABLE and st.button("Cancel", icon=":material/stop:", key="live.cancel"):
            api.cancel(r, run.id)
            st.rerun()
        if run.status in api.RESUMABLE and st.button(
            "Resume", icon=":material/play_arrow:", key="live.resume"
        ):
            api.resume(r, run.id)
            st.rerun()
    except (api.InvalidTransition, api.RunNotFound) as exc:
        st.error(md_escape(str(exc)))


def _inside(run, history: RunHistory) -> None:
    """The first-layer filters and one eval image's perturbations and gradients, at a chosen evaluation.

    The slider follows the latest evaluation until the user moves it, and stays where they put it after.
    """
    st.subheader("Inside the model", anchor=False)
    if not history.snapshots:
        st.caption("The first-layer filters and one image's perturbations appear with the first evaluation.")
        return
    iterations = sorted(history.snapshots)
    key, latest = f"live.snapshot.{run.id}", iterations[-1]
    followed = st.session_state.get(key + ".latest")
    if st.session_state.get(key) not in iterations or st.session_state.get(key) == followed:
        st.session_state[key] = latest
    st.session_state[key + ".latest"] = latest
    if len(iterations) > 1:
        st.select_slider(
            "Evaluation (iteration)",
            options=iterations,
            key=key,
            format_func=lambda it: snapshot_label(it, history.co_iteration),
            help="Scrub through training: compare the filters before and after catastrophic overfitting.",
        )
    iteration = st.session_state[key]
    snapshot = history.snapshots[iteration]
    revision = iteration  # which snapshot a chart shows, for the browser test
    if snapshot.get("filters") is not None:
        live_chart(filters_figure(snapshot, uirevision=run.id), key="live.filters", revision=revision)
    live_chart(
        inside_figure(snapshot, run.config.dataset, uirevision=run.id), key="live.inside", revision=revision
    )
    st.caption(
        f"Iteration {iteration:,}: test image 0 of the eval subset, its FGSM and PGD perturbations (in units "
        "of ε) and the input gradients of the loss at x and at a random point x+η of the ε-ball (each "
        "divided by its largest entry). After catastrophic overfitting the gradient turns noisy and "
        "points elsewhere at x+η: FGSM's one step then no longer finds the PGD perturbation."
    )


def _final(final: dict, config) -> None:
    st.subheader("Final evaluation", anchor=False)
    last, best = final.get("last") or {}, final.get("best") or {}
    columns = st.columns(5)
    columns[0].metric("clean accuracy (last)", percent(last.get("clean_acc")))
    columns[1].metric("PGD accuracy (last)", percent(last.get("pgd_acc")))
    columns[2].metric(
        f"PGD accuracy (early-stopped, it {final.get('best_iteration', 0):,})", percent(best.get("pgd_acc"))
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
    return (
        f"Clean accuracy: the whole test set. {attack} on {images}. Early-stopped: the checkpoint with "
        f"the best PGD-{config.eval_pgd_steps} accuracy on {config.eval_points:,} training images. "
        f"Wall time {format_duration(final.get('wall_s'))}."
    )


if __name__ == "__main__":  # run by st.navigation as a page script
    render()
