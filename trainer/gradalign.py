"""GradAlign (Andriushchenko & Flammarion 2020): keep the input gradient locally aligned in the eps-ball.

    reg = 1 - mean_i cos(grad_x l(x_i), grad_x l(x_i + eta_i)),  eta ~ U[-eps, eps]

The gradient at the random point is built with create_graph=True, so the weight update sees how the
cosine changes with the weights (double backprop); as in the paper's code the gradient at x is a constant.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.attacks import cosine, input_grad, random_point_grad


def grad_align_reg(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    grad_at_x: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The unweighted regulariser (multiply by lambda); pass grad_at_x to reuse FGSM's gradient at x."""
    grad_x = input_grad(model, x, y) if grad_at_x is None else grad_at_x.detach()
    grad_random = random_point_grad(model, x, y, eps, generator, create_graph=True)
    cos = cosine(grad_x, grad_random)
    if cos.numel() == 0:
        return grad_random.sum() * 0  # keeps the graph (and the return type) without a 0/0
    return 1 - cos.mean()
