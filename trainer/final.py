"""The final evaluation: clean accuracy, PGD-50-10 and (optionally) AutoAttack on the last and the
early-stopped best model, with progress events while it runs."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from trainer.autoattack import autoattack_accuracy
from trainer.checkpoint import load_checkpoint
from trainer.data import DATA_SHAPES, Dataset
from trainer.evaluate import accuracy, pgd_accuracy
from trainer.events import Event, Sink, make_event
from trainer.fast import FastPath, cudnn_benchmark

if TYPE_CHECKING:
    from trainer.loop import RunState

FINAL_PROGRESS_STEPS = 20  # final_progress events per model, at most, after the one as it begins


class Stopped(Exception):
    """The run was asked to stop (cancelled, or its worker shutting down) during its final evaluation."""


def final_evaluation(
    model,
    cfg,
    data: Dataset,
    state: RunState,
    run_dir: Path,
    emit: Sink,
    path: FastPath,
    started: float,
    should_stop: Callable[[], bool] | None = None,
) -> Event:
    """Clean accuracy and PGD-50-10 on the first final_eval_points test images (the authors' n_final_eval),
    last and best; clean accuracy on the whole test set too (`clean_acc_all`).

    attack_points says how many test images the attacks saw (final_eval_points caps it at the test set).

    With `autoattack` on, AutoAttack (standard, L-inf) also runs on the same points (None when off).

    `should_stop` is asked after each PGD restart of each batch (on CIFAR the evaluation takes minutes, and a
    cancel should not wait for it): when true, Stopped is raised and no final event is emitted. The last
    checkpoint is the run's end, so a resumed run evaluates again from the start.
    """
    points = min(cfg.final_eval_points, len(data.test_x))
    best_state = load_checkpoint(run_dir, "best", path.device)
    same = best_state is None or best_state["iteration"] == state.iteration  # no need to attack it twice
    begun = time.perf_counter()

    def reporter(which: str) -> Callable[[int], None]:
        """The live view's bar for one model (last, then best): as it begins, then each time another
        1/FINAL_PROGRESS_STEPS of its points is attacked, and at the end."""
        shown = -1  # the last step emitted

        def progress(done: int) -> None:
            nonlocal shown
            if should_stop is not None and should_stop():
                raise Stopped
            step = done * FINAL_PROGRESS_STEPS // points if points else FINAL_PROGRESS_STEPS
            if step > shown:
                shown = step
                elapsed = time.perf_counter() - begun
                fields = {"model": which, "models": 1 if same else 2, "done": done, "points": points}
                emit(make_event("final_progress", **fields, elapsed_s=elapsed))

        progress(0)
        return progress

    results = {"last": final_metrics(model, cfg, data, path, points, reporter("last"))}
    if same:
        results["best"] = dict(results["last"])
    else:
        model.load_state_dict(best_state["model"])
        results["best"] = final_metrics(model, cfg, data, path, points, reporter("best"))
    final = make_event(
        "final",
        co_detected=state.detector.fired_at is not None,
        co_iteration=state.detector.fired_at,
        last=results["last"],
        best=results["best"],
        best_iteration=state.best_iteration,
        attack_points=points,
        train_images_per_s=state.train_images / state.train_s if state.train_s > 0 else None,
        wall_s=time.perf_counter() - started,
        iterations=state.iteration,
    )
    emit(final)
    return final


def final_metrics(
    model, cfg, data: Dataset, path: FastPath, n: int, progress: Callable[[int], None]
) -> dict[str, float | None]:
    """On a GPU in bf16 and large batches, each PGD restart attacking only the points no earlier restart
    fooled (the same measure, a fraction of the work once a model is broken); on the CPU as always.
    `progress(done)`: points attacked so far (evaluate.pgd_accuracy), `n` once the attack is over."""
    model.eval()
    robust = auto = None
    test_x = path.layout(data.test_x)
    if n:
        generator = torch.Generator(path.device).manual_seed(cfg.seed)
        xs, ys = test_x[:n], data.test_y[:n]
        with path.autocast(), cudnn_benchmark(False):
            robust = pgd_accuracy(
                model,
                xs,
                ys,
                cfg.eps,
                cfg.final_pgd_steps,
                cfg.final_pgd_restarts,
                generator,
                batch=path.eval_batch,
                skip_fooled=path.device.type == "cuda",
                progress=progress,
            )
        if cfg.autoattack:
            auto = autoattack_accuracy(model, xs, ys, cfg.eps, DATA_SHAPES[cfg.dataset][2], cfg.seed)
    with path.autocast():
        clean_all = accuracy(model, test_x, data.test_y, path.eval_batch)
        clean = accuracy(model, test_x[:n], data.test_y[:n], path.eval_batch) if n else clean_all
    return {"clean_acc": clean, "clean_acc_all": clean_all, "pgd_acc": robust, "autoattack_acc": auto}
