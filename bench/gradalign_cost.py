"""A cheaper GradAlign? The random-point gradient on a fraction of the batch: what it saves, what it costs.

GradAlign's extra work is the gradient at a random point of the ball, built with create_graph=True, and
its double backprop. Taking that gradient on the first `fraction` of the batch only shrinks exactly that
work; the regulariser stays an unbiased estimate of the same mean cosine, with more variance. Whether that
variance matters is measured where it counts: the "Digits: FGSM + GradAlign λ=4 (rescue)" preset, which
with the full batch never catastrophically overfits, is run with the full and with the reduced batch (same
seeds), and the training speed, the mean regulariser value, CO and the final PGD accuracy are compared.
"""

from __future__ import annotations

import statistics
from typing import Any

from trainer.presets import DIGITS_GRAD_ALIGN, PRESETS


def run_preset(fraction: float, seed: int, device: str, max_iters: int | None = None) -> dict[str, Any]:
    from trainer.config import make_config
    from trainer.loop import train

    events: list[dict] = []
    changes = {"seed": seed, "device": device, "max_iters": max_iters, "grad_align_fraction": fraction}
    final = train(make_config({**PRESETS[DIGITS_GRAD_ALIGN], **changes}), events.append)
    regs = [e["reg"] for e in events if e["type"] == "metrics"]
    evals = [e for e in events if e["type"] == "eval"]
    return {
        "fraction": fraction,
        "seed": seed,
        "train_images_per_s": final["train_images_per_s"],
        "mean_reg": statistics.fmean(regs),
        "co_detected": final["co_detected"],
        "co_iteration": final["co_iteration"],
        "final_pgd_acc": final["last"]["pgd_acc"],
        "min_eval_pgd_acc_after_peak": _min_after_peak([e["pgd_acc"] for e in evals]),
    }


def _min_after_peak(values: list[float]) -> float | None:
    if not values:
        return None
    peak = values.index(max(values))
    return min(values[peak:])


def tradeoff(device: str, seeds=(0, 1), fractions=(1.0, 0.5), max_iters: int | None = None) -> dict[str, Any]:
    """Alternating full / reduced runs of the rescue preset; per fraction the runs and their medians."""
    runs = [run_preset(f, s, device, max_iters) for s in seeds for f in fractions]
    summary = {}
    for fraction in fractions:
        mine = [run for run in runs if run["fraction"] == fraction]
        summary[str(fraction)] = {
            "train_images_per_s": statistics.median(r["train_images_per_s"] for r in mine),
            "mean_reg": statistics.fmean(r["mean_reg"] for r in mine),
            "co_runs": sum(bool(r["co_detected"]) for r in mine),
            "runs": len(mine),
            "final_pgd_acc": statistics.fmean(
                r["final_pgd_acc"] for r in mine if r["final_pgd_acc"] is not None
            ),
        }
    return {"preset": DIGITS_GRAD_ALIGN, "runs": runs, "summary": summary}
