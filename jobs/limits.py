"""What one deployment lets a run cost, applied by every door: the launch form, the sweep, `codash submit`
and the worker (which refuses an over-limit job already in the queue), so one form, one sweep or one script
cannot fill the queue, book the GPUs for a week or fill Redis.

RunConfig's own ranges are what a run *can* be; these are what this deployment *allows*, set by the operator
through CODASH_MAX_* variables. The cost of a run is estimated from its config alone (torch-free): its work
in image passes (one forward and backward pass of one image: training, live evaluations, dense probes, final
evaluation; app.estimate turns them into time) and the bytes its event stream will hold. The stream is the
run's history and is never trimmed; the worker stops a run whose stream passes the byte bound anyway
(`StreamBudget`), should the estimate ever be short.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from trainer.co import window_steps
from trainer.config import (
    DATA_SHAPES,
    FIRST_CONV,
    SNAPSHOT_FILTERS,
    TEST_IMAGES,
    TRAIN_IMAGES,
    ConfigError,
    RunConfig,
)
from trainer.methods import step_passes

AUTOATTACK_PASSES = 5_000  # per image and model, roughly: APGD-CE, APGD-T, FAB-T and Square's queries
METRICS_BYTES, EVAL_BYTES, OTHER_BYTES = 220, 260, 4_000  # a stream entry's JSON (config, co, final: others)
NUMBER_BYTES = 6  # a snapshot number, rounded to 2 decimals, with its comma
MB = 2**20


@dataclass(frozen=True)
class Limits:
    max_epochs: int = 200
    max_batch_size: int = 1024
    max_queued: int = 100
    max_work: int = 200_000_000  # image passes: ~10x the paper's CIFAR-10 PGD-10 training with its evals
    max_stream_mb: int = 64  # the paper's CIFAR-10 ResNet runs stream ~35 MB, a digits run ~0.5 MB

    @classmethod
    def from_env(cls) -> Limits:
        defaults = cls()
        return cls(
            **{
                name: _env_int(f"CODASH_{name.upper()}", getattr(defaults, name))
                for name in cls.__dataclass_fields__
            }
        )


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = int(float(text)) if "e" in text.lower() else int(text)  # 2e8 is a fine way to write it
    except (ValueError, OverflowError):
        raise ValueError(f"{name}: must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise ValueError(f"{name}: must be a whole number >= 1, got {value}")
    return value


@dataclass(frozen=True)
class Cost:
    """A run's estimated work (image passes) and stream size, by part."""

    iterations: int
    train: int
    evals: int
    probes: int
    final: int
    stream_bytes: int
    replay: int = 0  # the onset replay's evaluations of the CO window, once, when CO fires (trainer.window)

    @property
    def work(self) -> int:
        return self.train + self.evals + self.probes + self.final + self.replay


def cost(config: RunConfig, device_type: str | None = None) -> Cost:
    """What the run will do on a `device_type` ("cpu", "cuda"; None: wherever it may land, counted as the
    dearer), counting a forward alone as a pass; the attacks' points are capped by the data set's images,
    as the trainer takes them. A training step costs what trainer.methods counts for its method and
    regularisers (an autopilot run as GradAlign throughout, its worst case)."""
    iterations = config.total_iterations()
    per_example = step_passes(config)  # the method's and its regularisers' (trainer.methods)
    n_evals = math.ceil(iterations / config.eval_every)
    test, train = TEST_IMAGES[config.dataset], TRAIN_IMAGES[config.dataset]
    # each eval: clean, FGSM and PGD on the test subset, PGD on as many training images, two cosines
    per_eval = (min(config.eval_points, test) + min(config.eval_points, train)) * (config.eval_pgd_steps + 4)
    n_probes = iterations // config.probe_every if config.probe_points else 0
    # each probe: three input gradients, PGD's other steps, the FGSM and PGD predictions
    per_probe = config.probe_points * (config.probe_pgd_steps + 4)
    per_model = config.final_pgd_steps * config.final_pgd_restarts + (
        AUTOATTACK_PASSES if config.autoattack else 0
    )
    # the last and the early-stopped model: the attacks, then clean accuracy on the whole test set
    final = 2 * (min(config.final_eval_points, test) * per_model + test)
    channels, size, _ = DATA_SHAPES[config.dataset]
    kernel = FIRST_CONV[config.model][1]  # at most SNAPSHOT_FILTERS first-layer filters, kernel x kernel
    snapshot = (
        NUMBER_BYTES * (5 * channels * size * size + SNAPSHOT_FILTERS * channels * kernel**2) + EVAL_BYTES
    )
    stream = iterations * METRICS_BYTES + n_evals * (EVAL_BYTES + snapshot) + 10 * OTHER_BYTES
    # the onset replay evaluates every kept step of the detector's window
    replays = config.replays_onset(device_type or ("cpu" if config.device == "cpu" else "cuda"))
    window = min(window_steps(config.eval_every), iterations)
    return Cost(
        replay=int(window * min(config.eval_points, test) * (config.eval_pgd_steps + 4)) if replays else 0,
        iterations=int(iterations),
        train=int(iterations * config.batch_size * per_example),
        evals=n_evals * per_eval,
        probes=int(n_probes * per_probe),
        final=final,
        stream_bytes=int(stream),
    )


