"""What a training step costs with GradAlign and with ELLE, next to plain FGSM, on the digits CNN.

    python -m bench.regulariser_cost [--iters 300] [--rounds 3] [--out /tmp/16-regulariser-cost.json]

The same measurement as bench/probe_cost.py (CPU time of a one-thread process, less a 1-iteration run's,
evaluation and probes out of the way, variants alternating, median of rounds), for the digits FGSM preset
alone, with GradAlign at the rescue preset's lambda, and with ELLE and ELLE-A at their presets' lambda. The
weight does not change the work, only the loss.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from bench.probe_cost import ms_per_iteration, seconds
from trainer.presets import DEFAULT_PRESET, DIGITS_ELLE, DIGITS_ELLE_A, DIGITS_GRAD_ALIGN

VARIANTS = {
    "FGSM": DEFAULT_PRESET,
    "FGSM + GradAlign": DIGITS_GRAD_ALIGN,
    "FGSM + ELLE": DIGITS_ELLE,
    "FGSM + ELLE-A": DIGITS_ELLE_A,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.regulariser_cost", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("/tmp/16-regulariser-cost.json"))
    args = parser.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(1)
    seconds(DEFAULT_PRESET, 2, args.device)  # imports, data set, first calls
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, preset in VARIANTS.items():
            times[name].append(ms_per_iteration(preset, args.iters, args.device, probe_points=0))
    base = statistics.median(times["FGSM"])
    results = {
        name: {"ms_per_iteration": statistics.median(v), "over_fgsm": statistics.median(v) / base}
        for name, v in times.items()
    }
    for name, row in results.items():
        print(f"{name:18s} {row['ms_per_iteration']:6.2f} ms/it  x{row['over_fgsm']:.2f} FGSM", flush=True)
    args.out.write_text(json.dumps({"device": args.device, "iters": args.iters, "results": results}))


if __name__ == "__main__":
    main()
