"""Catastrophic-overfitting detector: one documented rule over the eval series.

An eval is *collapsed* when all three hold:
  1. robustness was there: the running best PGD accuracy is at least MIN_PEAK;
  2. it is gone: PGD accuracy is below DROP x that running best;
  3. the single-step attack stopped working: FGSM accuracy exceeds PGD accuracy by at least GAP
     (FGSM accuracy holds or rises while PGD falls: the paper's signature).
CO is declared when PATIENCE consecutive evals are collapsed; the event carries the first of them (the
onset) and the values seen there. Standard training never meets (1); PGD training keeps FGSM and PGD
accuracy close, so (3) fails; the patience ignores the one-eval dips that GradAlign runs show.
It fires once per run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

MIN_PEAK = 0.15
DROP = 0.5
GAP = 0.3
PATIENCE = 2
RULE = f"best_pgd>={MIN_PEAK} and pgd<{DROP}*best_pgd and fgsm-pgd>={GAP}, {PATIENCE} evals in a row"


@dataclass
class CODetector:
    best_pgd_acc: float = 0.0
    fired_at: int | None = None
    onset: dict | None = None  # the first collapsed eval of the current streak
    streak: int = 0

    def update(self, iteration: int, pgd_acc: float, fgsm_acc: float) -> dict | None:
        """Feed one eval; returns the co event's fields the first time the rule holds."""
        self.best_pgd_acc = max(self.best_pgd_acc, pgd_acc)
        if self.fired_at is not None:
            return None
        collapsed = (
            self.best_pgd_acc >= MIN_PEAK and pgd_acc < DROP * self.best_pgd_acc and fgsm_acc - pgd_acc >= GAP
        )
        if not collapsed:
            self.streak, self.onset = 0, None
            return None
        self.streak += 1
        if self.onset is None:
            self.onset = {
                "iteration": iteration,
                "pgd_acc": pgd_acc,
                "best_pgd_acc": self.best_pgd_acc,
                "fgsm_acc": fgsm_acc,
            }
        if self.streak < PATIENCE:
            return None
        self.fired_at = self.onset["iteration"]
        return {**self.onset, "confirmed_at": iteration, "rule": RULE}

    def state_dict(self) -> dict:
        return asdict(self)
