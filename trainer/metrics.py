"""Per-iteration metrics and dense probes buffered on the device and emitted in batches, in order."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from trainer.events import Event, Sink, make_event
from trainer.probe import PROBE_FIELDS

METRICS_FLUSH_S = 0.5  # metrics are read off the device in batches, at most this long after the step


class MetricsBuffer:
    """Per-iteration metrics and dense probes kept on the device and read back in batches: no host sync
    every step. `flush` emits them in iteration order, each probe handed to `probed` (with its images' PGD
    results, which no event carries) just before it is emitted."""

    def __init__(self, emit: Sink, probed: Callable[[Event, list[float]], None]):
        self.emit, self.probed = emit, probed
        self.rows: list[tuple] = []
        self.probes: list[tuple[int, torch.Tensor]] = []
        self.last_flush = time.monotonic()

    def add_probe(self, iteration: int, values: torch.Tensor) -> None:
        self.probes.append((iteration, values))

    def add(self, iteration, epoch, lr, loss, acc, reg) -> None:
        self.rows.append((iteration, epoch, lr, torch.stack([loss.float(), acc.float(), reg.float()])))
        if time.monotonic() - self.last_flush > METRICS_FLUSH_S:
            self.flush()

    def flush(self) -> None:
        probes = self._probe_events()
        if self.rows:
            values = torch.stack([row[3] for row in self.rows]).tolist()
            for (iteration, epoch, lr, _), (loss, acc, reg) in zip(self.rows, values, strict=True):
                self.emit(
                    make_event(
                        "metrics",
                        iteration=iteration,
                        epoch=epoch,
                        lr=lr,
                        train_loss=loss,
                        train_acc=acc,
                        reg=reg,
                    )
                )
                while probes and probes[0][0]["iteration"] <= iteration:
                    self._emit_probe(*probes.pop(0))
            self.rows.clear()
        for probe in probes:
            self._emit_probe(*probe)
        self.last_flush = time.monotonic()

    def _emit_probe(self, event: Event, robust: list[float]) -> None:
        self.probed(event, robust)
        self.emit(event)

    def _probe_events(self) -> list[tuple[Event, list[float]]]:
        """(probe event, its images' PGD results) for each probe kept, in order."""
        if not self.probes:
            return []
        values = torch.stack([row[1] for row in self.probes]).tolist()
        fields = len(PROBE_FIELDS)
        events = [
            (
                make_event(
                    "probe", iteration=iteration, **dict(zip(PROBE_FIELDS, row[:fields], strict=True))
                ),
                row[fields:],
            )
            for (iteration, _), row in zip(self.probes, values, strict=True)
        ]
        self.probes.clear()
        return events
