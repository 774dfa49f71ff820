"""Measure the rescue fork on digits: the FGSM preset, forked with GradAlign from its last evaluation before
the collapse began (what the live view's "Rescue" button queues), against the parent it was forked from.

    OMP_NUM_THREADS=1 python -m experiments.fork_rescue SEED [SEED ...]

Prints, per seed, the parent's CO onset, the fork point, and the live PGD-10 accuracy (256 test images) and
final PGD-50-10 accuracy (297 test images) of parent and fork. The README's figures come from seeds 0 and 1.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from trainer.co import collapse_began
from trainer.config import make_config
from trainer.fork import eval_iterations, last_before, rescue_lambda, seed_fork
from trainer.loop import train
from trainer.presets import DEFAULT_PRESET, PRESETS


def rescue(seed: int, root: Path) -> None:
    config = make_config({**PRESETS[DEFAULT_PRESET], "seed": seed, "device": "cpu"})
    parent: list[dict] = []
    parent_final = train(config, parent.append, root / "parent")
    co = next((event for event in parent if event["type"] == "co"), None)
    if co is None:
        print(f"seed {seed}: no catastrophic overfitting, nothing to rescue")
        return
    onset = collapse_began(co)
    at = last_before(eval_iterations(root / "parent"), onset)
    seed_fork(root / "parent", at, root / "fork")
    link = {"parent": "0" * 12, "fork_iteration": at, "grad_align_lambda": rescue_lambda(config)}
    fork: list[dict] = []
    fork_final = train(config.model_copy(update=link), fork.append, root / "fork")
    for name, events, final in (("parent", parent, parent_final), ("fork", fork, fork_final)):
        live = [(e["iteration"], round(e["pgd_acc"], 2)) for e in events if e["type"] == "eval"]
        co, robust = final["co_iteration"], final["last"]["pgd_acc"]
        print(f"seed {seed} {name}: CO {co}, final PGD-50-10 {robust:.3f}, live PGD-10 {live}")
    lam = link["grad_align_lambda"]
    print(f"seed {seed}: collapse began at {onset}, forked at {at} with GradAlign λ={lam:g}")


if __name__ == "__main__":
    for text in sys.argv[1:]:
        with tempfile.TemporaryDirectory() as tmp:
            rescue(int(text), Path(tmp))
