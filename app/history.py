"""A run's history: its event stream reduced, event by event, to the rows the charts and tables read.

No Streamlit, Redis or Plotly here: the dashboard keeps one RunHistory per run per session (app.state) and
extends it with only the events written since it last looked.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from trainer.co import collapse_began
from trainer.events import ARRAY_FIELDS

MAX_LINE_POINTS = 600  # per-iteration series are averaged into at most this many bins: SVG stays fast
SMOOTHING = 0.8  # per-batch training numbers are noisy: drawn as an EMA with this weight (TensorBoard's)


@dataclass
class RunHistory:
    """Everything the charts need from one run's events, fed in stream order by `extend`.

    Rows are keyed by iteration: a resumed run replays the iterations after its last checkpoint, and the
    replayed row simply replaces the one from the interrupted attempt.
    """

    config: dict[str, Any] | None = None
    total_iterations: int | None = None
    start_iteration: int = 0  # where the latest attempt began: a fork's or a resumed run's first iteration
    device: str | None = None
    metrics: dict[int, dict[str, Any]] = field(default_factory=dict)
    evals: dict[int, dict[str, Any]] = field(default_factory=dict)
    probes: dict[int, dict[str, Any]] = field(default_factory=dict)  # the dense probe (trainer.probe)
    snapshots: dict[int, dict[str, Any]] = field(default_factory=dict)  # arrays as float32 numpy arrays
    co: dict[str, Any] | None = None
    warning: dict[str, Any] | None = None  # the co_warning event (trainer.warning)
    rescue: dict[str, Any] | None = None  # the autopilot's switch to GradAlign (trainer.rescue)
    final: dict[str, Any] | None = None
    final_progress: dict[str, Any] | None = None  # the latest, while the final evaluation runs
    attempts: list[dict[str, Any]] = field(default_factory=list)  # who ran each attempt: PROVENANCE
    clock: dict[int, float] = field(default_factory=dict)  # iteration -> when it reached the stream (Unix s)
    last_id: str = "0-0"
    n_events: int = 0
    attempt: int = 1  # the run's attempt these events belong to (a resume rewinds the stream)
    skipped: int = 0  # stream entries that were not events, or events these views cannot draw

    def extend(
        self,
        events: Iterable[dict[str, Any]],
        last_id: str | None = None,
        skipped: int = 0,
        times: Iterable[float] | None = None,
    ) -> None:
        """Add events in stream order; `skipped` counts entries the reader already dropped as garbage;
        `times`, when known, are when each event reached the stream (the wall-clock axis)."""
        self.skipped += skipped
        for event, time in zip(events, times or itertools.repeat(None), strict=False):
            self.n_events += 1
            try:
                self._add(event, time)
            except (KeyError, TypeError, ValueError):  # e.g. a snapshot whose arrays are ragged
                self.skipped += 1
        if last_id is not None:
            self.last_id = last_id

    def _add(self, event: dict[str, Any], time: float | None) -> None:
        kind = event.get("type")
        if kind == "config":
            self._restart(event)
            self.attempts.append({"started": time, **{key: event.get(key) for key in PROVENANCE}})
        elif kind == "metrics":
            self.metrics[event["iteration"]] = event
            if time is not None:
                self.clock[event["iteration"]] = time
        elif kind == "eval":
            self.evals[event["iteration"]] = event
        elif kind == "probe":
            self.probes[event["iteration"]] = event
        elif kind == "snapshot":
            self.snapshots[event["iteration"]] = compact_snapshot(event)
        elif kind == "co":
            self.co = event
        elif kind == "co_warning":
            self.warning = event
        elif kind == "rescue":
            self.rescue = event
        elif kind == "final_progress":
            self.final_progress = event
        elif kind == "final":
            self.final = event

    def _restart(self, event: dict[str, Any]) -> None:
        """A config event opens an attempt at `start_iteration`: later rows will be recomputed."""
        self.config = event["config"]
        self.total_iterations = event["total_iterations"]
        self.device = event["device"]
        start = self.start_iteration = event["start_iteration"]
        self.metrics = {it: row for it, row in self.metrics.items() if it <= start}
        self.evals = {it: row for it, row in self.evals.items() if it <= start}
        self.probes = {it: row for it, row in self.probes.items() if it <= start}
        self.snapshots = {it: row for it, row in self.snapshots.items() if it <= start}
        self.clock = {it: time for it, time in self.clock.items() if it <= start}
        if self.co is not None and self.co["iteration"] > start:
            self.co = None
        self.warning, self.rescue = (
            event if event is not None and event["iteration"] <= start else None
            for event in (self.warning, self.rescue)
        )
        self.final = self.final_progress = None

    @property
    def iteration(self) -> int:
        return max(self.metrics, default=0)

    def seconds(self, iterations: Iterable[int]) -> np.ndarray | None:
        """Wall-clock seconds from the run's first iteration to each of `iterations` (when the last iteration
        up to it reached the stream); None when the events came without times."""
        if not self.clock:
            return None
        known = np.array(sorted(self.clock))
        times = np.array([self.clock[it] for it in known]) - self.clock[known[0]]
        index = np.searchsorted(known, np.asarray(list(iterations)), side="right") - 1
        return times[np.clip(index, 0, None)]

    @property
    def co_iteration(self) -> int | None:
        """The CO onset: placed on the densest series the run had (trainer.co)."""
        if not self.co:
            return None
        onset = self.co.get("onset_iteration")
        return onset if isinstance(onset, int) else self.co["iteration"]

    @property
    def co_interval(self) -> tuple[int, int] | None:
        """Where the onset falls over resamples of the images it was placed on (trainer.co.onset_interval):
        how well it is placed; None for runs without one (no dense series, or stored before it existed)."""
        interval = self.co.get("onset_interval") if self.co else None
        return (interval[0], interval[1]) if interval else None

    @property
    def collapse_began(self) -> int | None:
        """The first sign of CO (trainer.co.collapse_began): a rescue forks from before it."""
        return collapse_began(self.co) if self.co else None

    def metrics_frame(self, smoothing: float = SMOOTHING, max_points: int = MAX_LINE_POINTS) -> pd.DataFrame:
        """Per-iteration training numbers as an EMA (TensorBoard's, debiased: weight `smoothing` on the past,
        0 = raw), averaged into max_points bins."""
        frame = _frame(self.metrics.values())
        if not frame.empty:
            columns = ["train_loss", "train_acc", "reg"]
            if smoothing > 0:
                frame[columns] = frame[columns].ewm(alpha=1 - smoothing, adjust=True).mean()
        return downsample(self._timed(frame), max_points)

    def evals_frame(self) -> pd.DataFrame:
        return self._timed(_frame(self.evals.values()))

    def _timed(self, frame: pd.DataFrame) -> pd.DataFrame:
        """A `seconds` column (wall clock since the first iteration) where the events' times are known."""
        seconds = self.seconds(frame["iteration"]) if not frame.empty else None
        if seconds is not None:
            frame["seconds"] = seconds
        return frame

    def probes_frame(self, max_points: int = MAX_LINE_POINTS) -> pd.DataFrame:
        """The dense probe's rows, averaged into at most max_points bins (not smoothed: they are sparse)."""
        return downsample(self._timed(_frame(self.probes.values())), max_points)

    def window_frame(self) -> pd.DataFrame:
        """The eval at every iteration of the CO window, replayed from kept weights (the co event's
        onset_evals: trainer.window); empty for runs without it."""
        rows = (self.co or {}).get("onset_evals") or []
        return self._timed(pd.DataFrame([row[:3] for row in rows if len(row) >= 3], columns=WINDOW_COLUMNS))

    @property
    def first_eval(self) -> int | None:
        """This attempt's first evaluation: its next multiple of eval_every."""
        every = (self.config or {}).get("eval_every")
        return first_eval_after(self.start_iteration, every) if every else None

    def latest_eval(self) -> dict[str, Any] | None:
        return self.evals[max(self.evals)] if self.evals else None


