"""What the dense probe costs: training time per iteration with and without it, on the digits presets.

    python -m bench.probe_cost [--iters 300] [--rounds 3] [--every 1 2 5 10] [--out /tmp/16-probe-cost.json]

Times trainer.train() with evaluation out of the way (eval_every past the end, no final evaluation) in
CPU time of this one-thread process (time.process_time: a machine shared with other jobs slows the wall
clock, not this), less a 1-iteration run's (data, model, the events around the run). The variants
alternate within each round and the median of the rounds is reported: the probe's share of training time
for each probe_points, probe_pgd_steps and probe_every. On a GPU (--device cuda) it is wall time after a
synchronize. --synthetic trains on CIFAR-shaped random images (bench.workloads.synthetic_cifar; a step's
time does not depend on the pixels), so a CIFAR-10 preset is timed where CIFAR-10 is not on disk (the
device machine: bench/gpu_check.sh). The CPU figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
from pathlib import Path

import torch

from bench.timer import timed
from bench.workloads import codash_data, synthetic_cifar
from trainer.config import make_config
from trainer.loop import train
from trainer.presets import DEFAULT_PRESET, DIGITS_GRAD_ALIGN, PRESETS


def seconds(preset: str, iters: int, device: str, **fields) -> float:
    config = make_config(
        {
            **PRESETS[preset],
            "max_iters": iters,
            "eval_every": iters + 1,
            "final_eval_points": 0,
            "device": device,
            **fields,
        }
    )
    spent: list[float] = []
    with timed(spent, device, cpu=True):
        train(config)
    return spent[0]


def ms_per_iteration(preset: str, iters: int, device: str, **fields) -> float:
    """Per-iteration time of a run of `iters` iterations, less what a 1-iteration run costs."""
    fixed = seconds(preset, 1, device, **fields)
    return 1000 * (seconds(preset, iters, device, **fields) - fixed) / (iters - 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.probe_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--every", type=int, nargs="+", default=[1, 2, 5, 10])
    parser.add_argument("--points", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--steps", type=int, nargs="+", default=[10], help="probe_pgd_steps values")
    parser.add_argument("--presets", nargs="+", default=[DEFAULT_PRESET, DIGITS_GRAD_ALIGN])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--synthetic", action="store_true", help="CIFAR-shaped random data for every preset")
    parser.add_argument("--out", type=Path, default=Path("/tmp/16-probe-cost.json"))
    args = parser.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(1)
    variants = [(0, 10, 1)] + [
        (points, steps, every) for points in args.points for steps in args.steps for every in args.every
    ]
    results = []
    data = codash_data(synthetic_cifar(args.device, 10_000)) if args.synthetic else contextlib.nullcontext()
    with data:
        for preset in args.presets:
            results += preset_costs(preset, variants, args)
            args.out.write_text(json.dumps({"device": args.device, "iters": args.iters, "results": results}))


def preset_costs(preset: str, variants: list[tuple[int, int, int]], args: argparse.Namespace) -> list[dict]:
    """One row per variant: its time per iteration and its overhead over the first variant (no probe)."""
    results = []
    seconds(preset, 2, args.device, probe_points=32, probe_every=1)  # imports, data set, first calls
    times: dict[tuple[int, int, int], list[float]] = {variant: [] for variant in variants}
    for _ in range(args.rounds):
        for points, steps, every in variants:
            fields = {"probe_points": points, "probe_pgd_steps": steps, "probe_every": every}
            times[(points, steps, every)].append(ms_per_iteration(preset, args.iters, args.device, **fields))
    base = statistics.median(times[variants[0]])
    for (points, steps, every), values in times.items():
        ms = statistics.median(values)
        row = {
            "preset": preset,
            "probe_points": points,
            "probe_pgd_steps": steps,
            "probe_every": every,
            "ms_per_iteration": ms,
            "overhead": ms / base - 1,
        }
        results.append(row)
        print(
            f"{preset:40s} points {points:3d} PGD-{steps:<3d} every {every:3d}: {ms:6.2f} ms/it,"
            f" {row['overhead']:+.1%}",
            flush=True,
        )
    return results


if __name__ == "__main__":
    main()
