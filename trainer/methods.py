"""The training methods: one entry each, from which the config schema, run labels and the dashboard derive.

Torch-free, so the CLI, the queue and the dashboard can read it. A method's attack lives in trainer.loop
(ADVERSARY; Free AT's state in trainer.free); adding a method is an entry here plus its attack there.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SweepEntry:
    """One line of the Sweep page's method list: a method with fields of its own."""

    name: str  # as the Sweep page and its presets name it
    fields: Mapping[str, Any] = field(default_factory=dict)
    # the regulariser the run adds, by its weight field ("grad_align_lambda", "elle_lambda"), with the λ the
    # form gives (a fixed λ or trainer.config.lambda_of_eps)
    regulariser: str | None = None


@dataclass(frozen=True)
class TrainingMethod:
    name: str  # RunConfig.method
    label: str  # how a run is named, formatted with its config's fields: "PGD-{pgd_steps}"
    reads: tuple[str, ...] = ()  # the config fields that only some methods read, among them those it reads
    defaults: Mapping[str, Any] = field(
        default_factory=dict
    )  # values of those fields when a config leaves them unset
    sweep: tuple[SweepEntry, ...] = ()  # its lines on the Sweep page; none: it cannot be swept

    @property
    def label_fields(self) -> tuple[str, ...]:
        """The config fields its label shows."""
        return tuple(name for _, name, _, _ in string.Formatter().parse(self.label) if name)


_FGSM_STEP = ("alpha",)  # FGSM's step as a multiple of ε
_PGD = ("pgd_steps", "pgd_alpha")

METHODS: dict[str, TrainingMethod] = {
    method.name: method
    for method in (
        TrainingMethod("standard", "Standard", sweep=(SweepEntry("Standard"),)),
        TrainingMethod(
            "fgsm",
            "FGSM",
            (*_FGSM_STEP, "rescue"),
            {"alpha": 1.0},
            sweep=(
                SweepEntry("FGSM"),
                SweepEntry("FGSM + GradAlign", regulariser="grad_align_lambda"),
                SweepEntry("FGSM + ELLE", regulariser="elle_lambda"),
                SweepEntry("FGSM + ELLE-A", {"elle_adaptive": True}, regulariser="elle_lambda"),
            ),
        ),
        # Wong et al. 2020: a random start, then a step of 1.25 ε
        TrainingMethod(
            "fgsm_rs", "FGSM-RS", (*_FGSM_STEP, "rescue"), {"alpha": 1.25}, sweep=(SweepEntry("FGSM-RS"),)
        ),
        TrainingMethod(
            "pgd",
            "PGD-{pgd_steps}",
            _PGD,
            sweep=(
                SweepEntry("PGD-2", {"pgd_steps": 2, "pgd_alpha": 0.5}),  # α = ε/2, as in the paper
                SweepEntry("PGD-10", {"pgd_steps": 10, "pgd_alpha": 0.25}),
            ),
        ),
        # Shafahi et al. 2019: m iterations on each minibatch, steps of ε
        TrainingMethod(
            "free",
            "Free m={free_replays}",
            (*_FGSM_STEP, "free_replays"),
            {"alpha": 1.0},
            sweep=(SweepEntry("Free AT"),),
        ),
        # de Jorge et al. 2022: noise U[-kε, kε], a step of ε, no projection
        TrainingMethod(
            "nfgsm",
            "N-FGSM k={nfgsm_k:g}",
            (*_FGSM_STEP, "nfgsm_k"),
            {"alpha": 1.0},
            sweep=(SweepEntry("N-FGSM"),),
        ),
        # The paper's analysis variants: PGD's direction at FGSM's magnitude, and a random vertex of the ball
        TrainingMethod("pgd_corner", "PGD-{pgd_steps}-corner", _PGD),
        TrainingMethod("random_corner", "Random-corner"),
    )
}

# The fields that only some methods read (every other field applies to every method), and who reads them.
USED_BY: dict[str, tuple[str, ...]] = {
    name: tuple(method.name for method in METHODS.values() if name in method.reads)
    for name in dict.fromkeys(name for method in METHODS.values() for name in method.reads)
}
# The fields a run's label shows for its method (GradAlign's are added to any method's label).
LABEL_FIELDS = ("method", *dict.fromkeys(name for method in METHODS.values() for name in method.label_fields))
# The Sweep page's method list: each line's name, the method it runs and the line itself.
SWEEP: dict[str, tuple[str, SweepEntry]] = {
    entry.name: (method.name, entry) for method in METHODS.values() for entry in method.sweep
}


# The fields that only some models read: the others have a fixed architecture.
MODEL_FIELDS = {"n_layers": ("cnn",), "n_filters": ("cnn",)}


def reads(field: str, method: str, grad_align: bool, model: str) -> bool:
    """Whether a run of `model` trained by `method`, with or without GradAlign, uses `field` at all."""
    if field == "grad_align_fraction":
        return grad_align
    if field in MODEL_FIELDS:
        return model in MODEL_FIELDS[field]
    return method in USED_BY.get(field, (method,))
