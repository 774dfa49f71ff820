"""The event vocabulary: the same objects go to a JSONL file (CLI) and to a Redis stream (worker).

A run's history is its events in order; every consumer (charts, exports, tests) reads only these.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import IO, Any

Event = dict[str, Any]
Sink = Callable[[Event], None]

FIELDS: dict[str, tuple[str, ...]] = {
    # config also carries every RunConfig field; these are the extra ones.
    "config": ("config", "device", "torch_version", "codash_version", "start_iteration", "total_iterations"),
    "metrics": ("iteration", "epoch", "lr", "train_loss", "train_acc", "reg"),
    "eval": (
        "iteration",
        "clean_acc",
        "fgsm_acc",
        "pgd_acc",
        "cos_fgsm_pgd",
        "cos_grad_random",
        "train_pgd_acc",
    ),
    # What the run view draws inside the model at each eval (trainer.evaluate.snapshot): arrays as nested
    # lists, bounded (digits ~8 KB, CIFAR-10 ResNet-18 ~90 KB); emitted right after its eval event.
    "snapshot": (
        "iteration",
        "label",
        "predictions",
        "cos_grad_random",
        "image",
        "fgsm_delta",
        "pgd_delta",
        "grad_x",
        "grad_random",
        "filters",
    ),
    "co": ("iteration", "pgd_acc", "best_pgd_acc", "fgsm_acc", "confirmed_at", "rule"),
    "checkpoint": ("iteration", "epoch"),
    "final": (
        "co_detected",
        "co_iteration",
        "last",
        "best",
        "best_iteration",
        "train_images_per_s",
        "wall_s",
        "iterations",
    ),
}

# Fields that depend on the machine's speed, not on the computation: left out when comparing runs.
TIMING_FIELDS = frozenset({"train_images_per_s", "wall_s"})
# Events that carry arrays (images, filters): in the JSONL and the stream like any other, left out of tables.
ARRAY_EVENTS = frozenset({"snapshot"})


def make_event(kind: str, **fields: Any) -> Event:
    """Build an event, checking it carries exactly the fields of its type (a typo fails loudly)."""
    expected = FIELDS[kind]
    if set(fields) != set(expected):
        raise ValueError(f"{kind} event needs {sorted(expected)}, got {sorted(fields)}")
    return {"type": kind, **{key: _finite(value) for key, value in fields.items()}}


def _finite(value: Any) -> Any:
    """NaN/inf are not JSON; a metric that has no value (e.g. no non-zero gradient) is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def tabular(events: list[Event]) -> list[Event]:
    """The events a table (CSV export) holds: one row each, no arrays."""
    return [event for event in events if event["type"] not in ARRAY_EVENTS]


def without_timing(event: Event) -> Event:
    return {key: value for key, value in event.items() if key not in TIMING_FIELDS}


class JsonlSink:
    """Writes one JSON object per line and flushes at the events a reader waits for."""

    def __init__(self, stream: IO[str]):
        self.stream = stream

    def __call__(self, event: Event) -> None:
        self.stream.write(json.dumps(event, separators=(",", ":")) + "\n")
        if event["type"] != "metrics":
            self.stream.flush()


def read_jsonl(stream: IO[str]) -> list[Event]:
    return [json.loads(line) for line in stream if line.strip()]
