"""The dense probe: robustness and gradient alignment on a small fixed training subset, every few iterations.

The periodic eval (trainer.evaluate, every `eval_every` iterations on the test subset) stays the
authoritative measurement; the probe is its cheap, dense companion, so that the collapse of catastrophic
overfitting, which takes a few dozen iterations, can be placed to a few iterations (trainer.co).

It cannot reuse the training step's gradients: those are on the step's minibatch, while a probe is only
comparable from one iteration to the next on fixed points. Instead it takes its three first-order gradients
(at x for FGSM and the alignment, at the paper's random point x + eta, at PGD's random start) in ONE
forward/backward pass over 3P points, then P-point PGD steps, and reads nothing off the device: its values
stay a tensor until the loop flushes them with the metrics.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.attacks import input_grad, project, random_point, uniform_noise
from trainer.events import FIELDS
from trainer.gradalign import mean_cosine

# What one probe measures, in the order of probe_metrics' result: the probe event's fields after iteration.
PROBE_FIELDS = FIELDS["probe"][1:]
PGD_STEP = 0.25  # the eval's PGD step, eps/4: fewer, larger steps (PGD-3 at 2.5 eps/3) keep ~0.25 accuracy
# on FGSM-trained digits models long after PGD-10 has fallen to ~0.02 (they overshoot, as FGSM does)


def probe_seed(seed: int, iteration: int) -> int:
    """The probe's random numbers are a function of (seed, iteration): a resumed run probes identically."""
    return seed * 1_000_003 + iteration


def probe_metrics(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    pgd_steps: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """[FGSM acc, PGD acc, cos(FGSM delta, PGD delta), cos(grad at x, grad at x + eta)] as one tensor.

    The draws, in order: eta (the alignment's unclipped random point, attacks.random_point), then PGD's
    random start (attacks.uniform_noise); so attacks.pgd with the same generator after random_point gives
    the same PGD perturbation.
    """
    n = len(x)
    eta = random_point(x, eps, generator)
    start = uniform_noise(x, eps, generator)
    step = PGD_STEP * eps
    # One pass for three gradients: per-example input gradients do not mix (the model is in eval mode), and
    # the shared 1/(3P) scale of the mean loss changes neither a sign nor a cosine.
    grads = input_grad(model, torch.cat([x, x + eta, x + start]), y.repeat(3)).split(n)
    grad_x, grad_eta, grad_start = grads
    fgsm_delta = project(eps * grad_x.sign(), x, eps)
    pgd_delta = project(start + step * grad_start.sign(), x, eps)
    for _ in range(pgd_steps - 1):
        pgd_delta = project(pgd_delta + step * input_grad(model, x, y, pgd_delta).sign(), x, eps)
    with torch.no_grad():
        correct = (model(torch.cat([x + fgsm_delta, x + pgd_delta])).argmax(1) == y.repeat(2)).float()
    return torch.stack(
        [
            correct[:n].mean(),
            correct[n:].mean(),
            _cosine(fgsm_delta, pgd_delta),
            _cosine(grad_x, grad_eta),
        ]
    )


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The mean cosine over the rows where neither is zero; NaN (an event's null) where there is none."""
    some = ((a.flatten(1).norm(dim=1) * b.flatten(1).norm(dim=1)) > 0).any()
    return torch.where(some, mean_cosine(a, b), torch.nan)
