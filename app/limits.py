"""What one dashboard may ask of the workers: one form or one sweep cannot fill the queue or book the GPUs
for a week. RunConfig's own ranges are what a run *can* be; these are what this dashboard *allows*, set by
the operator through environment variables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from trainer.config import RunConfig


@dataclass(frozen=True)
class Limits:
    max_epochs: int = 200
    max_batch_size: int = 1024
    max_queued: int = 100

    @classmethod
    def from_env(cls) -> Limits:
        defaults = cls()
        return cls(
            max_epochs=_env_int("CODASH_MAX_EPOCHS", defaults.max_epochs),
            max_batch_size=_env_int("CODASH_MAX_BATCH_SIZE", defaults.max_batch_size),
            max_queued=_env_int("CODASH_MAX_QUEUED", defaults.max_queued),
        )


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}: must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise ValueError(f"{name}: must be a whole number >= 1, got {value}")
    return value


def over_limits(epochs: object, batch_size: object, limits: Limits | None = None) -> dict[str, str]:
    """The run-length fields past this dashboard's limits, worded like RunConfig's own range errors.

    Takes the raw values (a form's, before RunConfig has accepted them), so a batch of 100000 is named
    with the limit that applies here, not RunConfig's looser one.
    """
    limits = limits or Limits.from_env()
    problems = {}
    if isinstance(epochs, int | float) and epochs > limits.max_epochs:
        problems["epochs"] = (
            f"at most {limits.max_epochs} epochs on this dashboard (got {epochs!r}); "
            f"allowed: range [1, {limits.max_epochs}] (CODASH_MAX_EPOCHS)"
        )
    if isinstance(batch_size, int | float) and batch_size > limits.max_batch_size:
        problems["batch_size"] = (
            f"batches of at most {limits.max_batch_size} on this dashboard (got {batch_size!r}); "
            f"allowed: range [1, {limits.max_batch_size}] (CODASH_MAX_BATCH_SIZE)"
        )
    return problems


def violations(configs: list[RunConfig], queued: int, limits: Limits | None = None) -> dict[str, str]:
    """Problems keyed like RunConfig errors (field -> message), so the form shows them next to the field."""
    limits = limits or Limits.from_env()
    longest = max((config.epochs for config in configs), default=0)
    largest = max((config.batch_size for config in configs), default=0)
    problems = over_limits(longest, largest, limits)
    if queued + len(configs) > limits.max_queued:
        problems["queue"] = (
            f"{queued} run(s) already queued; adding {len(configs)} would pass this dashboard's limit of "
            f"{limits.max_queued} (CODASH_MAX_QUEUED): wait for some to start, or cancel some"
        )
    return problems
