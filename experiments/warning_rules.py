"""Scoring candidate CO-warning rules offline over the runs experiments/co_warning.py collected: each run's
live signals, a rule over one of them, and its lead before the onset and false alarms."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import product
from pathlib import Path

from trainer.events import read_jsonl

Series = list[tuple[int, float]]


@dataclass
class Run:
    name: str
    seed: int
    onset: int | None  # the co event's onset_iteration (None: no CO)
    confirmed: int | None  # the co event's iteration of emission (its confirming eval)
    signals: dict[str, Series]


def load_run(path: Path) -> Run:
    events = read_jsonl(path.open())
    co = next((e for e in events if e["type"] == "co"), None)
    signals: dict[str, Series] = {}
    for kind in ("eval", "probe"):
        rows = [e for e in events if e["type"] == kind]
        signals[f"{kind}_cos"] = [(e["iteration"], e["cos_grad_random"]) for e in rows]
        signals[f"{kind}_cos_fgsm_pgd"] = [(e["iteration"], e["cos_fgsm_pgd"]) for e in rows]
        signals[f"{kind}_gap"] = [(e["iteration"], e["fgsm_acc"] - e["pgd_acc"]) for e in rows]
    eval_every = next(e for e in events if e["type"] == "config")["config"]["eval_every"]
    side = path.with_name(path.name.replace(".jsonl", ".lle.json"))
    if side.exists():
        lle = json.loads(side.read_text())["rows"]
        signals["eval_lle"] = [(int(r[0]), r[1]) for r in lle if r[0] % eval_every == 0]
        signals["probe_lle"] = [(int(r[0]), r[2]) for r in lle if r[0] % 20 == 0]
    name, seed = path.stem.rsplit("-", 1)
    signals = {k: [(it, v) for it, v in s if v is not None] for k, s in signals.items()}
    return Run(name, int(seed), co and co["onset_iteration"], co and co["confirmed_at"], signals)


@dataclass(frozen=True)
class Rule:
    """A candidate: on `signal`, smoothed over the last `smooth` points, fires at the first point where
    `test(history)` holds on `persist` points in a row, not before iteration `after`."""

    signal: str
    kind: str  # "ratio": value < f x running max; "drop": running max - value >= d; "fall": by d over k
    # points; "fallratio": value < f x the value k points back;
    # "above": value >= t; "rise": value >= f x running min (the LLE and the gap grow as CO comes)
    threshold: float
    k: int = 1
    smooth: int = 1
    persist: int = 1
    after: int = 0

    def label(self) -> str:
        extra = "".join(
            [
                f" over {self.k} pts" if self.kind in ("fall", "fallratio") else "",
                f", mean of {self.smooth}" if self.smooth > 1 else "",
                f", {self.persist} in a row" if self.persist > 1 else "",
                f", from it {self.after}" if self.after else "",
            ]
        )
        return f"{self.signal} {self.kind} {self.threshold:g}{extra}"

    def fires(self, series: Series, before: int | None) -> int | None:
        values: list[float] = []
        best_high, best_low, streak = -float("inf"), float("inf"), 0
        for i, (iteration, _raw) in enumerate(series):
            if before is not None and iteration >= before:
                return None  # the co event came first: no warning after it
            window = [v for _, v in series[max(0, i - self.smooth + 1) : i + 1]]
            value = statistics.fmean(window)
            values.append(value)
            best_high, best_low = max(best_high, value), min(best_low, value)
            if self.kind == "ratio":
                hit = value < self.threshold * best_high
            elif self.kind == "drop":
                hit = best_high - value >= self.threshold
            elif self.kind == "fall":
                hit = len(values) > self.k and values[-1 - self.k] - value >= self.threshold
            elif self.kind == "fallratio":
                hit = len(values) > self.k and value < self.threshold * values[-1 - self.k]
            elif self.kind == "above":
                hit = value >= self.threshold
            else:  # rise
                hit = len(values) > 2 and value >= self.threshold * best_low
            streak = streak + 1 if hit and iteration >= self.after else 0
            if streak >= self.persist:
                return iteration
        return None


def candidates() -> Iterable[Rule]:
    """The grid of candidate rules: each signal with the families that fit its direction."""
    for kind in ("eval", "probe"):
        smooths = (1,) if kind == "eval" else (1, 3, 5)
        falls = (1, 2) if kind == "eval" else (3, 5)
        for signal in (f"{kind}_cos", f"{kind}_cos_fgsm_pgd"):
            for f, smooth, persist in product([x / 100 for x in range(60, 98, 2)], smooths, (1, 2)):
                yield Rule(signal, "ratio", f, smooth=smooth, persist=persist)
                for k in falls:
                    yield Rule(signal, "fallratio", f, k=k, smooth=smooth, persist=persist)
            for d, smooth, persist in product([x / 100 for x in range(4, 42, 2)], smooths, (1, 2)):
                yield Rule(signal, "drop", d, smooth=smooth, persist=persist)
                for k in falls:
                    yield Rule(signal, "fall", d, k=k, smooth=smooth, persist=persist)
        for t, smooth, persist in product([x / 100 for x in range(4, 42, 2)], smooths, (1, 2)):
            yield Rule(f"{kind}_gap", "above", t, smooth=smooth, persist=persist)
        for f, smooth, persist in product((1.5, 2, 3, 4, 6, 8, 12, 16), smooths, (1, 2)):
            yield Rule(f"{kind}_lle", "rise", f, smooth=smooth, persist=persist)


def score(rule: Rule, runs: list[Run], non_collapsing: tuple[str, ...]) -> dict:
    """Hits, leads and false alarms of one rule over the cached runs."""
    leads: dict[str, list[int | None]] = {}
    alarms: dict[str, int] = {}
    for run in runs:
        series = run.signals.get(rule.signal)
        if not series:
            continue
        warned = rule.fires(series, run.confirmed)
        if run.onset is not None:  # a collapse: the lead, or None for a miss (none, or not before onset)
            lead = run.onset - warned if warned is not None and warned < run.onset else None
            leads.setdefault(run.name, []).append(lead)
        else:
            alarms[run.name] = alarms.get(run.name, 0) + (warned is not None)
    fgsm = leads.get("fgsm", [])
    hit = sorted(x for x in fgsm if x is not None)
    return {
        "rule": rule.label(),
        "hits": len(hit),
        "collapsing": len(fgsm),
        "median_lead": statistics.median(hit) if hit else None,
        "leads": fgsm,
        "leads_other": {k: v for k, v in leads.items() if k != "fgsm"},
        "false_alarms": {name: alarms.get(name, 0) for name in non_collapsing},
        "false_alarms_total": sum(alarms.get(name, 0) for name in non_collapsing),
        "alarms_other": {k: v for k, v in alarms.items() if k not in non_collapsing},
    }


def frontier(scores: list[dict]) -> list[dict]:
    """The trade-off curve: for each number of false alarms, the rule that warns the most FGSM runs (then
    with the longest median lead) among those with at most that many."""
    out = []
    for allowed in sorted({s["false_alarms_total"] for s in scores}):
        fitting = [s for s in scores if s["false_alarms_total"] <= allowed]
        best = max(fitting, key=lambda s: (s["hits"], s["median_lead"] or 0))
        if not out or (best["hits"], best["median_lead"]) != (out[-1]["hits"], out[-1]["median_lead"]):
            out.append({**best, "allowed": allowed})
    return out


def show(s: dict) -> str:
    leads = [x for x in s["leads"] if x is not None]
    spread = f"{min(leads)}–{max(leads)}" if leads else "–"
    alarms = " ".join(f"{k} {v}" for k, v in s["false_alarms"].items())
    return (
        f"{s['rule']}: warned {s['hits']}/{s['collapsing']}, median lead {s['median_lead']}, range {spread};"
        f" false alarms {s['false_alarms_total']} ({alarms})"
    )


def meets(s: dict) -> bool:
    """The targets: >= 90 % of the FGSM runs warned before their onset, median lead >= 50 iterations, no
    false alarm on the non-collapsing presets."""
    return (
        s["collapsing"] > 0
        and s["hits"] >= 0.9 * s["collapsing"]
        and (s["median_lead"] or 0) >= 50
        and not s["false_alarms_total"]
    )
