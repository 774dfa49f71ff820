"""The catastrophic-overfitting early warning: one documented rule over the alignment each eval measures.

Gradient alignment, cos(∇x ℓ(x), ∇x ℓ(x + η)) with η ~ U[-ε, ε] (the eval event's `cos_grad_random`), falls
fast as catastrophic overfitting approaches, before robustness is lost; regularised and multi-step runs
keep it, or let it drift down slowly. An eval *warns* when both hold:
  1. the run is robust enough to lose it: its best eval PGD accuracy so far is at least MIN_PEAK (the CO
     rule's condition 1, trainer.co);
  2. the alignment is falling fast: `cos_grad_random` is at least FALL below its value at the reference
     eval, the latest eval at least SPAN iterations before this one (two evals back at digits' eval_every
     of 50; the previous eval where evals are SPAN or more apart).
The first eval that warns gives the `co_warning` event: its iteration, the signal's name and value there,
the threshold it fell below (the reference's value - FALL), and the rule in words. At most once per run,
and never after the run's `co` event: once CO is declared there is nothing left to warn of.

A fall, not a level: on digits ELLE's alignment drifts from 0.97 to 0.82 over a run without collapsing,
lower, relative to its best, than FGSM's is 50-100 iterations before its onset; no level separates them,
while the speed of the fall does, with a margin on both sides (docs/reproduction.md). The thresholds were
chosen on digits only (experiments/co_warning.py: lead before the onset and false alarms on the presets
that do not collapse); on other data sets and cadences they are a starting point, not a measurement.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from trainer.co import MIN_PEAK

SIGNAL = "cos_grad_random"  # the eval event's field the rule reads
FALL = 0.10  # warn when the signal is this much below its value at the reference eval ...
SPAN = 100  # ... the latest eval at least this many iterations earlier
# How long after the warning the onset came, median over the digits FGSM preset's seeds 0-9 (108.5, range
# 50-182: docs/reproduction.md): what the dashboard tells a user to expect, a digits figure like the rule's.
MEDIAN_LEAD = 110
RULE = (
    f"eval {SIGNAL} fell by >= {FALL} since the latest eval >= {SPAN} iterations earlier,"
    f" once the best eval pgd_acc has reached {MIN_PEAK}"
)


@dataclass
class COWarning:
    """The rule's state over a run's evals (checkpointed with the run: RunState.warning)."""

    # [iteration, value] of the evals a later reference can still be among, oldest first (bounded: those
    # within SPAN of the latest, and the one before them)
    recent: list[list[float]] = field(default_factory=list)
    best_pgd_acc: float = 0.0
    fired_at: int | None = None

    def update(self, iteration: int, values: dict, co_fired: bool = False) -> dict | None:
        """Feed one eval's values (the eval event's fields); returns the co_warning event's fields the first
        time the rule holds, None otherwise and always once it has fired or `co_fired`."""
        self.best_pgd_acc = max(self.best_pgd_acc, values.get("pgd_acc") or 0.0)
        value = values.get(SIGNAL)
        if value is None or not math.isfinite(value):  # no alignment measured at this eval
            return None
        earlier = [row for row in self.recent if row[0] <= iteration - SPAN]
        reference = earlier[-1][1] if earlier else None
        self.recent = [*earlier[-1:], *(row for row in self.recent if row[0] > iteration - SPAN)]
        self.recent.append([iteration, value])
        if self.fired_at is not None or co_fired or reference is None or self.best_pgd_acc < MIN_PEAK:
            return None
        threshold = reference - FALL
        if value > threshold:
            return None
        self.fired_at = iteration
        return {
            "iteration": iteration,
            "signal": SIGNAL,
            "value": value,
            "threshold": threshold,
            "rule": RULE,
        }

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict | None) -> COWarning:
        """The rule's state from a checkpoint; a fresh one from a checkpoint written before it existed."""
        return cls(**state) if state else cls()


def warning_words(warning: dict) -> str:
    """A co_warning event as a user reads it (the live view, the CLI): what it expects and what it saw."""
    return (
        f"Alignment falling: catastrophic overfitting likely within ~{MEDIAN_LEAD} iterations. "
        f"At iteration {warning['iteration']:,} {warning['signal']} was {warning['value']:.3f}, below "
        f"{warning['threshold']:.3f} (its value {SPAN}+ iterations earlier, less {FALL})."
    )
