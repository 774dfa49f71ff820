"""Offline check of the CO onset: the dense probe's onset against a full PGD-10 eval of every iteration.

    python -m bench.onset_check [--seeds 0 1 2 3 4] [--iters 450] [--set KEY=VALUE ...] [--out FILE]

Per seed, the digits FGSM preset (with --set's RunConfig fields on top) runs for --iters iterations while
an optimizer step hook keeps every iteration's weights (trainer code untouched). Every kept model is then
evaluated as the live eval is (trainer.evaluate.eval_metrics: PGD-10, step eps/4, 256 test images, its
seed). On the detector's window (after the eval two before the onset eval, up to the confirming eval)
trainer.co.dense_onset, the rule the detector applies to the probe, places the onset on that per-iteration
series: the reference for the probe's `onset_iteration`. How well that reference is defined is measured
alongside: the same eval with another PGD random start, and on the first 256 *training* images (what a
probe on training images could give at best). And how sudden the collapse is: `collapse_width`, the
iterations the per-iteration PGD accuracy takes to fall from 80 % to 20 % of its peak; an onset can only be
placed to a few iterations where that width is a few iterations. Prints one line per seed and writes JSON.
A check, not a test: it takes minutes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from trainer.checkpoint import model_for
from trainer.co import dense_onset, smoothed
from trainer.config import make_config
from trainer.data import load_dataset
from trainer.evaluate import eval_metrics
from trainer.loop import train
from trainer.presets import DEFAULT_PRESET, PRESETS
from trainer.probe import probe_metrics, probe_seed

CADENCES = (1, 2, 5, 10, 20)  # probe_every values the probe's onset is also placed at, offline
OTHER_START = 99_991  # added to the eval's PGD seed for the repeatability series
WIDTH_FROM, WIDTH_TO = 0.8, 0.2  # collapse_width: from this fraction of the peak PGD accuracy to this one


def collapse_width(series: list[list[float]], onset: int) -> int | None:
    """Iterations the smoothed PGD accuracy of a whole-run [iteration, pgd_acc, ...] series takes to fall
    from WIDTH_FROM x its peak (the last time it is there, up to `onset`) to WIDTH_TO x that peak (the first
    time after `onset`); None if it never gets that low."""
    means = smoothed(series)
    peak = max(mean for it, mean in means if it <= onset)
    high = max(it for it, mean in means if it <= onset and mean >= WIDTH_FROM * peak)
    low = next((it for it, mean in means if it >= onset and mean <= WIDTH_TO * peak), None)
    return None if low is None else low - high


def check_seed(seed: int, iters: int, overrides: dict) -> dict:
    config = make_config(
        {**PRESETS[DEFAULT_PRESET], "seed": seed, "max_iters": iters, "final_eval_points": 0, **overrides}
    )
    weights: list[list[torch.Tensor]] = []

    def keep(optimizer, args, kwargs) -> None:
        weights.append([p.detach().clone() for group in optimizer.param_groups for p in group["params"]])

    events: list[dict] = []
    handle = register_optimizer_step_post_hook(keep)
    started = time.perf_counter()
    try:
        train(config, events.append)
    finally:
        handle.remove()
    train_s = time.perf_counter() - started
    co = next((event for event in events if event["type"] == "co"), None)
    probes = [[e["iteration"], e["pgd_acc"], e["fgsm_acc"]] for e in events if e["type"] == "probe"]
    result = {"seed": seed, "config": config.model_dump(mode="json"), "train_s": train_s, "probes": probes}
    if co is None:
        return {**result, "co": None}
    data = load_dataset(config.dataset, torch.device("cpu"))
    eval_x, eval_y = data.test_x[: config.eval_points], data.test_y[: config.eval_points]
    model = model_for(config)
    dense_x, dense_y = data.train_x[-config.probe_points :], data.train_y[-config.probe_points :]
    first = max(1, co["iteration"] - 2 * config.eval_every + 1)  # the detector's window
    last = len(weights)
    # the reference (test images, the eval's seed), then how well it is defined: another PGD start, and
    # the same number of training images
    references = {
        "eval": (eval_x, eval_y, 0),
        "other_start": (eval_x, eval_y, OTHER_START),
        "train_images": (data.train_x[: config.eval_points], data.train_y[: config.eval_points], 0),
    }
    rows: dict[str, list] = {name: [] for name in references}
    probe_series = []
    started = time.perf_counter()
    for iteration in range(1, last + 1):  # the eval over the whole run, the rest over the window
        with torch.no_grad():
            for param, value in zip(model.parameters(), weights[iteration - 1], strict=True):
                param.copy_(value)
        model.eval()
        in_window = first <= iteration <= co["confirmed_at"]
        for name in references if in_window else ("eval",):
            x, y, offset = references[name]
            values, _ = eval_metrics(
                model,
                x,
                y,
                x[:0],
                y[:0],
                config.eps,
                config.eval_pgd_steps,
                seed=config.seed + iteration + offset,
            )
            rows[name].append([iteration, values["pgd_acc"], values["fgsm_acc"]])
        if not in_window:
            continue
        generator = torch.Generator().manual_seed(probe_seed(config.seed, iteration))
        probe = probe_metrics(model, dense_x, dense_y, config.eps, config.probe_pgd_steps, generator)
        probe_series.append([iteration, probe[1].item(), probe[0].item()])
    whole_run = rows["eval"]
    series = [row for row in whole_run if row[0] >= first]
    reference = dense_onset(series, co["confirmed_at"])
    at_cadence = {
        every: dense_onset([row for row in probe_series if row[0] % every == 0], co["confirmed_at"])
        for every in CADENCES
    }
    return {
        **result,
        "co": {key: value for key, value in co.items() if key != "onset_probes"},
        "eval_series": whole_run,
        "probe_series": probe_series,
        "eval_s": time.perf_counter() - started,
        "probe_onset": co["onset_iteration"],
        "eval_onset": reference,
        "difference": None if reference is None else co["onset_iteration"] - reference,
        "collapse_width": None if reference is None else collapse_width(whole_run, reference),
        "offline_probe_onsets": at_cadence,
        "other_start_onset": dense_onset(rows["other_start"], co["confirmed_at"]),
        "train_images_onset": dense_onset(rows["train_images"], co["confirmed_at"]),
    }


def setting(item: str) -> tuple[str, object]:
    """'n_filters=64' -> ('n_filters', 64); a value that is not JSON stays a string ('optimizer=sgd')."""
    key, _, text = item.partition("=")
    try:
        return key, json.loads(text)
    except json.JSONDecodeError:
        return key, text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.onset_check", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--iters", type=int, default=450, help="iterations per run (CO comes at 200-300)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="RunConfig fields")
    parser.add_argument("--out", type=Path, default=Path("/tmp/16-onset.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    overrides = dict(setting(item) for item in args.set)
    results = []
    for seed in args.seeds:
        result = check_seed(seed, args.iters, overrides)
        results.append(result)
        args.out.write_text(json.dumps(results))
        co = result["co"]
        if co is None:
            print(f"seed {seed}: no CO within {args.iters} iterations")
        else:
            print(
                f"seed {seed}: eval onset {co['iteration']} (confirmed {co['confirmed_at']}), probe onset"
                f" {result['probe_onset']}, per-iteration PGD-10 onset {result['eval_onset']},"
                f" difference {result['difference']}; probe onset offline by probe_every:"
                f" {result['offline_probe_onsets']}; reference with another PGD start"
                f" {result['other_start_onset']}, on {result['config']['eval_points']} training images"
                f" {result['train_images_onset']}; collapse width (80 % to 20 % of peak PGD accuracy)"
                f" {result['collapse_width']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
