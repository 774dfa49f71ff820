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
    # step: "cuda_graph" (captured, replayed) or "eager"; step_reason: why not captured (null when it is);
    # probe_step, probe_step_reason: the same for the dense probe (trainer.probe.DenseProbe);
    # precision: "bf16" (autocast) or "fp32", the resolved `amp`.
    "config": (
        "config",
        "device",
        "torch_version",
        "codash_version",
        "codash_commit",  # the checkout's commit, None when installed (trainer.git_commit)
        "host",
        "device_name",  # the GPU's name, or the CPU's
        "start_iteration",
        "total_iterations",
        "step",
        "step_reason",
        "probe_step",
        "probe_step_reason",
        "precision",
    ),
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
        "onset_evals",
        "onset_interval",
    ),
    # The CO early warning (trainer.warning): at most once per run, never after its co event. `signal` names
    # what fell (an eval or probe field), `value` is its value there and `threshold` what it fell below;
    # `rule` is the rule in words.
    "co_warning": ("iteration", "signal", "value", "threshold", "rule"),
    # The autopilot's switch (`rescue: auto`, trainer.rescue): after step `iteration` the run trains with
    # GradAlign at `grad_align_lambda` for the rest of the run; `step` and `step_reason` are the new step's,
    # as in the config event ("cuda_graph": re-recorded with GradAlign). Once per run, right after its
    # co_warning.
    "rescue": ("iteration", "grad_align_lambda", "step", "step_reason"),
    "checkpoint": ("iteration", "epoch"),
    # The final evaluation's PGD: `done` of `points` test images attacked on `model` ("last", then "best"
    # when it differs: `models` is 1 or 2), `elapsed_s` since it began. Per model: one as its attack begins
    # (done 0), then as each further 1/FINAL_PROGRESS_STEPS (trainer/final.py) of its points is attacked
    # (counted after each PGD restart of each batch), the last at done == points.
    "final_progress": ("model", "models", "done", "points", "elapsed_s"),
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
ARRAY_FIELDS = ("image", "fgsm_delta", "pgd_delta", "grad_x", "grad_random", "filters")  # a snapshot's arrays