def first_eval_after(start: int, eval_every: int) -> int:
    """The first evaluation of an attempt that starts at `start`: the loop evaluates at multiples of
    eval_every."""
    return (start // eval_every + 1) * eval_every


# What a config event says about who ran an attempt and with what: a run's provenance, shown and exported.
PROVENANCE = (
    "start_iteration",
    "host",
    "device",
    "device_name",
    "codash_version",
    "codash_commit",
    "torch_version",
)
WINDOW_COLUMNS = ["iteration", "pgd_acc", "fgsm_acc"]  # an onset_evals row


def _frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows))
    return frame.sort_values("iteration", ignore_index=True) if not frame.empty else frame


def downsample(frame: pd.DataFrame, max_points: int) -> pd.DataFrame:
    """Average consecutive iterations into at most `max_points` bins (a smoothed curve, never a subsample)."""
    if len(frame) <= max_points:
        return frame
    bins = pd.Series(range(len(frame))) * max_points // len(frame)
    numeric = frame.select_dtypes("number")
    grouped = numeric.groupby(bins.values)
    averaged = grouped.mean()
    averaged["iteration"] = grouped["iteration"].max()  # a bin is plotted where it ends
    return averaged.reset_index(drop=True)


def compact_snapshot(event: dict[str, Any]) -> dict[str, Any]:
    """A snapshot event with its nested lists as float32 arrays: a tenth of the memory, ready to draw."""
    arrays = {key: np.asarray(event[key], dtype=np.float32) for key in ARRAY_FIELDS if event.get(key)}
    for key, array in arrays.items():  # [C][H][W], filters [F][C][k][k]: anything else cannot be drawn
        if array.ndim != (4 if key == "filters" else 3):
            raise ValueError(f"snapshot {key}: {array.ndim} dimensions")
    return {**event, **arrays}
