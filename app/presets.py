"""The sweep page's presets (run presets, shared with the CLI, are in trainer.presets)."""

from __future__ import annotations

from typing import Any

from trainer.presets import CIFAR_RESNET, PAPER_NOTE

# The sweep page's presets: a base config, the methods (names in trainer.methods.SWEEP), the ε list as
# typed in the form, and per-method fields that differ from the base.
SWEEP_PRESETS: dict[str, dict[str, Any]] = {
    "Paper Fig. 1: CIFAR-10 ε sweep": {  # the paper's sh/exps_diff_eps_cifar10.sh, every other ε
        "base": {**CIFAR_RESNET, "method": "fgsm", "lr": 0.2},
        "methods": ["FGSM", "FGSM-RS", "FGSM + GradAlign", "PGD-2", "PGD-10"],
        "eps": "2, 4, 6, 8, 10, 12, 14, 16",
        "paper_lambda": True,  # GradAlign's λ follows ε: paper_lambda
        "method_fields": {"FGSM + GradAlign": {"lr": 0.3}, "PGD-10": {"pgd_alpha": 0.2}},
        "note": PAPER_NOTE,
    },
}
