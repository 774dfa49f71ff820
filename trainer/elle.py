"""ELLE (Abad Rocamora et al., ICLR 2024, "Efficient local linearity regularization to overcome catastrophic
overfitting"): penalise the loss's deviation from linearity on random segments of the eps-ball,

    reg = mean_i ( l(x_c) - (1 - a) l(x_a) - a l(x_b) )^2,   x_a, x_b ~ U(eps-ball around x_i),
                                                           x_c = (1 - a) x_a + a x_b,  a ~ U[0, 1],

with per-example cross-entropy l. One forward pass of 3B extra points and the step's one backward: no double
backprop, unlike GradAlign. As in the authors' code (`x + eps * (2 * rand - 1)`, then the convex
combination) the three points are not kept in the [0,1] box: they only measure the loss's curvature.
ELLE-A, the authors' adaptive lambda, is not implemented: lambda stays fixed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.attacks import random_point


def elle_reg(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The unweighted local-linearity error (multiply by lambda), differentiable in the weights."""
    n = len(x)
    x_a = x + random_point(x, eps, generator)
    x_b = x + random_point(x, eps, generator)
    mix = torch.rand(n, generator=generator, device=x.device, dtype=x.dtype)
    weight = mix.view(-1, *[1] * (x.dim() - 1))
    x_c = (1 - weight) * x_a + weight * x_b
    losses = F.cross_entropy(model(torch.cat([x_a, x_b, x_c])), y.repeat(3), reduction="none").view(3, n)
    error = losses[2] - (1 - mix) * losses[0] - mix * losses[1]
    return (error**2).mean()