def run_violations(config: RunConfig, limits: Limits | None = None) -> dict[str, str]:
    """What one run asks beyond this deployment's limits, keyed by the field to change (as RunConfig
    errors are, so the form shows each next to its field)."""
    limits = limits or Limits.from_env()
    problems = {}
    if config.epochs > limits.max_epochs:
        problems["epochs"] = f"this deployment allows at most {limits.max_epochs} epochs (CODASH_MAX_EPOCHS)"
    if config.batch_size > limits.max_batch_size:
        problems["batch_size"] = (
            f"this deployment allows batches of at most {limits.max_batch_size} (CODASH_MAX_BATCH_SIZE)"
        )
    estimate = cost(config)
    if estimate.work > limits.max_work:
        parts = {
            "epochs": estimate.train,
            "eval_every": estimate.evals,
            "probe_every": estimate.probes,
            "final_eval_points": estimate.final,
            "onset_replay": estimate.replay,
        }
        problems.setdefault(  # next to the field of the largest part
            max(parts, key=parts.get),
            f"this run would take ~{estimate.work:.2g} image passes (training {estimate.train:.2g}, live "
            f"evaluations {estimate.evals:.2g}, dense probes {estimate.probes:.2g}, final evaluation "
            f"{estimate.final:.2g}, onset replay {estimate.replay:.2g}); this deployment allows "
            f"{limits.max_work:.2g} (CODASH_MAX_WORK)",
        )
    if estimate.stream_bytes > limits.max_stream_mb * MB:
        problems.setdefault(
            "eval_every",
            f"this run would stream ~{estimate.stream_bytes / MB:,.0f} MB of events (each evaluation stores "
            f"the model's filters and one image); this deployment allows {limits.max_stream_mb} MB "
            "(CODASH_MAX_STREAM_MB): evaluate less often, or train fewer iterations",
        )
    return problems


def violations(
    configs: list[RunConfig], queued: int | None = None, limits: Limits | None = None
) -> dict[str, str]:
    """run_violations of every config (the first message per field), and with `queued` (the jobs already
    waiting) the queue's own limit."""
    limits = limits or Limits.from_env()
    problems: dict[str, str] = {}
    for config in configs:
        for field, message in run_violations(config, limits).items():
            problems.setdefault(field, message)
    if queued is not None and queued + len(configs) > limits.max_queued:
        problems["queue"] = (
            f"{queued} run(s) already queued; adding {len(configs)} would pass this deployment's limit of "
            f"{limits.max_queued} (CODASH_MAX_QUEUED): wait for some to start, or cancel some"
        )
    return problems


class OverLimit(ConfigError):
    """A run (or a batch of runs) beyond this deployment's limits; the message names each field."""


def check(configs: list[RunConfig], queued: int | None = None, limits: Limits | None = None) -> None:
    """Raise OverLimit naming every problem violations() finds."""
    problems = violations(configs, queued, limits)
    if problems:
        raise OverLimit(problems)


class StreamBudget:
    """Counts the bytes a run has streamed; past the limit the run stops (failed, saying why)."""

    def __init__(self, limits: Limits | None = None):
        self.limit = (limits or Limits.from_env()).max_stream_mb * MB
        self.used = 0

    def spend(self, size: int) -> None:
        self.used += size
        if self.used > self.limit:
            raise OverLimit(
                {
                    "stream": f"this run has streamed {self.used / MB:,.1f} MB of events, past this "
                    f"deployment's {self.limit // MB} MB (CODASH_MAX_STREAM_MB)"
                }
            )
