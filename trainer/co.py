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

The evals come every `eval_every` iterations, so the first collapsed eval only bounds the onset to that
interval. Once the rule has fired, `onset_iteration` is the first iteration of the collapse
(`dense_onset`) on the densest series the run has of the window it can lie in (from just after the eval
before the last uncollapsed one to the confirming eval):
  - the live eval itself at every iteration of the window, replayed on the weights the run kept
    (trainer.window; `onset_evals` carries its rows), else
  - the dense probe (trainer.probe, every `probe_every` iterations on a fixed training subset; a resumed
    or forked run has not kept the window's weights), else
  - the first collapsed eval.
The event carries the probe's rows (`onset_probes`) either way, and `onset_interval`: where 90 % of the
onsets fall when the images of the series it was placed on are resampled. On a collapse that drifts over
a hundred iterations that is 10-40 iterations for the 256-image eval and more for a 32-image probe
(docs/reproduction.md).
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

MIN_PEAK = 0.15
DROP = 0.5
GAP = 0.3
PATIENCE = 2
RULE = f"best_pgd>={MIN_PEAK} and pgd<{DROP}*best_pgd and fgsm-pgd>={GAP}, {PATIENCE} evals in a row"
SMOOTH_ITERS = 10  # a dense point is the mean of the points within this many iterations of it
ONSET_RULE = (
    f"first iteration of the last run of pgd (mean over +-{SMOOTH_ITERS} its) < {DROP} x its peak since"
    " the eval before the last uncollapsed one, up to the confirming eval"
)
INTERVAL_DRAWS = 200  # bootstrap resamples of the images behind onset_interval
INTERVAL = (0.05, 0.95)  # the quantiles of the resampled onsets it spans


def smoothed(points: list[list[float]]) -> list[tuple[int, float]]:
    """[iteration, pgd_acc, ...] rows -> (iteration, pgd_acc averaged over the rows within SMOOTH_ITERS)."""
    rows = [(int(row[0]), row[1]) for row in points]
    return [
        (iteration, statistics.fmean(v for it, v in rows if abs(it - iteration) <= SMOOTH_ITERS))
        for iteration, _ in rows
    ]


def dense_onset(points: list[list[float]], confirmed_at: int) -> int | None:
    """The first iteration of the collapse in a dense series of [iteration, pgd_acc, ...] rows.

    The series is the window the detector keeps (from just after the eval before the last uncollapsed one).
    Each point's PGD accuracy is averaged over SMOOTH_ITERS on either side (32-64 probe images are noisy);
    a point is collapsed when that mean is below DROP x the largest mean in the window, and the onset is
    the first point of the last unbroken run of collapsed points up to `confirmed_at` (None if the last
    point is not collapsed). The same function places the onset on the probe (the detector) and on a
    per-iteration evaluation (experiments/onset_check.py), so the two can be compared.
    """
    means = smoothed([row for row in points if row[0] <= confirmed_at])
    if not means:
        return None
    threshold = DROP * max(mean for _, mean in means)
    onset = None
    for iteration, mean in means:
        onset = (iteration if onset is None else onset) if mean < threshold else None
    return onset


def onset_on_images(rows: list[list], images: list[int], confirmed_at: int) -> int | None:
    """dense_onset of the PGD accuracy that only `images` would give: rows are [iteration, pgd_acc,
    fgsm_acc, per-image PGD results (1 robust, 0 fooled)], `images` indices into those results (repeats
    allowed)."""
    series = [[row[0], statistics.fmean(row[3][i] for i in images)] for row in rows]
    return dense_onset(series, confirmed_at)


def resampled_onsets(rows: list[list], confirmed_at: int, draws: int, seed: int) -> list[int | None]:
    """The onset on `draws` bootstrap resamples of the images behind `rows` (see onset_on_images)."""
    rng = random.Random(seed)
    n = len(rows[0][3])
    return [onset_on_images(rows, [rng.randrange(n) for _ in range(n)], confirmed_at) for _ in range(draws)]


def onset_interval(rows: list[list], confirmed_at: int) -> list[int] | None:
    """[low, high]: the INTERVAL quantiles of the onsets of INTERVAL_DRAWS resamples of the rows' images;
    None when a row lacks its per-image results or most resamples place no onset."""
    if not rows or any(len(row) < 4 or not row[3] for row in rows):
        return None
    placed = sorted(
        o for o in resampled_onsets(rows, confirmed_at, INTERVAL_DRAWS, confirmed_at) if o is not None
    )
    if len(placed) < INTERVAL_DRAWS / 2:
        return None
    return [placed[int(q * (len(placed) - 1))] for q in INTERVAL]


def interval_words(interval: list[int] | tuple[int, int] | None) -> str:
    """How the CLI and the dashboard say an onset_interval after the onset: '' when there is none."""
    return "" if interval is None else f" ({interval[0]:,}–{interval[1]:,} over resamples of its images)"


@dataclass
class CODetector:
    best_pgd_acc: float = 0.0
    fired_at: int | None = None
    onset: dict | None = None  # the first collapsed eval of the current streak
    streak: int = 0
    # Dense probe rows [iteration, pgd_acc, fgsm_acc, per-image PGD results] since the eval before the last
    # uncollapsed one: the window an onset can lie in (bounded: at most ~3 eval intervals of probes).
    probes: list[list] = field(default_factory=list)
    previous_eval: int = 0
    window_start: int = 1  # the first iteration the onset can lie at

    def probe(self, iteration: int, pgd_acc: float, fgsm_acc: float, robust: list[float] = ()) -> None:
        """Feed one dense probe (in iteration order, before the eval of the same iteration), with each of
        its images' PGD result (1 robust, 0 fooled) when it has them."""
        if self.fired_at is None:
            self.probes.append([iteration, pgd_acc, fgsm_acc, list(robust)])

    def update(
        self,
        iteration: int,
        pgd_acc: float,
        fgsm_acc: float,
        evals: Callable[[int, int], list[list] | None] | None = None,
    ) -> dict | None:
        """Feed one eval; returns the co event's fields the first time the rule holds. `evals(first, last)`,
        asked then, gives the eval's [iteration, pgd_acc, fgsm_acc, per-image PGD results] rows at every
        iteration from first to last, or None when it has not got them."""
        self.best_pgd_acc = max(self.best_pgd_acc, pgd_acc)
        if self.fired_at is not None:
            return None
        collapsed = (
            self.best_pgd_acc >= MIN_PEAK and pgd_acc < DROP * self.best_pgd_acc and fgsm_acc - pgd_acc >= GAP
        )
        previous, self.previous_eval = self.previous_eval, iteration
        if not collapsed:
            self.streak, self.onset, self.window_start = 0, None, previous + 1
            self.probes = [row for row in self.probes if row[0] >= self.window_start]
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
        probes = [row for row in self.probes if row[0] <= iteration]
        replayed = evals(self.window_start, iteration) if evals is not None else None
        spacing = replayed[1][0] - replayed[0][0] if replayed and len(replayed) > 1 else 1
        replay = "the eval at every iteration" if spacing == 1 else f"the eval every {spacing} iterations"
        placed, rule = None, "no dense series: the first collapsed eval"
        for series, source in ((replayed, replay), (probes, "the dense probe")):
            placed = dense_onset(series, iteration) if series else None
            if placed is not None:
                rule = f"{ONSET_RULE}, on {source}"
                break
        self.fired_at = (
            self.onset["iteration"] if placed is None else placed
        )  # the final event's co_iteration
        return {
            **self.onset,
            "confirmed_at": iteration,
            "rule": RULE,
            "onset_iteration": self.fired_at,
            "onset_rule": rule,
            "onset_probes": [row[:3] for row in probes],
            "onset_evals": [row[:3] for row in replayed] if replayed else None,
            "onset_interval": onset_interval(series, iteration) if placed is not None else None,
        }

    def state_dict(self) -> dict:
        return asdict(self)
