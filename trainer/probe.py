"""The dense probe: robustness and gradient alignment on a small fixed training subset, every few iterations.

The periodic eval (trainer.evaluate, every `eval_every` iterations on the test subset) stays the
authoritative measurement; the probe is its cheap, dense companion, so that the collapse of catastrophic
overfitting, which takes a few dozen iterations, can be placed to a few iterations (trainer.co).

It cannot reuse the training step's gradients: those are on the step's minibatch, while a probe is only
comparable from one iteration to the next on fixed points. Instead it takes its three first-order gradients
(at x for FGSM and the alignment, at the paper's random point x + eta, at PGD's random start) in ONE
forward/backward pass over 3P points, then P-point PGD steps, and reads nothing off the device: its values
stay a tensor until the loop flushes them with the metrics. On the GPU fast path it is recorded once as a
CUDA graph and replayed, as the training step is (`DenseProbe`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from trainer.attacks import input_grad, project, random_point, uniform_noise
from trainer.config import RunConfig
from trainer.evaluate import EVAL_PGD_STEP
from trainer.events import FIELDS, one_line
from trainer.fast import Capture, FastPath, cuda_graph
from trainer.gradalign import mean_cosine

# What one probe measures, in the order of probe_metrics' result: the probe event's fields after iteration
# (then each image's PGD result, which only the CO detector reads).
PROBE_FIELDS = FIELDS["probe"][1:]
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
    """[FGSM acc, PGD acc, cos(FGSM delta, PGD delta), cos(grad at x, grad at x + eta), then for each point
    1 if PGD did not fool the model on it, else 0] as one tensor (one output to capture and read back).

    The draws, in order: eta (the alignment's unclipped random point, attacks.random_point), then PGD's
    random start (attacks.uniform_noise); so attacks.pgd with the same generator after random_point gives
    the same PGD perturbation.
    """
    n = len(x)
    eta = random_point(x, eps, generator)
    start = uniform_noise(x, eps, generator)
    step = EVAL_PGD_STEP * eps  # the eval's: fewer, larger steps (PGD-3 at 2.5 eps/3) keep ~0.25 accuracy
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
    summary = torch.stack(
        [correct[:n].mean(), correct[n:].mean(), _cosine(fgsm_delta, pgd_delta), _cosine(grad_x, grad_eta)]
    )
    return torch.cat([summary, correct[n:]])


class DenseProbe:
    """The probe of a run's live model on its fixed points, called with the iteration it follows.

    Eager, a probe is probe_pgd_steps small forward/backward passes and a forward, launch-bound on a GPU:
    ~80 ms for a ResNet-18 on an H200, against ~100 ms for the 20 captured steps between two probes
    (estimated in docs/benchmarks.md). So on the fast path
    (trainer.fast) it is recorded once, in eval mode, and replayed; its generator, registered with the
    graph, is reseeded before every call, so the probe's random numbers stay a function of (seed,
    iteration) either way. `kind` and `reason` say which, for the config event, as the step's do; a capture
    that fails leaves the probe eager, never the run failed.
    """

    def __init__(self, model: nn.Module, cfg: RunConfig, x, y, path: FastPath, capture: Capture | None):
        self.model, self.seed = model, cfg.seed
        self.generator = torch.Generator(x.device)

        def measure() -> torch.Tensor:
            with path.autocast(capturing=path.captures):
                return probe_metrics(model, x, y, cfg.eps, cfg.probe_pgd_steps, self.generator)

        self.measure, self.kind = measure, "eager"
        self.reason = path.refusal if cfg.probe_points else "no probe (probe_points 0)"
        if path.captures and cfg.probe_points:
            record = capture or cuda_graph
            try:
                with self._eval_mode():
                    self.measure = record(measure, self.generator)
                self.kind, self.reason = record.__name__, None
            except Exception as exc:  # the eager probe measures the same
                self.reason = f"capture failed: {one_line(exc, 300)}"
                self.generator = torch.Generator(x.device)  # the failed capture's may stay flagged capturing

    def __call__(self, iteration: int) -> torch.Tensor:
        """probe_metrics after `iteration` steps, a tensor of its own (a replay overwrites its outputs)."""
        self.generator.manual_seed(probe_seed(self.seed, iteration))
        with self._eval_mode():
            return self.measure().clone()

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        self.model.eval()
        try:
            yield
        finally:
            self.model.train()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The mean cosine over the rows where neither is zero; NaN (an event's null) where there is none."""
    some = ((a.flatten(1).norm(dim=1) * b.flatten(1).norm(dim=1)) > 0).any()
    return torch.where(some, mean_cosine(a, b), torch.nan)
