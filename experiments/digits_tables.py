"""Measure the digits tables of README.md and docs/reproduction.md: each method over seeds, in one process.

    python -m experiments.digits_tables RUNS_DIR [--names fgsm ga4 ...] [--seeds 0 1 2 3 4]
    python -m experiments.digits_tables RUNS_DIR --table          # only print the table rows from RUNS_DIR

Each run is the digits preset setting (1-layer CNN, 16 filters, eps 0.175, 690 iterations) with the method's
fields, written as RUNS_DIR/NAME-SEED.jsonl (experiments/reproduction_figure.py draws from the same files); a
file that already holds a final event is kept, so an interrupted measurement resumes. One thread: run one
of these at a time on a shared machine. The final evaluation (PGD-50-10 on the 297 test images, and
AutoAttack where the row has it) runs only for the rows marked `final`: the other methods' training is
unchanged by this revision, so their final figures stand (the printed `last eval` clean accuracy matching
the old table's is the check).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from trainer.config import make_config
from trainer.events import JsonlSink, read_jsonl
from trainer.loop import train
from trainer.presets import DIGITS_CNN, DIGITS_ELLE, DIGITS_ELLE_A, PRESETS

# name -> (label, fields, seeds, final evaluation: None (skip), "pgd" or "pgd+autoattack")
RUNS: dict[str, tuple[str, dict, tuple[int, ...], str | None]] = {
    "fgsm": ("FGSM", {"method": "fgsm"}, (0, 1, 2, 3, 4), None),
    "fgsmrs": ("FGSM-RS (α = 1.25ε)", {"method": "fgsm_rs"}, (0, 1, 2, 3, 4), None),
    "pgd5": ("PGD-5 (α = ε/2)", {"method": "pgd", "pgd_steps": 5, "pgd_alpha": 0.5}, (0, 1, 2, 3, 4), None),
    "ga2": ("FGSM + GradAlign λ = 2", {"method": "fgsm", "grad_align_lambda": 2.0}, (0, 1, 2, 3, 4), "pgd"),
    "ga4": (
        "FGSM + GradAlign λ = 4",
        {"method": "fgsm", "grad_align_lambda": 4.0},
        (0, 1, 2, 3, 4),
        "pgd+autoattack",
    ),
    "elle": (
        f"FGSM + ELLE λ = {PRESETS[DIGITS_ELLE]['elle_lambda']:g}",
        {"method": "fgsm", "elle_lambda": PRESETS[DIGITS_ELLE]["elle_lambda"]},
        (0, 1, 2, 3, 4),
        "pgd+autoattack",
    ),
    "ellea": (
        f"FGSM + ELLE-A λmax = {PRESETS[DIGITS_ELLE_A]['elle_lambda']:g}",
        {key: PRESETS[DIGITS_ELLE_A][key] for key in ("method", "elle_lambda", "elle_adaptive")},
        (0, 1, 2, 3, 4),
        "pgd+autoattack",
    ),
    "nfgsm": ("N-FGSM (k = 2, α = ε)", {"method": "nfgsm"}, (0, 1, 2, 3, 4), None),
    "free4": ("Free AT (m = 4)", {"method": "free"}, (0, 1, 2, 3, 4), None),
    "pgdcorner": (
        "PGD-5-corner (α = ε/2)",
        {"method": "pgd_corner", "pgd_steps": 5, "pgd_alpha": 0.5},
        (0, 1, 2),
        None,
    ),
    "randcorner": ("Random-corner", {"method": "random_corner"}, (0, 1, 2, 3, 4), None),
}


# --lean: a shorter final evaluation (PGD-20, one restart, no AutoAttack) for a machine without time for more
LEAN_FINAL = {"final_pgd_steps": 20, "final_pgd_restarts": 1, "autoattack": False}


def run(runs_dir: Path, name: str, seed: int, extra: dict | None = None) -> Path:
    _, fields, _, final = RUNS[name]
    path = runs_dir / f"{name}-{seed}.jsonl"
    if path.exists() and any(event["type"] == "final" for event in read_jsonl(path.open())):
        return path
    config = make_config(
        {
            **DIGITS_CNN,
            **fields,
            "seed": seed,
            "device": "cpu",
            "final_eval_points": 297 if final else 0,
            "autoattack": final == "pgd+autoattack",
            **(extra or {}),
        }
    )
    with path.open("w") as out:
        train(config, JsonlSink(out))
    return path


def summary(paths: list[Path]) -> dict:
    """Means over seeds of what the tables show, and the CO onsets per seed (eval and dense probe)."""
    rows = []
    for path in paths:
        events = read_jsonl(path.open())
        evals = [e for e in events if e["type"] == "eval"]
        co = next((e for e in events if e["type"] == "co"), None)
        final = next(e for e in events if e["type"] == "final")
        rows.append(
            {
                "seed": int(path.stem.rsplit("-", 1)[1]),
                "co": None if co is None else co["iteration"],
                "onset": None if co is None else co.get("onset_iteration"),
                "peak_pgd": max(e["pgd_acc"] for e in evals),
                "last": evals[-1],
                "final": final,
                "step_ms": 1000 * 64 / final["train_images_per_s"],
            }
        )

    def mean(values):
        values = [v for v in values if v is not None]
        return statistics.fmean(values) if values else None

    return {
        "seeds": [row["seed"] for row in rows],
        "co": [(row["seed"], row["co"], row["onset"]) for row in rows if row["co"] is not None],
        "peak_pgd": mean(row["peak_pgd"] for row in rows),
        **{f"last_{k}": mean(row["last"][k] for row in rows) for k in ("clean_acc", "fgsm_acc", "pgd_acc")},
        "last_cos": mean(row["last"]["cos_grad_random"] for row in rows),
        "final_clean": mean(row["final"]["last"]["clean_acc"] for row in rows),
        **{
            f"final_{which}_{k}": mean(row["final"][which][k] for row in rows)
            for which in ("last", "best")
            for k in ("pgd_acc", "autoattack_acc")
        },
        "step_ms": statistics.median(row["step_ms"] for row in rows),
    }


def table(runs_dir: Path) -> dict[str, dict]:
    out = {}
    for name, (label, *_rest) in RUNS.items():
        paths = sorted(runs_dir.glob(f"{name}-*.jsonl"))
        paths = [p for p in paths if any(e["type"] == "final" for e in read_jsonl(p.open()))]
        if not paths:
            continue
        s = summary(paths)
        out[name] = s

        def f(v, digits=2):
            return "—" if v is None else f"{v:.{digits}f}"

        co = ", ".join(f"{it} ({onset})" for _, it, onset in s["co"])
        print(
            f"| {label} | {min(s['seeds'])}–{max(s['seeds'])} | {len(s['co'])}/{len(s['seeds'])}"
            f" {co} | {f(s['peak_pgd'])} | {f(s['last_clean_acc'])} / {f(s['last_fgsm_acc'])} /"
            f" {f(s['last_pgd_acc'])} | {f(s['last_cos'])} | {f(s['final_clean'], 3)} |"
            f" {f(s['final_last_pgd_acc'], 3)} / {f(s['final_best_pgd_acc'], 3)} |"
            f" {f(s['final_last_autoattack_acc'], 3)} / {f(s['final_best_autoattack_acc'], 3)} |"
            f" {s['step_ms']:.1f} ms |"
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.digits_tables", description=__doc__.splitlines()[0]
    )
    parser.add_argument("runs_dir", type=Path)
    parser.add_argument("--names", nargs="+", choices=tuple(RUNS), default=list(RUNS))
    parser.add_argument("--seeds", type=int, nargs="+", help="default: each row's seeds")
    parser.add_argument("--table", action="store_true", help="only print the rows of what RUNS_DIR holds")
    parser.add_argument("--lean", action="store_true", help="final evaluation PGD-20-1, no AutoAttack")
    args = parser.parse_args(argv)
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    if not args.table:
        torch.set_num_threads(1)
        for seed in range(max(max(RUNS[name][2]) for name in args.names) + 1):
            for name in args.names:  # seed by seed: every row has its first seeds early
                if seed in (args.seeds or RUNS[name][2]):
                    print(f"{name}-{seed}", flush=True)
                    run(args.runs_dir, name, seed, LEAN_FINAL if args.lean else None)
    summaries = table(args.runs_dir)
    (args.runs_dir / "summary.json").write_text(json.dumps(summaries))


if __name__ == "__main__":
    main()
