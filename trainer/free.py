"""Free adversarial training (Shafahi et al., NeurIPS 2019, "Adversarial training for free!").

Each minibatch is replayed for m = `free_replays` consecutive iterations, and one perturbation delta is
carried across replays and across minibatches. Every iteration does ONE forward/backward pass at x + delta:
it updates the weights, and the same pass's input gradient updates the perturbation,

    delta <- clip_[-eps, eps](delta + alpha * sign(grad_delta loss(x + delta))),  alpha = eps by default,

then x + delta is kept in [0,1]. So Free AT costs what standard training costs per iteration.

What `epochs` means here: an iteration is one replay step, so a run still has epochs * (N / batch_size)
iterations, but takes a new minibatch only every m-th iteration (the batch the epoch's order puts at that
iteration; the m - 1 after it are skipped) and so sees N / m examples per epoch. This is the paper's code's
`--minibatch_replay` (Andriushchenko & Flammarion 2020), and matches Shafahi et al.'s "epochs divided by m":
the same number of gradient steps as FGSM training with the same `epochs`.

State (the replayed batch, delta) lives in this object and is saved in every checkpoint, so a run resumed in
the middle of a replay continues exactly.
"""

from __future__ import annotations

import torch

from trainer.attacks import project
from trainer.config import RunConfig


class FreeAT:
    """The Free AT adversary of one run: called like the ADVERSARY functions; `update` after backward."""

    def __init__(self, cfg: RunConfig):
        self.replays, self.eps, self.alpha = cfg.free_replays, cfg.eps, cfg.alpha
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.delta: torch.Tensor | None = None

    def batch(self, iteration: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The minibatch of this iteration: the fresh (x, y) every m-th iteration, else the one replayed."""
        if iteration % self.replays == 0 or self.x is None:
            self.x, self.y = x, y
        return self.x, self.y

    def __call__(self, model, x, y, cfg, gen, ramp=None) -> tuple[torch.Tensor, None]:
        """The current delta (kept in x's box) as a leaf that collects the input gradient of the step."""
        if self.delta is None or self.delta.shape != x.shape:  # first step, or the batch size changed
            self.delta = torch.zeros_like(x)
        return project(self.delta, x, self.eps).requires_grad_(True), None

    def update(self, delta: torch.Tensor, x: torch.Tensor, ramp: float | None = None) -> None:
        """One signed step with the gradient the training step's backward pass left in delta.grad; `ramp`:
        the step's share of alpha in the SVHN warm-up (trainer/ramp.py), None for the full alpha."""
        step = self.alpha * self.eps if ramp is None else ramp * self.alpha * self.eps
        self.delta = project(delta.detach() + step * delta.grad.sign(), x, self.eps)

    def state_dict(self) -> dict[str, torch.Tensor | None]:
        return {"x": self.x, "y": self.y, "delta": self.delta}

    def load_state_dict(self, state: dict[str, torch.Tensor | None]) -> None:
        self.x, self.y, self.delta = state["x"], state["y"], state["delta"]
