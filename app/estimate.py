"""How long a run will take before it is launched: its work in image passes (jobs.limits.cost: training,
counted per method and regulariser by trainer.methods, live evaluations, dense probes, onset replay, final
evaluation) times a cost per image pass, measured on finished runs of
the same kind here, else guessed from the CPU figures of docs/benchmarks.md. Every estimate says which.
No torch: the dashboard never imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median
from typing import TYPE_CHECKING

from app.text import plural
from jobs.limits import cost
from trainer.config import DATA_SHAPES, RunConfig
from trainer.methods import regularisers

if TYPE_CHECKING:
    from jobs.api import Run

# Seconds per image pass on 2 CPU cores (docs/benchmarks.md, the full run after the GradAlign pruning), by
# model, and the values per image they were measured at: the 1-layer CNN took 2.40 ms for an FGSM iteration
# of 64 digits (16×16, two passes each), the PreAct ResNet-18 510 ms for one of 16 CIFAR-shaped images.
# Another image size scales the figure with its values; other models have no figure to guess from.
CPU_S_PER_IMAGE_PASS = {"cnn": (2.40e-3 / 64 / 2, 16 * 16), "preact_resnet18": (0.510 / 16 / 2, 3 * 32 * 32)}
GUESS_BASIS = "the CPU figures of docs/benchmarks.md"


@dataclass(frozen=True)
class Estimate:
    seconds: float
    measured: bool  # False: a guess, no finished run of this kind to measure from
    basis: str  # what it was scaled from, in words


def _kind(config: RunConfig) -> tuple:
    """Runs of one kind cost the same per image pass (jobs.limits.cost scales the methods' steps by their
    passes, trainer.methods): same data, model, method and regularisers."""
    return (
        config.dataset,
        config.model,
        config.n_layers,
        config.n_filters,
        config.method,
        tuple(reg.name for reg in regularisers(config)),  # an autopilot run counts as GradAlign's
    )


def measured_s_per_image_pass(run: Run) -> float | None:
    """A finished run's wall time per image pass of its work; None if unknown, for a fork and for a resumed
    run (their wall_s covers only part of the work)."""
    wall = (run.final or {}).get("wall_s")
    if run.status != "finished" or not wall or run.attempt > 1 or run.config.fork_iteration is not None:
        return None
    return wall / cost(run.config, "cuda" if (run.device or "").startswith("cuda") else "cpu").work


def _cpu_guess(config: RunConfig) -> float | None:
    """A CPU's seconds per image pass of this model and image size, from docs/benchmarks.md."""
    if config.model not in CPU_S_PER_IMAGE_PASS:
        return None
    seconds, values = CPU_S_PER_IMAGE_PASS[config.model]
    channels, size, _ = DATA_SHAPES[config.dataset]
    return seconds * channels * size * size / values


def expected(config: RunConfig, finished: Sequence[Run], gpu: bool) -> Estimate | None:
    """The run's wall time on the kind of device the workers have (`gpu`), or None if nothing is known."""
    device_ok = (
        (lambda run: (run.device or "").startswith("cuda")) if gpu else (lambda run: run.device == "cpu")
    )
    rates = [
        rate
        for run in finished
        if device_ok(run)
        and _kind(run.config) == _kind(config)
        and (rate := measured_s_per_image_pass(run)) is not None
    ]
    work = cost(config, "cuda" if gpu else "cpu").work
    if rates:
        runs = plural(len(rates), "finished run")
        return Estimate(work * median(rates), True, f"measured on {runs} like it")
    guess = None if gpu else _cpu_guess(config)
    if guess is None:
        return None
    return Estimate(work * guess, False, f"a guess: no finished run like it yet, so from {GUESS_BASIS}")


def sweep_expected(configs: Sequence[RunConfig], finished: Sequence[Run], gpu: bool, workers: int) -> str:
    """The sweep's time in words, spread over the workers: how much of it is measured, guessed, or left out
    for want of anything to estimate from."""
    estimates = [expected(config, finished, gpu) for config in configs]
    known = [estimate for estimate in estimates if estimate is not None]
    if not known:
        return "No finished run like these yet to estimate their time from."
    total = sum(estimate.seconds for estimate in known) / max(1, workers)
    text = f"About {format_hours(total)} on {plural(max(1, workers), 'worker')}"
    if len(known) < len(configs):
        text += f" for {len(known)} of {plural(len(configs), 'run')}"
    measured = sum(estimate.measured for estimate in known)
    parts = [
        f"{plural(measured, 'run')} measured on finished runs like them" if measured else "",
        f"{plural(len(known) - measured, 'run')} of a kind not measured yet guessed from {GUESS_BASIS}"
        if measured < len(known)
        else "",
        f"{plural(len(configs) - len(known), 'run')} of a kind not measured yet not counted (no figure to "
        "guess from)"
        if len(known) < len(configs)
        else "",
    ]
    return f"{text}: {'; '.join(filter(None, parts))}."


def format_hours(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
