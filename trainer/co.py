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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import numpy as np

MIN_PEAK = 0.15
DROP = 0.5
GAP = 0.3
PATIENCE = 2
WINDOW_EVALS = PATIENCE + 1  # the evaluations a CO onset can lie among: the collapsed ones and the one before


def window_steps(eval_every: int) -> int:
    """The training steps a CO onset can lie in: WINDOW_EVALS evaluations' worth."""
    return WINDOW_EVALS * eval_every


RULE = f"best_pgd>={MIN_PEAK} and pgd<{DROP}*best_pgd and fgsm-pgd>={GAP}, {PATIENCE} evals in a row"
SMOOTH_ITERS = 10  # a dense point is the mean of the points within this many iterations of it
ONSET_RULE = (
    f"first iteration of the last run of pgd (mean over +-{SMOOTH_ITERS} its) < {DROP} x its peak since"
    " the eval before the last uncollapsed one, up to the confirming eval"
)
INTERVAL_DRAWS = 200  # bootstrap resamples of the images behind onset_interval
INTERVAL = (0.05, 0.95)  # the quantiles of the resampled onsets it spans


class Row(NamedTuple):
    """One point of a dense series an onset is placed on: a dense probe, or the eval replayed at one
    iteration. Events carry its first three fields (`shown`); checkpoints carry it as a list."""

    iteration: int
    pgd_acc: float
    fgsm_acc: float
    robust: Sequence[float] = ()  # each image's PGD result (1 robust, 0 fooled); empty when not kept

    def shown(self) -> list:
        return [self.iteration, self.pgd_acc, self.fgsm_acc]


def smoothed(points: Sequence[Sequence[float]]) -> list[tuple[int, float]]:
    """Rows (a Row, or [iteration, pgd_acc, ...] as an event carries it) -> (iteration, pgd_acc averaged over
    the rows within SMOOTH_ITERS)."""
    iterations, values = _series(points)
    return list(zip(iterations.tolist(), _smoothed(iterations, values)[:, 0].tolist(), strict=True))


