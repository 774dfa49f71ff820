"""GradAlign (Andriushchenko & Flammarion 2020): keep the input gradient locally aligned in the eps-ball.

    reg = 1 - mean_i cos(grad_x l(x_i), grad_x l(x_i + eta_i)),  eta ~ U[-eps, eps]

The gradient at the random point is built with create_graph=True, so the weight update sees how the
cosine changes with the weights (double backprop). The first gradient is as in the authors' code: the one
FGSM or FGSM-RS already took (at x, or at the random start) is a constant; every other method has none, and
it is taken at x with create_graph=True too (their `get_input_grad(..., backprop=True)`), so the weight
update also sees how it moves.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.attacks import input_grad, random_point_grad


def grad_align_reg(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    first_grad: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    fraction: float = 1.0,
) -> torch.Tensor:
    """The unweighted regulariser (multiply by lambda); pass first_grad to reuse the attack's gradient.

    fraction < 1 takes it on the first part of the batch only (batches are in random order): the same
    mean cosine estimated from fewer points, for proportionally less double-backprop work.
    """
    n = max(1, round(len(x) * fraction))
    x, y = x[:n], y[:n]
    grad_first = input_grad(model, x, y, create_graph=True) if first_grad is None else first_grad[:n].detach()
    grad_random = random_point_grad(model, x, y, eps, generator, create_graph=True)
    return 1 - mean_cosine(grad_first, grad_random)


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """attacks.cosine(a, b).mean() (0 where every row is zero), without reading anything off the device.

    Zero rows are masked rather than dropped: a boolean index would make the host wait for the device at
    every training step. A masked row's denominator is 1 and its weight 0, so no 0/0 enters the graph.
    """
    a, b = a.flatten(1), b.flatten(1)
    norms = a.norm(dim=1) * b.norm(dim=1)
    keep = norms > 0
    cos = (a * b).sum(1) / torch.where(keep, norms, torch.ones_like(norms))
    kept = keep.sum()
    return torch.where(kept > 0, (cos * keep).sum() / kept.clamp(min=1), 1.0)
