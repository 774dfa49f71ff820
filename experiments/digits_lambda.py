"""The GradAlign and ELLE weight each eps of the digits sweep needs, and a lambda(eps) rule fitted to it.

    python -m experiments.digits_lambda [--eps 0.05 0.1 ... 0.3] [--seeds 0 1 2] [--out /tmp/16-lambda.json]

On the digits preset (1-layer CNN, 16 filters, 690 iterations; evaluations every 100), for each eps in
ascending order: FGSM on each seed (does it keep its robustness?), then for each regulariser the smallest
weight on its ladder, starting from the one the previous eps needed, with which every seed keeps its
robustness (`kept_robustness`). A run stops at its `co` event, and a weight is abandoned at its first
failing seed. Live evaluation on 128 test images, no final evaluation. Then log10(lambda) is fitted
linearly in eps (the paper's rule has that form) over the eps where FGSM did not keep its robustness.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from trainer.co import DROP
from trainer.config import make_config
from trainer.loop import train
from trainer.presets import DIGITS_CNN

LADDERS = {
    "grad_align_lambda": [0.5, 1, 2, 4, 8, 16, 32, 64],
    "elle_lambda": [16, 64, 256, 1024, 4096, 16384, 65536],
}
NONZERO = 0.05  # the least last live PGD accuracy that counts as robustness kept (6 of 128 images)
MIN_CLEAN = 0.5  # the least last clean accuracy of a model that still classifies (10 classes)
LEAN = {"eval_every": 100, "eval_points": 128, "final_eval_points": 0, "probe_points": 0, "device": "cpu"}


def one_run(eps: float, seed: int, **fields) -> dict:
    """A run to its end or to its co event; returns the verdict and the last live eval."""
    config = make_config({**DIGITS_CNN, **LEAN, "method": "fgsm", "eps": eps, "seed": seed, **fields})
    seen: dict = {"co": None, "evals": []}

    def sink(event):
        if event["type"] == "co":
            seen["co"] = event
        elif event["type"] == "eval":
            seen["evals"].append(event)

    started = time.perf_counter()
    train(config, sink, should_stop=lambda: seen["co"] is not None)
    last = seen["evals"][-1] if seen["evals"] else {}
    return {
        "eps": eps,
        "seed": seed,
        **fields,
        "co": None if seen["co"] is None else seen["co"]["iteration"],
        "peak_pgd": max((e["pgd_acc"] for e in seen["evals"]), default=None),
        "last_pgd": last.get("pgd_acc"),
        "last_clean": last.get("clean_acc"),
        "last_iteration": last.get("iteration"),
        "wall_s": time.perf_counter() - started,
    }


def kept_robustness(run: dict) -> bool:
    """No CO, a model that still classifies, and a last live PGD accuracy of at least NONZERO and at least
    half its peak.

    Robustness can fade without the FGSM-PGD gap the CO rule asks for (GradAlign with too small a lambda at
    eps 0.2 does); from eps 0.2 on FGSM collapses before its first evaluation, so its peak stays below the
    detector's MIN_PEAK and no CO is flagged although it never kept any robustness; and a large lambda at
    eps 0.3 can leave a constant classifier, whose PGD accuracy is its clean accuracy, one class's share.
    """
    last = run["last_pgd"]
    return (
        run["co"] is None
        and last is not None
        and run["last_clean"] >= MIN_CLEAN
        and last >= max(NONZERO, DROP * run["peak_pgd"])
    )


def fit(points: list[tuple[float, float]]) -> dict | None:
    """Least squares of log10(lambda) = a + b * eps, and `a_covering`: a raised until the line is at or above
    every measured lambda (the rule to use: each measured weight was the smallest that kept every seed).
    None with fewer than two points."""
    if len(points) < 2:
        return None
    xs, ys = [e for e, _ in points], [math.log10(lam) for _, lam in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    a = my - b * mx
    return {"a": a, "b": b, "a_covering": a + max(y - (a + b * x) for x, y in zip(xs, ys, strict=True))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.digits_lambda", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--eps", type=float, nargs="+", default=[0.05, 0.1, 0.15, 0.175, 0.2, 0.25, 0.3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fields", nargs="+", choices=tuple(LADDERS), default=list(LADDERS))
    parser.add_argument("--start", nargs="+", default=[], help="FIELD=VALUE: the ladder's first weight")
    parser.add_argument("--assume-fgsm-collapses", action="store_true", help="skip the FGSM runs")
    parser.add_argument("--out", type=Path, default=Path("/tmp/16-lambda.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result: dict = {"runs": [], "needed": {field: {} for field in args.fields}, "settings": LEAN}
    start = {field: 0 for field in args.fields}  # ladder index to start from (monotone in eps)
    for item in args.start:
        field, _, value = item.partition("=")
        start[field] = LADDERS[field].index(float(value))

    def record(run: dict) -> dict:
        result["runs"].append(run)
        args.out.write_text(json.dumps(result))
        print(json.dumps(run), flush=True)
        return run

    for eps in sorted(args.eps):
        fgsm = [] if args.assume_fgsm_collapses else [record(one_run(eps, seed)) for seed in args.seeds]
        if fgsm and all(kept_robustness(run) for run in fgsm):
            continue  # nothing to rescue at this eps
        for field in args.fields:
            ladder = LADDERS[field]
            for index in range(start[field], len(ladder)):
                runs = []
                for seed in args.seeds:
                    runs.append(record(one_run(eps, seed, **{field: ladder[index]})))
                    if not kept_robustness(runs[-1]):
                        break
                if all(kept_robustness(run) for run in runs):
                    result["needed"][field][str(eps)] = ladder[index]
                    start[field] = index
                    break
            args.out.write_text(json.dumps(result))
    result["fit"] = {
        field: fit([(float(eps), lam) for eps, lam in needed.items()])
        for field, needed in result["needed"].items()
    }
    args.out.write_text(json.dumps(result))
    print(json.dumps({"needed": result["needed"], "fit": result["fit"]}))


if __name__ == "__main__":
    main()
