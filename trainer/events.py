"""The event vocabulary: the same objects go to a JSONL file (CLI) and to a Redis stream (worker).

A run's history is its events in order; every consumer (charts, exports, tests) reads only these.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable
from typing import IO, Any

Event = dict[str, Any]
Sink = Callable[[Event], None]

FIELDS: dict[str, tuple[str, ...]] = {
    # config also carries every RunConfig field; these are the extra ones.
    "config": ("config", "device", "torch_version", "codash_version", "start_iteration", "total_iterations"),
    "metrics": ("iteration", "epoch", "lr", "train_loss", "train_acc", "reg"),
    # The dense probe (trainer.probe) on a fixed training subset, every probe_every iterations.
    "probe": ("iteration", "fgsm_acc", "pgd_acc", "cos_fgsm_pgd", "cos_grad_random"),
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
    "co": (
        "iteration",
        "pgd_acc",
        "best_pgd_acc",
        "fgsm_acc",
        "confirmed_at",
        "rule",
        "onset_iteration",
        "onset_rule",
        "onset_probes",
    ),
    "checkpoint": ("iteration", "epoch"),
    "final": (
        "co_detected",
        "co_iteration",
        "last",
        "best",
        "best_iteration",
        "attack_points",
        "train_images_per_s",
        "wall_s",
        "iterations",
    ),
}

# Events that come every iteration or every few: sinks batch them instead of flushing each one.
DENSE_EVENTS = frozenset({"metrics", "probe"})
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


def encode(event: Event) -> str:
    """An event as one compact JSON line's text: the JSONL file and the Redis stream hold exactly this."""
    return json.dumps(event, separators=(",", ":"))


def events_jsonl(events: Iterable[Event]) -> str:
    return "".join(encode(event) + "\n" for event in events)


def events_csv(events: Iterable[Event]) -> str:
    """One row per event; the columns are the union over all events (first-seen order), nested objects
    flattened with dots (`config.eps`, `last.pgd_acc`); a field an event lacks is an empty cell. Snapshot
    events (images and filters) are left out: the JSONL export has them."""
    rows = [_flatten(event) for event in events if event["type"] not in ARRAY_EVENTS]
    columns = list(dict.fromkeys(column for row in rows for column in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _flatten(event: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in event.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


class JsonlSink:
    """Writes one JSON object per line and flushes at the events a reader waits for."""

    def __init__(self, stream: IO[str]):
        self.stream = stream

    def __call__(self, event: Event) -> None:
        self.stream.write(encode(event) + "\n")
        if event["type"] not in DENSE_EVENTS:
            self.stream.flush()


def read_jsonl(stream: IO[str]) -> list[Event]:
    return [json.loads(line) for line in stream if line.strip()]
