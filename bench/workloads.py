"""What the speed benchmark runs: the model × method grid, its sizes per device, and CIFAR-shaped data.

CIFAR-10 itself is not needed to measure speed: `synthetic_cifar` makes random 3×32×32 images with random
labels (the arithmetic of a training step does not depend on pixel values), and `codash_data` lets
trainer.train() load them in place of a data set read from disk.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from trainer import presets
from trainer.presets import DIGITS_CNN, DIGITS_GRAD_ALIGN, PRESETS

# The five methods benchmarked, and GradAlign on half the batch (grad_align_fraction, docs/benchmarks.md):
# name in the table -> RunConfig fields (lambda filled in per model).
METHODS: dict[str, dict[str, Any]] = {
    "standard": {"method": "standard"},
    "fgsm": {"method": "fgsm"},
    "fgsm_rs": {"method": "fgsm_rs"},
    "pgd-10": {"method": "pgd", "pgd_steps": 10, "pgd_alpha": 0.25},
    "fgsm+gradalign": {"method": "fgsm", "grad_align_lambda": None},
    "fgsm+gradalign/2": {"method": "fgsm", "grad_align_lambda": None, "grad_align_fraction": 0.5},
}


@dataclass(frozen=True)
class Workload:
    """One model on one data set, with the batch size and step counts used to time it."""

    name: str
    config: dict[str, Any]  # RunConfig fields shared by every method
    grad_align_lambda: float
    iters: int  # timed training steps per measurement
    pgd_iters: int  # pgd-10 costs ~10× a step: fewer of them
    repeats: int
    train_points: int | None = None  # synthetic data only
    extra: dict[str, Any] = field(default_factory=dict)

    def run_config(self, method: str, device: str, iters: int, **overrides) -> dict[str, Any]:
        fields = {**self.config, **METHODS[method], "device": device, "max_iters": iters}
        if fields.get("grad_align_lambda", 0) is None:
            fields["grad_align_lambda"] = self.grad_align_lambda
        return {**fields, **overrides}

    def iters_for(self, method: str) -> int:
        return self.pgd_iters if method.startswith("pgd") else self.iters


# The paper's CIFAR-10 ResNet-18 training at its reference ε (batch size and length set per workload).
CIFAR_RESNET = {**presets.CIFAR_RESNET, "eps": 8 / 255, "lr": 0.3}


def workloads(device: str, quick: bool) -> list[Workload]:
    """The grid's sizes: CPU runs a ResNet-18 on small batches only; CUDA uses the paper's batch of 128."""
    cuda = device.startswith("cuda")
    digits = Workload(
        "cnn/digits",
        {**DIGITS_CNN, "batch_size": 64},
        grad_align_lambda=PRESETS[DIGITS_GRAD_ALIGN]["grad_align_lambda"],
        iters=20 if quick else 150,
        pgd_iters=10 if quick else 40,
        repeats=1 if quick else 5,
    )
    if cuda:
        resnet = Workload(
            "preact_resnet18/cifar-shaped",
            {**CIFAR_RESNET, "batch_size": 128},
            grad_align_lambda=0.2,
            iters=10 if quick else 60,
            pgd_iters=5 if quick else 20,
            repeats=1 if quick else 3,
            train_points=50_000,
        )
    else:
        resnet = Workload(
            "preact_resnet18/cifar-shaped",
            {**CIFAR_RESNET, "batch_size": 16},
            grad_align_lambda=0.2,
            iters=1 if quick else 3,
            pgd_iters=1 if quick else 2,
            repeats=1 if quick else 3,
            train_points=512,
        )
    return [digits, resnet]


def synthetic_cifar(device: str, n_train: int, n_test: int = 256, seed: int = 0):
    """Random uint8 images scaled to [0, 1], 3×32×32, 10 classes, made on the device."""
    import torch

    from trainer.data import Dataset

    gen = torch.Generator().manual_seed(seed)

    def images(n: int) -> torch.Tensor:
        return (
            torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen).to(device).float() / 255
        )

    def labels(n: int) -> torch.Tensor:
        return torch.randint(0, 10, (n,), generator=gen).to(device)

    return Dataset("cifar10", images(n_train), labels(n_train), images(n_test), labels(n_test), 10)


@contextlib.contextmanager
def codash_data(dataset) -> Iterator[None]:
    """trainer.train() in this process trains on `dataset` (a trainer.data.Dataset) whatever it is named."""
    import trainer.loop

    original = trainer.loop.load_dataset
    trainer.loop.load_dataset = lambda name, device, *args, **kwargs: _on(dataset, device)
    try:
        yield
    finally:
        trainer.loop.load_dataset = original


def _on(dataset, device):
    import torch

    from trainer.data import Dataset

    if dataset.train_x.device == torch.device(device):
        return dataset
    move = {k: getattr(dataset, k).to(device) for k in ("train_x", "train_y", "test_x", "test_y")}
    return Dataset(dataset.name, n_classes=dataset.n_classes, **move)
