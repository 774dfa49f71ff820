"""The detector's window kept as weights, so that when CO fires its onset is placed on the eval itself.

A probe of 32-64 training images places the onset to tens of iterations on a collapse that drifts (its
images, not its cadence, decide where "half the peak" is crossed: docs/reproduction.md). The eval's own
test subset, evaluated at every iteration, is what the onset is judged against. So the run keeps the last
trainer.co.window_steps(eval_every) steps' weights (and batch-norm buffers): the window an onset can lie in
(trainer.co). When the detector fires, each kept step is evaluated as the live eval evaluates
(trainer.evaluate.per_image_results: its attacks, test images, seed, precision and layout), once, and the
onset is placed on that series. Copies go into buffers allocated once, one `_foreach_copy_` per step.
A model too large for WINDOW_BYTES keeps every `spacing`-th step instead, placing the onset to that
many iterations. A resumed or forked run has not kept the window's start; its onset comes from the probe.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import torch
from torch import nn

from trainer.co import Row, window_steps
from trainer.config import RunConfig
from trainer.evaluate import per_image_results
from trainer.fast import FastPath

WINDOW_BYTES = 1 << 30  # at most this much memory (on the model's device) for the kept weights


class WindowWeights:
    def __init__(self, model: nn.Module, config: RunConfig, make_model: Callable[[], nn.Module]):
        # the model's own tensors, updated in place by every step (eager or captured): read, never rebuilt
        self.sources = [t.detach() for t in model.state_dict().values()]
        state_bytes = sum(t.numel() * t.element_size() for t in self.sources)
        steps = window_steps(config.eval_every)
        self.spacing = max(1, math.ceil(steps * state_bytes / WINDOW_BYTES))
        self.model, self.make_model, self.config = model, make_model, config
        self.kept: deque[tuple[int, list[torch.Tensor]]] = deque(maxlen=math.ceil(steps / self.spacing))
        self.spare: list[list[torch.Tensor]] = []  # buffers of steps that left the window, reused

    def keep(self, iteration: int) -> None:
        """Copy the model's weights after step `iteration` (every `spacing`-th step)."""
        if iteration % self.spacing:
            return
        if len(self.kept) == self.kept.maxlen:
            self.spare.append(self.kept.popleft()[1])
        buffers = self.spare.pop() if self.spare else [torch.empty_like(t) for t in self.sources]
        torch._foreach_copy_(buffers, self.sources)
        self.kept.append((iteration, buffers))

    def release(self) -> None:
        """Free the buffers (the detector has fired: nothing more to place)."""
        self.kept.clear()
        self.spare.clear()

    def rows(
        self, first: int, last: int, x: torch.Tensor, y: torch.Tensor, path: FastPath
    ) -> list[Row] | None:
        """The live eval, image by image, on each kept step from `first` to `last`; None unless the steps
        kept span them (to within `spacing`)."""
        inside = [(iteration, buffers) for iteration, buffers in self.kept if first <= iteration <= last]
        if not inside or inside[0][0] >= first + self.spacing or inside[-1][0] <= last - self.spacing:
            return None
        replica = self.make_model().eval()
        names = list(self.model.state_dict())
        rows = []
        with path.autocast(reloading=True):  # one replica reloaded per step, inside the eval's autocast
            for iteration, buffers in inside:
                replica.load_state_dict(dict(zip(names, buffers, strict=True)))
                pgd_right, fgsm_right = per_image_results(
                    replica, x, y, self.config, self.config.seed + iteration, path.eval_batch
                )
                robust = pgd_right.float()
                rows.append(
                    Row(iteration, robust.mean().item(), fgsm_right.float().mean().item(), robust.tolist())
                )
        return rows
