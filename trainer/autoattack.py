"""AutoAttack (Croce & Hein 2020) as an independent final evaluation, through `torchattacks`.

The standard L-inf version: APGD-CE, APGD-T, FAB-T and Square, each run only on the points the previous ones
did not break. It checks the PGD-50-10 figure with attacks that share none of its code: a model that masks
its gradients (as after catastrophic overfitting) can fool one attack, rarely all four.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.attacks import project
from trainer.evaluate import batches


def autoattack_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    n_classes: int,
    seed: int = 0,
    batch: int = 256,
) -> float:
    """Accuracy on (x, y) under AutoAttack (standard, L-inf, radius eps); inputs in [0,1], model in eval mode.

    torchattacks seeds the global torch RNG (APGD, Square); that happens inside fork_rng, so the caller's
    random state is left as it was and the result is a function of (model, data, seed).
    """
    import torchattacks  # imports scipy and friends: only when asked for

    attack = torchattacks.AutoAttack(
        model, norm="Linf", eps=eps, version="standard", n_classes=n_classes, seed=seed
    )
    cuda = [x.device] if x.device.type == "cuda" else []
    correct = 0
    with torch.random.fork_rng(devices=cuda):
        for xb, yb in batches(x, y, batch):
            adv = attack(xb, yb)
            adv = xb + project(adv - xb, xb, eps)  # never credit a point outside the threat model
            with torch.no_grad():
                correct += int((model(adv).argmax(1) == yb).sum())
    return correct / max(len(x), 1)
