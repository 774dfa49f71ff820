"""What the charts plot: robustness and gradient alignment on fixed subsets, and the final evaluation.

Evaluation draws its random numbers from its own generator (seeded per call), so evaluating more or less
often never changes the training run itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from trainer.attacks import cosine, fgsm, input_grad, pgd, random_point_grad
from trainer.config import SNAPSHOT_FILTERS

EVAL_PGD_STEP = 0.25  # the evaluations' PGD step as a multiple of eps (eps/4, the paper's); the probe's too


def batches(x: torch.Tensor, y: torch.Tensor, batch: int = 1024) -> Iterator[tuple]:
    """(x, y) in slices of `batch` points: every evaluation attacks its points a batch at a time."""
    for i in range(0, len(x), batch):
        yield x[i : i + batch], y[i : i + batch]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1024) -> float:
    with torch.no_grad():
        correct = sum((model(xb).argmax(1) == yb).sum() for xb, yb in batches(x, y, batch))
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
    skip_fooled: bool = False,
    progress: Callable[[int], None] | None = None,
) -> float:
    """Accuracy under PGD with step EVAL_PGD_STEP * eps (the paper's evaluation attack), batched.

    A point counts as robust when no restart fools the model. `skip_fooled` runs each restart only on the
    points still robust: the same measure with less work (a broken model is done after one restart), but
    other random starts than the all-points restarts draw, so a run's figures depend on the setting.
    `progress(done)` after each restart of each batch, `done` counting a batch's points by the share of its
    restarts run: a bar for the final evaluation that moves even when all its points fit one batch.
    """
    correct = done = 0
    for xb, yb in batches(x, y, batch):
        restarted = None
        if progress is not None:

            def restarted(k: int, start: int = done, size: int = len(xb)) -> None:
                progress(start + size * k // restarts)

        if skip_fooled:
            correct += _robust_after_restarts(model, xb, yb, eps, steps, restarts, generator, restarted)
        else:
            step = EVAL_PGD_STEP * eps
            delta = pgd(model, xb, yb, eps, step, steps, restarts, generator=generator, on_restart=restarted)
            with torch.no_grad():
                correct += int((model(xb + delta).argmax(1) == yb).sum())
        done += len(xb)
        if progress is not None:
            progress(done)
    return correct / max(len(x), 1)


def _robust_after_restarts(
    model, x, y, eps: float, steps: int, restarts: int, generator, on_restart: Callable[[int], None] | None
) -> int:
    """How many points of (x, y) no restart of PGD fools, each restart attacking the unfooled ones only."""
    left = torch.arange(len(x), device=x.device)
    for k in range(1, restarts + 1):
        if not len(left):
            break
        xs, ys = x[left], y[left]
        delta = pgd(model, xs, ys, eps, EVAL_PGD_STEP * eps, steps, generator=generator)
        with torch.no_grad():
            left = left[model(xs + delta).argmax(1) == ys]
        if on_restart is not None:
            on_restart(k)
    return len(left)


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
) -> tuple[dict[str, float], dict[str, Any]]:
    """The eval event's numbers on a fixed test subset (x, y) and a fixed train subset, and the snapshot
    event's fields for the subset's first image, cut from the same attacks (no attack is run twice)."""
    generator = torch.Generator(x.device).manual_seed(seed)
    correct = {"clean": 0, "fgsm": 0, "pgd": 0}
    cos_fgsm_pgd, cos_grad_random = [], []
    inside: dict[str, Any] = {}
    for xb, yb in batches(x, y, batch):
        attacked = attack_points(model, xb, yb, eps, pgd_steps, generator)
        cos_fgsm_pgd.append(cosine(attacked["fgsm_delta"], attacked["pgd_delta"]))
        cos_grad_random.append(cosine(attacked["grad"], attacked["grad_random"]))
        for key in correct:
            correct[key] += int((attacked[key] == yb).sum())
        if not inside:
            inside = _snapshot(model, xb[0], int(yb[0]), {k: v[0] for k, v in attacked.items()}, eps)
    metrics = {f"{key}_acc": value / len(x) for key, value in correct.items()}
    metrics["cos_fgsm_pgd"] = _mean(torch.cat(cos_fgsm_pgd))
    metrics["cos_grad_random"] = _mean(torch.cat(cos_grad_random))
    metrics["train_pgd_acc"] = pgd_accuracy(model, train_x, train_y, eps, pgd_steps, 1, generator, batch)
    return metrics, inside


def attack_points(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, pgd_steps: int, generator):
    """Input gradients at x and at a random x + η, the FGSM and PGD perturbations, and the predictions on
    x, x + δ_FGSM and x + δ_PGD (keys clean, fgsm, pgd): the eval's attacks, point by point (for one
    batch, `generator` seeded as eval_metrics seeds it gives eval_metrics' numbers)."""
    grad = input_grad(model, x, y)
    out = {"grad": grad, "fgsm_delta": fgsm(model, x, y, eps, grad=grad)}
    out["pgd_delta"] = pgd(model, x, y, eps, EVAL_PGD_STEP * eps, pgd_steps, generator=generator)
    out["grad_random"] = random_point_grad(model, x, y, eps, generator)
    with torch.no_grad():
        for name, delta in (("clean", 0), ("fgsm", out["fgsm_delta"]), ("pgd", out["pgd_delta"])):
            out[name] = model(x + delta).argmax(1)
    return out


def per_image_results(model, x, y, config, seed: int, batch: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image correctness under the live eval's PGD and FGSM: its attacks, batches and generator seeded
    with `seed` as eval_metrics seeds it, so their means are the eval event's pgd_acc and fgsm_acc."""
    generator = torch.Generator(x.device).manual_seed(seed)
    pgd_right, fgsm_right = [], []
    for xb, yb in batches(x, y, batch):
        attacked = attack_points(model, xb, yb, config.eps, config.eval_pgd_steps, generator)
        pgd_right.append(attacked["pgd"] == yb)
        fgsm_right.append(attacked["fgsm"] == yb)
    return torch.cat(pgd_right), torch.cat(fgsm_right)


def _mean(values: torch.Tensor) -> float:
    return float(values.mean()) if values.numel() else float("nan")


def _snapshot(model: nn.Module, image: torch.Tensor, label: int, one: dict[str, torch.Tensor], eps: float):
    """The snapshot event's fields: the model's first-layer filters, and for one image (its `attack_points`
    results in `one`) its FGSM and PGD perturbations and the input gradients at x and at a random x + η.

    Arrays are nested lists [C][H][W] in display units, rounded to 2 decimals, so a snapshot stays small:
    the image in [0, 1], perturbations as δ/ε and gradients divided by their largest |entry| (all in
    [-1, 1]; a gradient's direction is what FGSM uses), filters as raw weights [F][C][k][k] (3 decimals, at
    most SNAPSHOT_FILTERS). As JSON: ~8 KB for a 16×16 digit with 16 filters, ~26 KB for MNIST with
    LeNet's 32 5×5 filters, ~90 KB for a 32×32 CIFAR-10 image with ResNet-18's 64 3×3×3 filters (the
    largest images and first layer of the supported data sets and models). `filters` is None for a model
    without a `first_conv` Conv2d.
    """
    conv = getattr(model, "first_conv", None)
    scale = eps if eps > 0 else 1.0
    return {
        "label": label,
        "predictions": {name: int(one[name]) for name in ("clean", "fgsm", "pgd")},
        "cos_grad_random": _mean(cosine(one["grad"][None], one["grad_random"][None])),
        "image": _rounded(image, 2),
        "fgsm_delta": _rounded(one["fgsm_delta"] / scale, 2),
        "pgd_delta": _rounded(one["pgd_delta"] / scale, 2),
        "grad_x": _rounded(_unit_max(one["grad"]), 2),
        "grad_random": _rounded(_unit_max(one["grad_random"]), 2),
        "filters": _rounded(conv.weight[:SNAPSHOT_FILTERS], 3) if isinstance(conv, nn.Conv2d) else None,
    }


def _unit_max(values: torch.Tensor) -> torch.Tensor:
    largest = values.abs().max()
    return values / largest if largest > 0 else values


def _rounded(values: torch.Tensor, decimals: int) -> list:
    """Nested lists of floats with `decimals` decimals (in float64, so 0.1 prints as 0.1; no -0.0)."""
    rounded = values.detach().double().cpu().round(decimals=decimals) + 0.0
    return rounded.tolist()
