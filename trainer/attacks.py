"""L-inf attacks as small functions of (model, x, y, eps, ...), returning the perturbation delta.

Every delta satisfies |delta| <= eps and 0 <= x + delta <= 1, except N-FGSM's (a training perturbation
that leaves the eps-ball by design) and the alignment probe's random point (`random_point`), which no model
is trained or evaluated on: as in the paper's code it is eta ~ U[-eps, eps], not kept in the box.
Randomness comes only from the optional `generator`, so that evaluation can use its own stream and never
shift the training run's random numbers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def project(delta: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Clip delta to the eps-ball and to the [0,1] box around x."""
    return torch.clamp(torch.clamp(delta, -eps, eps), -x, 1 - x)


def unit_noise(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """U[-1, 1] per coordinate, shaped like x: every random start and random vertex is scaled from it."""
    return torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1


def uniform_noise(x: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """eta ~ U[-eps, eps] per coordinate, projected to the box."""
    return project(unit_noise(x, generator) * eps, x, eps)


def input_grad(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    delta: torch.Tensor | None = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """Gradient of the mean cross-entropy with respect to the input at x + delta.

    With create_graph=True the result stays differentiable in the weights (GradAlign's double backprop).
    Works under torch.no_grad() too, so evaluation code can call attacks anywhere.
    """
    with torch.enable_grad():
        point = (x if delta is None else x + delta).detach().requires_grad_(True)
        loss = F.cross_entropy(model(point), y)
        (grad,) = torch.autograd.grad(loss, point, create_graph=create_graph)
    return grad


def random_point(x: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """eta ~ U[-eps, eps] for the alignment probe, NOT projected to the [0,1] box.

    The paper's `get_input_grad(..., delta_init='random_uniform')` takes the gradient at x + eta unclipped;
    clipping moved the probe onto the box's faces on digits' many 0-valued pixels and never helped there
    (digits: final PGD-20 0.40/0.43/0.43/0.07 unclipped vs 0.16/0.42/0.39/0.07 clipped over 4 seeds).
    """
    return unit_noise(x, generator) * eps


def random_point_grad(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    generator: torch.Generator | None = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """Input gradient at a uniformly random point x + eta of the eps-ball (the paper's alignment probe)."""
    return input_grad(model, x, y, random_point(x, eps, generator), create_graph=create_graph)


def fgsm(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float | None = None, grad=None
) -> torch.Tensor:
    """One signed-gradient step of size alpha (default eps) from x; `grad` may pass a gradient at x."""
    grad = input_grad(model, x, y) if grad is None else grad
    return project((eps if alpha is None else alpha) * grad.sign(), x, eps)


def fgsm_rs(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    generator: torch.Generator | None = None,
    start: torch.Tensor | None = None,
    grad: torch.Tensor | None = None,
) -> torch.Tensor:
    """FGSM from a uniform random start (Wong et al. 2020), alpha typically 1.25 * eps.

    `start` and `grad` may pass the random start and the gradient there (GradAlign reuses that gradient).
    """
    start = uniform_noise(x, eps, generator) if start is None else start
    grad = input_grad(model, x, y, start) if grad is None else grad
    return project(start + alpha * grad.sign(), x, eps)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    restarts: int = 1,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    on_restart: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """PGD with restarts; per example keeps the restart that fools the model, else the highest loss.

    `on_restart(k)` after the k-th of several restarts: the final evaluation's progress within a batch.
    """
    best = torch.zeros_like(x)
    best_loss = torch.full((x.shape[0],), -float("inf"), device=x.device)
    for k in range(1, restarts + 1):
        delta = uniform_noise(x, eps, generator) if random_start else torch.zeros_like(x)
        for _ in range(steps):
            delta = project(delta + alpha * input_grad(model, x, y, delta).sign(), x, eps)
        if restarts == 1:  # nothing to choose between: skip the scoring forward pass (training's case)
            return delta.detach()
        with torch.no_grad():
            logits = model(x + delta)
            # Misclassified examples outrank any loss value, so a successful restart is never replaced.
            score = F.cross_entropy(logits, y, reduction="none") + (logits.argmax(1) != y) * 1e6
            better = score > best_loss
            best = torch.where(better.view(-1, *[1] * (x.dim() - 1)), delta, best)  # no host sync
            best_loss = torch.where(better, score, best_loss)
        if on_restart is not None:
            on_restart(k)
    return best.detach()


def box(delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Keep x + delta in [0,1] only (no eps-ball): for the perturbations that may leave the ball."""
    return torch.clamp(delta, -x, 1 - x)


def nfgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    k: float,
    alpha: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """N-FGSM (de Jorge et al. 2022, "Make some noise"): delta = eta + alpha * sign(grad at x + eta).

    eta ~ U[-k eps, k eps] (k = 2 and alpha = eps in the paper). Unlike FGSM-RS the result is NOT projected
    to the eps-ball: |delta| can reach (k + 1) eps. As in the authors' code, only x + eta and x + delta are
    kept in the [0,1] box.
    """
    eta = box(unit_noise(x, generator) * k * eps, x)
    return box(eta + alpha * input_grad(model, x, y, eta).sign(), x).detach()


def to_corner(delta: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """eps * sign(delta): the vertex of the eps-ball in delta's orthant, then kept in the [0,1] box."""
    return box(eps * delta.sign(), x)


def pgd_corner(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PGD pushed to a corner of the eps-ball: eps * sign(delta_pgd), then kept in the [0,1] box.

    An analysis variant of Andriushchenko & Flammarion (2020), as in their code (tml-epfl/understanding-fast-
    adv-training, train.py, `--attack pgd_corner`): PGD's direction at FGSM's magnitude, which separates
    "the perturbation sits on a vertex of the ball" from "the perturbation is a poor (linearised) maximiser".
    """
    return to_corner(pgd(model, x, y, eps, alpha, steps, generator=generator), x, eps)


def random_corner(x: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly random vertex of the eps-ball, independent of the model (the paper's `random_corner`).

    As in the paper's code: eps * sign(eta) with eta ~ U[-eps, eps]; here x + delta is also kept in [0,1].
    """
    return to_corner(unit_noise(x, generator), x, eps)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosines between matching rows of two batches, for the rows where neither is zero.

    Zero rows (a dead ReLU network, a fully clipped delta) have no direction; as in the paper's code they
    are left out rather than counted as 0, and no 0/0 ever enters the autograd graph.
    """
    a, b = a.flatten(1), b.flatten(1)
    norm_a, norm_b = a.norm(dim=1), b.norm(dim=1)
    keep = (norm_a > 0) & (norm_b > 0)
    return (a[keep] * b[keep]).sum(1) / (norm_a[keep] * norm_b[keep])
