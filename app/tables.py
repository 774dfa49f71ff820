"""The tables of runs (Runs, Compare) and the sweep's points: one row per run, and how the tables show them.

The frames are pure (runs in, pandas out); COLUMNS, ORDER and MISSING are the one display setting that every
table of runs shares.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd
import streamlit as st

from app.history import RunHistory
from app.text import format_duration, method_family, model_name
from trainer.config import NATURAL_IMAGES, format_eps

if TYPE_CHECKING:
    from jobs.api import Run

COLUMNS = {
    "id": st.column_config.TextColumn("id", width="small"),
    "label": st.column_config.TextColumn("run", width="medium"),
    "λ": st.column_config.NumberColumn("λ", format="%g"),
    "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
    "CO iteration": st.column_config.NumberColumn("CO at", format="%d", help="catastrophic overfitting"),
    "warned at": st.column_config.NumberColumn(
        "warned at", format="%d", help="the CO early warning: gradient alignment falling fast"
    ),
    "clean acc": st.column_config.NumberColumn("clean acc", format="percent", help="final, attacked images"),
    "PGD acc": st.column_config.NumberColumn("PGD acc", format="percent", help="final PGD evaluation"),
    "AA acc": st.column_config.NumberColumn(
        "AA acc", format="percent", help="final AutoAttack evaluation (when enabled)"
    ),
    "created": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm:ss"),
    "fork of": st.column_config.TextColumn("fork of", help="the run this one was forked from @ iteration"),
    "forks": st.column_config.NumberColumn("forks", format="%d", help="runs forked from this one"),
    "open": st.column_config.LinkColumn("open", display_text="↗", width="small", help="open the live view"),
    "seed": st.column_config.NumberColumn("seed", format="%d", width="small"),
    "status": st.column_config.TextColumn("status", width="small"),
    "tags": st.column_config.TextColumn("tags", width="small"),
    "note": st.column_config.TextColumn("note", width="medium"),
}
# What a table shows where a run has no value (no CO, AutoAttack off, not finished yet).
MISSING = "—"
# The columns a table shows (the first fit a laptop screen; the Runs page can add the rest) and the rest.
ORDER = ["open", "label", "status", "progress", "CO iteration", "PGD acc", "clean acc", "seed", "tags", "id"]
MORE = ["warned at", "ε", "λ", "method", "dataset", "model", "AA acc", "iteration", "elapsed", "device"]
MORE += ["created", "sweep", "note", "fork of", "forks"]


def runs_frame(runs: Sequence[Run], now: float | None = None) -> pd.DataFrame:
    """One row per run for the Runs table: what was run, how far it got, and what it achieved."""
    now = time.time() if now is None else now
    forks = Counter(run.config.parent for run in runs if run.config.parent)
    rows = []
    for run in runs:
        config, final = run.config, run.final or {}
        last = final.get("last") or {}
        total = run.total_iterations or 0
        rows.append(
            {
                "id": run.id,
                "label": config.label(),
                "status": run.status,
                "method": config.method,
                "ε": format_eps(config.eps, config.dataset),
                "λ": config.grad_align_lambda,
                "dataset": config.dataset,
                "model": model_name(config),
                "progress": min(run.iteration / total, 1.0) if total else 0.0,
                "iteration": run.iteration,
                "CO iteration": run.co_iteration,
                "warned at": run.warning_iteration,
                "clean acc": last.get("clean_acc"),
                "PGD acc": last.get("pgd_acc"),
                "AA acc": last.get("autoattack_acc"),
                "device": run.device,
                "created": pd.Timestamp(run.created_at, unit="s", tz="UTC"),
                "elapsed": format_duration(run.elapsed_s(now)),
                "sweep": run.sweep_id,
                "seed": config.seed,
                "tags": ", ".join(run.tags),
                "note": run.note,
                "fork of": f"{config.parent} @ {config.fork_iteration}" if config.parent else None,
                "forks": forks[run.id],
            }
        )
    columns = ["id", "label", "status", "method", "ε", "λ", "dataset", "model", "progress", "iteration"]
    columns += ["CO iteration", "warned at", "clean acc", "PGD acc", "AA acc", "device", "created", "elapsed"]
    columns += ["sweep", "seed", "tags", "note", "fork of", "forks"]
    frame = pd.DataFrame(rows, columns=columns)
    accuracies = {name: "float64" for name in ("clean acc", "PGD acc", "AA acc")}
    return frame.astype({"CO iteration": "Int64", "warned at": "Int64", **accuracies})


def sweep_frame(runs: Sequence[Run], histories: dict[str, RunHistory]) -> pd.DataFrame:
    """A point per run with a robust accuracy: its final PGD accuracy, or its latest eval while running."""
    rows = []
    for run in runs:
        config, history = run.config, histories.get(run.id)
        final = run.final or (history.final if history else None)
        if final is not None:
            pgd = (final.get("last") or {}).get("pgd_acc")
            clean = (final.get("last") or {}).get("clean_acc")
            co = bool(final.get("co_detected"))
        else:
            latest = history.latest_eval() if history else None
            pgd = latest["pgd_acc"] if latest else None
            clean = latest["clean_acc"] if latest else None
            co = bool(history and history.co) or run.co_iteration is not None
        warned = run.warning_iteration is not None or bool(history and history.warning)
        if pgd is None:
            continue
        natural = config.dataset in NATURAL_IMAGES
        rows.append(
            {
                "run_id": run.id,
                "method": method_family(config),
                "eps": config.eps,
                "x": config.eps * 255 if natural else config.eps,
                "pgd_acc": pgd,
                "clean_acc": clean,
                "co": co,
                "warned": warned,
                "done": final is not None,
                "status": run.status,
                "label": config.label(),
                "lambda": config.grad_align_lambda or config.elle_lambda,  # the regulariser's weight
                "seed": config.seed,
            }
        )
    columns = [
        "run_id",
        "method",
        "eps",
        "x",
        "pgd_acc",
        "clean_acc",
        "co",
        "warned",
        "done",
        "status",
        "label",
        "lambda",
        "seed",
    ]
    return pd.DataFrame(rows, columns=columns).sort_values(["method", "x", "seed"], ignore_index=True)
