"""Presets: the runs that tell the paper's story, in one dict, tuned in one place.

The launch form offers them, and `codash train/submit --preset NAME` starts from one.

Each preset lists only what differs from RunConfig's defaults; RunConfig fills in the paper's
method- and model-dependent defaults (optimizer, lr, schedule, FGSM step).
"""

from __future__ import annotations

from typing import Any

from trainer.config import paper_lambda

# The setting tests/test_science.py checks and the README documents (5/5 seeds: FGSM collapses, GradAlign
# with lambda=4 and PGD-5 do not).
DIGITS_CNN = {"dataset": "digits", "model": "cnn", "n_layers": 1, "n_filters": 16, "eps": 0.175}
# The paper's CIFAR-10 training (its scripts: 30 epochs, batch 128, SGD with a cyclic lr peaking at 0.2,
# 0.3 for GradAlign).
CIFAR_RESNET = {
    "dataset": "cifar10",
    "model": "preact_resnet18",
    "epochs": 30,
    "batch_size": 128,
    "optimizer": "sgd",
    "lr_schedule": "cyclic",
}

DEFAULT_PRESET = "Digits: FGSM catastrophic overfitting"
DIGITS_GRAD_ALIGN = "Digits: FGSM + GradAlign λ=4 (rescue)"
DIGITS_ELLE = "Digits: FGSM + ELLE λ=1024 (rescue)"
DIGITS_ELLE_A = "Digits: FGSM + ELLE-A λmax=1024 (rescue)"
PRESETS: dict[str, dict[str, Any]] = {
    DEFAULT_PRESET: {**DIGITS_CNN, "method": "fgsm"},
    DIGITS_GRAD_ALIGN: {**DIGITS_CNN, "method": "fgsm", "grad_align_lambda": 4.0},
    DIGITS_ELLE: {**DIGITS_CNN, "method": "fgsm", "elle_lambda": 1024.0},  # measured: docs/reproduction.md
    DIGITS_ELLE_A: {**DIGITS_CNN, "method": "fgsm", "elle_lambda": 1024.0, "elle_adaptive": True},
    "Digits: PGD-5 baseline": {**DIGITS_CNN, "method": "pgd", "pgd_steps": 5, "pgd_alpha": 0.5},
    "CIFAR-10 ResNet-18: FGSM + GradAlign λ=0.2, ε=8/255 (paper)": {
        **CIFAR_RESNET,
        "method": "fgsm",
        "eps": 8 / 255,
        "grad_align_lambda": 0.2,
        "lr": 0.3,
    },
    # FGSM alone collapses at 16/255; λ(16/255) = 2
    "CIFAR-10 ResNet-18: FGSM + GradAlign λ=2, ε=16/255 (paper rescue)": {
        **CIFAR_RESNET,
        "method": "fgsm",
        "eps": 16 / 255,
        "grad_align_lambda": paper_lambda(16 / 255),
        "lr": 0.3,
    },
    "CIFAR-10 single-layer CNN, 4 filters: FGSM, ε=10/255 (paper)": {  # its filters: the paper's Fig. 4
        "dataset": "cifar10",
        "model": "cnn",
        "n_layers": 1,
        "n_filters": 4,
        "method": "fgsm",
        "eps": 10 / 255,
    },
}
