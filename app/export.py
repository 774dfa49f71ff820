"""Runs exported together: one zip with a table of the runs (tags and notes included) and, for each run, its
record and its events exactly as streamed (JSON Lines) and flattened (CSV).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from app.tables import runs_frame
from trainer.events import Event, events_csv, events_jsonl

if TYPE_CHECKING:
    from jobs.api import Run


def runs_zip(runs: Sequence[Run], events_of: Callable[[str], list[Event]]) -> bytes:
    """`runs.csv`, then `<id>/run.json`, `<id>/events.jsonl` and `<id>/events.csv` for each run."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("runs.csv", runs_frame(runs).to_csv(index=False))
        for run in runs:
            events = events_of(run.id)
            archive.writestr(f"{run.id}/run.json", json.dumps(run.to_dict(), indent=1, ensure_ascii=False))
            archive.writestr(f"{run.id}/events.jsonl", events_jsonl(events))
            archive.writestr(f"{run.id}/events.csv", events_csv(events))
    return buffer.getvalue()
