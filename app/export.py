"""Runs exported together: one zip with a table of the runs (tags and notes included) and, for each run, its
record, its provenance (who ran each attempt, with what) and its events exactly as streamed (JSON Lines) and
flattened (CSV).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from app.history import RunHistory
from app.tables import runs_frame
from trainer.events import Event, events_csv, events_jsonl, inert

if TYPE_CHECKING:
    from jobs.api import Run


def runs_zip(runs: Sequence[Run], events_of: Callable[[str], list[Event]]) -> bytes:
    """`runs.csv`, then `<id>/run.json`, `<id>/provenance.json`, `<id>/events.jsonl` and `<id>/events.csv`
    for each run."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("runs.csv", runs_frame(runs).map(inert).to_csv(index=False))
        for run in runs:
            events = events_of(run.id)
            archive.writestr(f"{run.id}/run.json", json.dumps(run.to_dict(), indent=1, ensure_ascii=False))
            archive.writestr(f"{run.id}/provenance.json", json.dumps(provenance(run, events), indent=1))
            archive.writestr(f"{run.id}/events.jsonl", events_jsonl(events))
            archive.writestr(f"{run.id}/events.csv", events_csv(events))
    return buffer.getvalue()


def provenance(run: Run, events: list[Event]) -> dict:
    """Which code, machine and device produced the run: each attempt's (from its config event), and the
    worker that holds or last held it."""
    history = RunHistory()
    history.extend(events)
    return {"run": run.id, "status": run.status, "worker": run.worker, "attempts": history.attempts}
