"""What the charts plot: robustness and gradient alignment on fixed subsets, and the final evaluation.

Evaluation draws its random numbers from its own generator (seeded per call), so evaluating more or less
often never changes the training run itself.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.attacks import cosine, fgsm, input_grad, pgd, random_point_grad


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1024) -> float:
    with torch.no_grad():
        correct = sum(
            (model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum() for i in range(0, len(x), batch)
        )
    return float(correct) / max(len(x), 1)


def pgd_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    restarts: int,
    generator: torch.Generator,
    batch: int = 1024,
) -> float:
    """Accuracy under PGD with step eps/4 (the paper's evaluation attack), batched."""
    correct = 0
    for i in range(0, len(x), batch):
        xb, yb = x[i : i + batch], y[i : i + batch]
        delta = pgd(model, xb, yb, eps, eps / 4, steps, restarts, generator=generator)
        with torch.no_grad():
            correct += int((model(xb + delta).argmax(1) == yb).sum())
    return correct / max(len(x), 1)


def eval_metrics(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    eps: float,
    pgd_steps: int,
    seed: int,
    batch: int = 1024,
) -> dict[str, float]:
    """The eval event's numbers on a fixed test subset (x, y) and a fixed train subset."""
    generator = torch.Generator(x.device).manual_seed(seed)
    correct = {"clean_acc": 0, "fgsm_acc": 0, "pgd_acc": 0}
    cos_fgsm_pgd, cos_grad_random = [], []
    for i in range(0, len(x), batch):
        xb, yb = x[i : i + batch], y[i : i + batch]
        grad = input_grad(model, xb, yb)
        delta_fgsm = fgsm(model, xb, yb, eps, grad=grad)
        delta_pgd = pgd(model, xb, yb, eps, eps / 4, pgd_steps, generator=generator)
        cos_fgsm_pgd.append(cosine(delta_fgsm, delta_pgd))
        cos_grad_random.append(cosine(grad, random_point_grad(model, xb, yb, eps, generator)))
        with torch.no_grad():
            for key, delta in (("clean_acc", 0), ("fgsm_acc", delta_fgsm), ("pgd_acc", delta_pgd)):
                correct[key] += int((model(xb + delta).argmax(1) == yb).sum())
    metrics = {key: value / len(x) for key, value in correct.items()}
    metrics["cos_fgsm_pgd"] = _mean(torch.cat(cos_fgsm_pgd))
    metrics["cos_grad_random"] = _mean(torch.cat(cos_grad_random))
    metrics["train_pgd_acc"] = pgd_accuracy(model, train_x, train_y, eps, pgd_steps, 1, generator, batch)
    return metrics


def _mean(values: torch.Tensor) -> float:
    return float(values.mean()) if values.numel() else float("nan")
