"""The training methods and regularisers: one entry each, from which the config schema, run labels, the
dashboard, the captured step (trainer.fast), the deployment's limits (jobs.limits) and the time estimates
(app.estimate) derive.

Torch-free, so the CLI, the queue and the dashboard can read it. An entry holds the method's cost per step in
image passes (a forward and a backward pass of one image), whether its step can be captured (and why not),
and its adversary: the name of its function in trainer/loop.py (Free AT's state lives in trainer.free).
Adding a method touches two files: its entry in METHODS here, and its adversary in trainer/loop.py.
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
    # Image passes per training example of its attack: a number, or the config field that counts them
    # ("pgd_steps": one input gradient per step). The weight update's own pass comes on top (`passes`).
    attack_passes: float | str = 0
    adversary: str | None = None  # its function in trainer/loop.py (ADVERSARY); None: Free AT's trainer.free
    refusal: str | None = None  # why its step cannot be captured as a CUDA graph; None: it can

    @property
    def label_fields(self) -> tuple[str, ...]:
        """The config fields its label shows."""
        return tuple(name for _, name, _, _ in string.Formatter().parse(self.label) if name)

    def passes(self, config: Any) -> float:
        """Image passes per training example of one step: the attack's, then the weight update's."""
        attack = self.attack_passes
        return 1 + (getattr(config, attack) if isinstance(attack, str) else attack)


@dataclass(frozen=True)
class Regulariser:
    """A term any method's loss may add, switched on by a weight field above 0 (or by the autopilot)."""

    name: str  # as labels and estimates name it
    weight: str  # the RunConfig field that weighs it: on when above 0
    # Image passes per training example it adds to a step, on `fraction`'s share of the batch (None: all)
    passes: float
    fraction: str | None = None


_FGSM_STEP = ("alpha",)  # FGSM's step as a multiple of ε
_PGD = ("pgd_steps", "pgd_alpha")

METHODS: dict[str, TrainingMethod] = {
    method.name: method
    for method in (
        TrainingMethod("standard", "Standard", sweep=(SweepEntry("Standard"),), adversary="_standard"),
        TrainingMethod(
            "fgsm",
            "FGSM",
            (*_FGSM_STEP, "rescue"),
            {"alpha": 1.0},
            attack_passes=1,  # the input gradient at x
            adversary="_fgsm",
            sweep=(
                SweepEntry("FGSM"),
                SweepEntry("FGSM + GradAlign", regulariser="grad_align_lambda"),
                SweepEntry("FGSM + ELLE", regulariser="elle_lambda"),
                SweepEntry("FGSM + ELLE-A", {"elle_adaptive": True}, regulariser="elle_lambda"),
            ),
        ),
        # Wong et al. 2020: a random start, then a step of 1.25 ε
        TrainingMethod(
            "fgsm_rs",
            "FGSM-RS",
            (*_FGSM_STEP, "rescue"),
            {"alpha": 1.25},
            sweep=(SweepEntry("FGSM-RS"),),
            attack_passes=1,  # the input gradient at the random start
            adversary="_fgsm_rs",
        ),
        TrainingMethod(
            "pgd",
            "PGD-{pgd_steps}",
            _PGD,
            sweep=(
                SweepEntry("PGD-2", {"pgd_steps": 2, "pgd_alpha": 0.5}),  # α = ε/2, as in the paper
                SweepEntry("PGD-10", {"pgd_steps": 10, "pgd_alpha": 0.25}),
            ),
            attack_passes="pgd_steps",
            adversary="_pgd",
        ),
        # Shafahi et al. 2019: m iterations on each minibatch, steps of ε
        TrainingMethod(
            "free",
            "Free m={free_replays}",
            (*_FGSM_STEP, "free_replays"),
            {"alpha": 1.0},
            sweep=(SweepEntry("Free AT"),),
            # the update's backward also gives the input gradient that moves the carried perturbation
            attack_passes=0,
            refusal="free: the replayed minibatch and the carried perturbation are host-side state",
        ),
        # de Jorge et al. 2022: noise U[-kε, kε], a step of ε, no projection
        TrainingMethod(
            "nfgsm",
            "N-FGSM k={nfgsm_k:g}",
            (*_FGSM_STEP, "nfgsm_k"),
            {"alpha": 1.0},
            sweep=(SweepEntry("N-FGSM"),),
            attack_passes=1,  # the input gradient at the noisy point
            adversary="_nfgsm",
        ),
        # The paper's analysis variants: PGD's direction at FGSM's magnitude, and a random vertex of the ball
        TrainingMethod(
            "pgd_corner", "PGD-{pgd_steps}-corner", _PGD, attack_passes="pgd_steps", adversary="_pgd_corner"
        ),
        TrainingMethod("random_corner", "Random-corner", adversary="_random_corner"),  # no gradient: no pass
    )
}

# The regularisers any method may add. Their costs per training example, next to a plain FGSM step's 2
# passes, match what a step measures on the digits CNN (docs/reproduction.md, `python -m bench
# regulariser`: GradAlign x2.22, ELLE x2.29 an FGSM step; counted: x2.5 each).
REGULARISERS: dict[str, Regulariser] = {
    regulariser.weight: regulariser
    for regulariser in (
        # the input gradient at a random point, with its graph, and the double backprop through it (the
        # first gradient is FGSM's or FGSM-RS's own; other methods take one more, counted in the same 3)
        Regulariser("GradAlign", "grad_align_lambda", 3, fraction="grad_align_fraction"),
        # three more points per example (x_a, x_b, x_c) through the model, forward and backward; no double
        # backprop (trainer.elle)
        Regulariser("ELLE", "elle_lambda", 3),
    )
}
GRAD_ALIGN = REGULARISERS["grad_align_lambda"]


def regularisers(config: Any) -> tuple[Regulariser, ...]:
    """The regularisers a run may train with: those its weights switch on, and GradAlign for an autopilot
    run (`rescue` "auto").

    The autopilot turns GradAlign on at its early warning, which may come at its first evaluation or never;
    its cost is counted at the worst case, GradAlign for the whole run, so that a deployment's limits hold
    whenever the warning comes, and a time estimate errs long rather than short.
    """
    on = [reg for reg in REGULARISERS.values() if getattr(config, reg.weight) > 0]
    if getattr(config, "rescue", "off") == "auto" and GRAD_ALIGN not in on:
        on.insert(0, GRAD_ALIGN)
    return tuple(on)


def step_passes(config: Any) -> float:
    """Image passes per training example of one step of `config`'s run: its method's attack and weight
    update, plus each regulariser it may train with, on its share of the batch."""
    total = METHODS[config.method].passes(config)
    for reg in regularisers(config):
        total += reg.passes * (getattr(config, reg.fraction) if reg.fraction else 1)
    return total


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
