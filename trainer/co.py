"""Catastrophic-overfitting detector: one documented rule over the eval series.

CO is declared at the first eval where all three hold:
  1. robustness was there: the running best PGD accuracy is at least MIN_PEAK;
  2. it collapsed: PGD accuracy is below DROP x that running best;
  3. the single-step attack stopped working: FGSM accuracy exceeds PGD accuracy by at least GAP
     (FGSM accuracy holds or rises while PGD falls, the paper's signature).
Standard training never reaches (1); PGD training keeps FGSM and PGD accuracy close, so (3) fails.
It fires once per run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

MIN_PEAK = 0.15
DROP = 0.5
GAP = 0.3
RULE = f"best_pgd>={MIN_PEAK} and pgd<{DROP}*best_pgd and fgsm-pgd>={GAP}"


@dataclass
class CODetector:
    best_pgd_acc: float = 0.0
    fired_at: int | None = None

    def update(self, iteration: int, pgd_acc: float, fgsm_acc: float) -> dict | None:
        """Feed one eval; returns the co event's fields the first time the rule holds."""
        self.best_pgd_acc = max(self.best_pgd_acc, pgd_acc)
        if self.fired_at is not None:
            return None
        if (
            self.best_pgd_acc >= MIN_PEAK
            and pgd_acc < DROP * self.best_pgd_acc
            and fgsm_acc - pgd_acc >= GAP
        ):
            self.fired_at = iteration
            return {
                "iteration": iteration,
                "pgd_acc": pgd_acc,
                "best_pgd_acc": self.best_pgd_acc,
                "fgsm_acc": fgsm_acc,
                "rule": RULE,
            }
        return None

    def state_dict(self) -> dict:
        return asdict(self)
