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


def violations(configs: list[RunConfig], queued: int, limits: Limits | None = None) -> dict[str, str]:
    """Problems keyed like RunConfig errors (field -> message), so the form shows them next to the field."""
    limits = limits or Limits.from_env()
    problems = {}
    if any(config.epochs > limits.max_epochs for config in configs):
        problems["epochs"] = f"this dashboard allows at most {limits.max_epochs} epochs (CODASH_MAX_EPOCHS)"
    if any(config.batch_size > limits.max_batch_size for config in configs):
        problems["batch_size"] = (
            f"this dashboard allows batches of at most {limits.max_batch_size} (CODASH_MAX_BATCH_SIZE)"
        )
    if queued + len(configs) > limits.max_queued:
        problems["queue"] = (
            f"{queued} run(s) already queued; adding {len(configs)} would pass this dashboard's limit of "
            f"{limits.max_queued} (CODASH_MAX_QUEUED): wait for some to start, or cancel some"
        )
    return problems
