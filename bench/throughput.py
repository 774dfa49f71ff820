"""Training speed of codash's train() against the plain loop, and what evaluation costs on top.

codash is timed through trainer.train() itself: a run capped at `iters` steps with evaluation pushed past
the end, whose final event's train_images_per_s is the loop's own clock over its training segments (the
steps, the batch lookup and augmentation, lr setting, metrics buffering: all of it, eval and checkpoints
not). The plain loop (bench/plain_loop.py) trains the same model with the same algorithm on the same
tensors for the same number of steps. The two alternate in one process (the order flips every repeat).
Each side's figure is its best repeat (the least disturbed by other processes, as timeit reports), and the
ratio is best codash / best plain; the median of the paired ratios and every repeat are kept in the JSON.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch

from bench import plain_loop
from bench.timer import timed
from bench.workloads import Workload, codash_data

NO_EVAL = {"eval_every": 100_000, "eval_points": 16, "eval_pgd_steps": 1, "final_eval_points": 0}


def codash_rate(config: dict[str, Any]) -> dict[str, float]:
    """images/s and ms/iteration of train() as its final event reports them (evaluation excluded)."""
    from trainer.config import make_config
    from trainer.loop import train

    cfg = make_config({**config, **NO_EVAL})
    final = train(cfg)
    rate = final["train_images_per_s"]
    return {"images_per_s": rate, "ms_per_iter": 1000 * cfg.batch_size / rate}


def plain_rate(config: dict[str, Any], data, **options) -> dict[str, float]:
    """The plain loop on the same data with the same resolved hyper-parameters."""
    from trainer.config import make_config

    cfg = make_config(config)
    result = plain_loop.time_training(
        cfg.model,
        cfg.method,
        data.train_x,
        data.train_y,
        iters=cfg.max_iters,
        batch_size=cfg.batch_size,
        eps=cfg.eps,
        alpha=cfg.alpha,
        pgd_steps=cfg.pgd_steps,
        pgd_alpha=cfg.pgd_alpha,
        grad_align_lambda=cfg.grad_align_lambda,
        grad_align_fraction=cfg.grad_align_fraction,
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        cyclic=cfg.lr_schedule == "cyclic",
        augment=cfg.dataset in ("cifar10", "svhn"),
        n_filters=cfg.n_filters,
        n_classes=data.n_classes,
        amp=cfg.bf16(data.train_x.device.type),
        seed=cfg.seed,
        **options,
    )
    return {"images_per_s": result["images_per_s"], "ms_per_iter": result["ms_per_iter"]}


# The plain loop's variants: eager everywhere; on CUDA also the captured step, bf16 and channels_last like
# codash's fast path, which codash is compared with there (like with like).
PLAIN = {"plain": {}, "plain_graph": {"capture": True, "channels_last": True}}


def compare(workload: Workload, method: str, data, device: str, repeats: int | None = None) -> dict:
    """codash and plain, alternating, after one warm-up of each; best of the repeats, and their ratio.

    On CUDA the ratio is codash / the captured plain loop (`plain_graph`), else codash / eager plain.
    """
    iters = workload.iters_for(method)
    config = workload.run_config(method, device, iters)
    repeats = repeats or workload.repeats
    sides = ["codash", "plain", *(["plain_graph"] if device.startswith("cuda") else [])]
    runs: dict[str, list[dict]] = {who: [] for who in sides}

    def rate(who: str, cfg: dict[str, Any]) -> dict[str, float]:
        return codash_rate(cfg) if who == "codash" else plain_rate(cfg, data, **PLAIN[who])

    with codash_data(data):
        for who in sides:  # warm-up: kernels, allocator, data set, cudnn.benchmark's choices
            rate(who, workload.run_config(method, device, 1))
        for repeat in range(repeats):
            for who in sides if repeat % 2 == 0 else sides[::-1]:
                runs[who].append(rate(who, config))
    baseline = sides[-1]
    ratios = [
        c["images_per_s"] / p["images_per_s"] for c, p in zip(runs["codash"], runs[baseline], strict=True)
    ]
    row = {"iters": iters, "repeats": repeats, "batch_size": config["batch_size"]}
    for who, results in runs.items():
        best = max(results, key=lambda r: r["images_per_s"])
        row[who] = {
            "images_per_s": best["images_per_s"],
            "ms_per_iter": best["ms_per_iter"],
            "median_images_per_s": statistics.median(r["images_per_s"] for r in results),
            "all_images_per_s": [round(r["images_per_s"], 2) for r in results],
        }
    row["ratio"] = row["codash"]["images_per_s"] / row[baseline]["images_per_s"]
    row["ratio_to"] = baseline
    row["median_paired_ratio"] = statistics.median(ratios)
    row["all_ratios"] = [round(r, 3) for r in ratios]
    return row


def eval_overhead(
    workload: Workload, data, device: str, ms_per_iter: float, points: int | None = None
) -> dict:
    """Share of wall time that evaluation takes at the default eval_every, with the fgsm method.

    The periodic evaluation is timed inside train() (trainer.loop._evaluate, wrapped), once per step for
    the workload's repeats + 1 steps; the fastest is set against eval_every training steps at the measured
    ms/iteration: eval / (eval + eval_every × step). `points`
    evaluates fewer than the default eval_points and scales linearly (evaluation is batched, so its cost
    is proportional to the points), for models too slow on this device to evaluate 256 points quickly.
    """
    import trainer.loop
    from trainer.config import RunConfig, make_config

    defaults = RunConfig()
    every, default_points = defaults.eval_every, defaults.eval_points
    measured_points = points or default_points
    cfg = make_config(
        {
            **workload.run_config("fgsm", device, workload.repeats + 1),
            "eval_every": 1,
            "eval_points": measured_points,
            "final_eval_points": 0,
        }
    )
    seconds: list[float] = []
    original = trainer.loop._evaluate

    def evaluate_timed(*args, **kwargs):
        with timed(seconds, device):
            return original(*args, **kwargs)

    trainer.loop._evaluate = evaluate_timed
    try:
        with codash_data(data):
            trainer.loop.train(cfg)
    finally:
        trainer.loop._evaluate = original
    eval_s = min(seconds) * default_points / measured_points  # the first one also warms up
    train_s = every * ms_per_iter / 1000
    return {
        "eval_every": every,
        "eval_points": default_points,
        "measured_points": measured_points,
        "eval_s": eval_s,
        "train_s_between_evals": train_s,
        "percent_of_wall": 100 * eval_s / (eval_s + train_s),
    }


def final_eval_time(device: str, points: int = 1000, test_images: int = 10_000) -> dict[str, Any]:
    """The final evaluation of a PreAct ResNet-18 (PGD-50-10 on `points` test images, clean accuracy on
    `test_images`, CIFAR-10's test set), timed for one model as train() runs it on this device, and with
    every restart on every point: the work for a model that no restart breaks (the bound: a fresh model
    on random labels is broken by the first restart). A run evaluates two models, its last and its best."""
    from bench.workloads import CIFAR_RESNET, synthetic_cifar
    from trainer.checkpoint import model_for
    from trainer.config import make_config
    from trainer.evaluate import pgd_accuracy
    from trainer.fast import fast_path
    from trainer.final import final_metrics

    cfg = make_config({**CIFAR_RESNET, "device": device, "final_eval_points": points})
    path = fast_path(cfg, torch.device(device), None)
    data = synthetic_cifar(device, 512, n_test=test_images)
    model = path.prepare(model_for(cfg).to(device)).eval()

    def seconds_of(work) -> float:
        work()  # warm-up: cuDNN's choices for these batch sizes
        spent: list[float] = []
        with timed(spent, device):
            work()
        return spent[0]

    def every_restart() -> None:
        generator = torch.Generator(device).manual_seed(0)
        with path.autocast():
            pgd_accuracy(
                model,
                path.layout(data.test_x[:points]),
                data.test_y[:points],
                cfg.eps,
                cfg.final_pgd_steps,
                cfg.final_pgd_restarts,
                generator,
                batch=path.eval_batch,
            )

    return {
        "points": points,
        "attack": cfg.final_pgd,
        "precision": "bf16" if path.bf16 else "fp32",
        "as_run_s": seconds_of(lambda: final_metrics(model, cfg, data, path, points, lambda done: None)),
        "every_restart_s": seconds_of(every_restart),
    }
