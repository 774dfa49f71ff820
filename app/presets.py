"""The launch form's presets: the runs that tell the paper's story, in one dict, tuned in one place.

Each preset lists only what differs from RunConfig's defaults; RunConfig fills in the paper's
method- and model-dependent defaults (optimizer, lr, schedule, FGSM step).
"""

from __future__ import annotations

from typing import Any

# The setting tests/test_science.py checks and the README documents (5/5 seeds: FGSM collapses, GradAlign
# with lambda=4 and PGD-5 do not).
_DIGITS_CNN = {"dataset": "digits", "model": "cnn", "n_layers": 1, "n_filters": 16, "eps": 0.175}

PRESETS: dict[str, dict[str, Any]] = {
    "Digits: FGSM catastrophic overfitting": {**_DIGITS_CNN, "method": "fgsm"},
    "Digits: GradAlign rescue": {**_DIGITS_CNN, "method": "fgsm", "grad_align_lambda": 4.0},
    "Digits: PGD baseline": {**_DIGITS_CNN, "method": "pgd", "pgd_steps": 5, "pgd_alpha": 0.5},
    "CIFAR-10 ResNet-18 ε=8/255 (paper)": {
        "dataset": "cifar10",
        "model": "preact_resnet18",
        "method": "fgsm",
        "eps": 8 / 255,
        "grad_align_lambda": 0.2,
        "epochs": 30,
        "batch_size": 128,
        "optimizer": "sgd",
        "lr": 0.3,
        "lr_schedule": "cyclic",
    },
    "CIFAR-10 single-layer CNN, 4 filters (paper)": {
        "dataset": "cifar10",
        "model": "cnn",
        "n_layers": 1,
        "n_filters": 4,
        "method": "fgsm",
        "eps": 10 / 255,
    },
}
DEFAULT_PRESET = "Digits: FGSM catastrophic overfitting"