def _series(points: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Rows as `smoothed` reads them -> their iterations and their PGD accuracies as one column."""
    iterations = np.array([int(row[0]) for row in points], dtype=np.int64)
    return iterations, np.array([row[1] for row in points], dtype=np.float64).reshape(-1, 1)


def _smoothed(iterations: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each column of `values` (rows x series) averaged, at each row, over the rows within SMOOTH_ITERS.

    The sums are taken in extended precision and rounded once, as math.fsum would: a mean that lies exactly
    on a threshold (a linear decline's 20 % point, say) is not pushed across it by rounding."""
    near = np.abs(iterations[:, None] - iterations[None, :]) <= SMOOTH_ITERS
    sums = near.astype(np.longdouble) @ values.astype(np.longdouble)
    return sums.astype(np.float64) / near.sum(axis=1, keepdims=True)


def dense_onset(points: Sequence[Sequence[float]], confirmed_at: int) -> int | None:
    """The first iteration of the collapse in a dense series of rows (as `smoothed` reads them).

    The series is the window the detector keeps (from just after the eval before the last uncollapsed one).
    Each point's PGD accuracy is averaged over SMOOTH_ITERS on either side (32-64 probe images are noisy);
    a point is collapsed when that mean is below DROP x the largest mean in the window, and the onset is
    the first point of the last unbroken run of collapsed points up to `confirmed_at` (None if the last
    point is not collapsed). The same function places the onset on the probe (the detector) and on a
    per-iteration evaluation (experiments/onset_check.py), so the two can be compared.
    """
    return dense_onsets(*_series(points), confirmed_at)[0]


def dense_onsets(iterations: np.ndarray, values: np.ndarray, confirmed_at: int) -> list[int | None]:
    """dense_onset of each column of `values` (rows x series) at once, the rows at `iterations`: a
    resampled interval places hundreds of onsets on one window."""
    kept = iterations <= confirmed_at
    iterations, values = iterations[kept], values[kept]
    if not len(iterations):
        return [None] * values.shape[1]
    means = _smoothed(iterations, values)
    up = ~(means < DROP * means.max(axis=0))  # not collapsed (a NaN is not collapsed either)
    rows = len(iterations)
    last_up = np.where(up.any(axis=0), rows - 1 - np.argmax(up[::-1], axis=0), -1)
    return [int(iterations[first]) if first < rows else None for first in (last_up + 1).tolist()]


def onset_on_images(rows: Sequence[Row], images: list[int], confirmed_at: int) -> int | None:
    """dense_onset of the PGD accuracy that only `images` would give: `images` index into each row's
    per-image results (repeats allowed)."""
    return onsets_on_images(rows, [images], confirmed_at)[0]


def onsets_on_images(rows: Sequence[Row], draws: list[list[int]], confirmed_at: int) -> list[int | None]:
    """onset_on_images for each list of images in `draws`, at once."""
    robust = np.array([row.robust for row in rows], dtype=np.float64)  # rows x images
    counts = np.zeros((robust.shape[1], len(draws)))  # how often each draw took each image
    for column, images in enumerate(draws):
        np.add.at(counts[:, column], images, 1.0)
    accuracy = (robust @ counts) / np.array([len(images) for images in draws], dtype=np.float64)
    return dense_onsets(np.array([row.iteration for row in rows], dtype=np.int64), accuracy, confirmed_at)


def resampled_onsets(rows: Sequence[Row], confirmed_at: int, draws: int, seed: int) -> list[int | None]:
    """The onset on `draws` bootstrap resamples of the images behind `rows` (see onset_on_images)."""
    rng = random.Random(seed)
    n = len(rows[0].robust)
    return onsets_on_images(rows, [[rng.randrange(n) for _ in range(n)] for _ in range(draws)], confirmed_at)


def onset_interval(rows: Sequence[Row], confirmed_at: int) -> list[int] | None:
    """[low, high]: the INTERVAL quantiles of the onsets of INTERVAL_DRAWS resamples of the rows' images;
    None when a row lacks its per-image results or most resamples place no onset."""
    if not rows or any(not row.robust for row in rows):
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


def collapse_began(co: dict) -> int:
    """The first sign of a collapse in a `co` event: its first collapsed eval or its placed onset,
    whichever comes first. A rescue forks from the evaluation before it, where the model was still robust
    (and the CO detector it inherits has no collapsed eval on its streak)."""
    onset = co.get("onset_iteration")
    return min(co["iteration"], onset) if isinstance(onset, int) else co["iteration"]


@dataclass(frozen=True)
class Collapse:
    """The rule held (`CODetector.update`): the first collapsed eval of the streak, the window the onset
    can lie in (`start` to `confirmed_at`, the confirming eval) and the dense probes of that window."""

    first: dict  # iteration, pgd_acc, best_pgd_acc, fgsm_acc
    start: int
    confirmed_at: int
    probes: list[Row]


def place_onset(collapse: Collapse, replayed: list[Row] | None) -> dict:
    """The co event's fields: the onset placed on the densest series of the window there is (the eval
    replayed at every iteration, else the dense probe, else the first collapsed eval), with the interval
    resampling its images gives."""
    confirmed = collapse.confirmed_at
    spacing = replayed[1].iteration - replayed[0].iteration if replayed and len(replayed) > 1 else 1
    replay = "the eval at every iteration" if spacing == 1 else f"the eval every {spacing} iterations"
    for series, source in ((replayed, replay), (collapse.probes, "the dense probe")):
        onset = dense_onset(series, confirmed) if series else None
        if onset is not None:
            rule, interval = f"{ONSET_RULE}, on {source}", onset_interval(series, confirmed)
            break
    else:
        onset, rule, interval = collapse.first["iteration"], "no dense series: the first collapsed eval", None
    return {
        **collapse.first,
        "confirmed_at": confirmed,
        "rule": RULE,
        "onset_iteration": onset,
        "onset_rule": rule,
        "onset_probes": [row.shown() for row in collapse.probes],
        "onset_evals": [row.shown() for row in replayed] if replayed else None,
        "onset_interval": interval,
    }


@dataclass
class CODetector:
    """The rule over a run's evals, with the dense probes of the window an onset can lie in. Its state is
    checkpointed (`state_dict`, as plain lists) and restored with CODetector(**state)."""

    best_pgd_acc: float = 0.0
    fired_at: int | None = None  # the onset once CO is declared: the first collapsed eval until `place`
    onset: dict | None = None  # the first collapsed eval of the current streak
    streak: int = 0
    # Dense probe rows since the eval before the last uncollapsed one: the window an onset can lie in
    # (bounded: at most ~3 eval intervals of probes).
    probes: list[Row] = field(default_factory=list)
    previous_eval: int = 0
    window_start: int = 1  # the first iteration the onset can lie at

    def __post_init__(self) -> None:
        self.probes = [Row(*row) for row in self.probes]  # a checkpoint holds them as lists

    def probe(self, iteration: int, pgd_acc: float, fgsm_acc: float, robust: Sequence[float] = ()) -> None:
        """Feed one dense probe, with each of its images' PGD result when it has them. Probes come in
        iteration order and before the eval of the same iteration (the loop flushes them first), so the
        window holds every probe up to the eval being judged."""
        if self.fired_at is None:
            self.probes.append(Row(iteration, pgd_acc, fgsm_acc, list(robust)))

    def update(self, iteration: int, pgd_acc: float, fgsm_acc: float) -> Collapse | None:
        """Feed one eval; the Collapse the first time the rule holds (then `place` it), else None."""
        self.best_pgd_acc = max(self.best_pgd_acc, pgd_acc)
        if self.fired_at is not None:
            return None
        collapsed = (
            self.best_pgd_acc >= MIN_PEAK and pgd_acc < DROP * self.best_pgd_acc and fgsm_acc - pgd_acc >= GAP
        )
        previous, self.previous_eval = self.previous_eval, iteration
        if not collapsed:
            self.streak, self.onset, self.window_start = 0, None, previous + 1
            self.probes = [row for row in self.probes if row.iteration >= self.window_start]
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
        probes = [row for row in self.probes if row.iteration <= iteration]
        return Collapse(self.onset, self.window_start, iteration, probes)

    def place(self, collapse: Collapse, replayed: list[Row] | None = None) -> dict:
        """The co event's fields for `collapse` (place_onset), its onset kept as the run's CO iteration."""
        co = place_onset(collapse, replayed)
        self.fired_at = co["onset_iteration"]
        return co

    def state_dict(self) -> dict:
        return {**asdict(self), "probes": [list(row) for row in self.probes]}
