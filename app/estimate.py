"""How long a run will take before it is launched: scaled from what finished runs of the same kind measured
here, else (only for the ResNet on a CPU, where the answer is "days") from the CPU figure in
docs/benchmarks.md. No torch: the dashboard never imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median
from typing import TYPE_CHECKING

from trainer.config import TRAIN_IMAGES, RunConfig

if TYPE_CHECKING:
    from jobs.api import Run

# PreAct ResNet-18, CIFAR-shaped images, FGSM, batch 16, 2 CPU cores: 510 ms an iteration
# (docs/benchmarks.md), i.e. about 16 ms per image per forward-backward pass.
CPU_RESNET_S_PER_IMAGE_PASS = 0.510 / 16 / 2
GRAD_ALIGN_PASSES = (
    2.6  # GradAlign's double backprop on a ResNet: 2.3× FGSM's two passes (docs/benchmarks.md)
)


@dataclass(frozen=True)
class Estimate:
    seconds: float
    basis: str  # what it was scaled from, in words


def iterations(config: RunConfig) -> int:
    """As trainer.loop counts them: whole batches per epoch, capped by max_iters."""
    total = config.epochs * max(1, TRAIN_IMAGES[config.dataset] // config.batch_size)
    return min(total, config.max_iters or total)


def passes(config: RunConfig) -> float:
    """Forward-backward passes per training image: what the methods' costs scale with."""
    attack = {"standard": 1, "pgd": config.pgd_steps + 1, "pgd_corner": config.pgd_steps + 1, "free": 1}
    return attack.get(config.method, 2) + (GRAD_ALIGN_PASSES if config.uses_grad_align else 0)


def _kind(config: RunConfig) -> tuple:
    """Runs of one kind cost the same per trained image and pass (PGD's steps are scaled by `passes`)."""
    return (
        config.dataset,
        config.model,
        config.n_layers,
        config.n_filters,
        config.method,
        config.uses_grad_align,
    )


def measured_s_per_image_pass(run: Run) -> float | None:
    """A finished run's wall time per trained image and pass, evaluation included; None if unknown."""
    final = run.final or {}
    wall, done = final.get("wall_s"), final.get("iterations")
    if run.status != "finished" or not wall or not done:
        return None
    return wall / (done * run.config.batch_size * passes(run.config))


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
    images = iterations(config) * config.batch_size * passes(config)
    if rates:
        return Estimate(images * median(rates), f"measured on {len(rates)} finished run(s) like it")
    if not gpu and config.model == "preact_resnet18":
        return Estimate(images * CPU_RESNET_S_PER_IMAGE_PASS, "the CPU figure of docs/benchmarks.md")
    return None


def sweep_expected(configs: Sequence[RunConfig], finished: Sequence[Run], gpu: bool, workers: int) -> str:
    """The sweep's time in words, spread over the workers; names what could not be estimated."""
    estimates = [expected(config, finished, gpu) for config in configs]
    known = [estimate.seconds for estimate in estimates if estimate is not None]
    unknown = len(estimates) - len(known)
    if not known:
        return "No finished run like these yet to estimate their time from."
    total = sum(known) / max(1, workers)
    text = f"About {format_hours(total)} on {max(1, workers)} worker(s), from runs measured here"
    if unknown:
        text += f" ({unknown} run(s) of a kind not measured yet are not counted)"
    return text + "."


def format_hours(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
