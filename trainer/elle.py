"""ELLE (Abad Rocamora et al., ICLR 2024, "Efficient local linearity regularization to overcome catastrophic
overfitting"): penalise the loss's deviation from linearity on random segments of the eps-ball,

    reg = mean_i ( l(x_c) - (1 - a) l(x_a) - a l(x_b) )^2,   x_a, x_b ~ U(eps-ball around x_i),
                                                           x_c = (1 - a) x_a + a x_b,  a ~ U[0, 1],

with per-example cross-entropy l. One forward pass of 3B extra points and the step's one backward: no double
backprop, unlike GradAlign. As in the authors' code (`x + eps * (2 * rand - 1)`, then the convex
combination) the three points are not kept in the [0,1] box: they only measure the loss's curvature.

ELLE-A (`elle_adaptive`), the authors' adaptive weight, as in their code (core/utils/train.py,
`--lambda_schedule onoff`, defaults `--sensitivity 2 --decay_rate 0.99`): lambda starts at 0; after each step,
if more than two errors are on record and this step's error exceeds their mean + 2 x their standard
deviation (all earlier steps, population std), lambda is set to lambda_max (`elle_lambda`), else it is
multiplied by 0.99; then the error joins the record. The record is kept as a running mean and variance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.attacks import random_point

SENSITIVITY = 2.0  # ELLE-A: an error above mean + SENSITIVITY x std of the earlier ones raises lambda
DECAY = 0.99  # ELLE-A: lambda's decay per step otherwise


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


class AdaptiveLambda:
    """ELLE-A's lambda as a device tensor (module docstring), for runs with `elle_adaptive`.

    Every update is a tensor operation on the device, so the step needs no host sync and can be captured in
    a CUDA graph (trainer.fast); `state_dict` goes into checkpoints so a resumed or forked run continues it.
    """

    def __init__(self, lambda_max: float, device: torch.device):
        self.lambda_max = lambda_max
        zero = torch.zeros((), device=device)
        # lambda now; count, mean and sum of squared deviations of the errors so far (Welford)
        self.value, self.count, self.mean, self.m2 = zero.clone(), zero.clone(), zero.clone(), zero.clone()

    def update(self, error: torch.Tensor) -> None:
        """After a step, with its (detached) linearity error: raise lambda on a spike, else decay it."""
        error = error.float()
        std = (self.m2 / self.count.clamp(min=1)).sqrt()
        spike = (self.count > 2) & (error > self.mean + SENSITIVITY * std)
        self.value.copy_(torch.where(spike, torch.full_like(self.value, self.lambda_max), self.value * DECAY))
        self.count.add_(1)
        delta = error - self.mean
        self.mean.add_(delta / self.count)
        self.m2.add_(delta * (error - self.mean))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"value": self.value, "count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, tensor in self.state_dict().items():
            tensor.copy_(state[name])