class BadEvent(ValueError):
    """Bytes that are not an event of this vocabulary (a reader skips them and counts them)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _is_rows(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(r, list) and all(map(_is_number, r)) for r in value)


# Fields added after runs were already stored: a stored event may lack them (it reads as written then).
LATER_FIELDS = {
    "config": frozenset(
        {"step", "step_reason", "probe_step", "probe_step_reason", "precision", "codash_commit", "host"}
        | {"device_name"}
    ),
    "co": frozenset({"onset_interval", "onset_evals"}),
}

# What each field must hold, where a reader relies on it; every other field only has to be present.
WHOLE_FIELDS = (
    "iteration",
    "start_iteration",
    "total_iterations",
    "best_iteration",
    "iterations",
    "confirmed_at",
    "onset_iteration",
)
# every number of the metrics, probe, eval, co, co_warning, rescue and final events that is not a count
MEASURES = {
    *FIELDS["metrics"],
    *FIELDS["probe"],
    *FIELDS["eval"],
    "best_pgd_acc",
    "train_images_per_s",
    "wall_s",
}
NUMBER_FIELDS = sorted((MEASURES | {"value", "threshold", "grad_align_lambda"}) - set(WHOLE_FIELDS))
FIELD_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    **dict.fromkeys(WHOLE_FIELDS, (_is_int, "a whole number")),
    **dict.fromkeys(("co_iteration", "attack_points"), (lambda v: v is None or _is_int(v), "a whole number")),
    **dict.fromkeys(NUMBER_FIELDS, (_is_number, "a number or null")),
    **dict.fromkeys(("config", "predictions"), (lambda v: isinstance(v, dict), "an object")),
    **dict.fromkeys(
        ("last", "best"),
        (lambda v: isinstance(v, dict) and all(map(_is_number, v.values())), "an object of numbers"),
    ),
    **dict.fromkeys(ARRAY_FIELDS, (lambda v: v is None or isinstance(v, list), "a list or null")),
    "co_detected": (lambda v: isinstance(v, bool), "true or false"),
    "onset_interval": (
        lambda v: (
            v is None or (isinstance(v, list) and len(v) == 2 and all(map(_is_int, v)) and v[0] <= v[1])
        ),
        "null or [low, high] iterations",
    ),
    "onset_probes": (_is_rows, "a list of [iteration, pgd_acc, fgsm_acc] rows"),
    "onset_evals": (
        lambda v: v is None or _is_rows(v),
        "null or a list of [iteration, pgd_acc, fgsm_acc] rows",
    ),
    **dict.fromkeys(
        ("device", "step", "probe_step", "precision", "signal", "rule"),
        (lambda v: isinstance(v, str), "a string"),
    ),
    **dict.fromkeys(
        ("step_reason", "probe_step_reason"), (lambda v: v is None or isinstance(v, str), "a string or null")
    ),
}


# The largest event codash writes is a CIFAR-10 ResNet-18 snapshot (~90 KB): anything far past it is garbage.
MAX_EVENT_BYTES = 8 << 20


def parse_event(data: str | bytes | None) -> Event:
    """One stored event (a stream entry's JSON, a JSONL line), checked at the boundary: every byte in Redis
    is untrusted. Raises BadEvent naming what is wrong; extra fields are allowed (a newer writer's)."""
    if data is None:
        raise BadEvent("no event field")
    if len(data) > MAX_EVENT_BYTES:
        raise BadEvent(f"{len(data):,} bytes: an event is at most {MAX_EVENT_BYTES:,}")
    try:
        event = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadEvent(f"not JSON: {exc}") from None
    except RecursionError:  # e.g. 100k nested "[": the decoder gives up at the interpreter's depth
        raise BadEvent("nested too deeply to be an event") from None
    if not isinstance(event, dict):
        raise BadEvent(f"not an object: {type(event).__name__}")
    kind = event.get("type")
    if not isinstance(kind, str) or kind not in FIELDS:
        raise BadEvent(f"unknown event type {kind!r}")
    for name in FIELDS[kind]:
        if name not in event and name in LATER_FIELDS.get(kind, ()):
            continue
        if name not in event:
            raise BadEvent(f"{kind} event without {name}")
        check, expected = FIELD_CHECKS.get(name, (lambda v: True, ""))
        if not check(event[name]):
            raise BadEvent(f"{kind} event: {name} must be {expected}, got {event[name]!r:.40}")
    return event


def percent(value: float | None) -> str:
    """An accuracy (a fraction, as events carry it) as people read it: the dashboard's and the CLI's text."""
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1%}"


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
    events (images and filters) are left out: the JSONL export has them. Text that a spreadsheet would take
    for a formula is made inert; numbers (negative ones too) stay numbers."""
    rows = [
        {column: inert(value) for column, value in _flatten(event).items()}
        for event in events
        if event["type"] not in ARRAY_EVENTS
    ]
    columns = list(dict.fromkeys(column for row in rows for column in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def inert(value: Any) -> Any:
    """A text cell of any CSV codash writes that a spreadsheet would run as a formula (=, +, -, @ ...) gets
    a leading apostrophe."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


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


def printable(text: str) -> str:
    """Text for a terminal or a log line: any character that is not visible text (an escape sequence, a
    newline, U+202E) is shown as its code, so stored text can never rewrite the screen or forge a line."""
    return "".join(char if char.isprintable() else f"\\u{ord(char):04x}" for char in text)


def one_line(exc: BaseException, limit: int = 1000) -> str:
    """An exception as the single line a run list or a config event can show: type and message, whitespace
    collapsed, at most `limit` characters."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}"[:limit] if message else type(exc).__name__
