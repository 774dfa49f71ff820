"""L-inf attacks as small functions of (model, x, y, eps, ...), returning the perturbation delta.

Every delta satisfies |delta| <= eps and 0 <= x + delta <= 1. Randomness comes only from the optional
`generator`, so that evaluation can use its own stream and never shift the training run's random numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def project(delta: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Clip delta to the eps-ball and to the [0,1] box around x."""
    return torch.clamp(torch.clamp(delta, -eps, eps), -x, 1 - x)


def uniform_noise(x: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """eta ~ U[-eps, eps] per coordinate, projected to the box."""
    eta = (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * eps
    return project(eta, x, eps)


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


def random_point_grad(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    generator: torch.Generator | None = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """Input gradient at a uniformly random point x + eta of the eps-ball (the paper's alignment probe)."""
    return input_grad(model, x, y, uniform_noise(x, eps, generator), create_graph=create_graph)


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
) -> torch.Tensor:
    """FGSM from a uniform random start (Wong et al. 2020), alpha typically 1.25 * eps."""
    start = uniform_noise(x, eps, generator)
    return project(start + alpha * input_grad(model, x, y, start).sign(), x, eps)


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
) -> torch.Tensor:
    """PGD with restarts; per example keeps the restart that fools the model, else the highest loss."""
    best = torch.zeros_like(x)
    best_loss = torch.full((x.shape[0],), -float("inf"), device=x.device)
    for _ in range(restarts):
        delta = uniform_noise(x, eps, generator) if random_start else torch.zeros_like(x)
        for _ in range(steps):
            delta = project(delta + alpha * input_grad(model, x, y, delta).sign(), x, eps)
        with torch.no_grad():
            logits = model(x + delta)
            # Misclassified examples outrank any loss value, so a successful restart is never replaced.
            score = F.cross_entropy(logits, y, reduction="none") + (logits.argmax(1) != y) * 1e6
            better = score > best_loss
            best[better] = delta[better]
            best_loss = torch.where(better, score, best_loss)
    return best.detach()


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosines between matching rows of two batches, for the rows where neither is zero.

    Zero rows (a dead ReLU network, a fully clipped delta) have no direction; as in the paper's code they
    are left out rather than counted as 0, and no 0/0 ever enters the autograd graph.
    """
    a, b = a.flatten(1), b.flatten(1)
    norm_a, norm_b = a.norm(dim=1), b.norm(dim=1)
    keep = (norm_a > 0) & (norm_b > 0)
    return (a[keep] * b[keep]).sum(1) / (norm_a[keep] * norm_b[keep])
