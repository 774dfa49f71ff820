"""Can a run see catastrophic overfitting coming? Candidate early-warning rules scored on digits.

    python -m experiments.co_warning collect CACHE [--names fgsm fgsmrs ga4 pgd5 elle nfgsm] [--seeds 0 ... 9]
    python -m experiments.co_warning score CACHE [--out rules.json] [--fit-seeds 0 1 2 3 4]
    python -m experiments.co_warning autopilot CACHE [--seeds 0 ... 9] [--table] [--no-autoattack]

`collect` trains each (preset, seed) of RUNS on the CPU, one thread, and writes its events as
CACHE/NAME-SEED.jsonl (a file that already holds a final event is kept: an interrupted collection resumes),
with the local-linearity error (ELLE's, unweighted, trainer.elle.elle_reg) measured on the side every
LLE_EVERY iterations on the eval's test images and on the dense probe's training images, as
CACHE/NAME-SEED.lle.json (no event carries it: a run does not measure it unless it trains with ELLE).
The collapsing runs keep the detector's window (`onset_replay` on), so their `co` event's onset_iteration
is placed on the live eval replayed at every iteration: the onset a warning is judged against.

`score` reads the cache only (no training) and replays candidate rules over what a run measures live:
each eval's and each dense probe's cos(∇x, ∇x+η) and cos(δ_FGSM, δ_PGD), their FGSM−PGD accuracy gap,
and the side measure of the local-linearity error. A rule fires at most once, at the first eval or probe
where it holds, and only before the run's `co` event (as the trainer would). Per rule: how many collapsing
runs it warned before their onset (a warning at or after the onset is a miss), the lead (onset − warning)
per seed with its median and range, and its false alarms per non-collapsing preset. The targets: warned
on >= 9 of 10 FGSM runs with a median lead >= 50 iterations, and no warning on the non-collapsing runs.

`autopilot` trains the autopilot (`rescue: auto`, trainer.rescue) and GradAlign at the same λ(ε) from the
start on the same seeds, runs AutoAttack on their last models (the first AUTOATTACK_POINTS test images), and
compares both with the FGSM runs of `collect`: CO, the switch, final PGD-50-10 (last and best), AutoAttack,
training time and whole-run time.

Time (shared 2-core CPU, one thread): an FGSM run ~80 s (45 s of it the onset replay), a run without CO
17-35 s; the default collection (6 presets x 10 seeds) ~38 min; `score` ~20 s; `autopilot` ~15 min of
training and ~3 min of AutoAttack.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from experiments.warning_rules import Rule, Run, candidates, frontier, load_run, meets, score, show
from trainer.config import lambda_of_eps
from trainer.events import JsonlSink, read_jsonl
from trainer.presets import DEFAULT_PRESET, DIGITS_ELLE, DIGITS_GRAD_ALIGN, PRESETS

PGD5 = "Digits: PGD-5 baseline"
# name -> (label, the run's config fields, whether the preset collapses, final evaluation)
RUNS: dict[str, tuple[str, dict, bool, bool]] = {
    "fgsm": ("FGSM", PRESETS[DEFAULT_PRESET], True, True),
    "fgsmrs": ("FGSM-RS (α = 1.25ε)", {**PRESETS[DEFAULT_PRESET], "method": "fgsm_rs"}, True, False),
    "ga4": ("FGSM + GradAlign λ = 4", PRESETS[DIGITS_GRAD_ALIGN], False, False),
    "pgd5": ("PGD-5 (α = ε/2)", PRESETS[PGD5], False, False),
    "elle": ("FGSM + ELLE λ = 1024", PRESETS[DIGITS_ELLE], False, False),
    "nfgsm": ("N-FGSM (k = 2)", {**PRESETS[DEFAULT_PRESET], "method": "nfgsm"}, False, False),
}
NON_COLLAPSING = tuple(name for name, run in RUNS.items() if not run[2])
# The autopilot against FGSM (the "fgsm" runs above) and GradAlign on from the start at the same λ(ε)
# (trainer.fork.rescue_lambda: 5.66 at ε = 0.175 on digits); each keeps its run directory, for AutoAttack.
GRAD_ALIGN_EPS = lambda_of_eps("grad_align_lambda", "digits", PRESETS[DEFAULT_PRESET]["eps"])
AUTOPILOT_RUNS: dict[str, tuple[str, dict, bool, bool]] = {
    "auto": ("FGSM + autopilot (rescue: auto)", {**PRESETS[DEFAULT_PRESET], "rescue": "auto"}, False, True),
    "galam": (
        f"FGSM + GradAlign λ(ε) = {GRAD_ALIGN_EPS:g} from the start",
        {**PRESETS[DEFAULT_PRESET], "grad_align_lambda": GRAD_ALIGN_EPS},
        False,
        True,
    ),
}
AUTOATTACK_POINTS = 100  # the first test images AutoAttack attacks (of the 297 PGD-50-10 attacks)
LLE_EVERY = 10  # iterations between side measures of the local-linearity error


def config_for(name: str, seed: int, extra: dict | None = None):
    from trainer.config import make_config

    _, fields, collapsing, final = (RUNS | AUTOPILOT_RUNS)[name]
    return make_config(
        {
            **fields,
            "seed": seed,
            "device": "cpu",
            "onset_replay": "on",  # the onset a warning is judged against (only costs where CO fires)
            "final_eval_points": 297 if final else 0,
            **(extra or {}),
        }
    )


def collect_one(cache: Path, name: str, seed: int) -> Path:
    """Train one (preset, seed) unless its file is complete; its events and the side LLE measures."""
    import torch

    from trainer.data import load_dataset
    from trainer.elle import elle_reg
    from trainer.loop import train

    path = cache / f"{name}-{seed}.jsonl"
    if path.exists() and any(event["type"] == "final" for event in read_jsonl(path.open())):
        return path
    config = config_for(name, seed)
    data = load_dataset(config.dataset, "cpu")
    points = {
        "eval": (data.test_x[: config.eval_points], data.test_y[: config.eval_points]),
        "probe": (data.train_x[-config.probe_points :], data.train_y[-config.probe_points :]),
    }
    lle: list[list[float]] = []

    def after_step(iteration: int, model) -> None:
        if iteration % LLE_EVERY:
            return
        generator = torch.Generator().manual_seed(seed * 1_000_003 + iteration)
        model.eval()
        with torch.no_grad():
            lle.append(
                [
                    iteration,
                    *(elle_reg(model, x, y, config.eps, generator).item() for x, y in points.values()),
                ]
            )
        model.train()

    started = time.perf_counter()
    run_dir = cache / "dirs" / f"{name}-{seed}" if name in AUTOPILOT_RUNS else None
    with path.open("w") as out:
        train(config, JsonlSink(out), run_dir=run_dir, after_step=after_step)
    (cache / f"{name}-{seed}.lle.json").write_text(
        json.dumps({"columns": ["iteration", *points], "rows": lle})
    )
    print(f"{name}-{seed}: {time.perf_counter() - started:.0f} s", flush=True)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.co_warning", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    collect = sub.add_parser("collect", help="train the runs into CACHE")
    collect.add_argument("cache", type=Path)
    collect.add_argument("--names", nargs="+", choices=tuple(RUNS), default=list(RUNS))
    collect.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    pilot = sub.add_parser("autopilot", help="train the autopilot and GradAlign runs into CACHE; compare")
    pilot.add_argument("cache", type=Path)
    pilot.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    pilot.add_argument("--table", action="store_true", help="only print the comparison of what CACHE holds")
    pilot.add_argument("--no-autoattack", action="store_true", help="skip AutoAttack on the subset")
    scoring = sub.add_parser("score", help="score the candidate rules on CACHE (no training)")
    scoring.add_argument("cache", type=Path)
    scoring.add_argument("--out", type=Path, help="every rule's score as JSON")
    scoring.add_argument(
        "--fit-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="choose on these, check on the rest"
    )
    args = parser.parse_args(argv)
    if args.command == "collect":
        import torch

        torch.set_num_threads(1)
        args.cache.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:  # seed by seed: every preset has its first seeds early
            for name in args.names:
                collect_one(args.cache, name, seed)
        return
    if args.command == "autopilot":
        if not args.table:
            import torch

            torch.set_num_threads(1)
            args.cache.mkdir(parents=True, exist_ok=True)
            for seed in args.seeds:
                for name in AUTOPILOT_RUNS:
                    collect_one(args.cache, name, seed)
            if not args.no_autoattack:
                autoattack_subset(args.cache, args.seeds)
        autopilot_table(args.cache)
        return
    runs = [load_run(p) for p in sorted(args.cache.glob("*.jsonl")) if p.stem.rsplit("-", 1)[0] in RUNS]
    print_runs(runs)
    scores = [score(rule, runs, NON_COLLAPSING) for rule in candidates()]
    meeting = [s for s in scores if meets(s)]
    print(f"\n{len(scores)} candidate rules; {len(meeting)} meet both targets on every seed")
    for s in sorted(meeting, key=lambda s: (-s["hits"], -(s["median_lead"] or 0)))[:25]:
        print("  " + show(s))
    print("\ntrade-off (most FGSM runs warned for each number of false alarms), per signal:")
    for signal in sorted({s["rule"].split()[0] for s in scores}):
        print(f" {signal}")
        for s in frontier([s for s in scores if s["rule"].split()[0] == signal]):
            print("  " + show(s))
    print(
        "\nper signal, the rule without a false alarm that warns the most FGSM runs (then the longest lead):"
    )
    print("| signal | rule | FGSM runs warned before the onset | median lead | range |")
    print("|---|---|---|---|---|")
    for signal in sorted({s["rule"].split()[0] for s in scores}):
        quiet = [s for s in scores if s["rule"].split()[0] == signal and not s["false_alarms_total"]]
        if not quiet:
            fewest = min(s["false_alarms_total"] for s in scores if s["rule"].split()[0] == signal)
            print(f"| {signal} | none without a false alarm (the fewest: {fewest}) | – | – | – |")
            continue
        best = max(quiet, key=lambda s: (s["hits"], s["median_lead"] or 0))
        leads = sorted(x for x in best["leads"] if x is not None)
        span = f"{leads[0]}–{leads[-1]}" if leads else "–"
        print(
            f"| {signal} | {best['rule']} | {best['hits']}/{best['collapsing']} | {best['median_lead']} |"
            f" {span} |"
        )
    print("\nthe shipped rule's family, eval_cos falling by d over 2 evals (100 iterations), and over 1:")
    print(
        "| d | over | FGSM runs warned before the onset | median lead | range |"
        " false alarms (ga4/pgd5/elle/nfgsm) |"
    )
    print("|---|---|---|---|---|---|")
    for k, falls in (
        (2, (0.04, 0.06, 0.07, 0.10, 0.14, 0.16, 0.18, 0.20)),
        (1, (0.05, 0.06, 0.07, 0.08, 0.09)),
    ):
        for d in falls:
            s = score(Rule("eval_cos", "fall", d, k=k), runs, NON_COLLAPSING)
            leads = sorted(x for x in s["leads"] if x is not None)
            alarms = "/".join(str(v) for v in s["false_alarms"].values())
            print(
                f"| {d:g} | {50 * k} its | {s['hits']}/{s['collapsing']} | {s['median_lead']} |"
                f" {f'{leads[0]}–{leads[-1]}' if leads else '–'} | {s['false_alarms_total']} ({alarms}) |"
            )
    fit = [r for r in runs if r.seed in args.fit_seeds]
    held = [r for r in runs if r.seed not in args.fit_seeds]
    if fit and held:
        fitted = [(rule, score(rule, fit, NON_COLLAPSING)) for rule in candidates()]
        chosen = [(rule, s) for rule, s in fitted if meets(s)]
        chosen.sort(key=lambda pair: (-pair[1]["hits"], -(pair[1]["median_lead"] or 0)))
        held_ok = sum(meets(score(rule, held, NON_COLLAPSING)) for rule, _ in chosen)
        print(
            f"\nheld out: {len(chosen)} rules meet both targets on seeds {args.fit_seeds};"
            f" {held_ok} of them also on the other seeds. The 10 with the longest lead there, on the others:"
        )
        for rule, _ in chosen[:10]:
            print("  " + show(score(rule, held, NON_COLLAPSING)))
    if args.out:
        args.out.write_text(json.dumps(scores))
    shipped_table(args.cache)


def shipped(path: Path) -> tuple[int | None, int | None]:
    """The run's onset and where codash's own rule (trainer.warning.COWarning) warns, replayed on its evals
    as the loop feeds them (no warning at or after the co event's eval)."""
    from trainer.warning import COWarning

    events = read_jsonl(path.open())
    co = next((e for e in events if e["type"] == "co"), None)
    warning = COWarning()
    for event in (e for e in events if e["type"] == "eval"):
        fired = co is not None and event["iteration"] > co["confirmed_at"]
        if warning.update(event["iteration"], event, co_fired=fired) is not None:
            break
    return (co and co["onset_iteration"]), warning.fired_at


def shipped_table(cache: Path) -> None:
    """Per preset and seed: the onset, codash's warning and the lead, as docs/reproduction.md shows them."""
    from trainer.warning import RULE

    print(f"\ncodash's rule ({RULE}):")
    print(
        "| preset | CO | warned before the onset | lead per seed (onset − warning) | median lead | range |"
        " warned without CO (false alarms) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, (label, *_rest) in RUNS.items():
        rows = sorted(
            ((int(p.stem.rsplit("-", 1)[1]), *shipped(p)) for p in cache.glob(f"{name}-*.jsonl")),
        )
        if not rows:
            continue
        collapsed = [(seed, onset, warned) for seed, onset, warned in rows if onset is not None]
        leads = [
            onset - warned if warned is not None and warned < onset else None
            for _, onset, warned in collapsed
        ]
        hit = sorted(x for x in leads if x is not None)
        per_seed = ", ".join(
            f"{seed}: {lead}" if lead is not None else f"{seed}: {'late' if warned is not None else 'none'}"
            for (seed, _, warned), lead in zip(collapsed, leads, strict=True)
        )
        alarms = [seed for seed, onset, warned in rows if onset is None and warned is not None]
        print(
            f"| {label} | {len(collapsed)}/{len(rows)} | {len(hit)}/{len(collapsed)} | {per_seed or '–'} |"
            f" {statistics.median(hit) if hit else '–'} | {f'{hit[0]}–{hit[-1]}' if hit else '–'} |"
            f" {len(alarms)}/{len(rows) - len(collapsed)} {alarms or ''} |"
        )


def autoattack_subset(cache: Path, seeds: list[int]) -> None:
    """AutoAttack (standard, L-inf) on the first AUTOATTACK_POINTS test images against the last model of
    each autopilot and GradAlign run, into CACHE/autoattack.json (a result already there is kept)."""
    from trainer.autoattack import autoattack_accuracy
    from trainer.checkpoint import load_model
    from trainer.data import load_dataset

    out = cache / "autoattack.json"
    done = json.loads(out.read_text()) if out.exists() else {}
    data = load_dataset("digits", "cpu")
    x, y = data.test_x[:AUTOATTACK_POINTS], data.test_y[:AUTOATTACK_POINTS]
    for seed in seeds:
        for name in AUTOPILOT_RUNS:
            key = f"{name}-{seed}"
            if key in done or not (cache / "dirs" / key).is_dir():
                continue
            started = time.perf_counter()
            model = load_model(cache / "dirs" / key, "last")
            done[key] = autoattack_accuracy(model, x, y, config_for(name, seed).eps, 10, seed)
            out.write_text(json.dumps(done))
            print(f"AutoAttack {key}: {done[key]:.3f} ({time.perf_counter() - started:.0f} s)", flush=True)


def autopilot_table(cache: Path) -> None:
    """FGSM, the autopilot and GradAlign from the start, over the seeds CACHE holds for all three: CO, the
    switch, final PGD-50-10 (last and early-stopped best, all 297 test images), AutoAttack on the subset,
    and time (training alone, and the whole run)."""
    aa = json.loads((cache / "autoattack.json").read_text()) if (cache / "autoattack.json").exists() else {}
    labels = {"fgsm": RUNS["fgsm"][0], **{name: run[0] for name, run in AUTOPILOT_RUNS.items()}}

    def finished(name: str) -> dict[int, list]:
        out = {}
        for path in cache.glob(f"{name}-*.jsonl"):
            events = read_jsonl(path.open())
            if events and events[-1]["type"] == "final":
                out[int(path.stem.rsplit("-", 1)[1])] = events
        return out

    runs = {name: finished(name) for name in labels}
    seeds = sorted(set.intersection(*(set(r) for r in runs.values())))
    if not seeds:
        print("no seed has all three runs yet")
        return

    def spread(values: list[float], digits: int = 3) -> str:
        if not values:
            return "–"
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        low, high = min(values), max(values)
        return f"{statistics.fmean(values):.{digits}f} ± {sd:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"

    print(
        f"\nseeds {seeds[0]}–{seeds[-1]} ({len(seeds)}); final PGD-50-10 on all 297 test images;"
        " mean ± sd (range)"
    )
    print(
        "| run | CO | switched at (warning) | final PGD-50-10, last | early-stopped best |"
        f" final clean (last) | AutoAttack, last, first {AUTOATTACK_POINTS} images | training s | run s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, label in labels.items():
        rows = [runs[name][seed] for seed in seeds]
        finals = [events[-1] for events in rows]
        co = [next((e["onset_iteration"] for e in ev if e["type"] == "co"), None) for ev in rows]
        switched = [next((e["iteration"] for e in ev if e["type"] == "rescue"), None) for ev in rows]
        at = [x for x in switched if x is not None]
        train_s = [f["iterations"] * 64 / f["train_images_per_s"] for f in finals]
        attacked = [aa[f"{name}-{seed}"] for seed in seeds if f"{name}-{seed}" in aa]
        switch = (
            f"{len(at)}/{len(rows)}, median {statistics.median(at):g} ({min(at)}–{max(at)})" if at else "–"
        )
        last, best = ([f[which]["pgd_acc"] for f in finals] for which in ("last", "best"))
        print(
            f"| {label} | {sum(x is not None for x in co)}/{len(rows)}"
            f"{' (onsets ' + ', '.join(str(x) for x in co if x is not None) + ')' if any(co) else ''} |"
            f" {switch} | {spread(last)} | {spread(best)} |"
            f" {statistics.fmean(f['last']['clean_acc'] for f in finals):.3f} |"
            f" {spread(attacked) + f' (n={len(attacked)})' if attacked else '–'} |"
            f" {statistics.median(train_s):.1f} | {statistics.median(f['wall_s'] for f in finals):.0f} |"
        )


def print_runs(runs: list[Run]) -> None:
    """The runs in the cache: CO and onset per preset."""
    for name in RUNS:
        mine = sorted((r for r in runs if r.name == name), key=lambda r: r.seed)
        if mine:
            onsets = ", ".join(f"{r.seed}: {r.onset if r.onset is not None else '-'}" for r in mine)
            collapsed = sum(r.onset is not None for r in mine)
            print(f"{name}: CO {collapsed}/{len(mine)} (onset per seed {onsets})")


if __name__ == "__main__":
    main()
