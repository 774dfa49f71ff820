"""The authors' warm-up of the training attack on SVHN (tml-epfl/understanding-fast-adv-training, train.py).

On SVHN their train.py grows the attack linearly over its first 5 epochs: FGSM's step (`fgsm_alpha`, for
FGSM, FGSM-RS and Free AT) or PGD's radius (`eps_pgd_train`, for PGD and PGD-corner; PGD's step size and
the corner's radius stay full), to

    min(iteration / n_max * size, size),   n_max = 5 * N // batch_size   (N = 73,257 training images),

where their `iteration` is 1 at the first weight update (their epoch 0 is one step without one), so at
codash's step k (0-based) it is k + 1. PGD's random start is drawn in the ramped ball, as theirs; the
rest (FGSM-RS's random start, GradAlign's and ELLE's random points, every evaluation) uses the full ε.
Other data sets have no warm-up, nor do N-FGSM (not in their code), random-corner and standard training.

`ramp_at` is the factor r = min((k + 1) / n_max, 1) that multiplies the size: (r * α) * ε in float64 is
their `fgsm_alpha * eps` to the last bit, and r * ε their `eps_pgd_train`.
"""

from __future__ import annotations

import torch

from trainer.config import TRAIN_IMAGES, RunConfig

WARMUP_EPOCHS = {"svhn": 5}  # train.py's n_alpha_warmup_epochs / n_eps_warmup_epochs, on SVHN only
RAMPED = {"fgsm": "alpha", "fgsm_rs": "alpha", "free": "alpha", "pgd": "eps", "pgd_corner": "eps"}


def warmup_steps(cfg: RunConfig) -> int:
    """Steps over which this run's attack grows to its full size: 0 for none. As train.py, from the data
    set's nominal size (their data.shapes_dict), not from its batches: 5 * 73,257 // 128 = 2,861 steps."""
    if cfg.method not in RAMPED:
        return 0
    return WARMUP_EPOCHS.get(cfg.dataset, 0) * TRAIN_IMAGES[cfg.dataset] // cfg.batch_size


def ramp_at(iteration: int, steps: int) -> float | None:
    """The attack's share of its size in the step after `iteration` steps of a warm-up of `steps`; None
    once it is full (the step then runs exactly as without a warm-up)."""
    return (iteration + 1) / steps if iteration + 1 < steps else None


def ramp_table(steps: int, device: torch.device | str) -> torch.Tensor:
    """ramp_at for every step of the warm-up, then 1, as one float64 tensor on the device: what a captured
    step reads (trainer.fast.CapturedStep), so that it computes the sizes in float64 as the eager step."""
    shares = [ramp_at(k, steps) or 1.0 for k in range(steps)]
    return torch.tensor(shares, dtype=torch.float64, device=device)
