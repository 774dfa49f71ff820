"""Offline check of the CO onset: the run's onset against a full PGD-10 eval of every live iteration.

    python -m experiments.onset_check [--seeds 0 1 2 3 4] [--iters 450] [--preset NAME] [--set KEY=VALUE ...]
                                [--no-repeatability] [--out FILE]

Per seed, a preset (default: the digits FGSM one; --set's RunConfig fields on top, `device=cuda` among
them) runs for --iters iterations, and after every step (trainer.loop.train's `after_step`) the live
model is evaluated as the live eval evaluates it (trainer.evaluate.per_image_results: PGD-10, step
eps/4, the eval's 256 test images and seed, its precision and layout). On the detector's window (after the
eval two before the onset eval, up to the confirming eval) trainer.co.dense_onset, the rule the detector
applies, places the onset on that per-iteration series: the reference for the run's `onset_iteration`
(placed on the weights the run kept with onset_replay on, trainer.window; else on the dense probe) and
for the probe's own onset (the same rule on the co event's probe rows). How well that reference is
defined is measured alongside, on the window's weights
(kept for its length only, so a PreAct ResNet-18 on a GPU holds ~150 copies, not one per iteration): the
same eval with another PGD random start, on the first 256 *training* images (what a probe on training
images could give at best; --no-repeatability leaves these two out, a third of the time), and the probe
itself at every iteration. How sudden the collapse is:
`collapse_width`, the iterations the per-iteration PGD accuracy takes to fall from 80 % to 20 % of its
peak; an onset can only be placed to a few iterations where that width is a few iterations. And how far
image sampling alone moves the onset (`sampling_spread`): the reference re-placed on bootstrap resamples
of its images, and on random 32/64/128-image subsets of them. Prints one line per seed and writes JSON.
A check, not a test: it takes minutes.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from trainer.checkpoint import model_for
from trainer.co import Row, dense_onset, onsets_on_images, resampled_onsets, smoothed, window_steps
from trainer.config import make_config
from trainer.data import load_dataset
from trainer.evaluate import per_image_results
from trainer.fast import fast_path
from trainer.loop import resolve_device, train
from trainer.presets import DEFAULT_PRESET, PRESETS
from trainer.probe import DenseProbe

CADENCES = (1, 2, 5, 10, 20)  # probe_every values the probe's onset is also placed at, offline
OTHER_START = 99_991  # added to the eval's PGD seed for the repeatability series
WIDTH_FROM, WIDTH_TO = 0.8, 0.2  # collapse_width: from this fraction of the peak PGD accuracy to this one
TOLERANCE = 5  # the target: the onset within this many iterations of the reference
PROBE_SIZES = (32, 64, 128)  # image sets, drawn from the eval's, whose onset sampling_spread compares
DRAWS = 400  # resamples per sampling_spread estimate


def collapse_width(series: list[list[float]], onset: int) -> int | None:
    """Iterations the smoothed PGD accuracy of a whole-run [iteration, pgd_acc, ...] series takes to fall
    from WIDTH_FROM x its peak (the last time it is there, up to `onset`) to WIDTH_TO x that peak (the first
    time after `onset`); None if it never gets that low."""
    means = smoothed(series)
    peak = max(mean for it, mean in means if it <= onset)
    high = max(it for it, mean in means if it <= onset and mean >= WIDTH_FROM * peak)
    low = next((it for it, mean in means if it >= onset and mean <= WIDTH_TO * peak), None)
    return None if low is None else low - high


def sampling_spread(rows: list[Row], confirmed_at: int, seed: int) -> dict:
    """How far the choice of images alone moves the onset, from per-image PGD results.

    `rows` are the reference eval's, with its per-image PGD results, over the detector's window. The
    reference's onset is re-placed (the same dense_onset, via trainer.co.onset_on_images) on DRAWS
    bootstrap resamples of its images (trainer.co.resampled_onsets, which the detector's onset_interval
    uses on the probe's images): their standard deviation is the
    reference's own standard error. Then on DRAWS random subsets of PROBE_SIZES images: the share of them
    within TOLERANCE of the reference's onset is what a probe of that size, on images like the eval's and
    with its attack at every iteration, could reach. A subset shares its images with the reference, which
    pulls the two together; a probe on other images (one separate from the eval subset)
    can only do worse. So, last, `halves`: DRAWS random splits of the images into two disjoint halves, and
    how often their onsets agree.
    """
    rng = random.Random(seed)
    n = len(rows[0].robust)
    reference = dense_onset(rows, confirmed_at)
    boot = [onset for onset in resampled_onsets(rows, confirmed_at, DRAWS, seed) if onset is not None]
    result = {
        "bootstrap_sd": statistics.pstdev(boot) if len(boot) > 1 else None,
        "bootstrap_range": [_quantile(boot, 0.05), _quantile(boot, 0.95)] if boot else None,
        "bootstrap_none": 1 - len(boot) / DRAWS,
        "subsets": {},
    }
    for size in PROBE_SIZES:
        if size < n and reference is not None:
            subsets = [rng.sample(range(n), size) for _ in range(DRAWS)]
            onsets = onsets_on_images(rows, subsets, confirmed_at)
            result["subsets"][size] = _agreement([None if o is None else abs(o - reference) for o in onsets])
    orders = [rng.sample(range(n), n) for _ in range(DRAWS)]
    halves = onsets_on_images(
        rows, [half for o in orders for half in (o[: n // 2], o[n // 2 :])], confirmed_at
    )
    pairs = zip(halves[::2], halves[1::2], strict=True)
    distances = [None if one is None or other is None else abs(one - other) for one, other in pairs]
    result["halves"] = {"size": n // 2, **_agreement(distances)}
    return result


def _agreement(distances: list[int | None]) -> dict:
    """Onset distances (None: one side placed no onset) -> the share within TOLERANCE, their median and the
    share with no onset."""
    placed = [d for d in distances if d is not None]
    return {
        "within_tolerance": sum(d <= TOLERANCE for d in placed) / len(distances),
        "median_distance": statistics.median(placed) if placed else None,
        "none": 1 - len(placed) / len(distances),
    }


def _quantile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def check_seed(
    seed: int,
    iters: int,
    preset: str,
    overrides: dict,
    repeatability: bool = True,
    on_event: Callable[[dict], None] | None = None,
) -> dict:
    """The check of one seed (the module's docstring says what it measures); `on_event` also receives every
    event of the run, for a caller that wants its stream."""
    config = make_config(
        {**PRESETS[preset], "seed": seed, "max_iters": iters, "final_eval_points": 0, **overrides}
    )
    device = resolve_device(config.device)
    path = fast_path(config, device, None)  # the live eval's precision and layout
    data = load_dataset(config.dataset, device)
    n = config.eval_points
    # the reference (test images, the eval's seed), then how well it is defined: another PGD start, and
    # the same number of training images; and the dense probe's own images
    references = {
        "eval": (path.layout(data.test_x[:n]), data.test_y[:n], 0),
        "other_start": (path.layout(data.test_x[:n]), data.test_y[:n], OTHER_START),
        "train_images": (path.layout(data.train_x[:n]), data.train_y[:n], 0),
    }
    dense_x = path.layout(data.train_x[-config.probe_points :])
    dense_y = data.train_y[-config.probe_points :]
    rows: dict[str, list] = {name: [] for name in references}
    robust: list[list[bool]] = []  # per iteration, the reference's per-image PGD results
    probe_series: list[list[float]] = []
    # The last steps' weights (and batch-norm statistics): when the co event comes, the detector's window
    # (from just after the eval before the last uncollapsed one to the confirming eval) is among them.
    recent: deque[tuple[int, dict]] = deque(maxlen=window_steps(config.eval_every))
    events: list[dict] = []
    eval_s, first = 0.0, None  # first: the window's first iteration, once the co event has come

    def evaluate(model: nn.Module, iteration: int, names) -> None:
        with path.autocast():
            for name in names:
                x, y, offset = references[name]
                pgd_right, fgsm_right = per_image_results(
                    model, x, y, config, config.seed + iteration + offset, path.eval_batch
                )
                rows[name].append(
                    [iteration, pgd_right.float().mean().item(), fgsm_right.float().mean().item()]
                )
                if name == "eval":
                    robust.append(pgd_right.tolist())

    def after_step(iteration: int, model: nn.Module) -> None:
        """The full live eval of every iteration, on the live model (trainer.loop's after_step)."""
        nonlocal eval_s
        started = time.perf_counter()
        model.eval()
        evaluate(model, iteration, ["eval"])
        model.train()
        if first is None:
            recent.append((iteration, {k: v.detach().clone() for k, v in model.state_dict().items()}))
        eval_s += time.perf_counter() - started

    def sink(event: dict) -> None:
        """At the co event, the other references and the probe at every iteration of the window."""
        nonlocal eval_s, first
        events.append(event)
        if on_event is not None:
            on_event(event)
        if event["type"] != "co":
            return
        first, started = max(1, event["iteration"] - 2 * config.eval_every + 1), time.perf_counter()
        model = path.prepare(model_for(config).to(device))
        probe = DenseProbe(model, config, dense_x, dense_y, path, None)  # the run's, on these weights
        for iteration, weights in recent:
            if iteration < first:
                continue
            model.load_state_dict(weights)
            evaluate(model.eval(), iteration, ["other_start", "train_images"] if repeatability else [])
            fgsm_acc, pgd_acc = probe(iteration)[:2].tolist()
            probe_series.append([iteration, pgd_acc, fgsm_acc])
        recent.clear()
        eval_s += time.perf_counter() - started

    started = time.perf_counter()
    train(config, sink, after_step=after_step)
    train_s = time.perf_counter() - started - eval_s
    co = next((event for event in events if event["type"] == "co"), None)
    probes = [[e["iteration"], e["pgd_acc"], e["fgsm_acc"]] for e in events if e["type"] == "probe"]
    result = {
        "seed": seed,
        "config": config.model_dump(mode="json"),
        "train_s": train_s,
        "eval_s": eval_s,
        "probes": probes,
        "eval_series": rows["eval"],
    }
    if co is None:
        return {**result, "co": None}
    confirmed_at = co["confirmed_at"]
    window = rows["eval"][first - 1 : confirmed_at]
    reference = dense_onset(window, confirmed_at)
    at_cadence = {
        every: dense_onset([row for row in probe_series if row[0] % every == 0], confirmed_at)
        for every in CADENCES
    }
    return {
        **result,
        "co": {key: value for key, value in co.items() if key != "onset_probes"},
        "probe_series": probe_series,
        "run_onset": co["onset_iteration"],  # as the run placed it (co["onset_rule"] says on what)
        "probe_onset": dense_onset(co["onset_probes"], confirmed_at),
        "eval_onset": reference,
        "difference": None if reference is None else co["onset_iteration"] - reference,
        "collapse_width": None if reference is None else collapse_width(rows["eval"], reference),
        "offline_probe_onsets": at_cadence,
        "other_start_onset": dense_onset(rows["other_start"], confirmed_at) if repeatability else None,
        "train_images_onset": dense_onset(rows["train_images"], confirmed_at) if repeatability else None,
        "sampling": sampling_spread(
            [Row(*row, images) for row, images in zip(window, robust[first - 1 : confirmed_at], strict=True)],
            confirmed_at,
            seed,
        ),
    }


def setting(item: str) -> tuple[str, object]:
    """'n_filters=64' -> ('n_filters', 64); a value that is not JSON stays a string ('optimizer=sgd')."""
    key, _, text = item.partition("=")
    try:
        return key, json.loads(text)
    except json.JSONDecodeError:
        return key, text


def main(argv: list[str] | None = None) -> None:
    description = __doc__.splitlines()[0]
    parser = argparse.ArgumentParser(prog="python -m experiments.onset_check", description=description)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--iters", type=int, default=450, help="iterations per run (digits: CO at 200-300)")
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS), metavar="NAME")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="RunConfig fields")
    parser.add_argument(
        "--no-repeatability",
        action="store_true",
        help="leave out the reference's other PGD start and training images (a third of the time)",
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/onset-check.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    overrides = dict(setting(item) for item in args.set)
    results = []
    for seed in args.seeds:
        result = check_seed(seed, args.iters, args.preset, overrides, not args.no_repeatability)
        results.append(result)
        args.out.write_text(json.dumps(results))
        co = result["co"]
        if co is None:
            print(f"seed {seed}: no CO within {args.iters} iterations")
        else:
            source = co["onset_rule"].rpartition(", on ")[2]
            print(
                f"seed {seed}: eval onset {co['iteration']} (confirmed {co['confirmed_at']}), the run's onset"
                f" {result['run_onset']} (interval {co['onset_interval']}, on {source}),"
                f" per-iteration PGD-10 onset {result['eval_onset']}, difference {result['difference']};"
                f" the probe's onset {result['probe_onset']}; probe onset offline by probe_every:"
                f" {result['offline_probe_onsets']}; reference with another PGD start"
                f" {result['other_start_onset']}, on {result['config']['eval_points']} training images"
                f" {result['train_images_onset']}; collapse width (80 % to 20 % of peak PGD accuracy)"
                f" {result['collapse_width']}; image sampling: {result['sampling']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
