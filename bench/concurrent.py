"""Several runs on one GPU: the aggregate training throughput of 1, 2 and 4 concurrent codash runs.

Each run is its own process (as each `codash worker` is), training PreAct ResNet-18 with FGSM at batch
128 on CIFAR-shaped synthetic data through trainer.train() with the fast path. The processes warm up
(a short run: CUDA context, cuDNN's choices), wait for each other at a barrier, then train `iters` steps
each; the figure of a process is its final event's train_images_per_s, the aggregate their sum. This is
what sets `codash up`'s workers per GPU (jobs/up.py WORKERS_PER_GPU).

    python -m bench.concurrent [--device cuda] [--counts 1 2 4] [--iters 300]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def config(device: str, iters: int) -> dict[str, Any]:
    from bench.throughput import NO_EVAL
    from bench.workloads import CIFAR_RESNET

    return {
        **CIFAR_RESNET,
        **NO_EVAL,
        "batch_size": 128,
        "method": "fgsm",
        "device": device,
        "max_iters": iters,
    }


def _one(device: str, iters: int, barrier, results) -> None:
    from bench.throughput import codash_rate
    from bench.workloads import codash_data, synthetic_cifar

    with codash_data(synthetic_cifar(device, 10_000)):
        codash_rate(config(device, min(20, iters)))
        barrier.wait()
        results.put(codash_rate(config(device, iters))["images_per_s"])


def concurrent(device: str = "cuda", counts: tuple[int, ...] = (1, 2, 4), iters: int = 300) -> dict[str, Any]:
    """Per count: each process's images/s, their sum, and the sum over the single run's figure."""
    context = multiprocessing.get_context("spawn")  # CUDA does not survive fork()
    out: dict[str, Any] = {"model": "preact_resnet18", "method": "fgsm", "batch_size": 128, "iters": iters}
    single = None
    for count in counts:
        barrier, results = context.Barrier(count), context.Queue()
        processes = [
            context.Process(target=_one, args=(device, iters, barrier, results)) for _ in range(count)
        ]
        for process in processes:
            process.start()
        rates = [results.get(timeout=600) for _ in processes]
        for process in processes:
            process.join()
        total = sum(rates)
        single = single or total
        out[str(count)] = {"images_per_s": rates, "total_images_per_s": total, "over_one": total / single}
        print(
            f"{count} concurrent runs: {total:,.0f} img/s in all ({total / single:.2f}x one run)", flush=True
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.concurrent", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("bench-concurrent.json"))
    args = parser.parse_args(argv)
    result = concurrent(args.device, tuple(args.counts), args.iters)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
