"""The speed benchmark's harness: it runs, its JSON has every figure, its plain loop is the same algorithm.

No timing is asserted here (performance targets live in bench/, never in the tests): only that both sides
produce finite positive rates, and that the plain loop computes what codash computes.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY

from bench import __main__ as bench_main
from bench import plain_loop, probe_cost
from bench.time_to_co import measure
from experiments import digits_lambda, onset_check
from trainer.co import Row
from trainer.config import make_config
from trainer.gradalign import grad_align_reg
from trainer.loop import ADVERSARY, train
from trainer.models import build_model
from trainer.presets import PRESETS

pytestmark = pytest.mark.train  # trains models beyond a few steps


def positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_bench_quick_run_writes_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    argv = ["--device", "cpu", "--quick", "--models", "cnn", "--methods", "fgsm", "fgsm+gradalign"]
    assert bench_main.main([*argv, "--no-co", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["machine"]["device"] == "cpu"
    rows = {row["method"]: row for row in results["throughput"]}
    assert set(rows) == {"fgsm", "fgsm+gradalign"}
    for row in rows.values():
        assert row["workload"] == "cnn/digits"
        for who in ("codash", "plain"):
            assert positive(row[who]["images_per_s"]) and positive(row[who]["ms_per_iter"])
        assert positive(row["ratio"])
    ratios = results["gradalign_over_fgsm"]["cnn/digits"]
    assert positive(ratios["codash"]) and positive(ratios["plain"])
    overhead = results["eval_overhead"]["cnn/digits"]
    assert 0 < overhead["percent_of_wall"] < 100 and overhead["eval_every"] == 50
    assert results["targets"]["codash_over_plain"]["status"] in ("met", "missed")
    assert results["targets"]["cuda_resnet_fgsm_epoch_s"]["status"] == "open"


def test_time_to_co_measures_a_run_through_redis_and_a_worker(r, worker_pool):
    worker_pool.spawn("bench-test")
    result = measure(r, TINY, timeout=120)
    assert positive(result["start_s"])
    # TINY may or may not overfit in 60 steps: either the co event or the end of the run stops the clock.
    if result["co_s"] is None:
        assert positive(result["finished_s"])
    else:
        assert result["co_s"] >= result["start_s"] and result["co_iteration"] > 0


def twin_models(name: str, in_channels: int, image_size: int):
    """codash's model and the plain loop's copy of it, with the same weights."""
    torch.manual_seed(0)
    ours = build_model(name, in_channels=in_channels, image_size=image_size, n_classes=10, n_filters=16)
    theirs = plain_loop.build(name, in_channels, image_size, 10, n_filters=16)
    theirs.load_state_dict(ours.state_dict())  # strict: the architectures must match name for name
    return ours.eval(), theirs.eval()


@pytest.mark.parametrize(
    ("method", "fields"),
    [
        ("fgsm", {}),
        ("fgsm_rs", {}),
        ("pgd", {"pgd_steps": 3}),
    ],
)
def test_plain_loop_attacks_match_codash(method, fields):
    ours, theirs = twin_models("cnn", 1, 16)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(32, 1, 16, 16, generator=gen), torch.randint(0, 10, (32,), generator=gen)
    x[:, :, :3] = 0.0  # where the [0, 1] box binds
    cfg = make_config({"method": method, "eps": 0.175, **fields})
    delta, grad = ADVERSARY[method](ours, x, y, cfg, torch.Generator().manual_seed(7))
    plain_delta, plain_grad = plain_loop.adversary(
        method,
        theirs,
        x,
        y,
        cfg.eps,
        cfg.alpha * cfg.eps,
        cfg.pgd_steps,
        cfg.pgd_alpha * cfg.eps,
        torch.Generator().manual_seed(7),
    )
    assert delta.abs().max() > 0
    assert torch.equal(delta, plain_delta)
    assert (grad is None) == (plain_grad is None)
    if grad is not None:
        assert torch.equal(grad, plain_grad)


def test_plain_loop_grad_align_matches_codash():
    ours, theirs = twin_models("cnn", 1, 16)
    gen = torch.Generator().manual_seed(2)
    x, y = torch.rand(32, 1, 16, 16, generator=gen), torch.randint(0, 10, (32,), generator=gen)
    grad_x = plain_loop.grad_at(theirs, x, y)
    reg = grad_align_reg(ours, x, y, 0.175, grad_x, torch.Generator().manual_seed(3))
    plain_reg = plain_loop.grad_align(theirs, x, y, 0.175, grad_x, torch.Generator().manual_seed(3))
    assert reg.item() == pytest.approx(plain_reg.item(), abs=1e-6)
    reg.backward()
    plain_reg.backward()
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name


def test_plain_resnet_is_codash_resnet():
    ours, theirs = twin_models("preact_resnet18", 3, 32)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)


def codash_bench(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    command = [sys.executable, "-m", "codash", "bench", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_codash_bench_runs_the_checkouts_benchmark():
    result = codash_bench(ROOT, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: python -m bench" in result.stdout and "--quick" in result.stdout


def test_codash_bench_outside_a_checkout_says_it_needs_one(tmp_path):
    """An installed codash has no bench/: the packages alone (here as links) must say so in one line."""
    for package in ("codash", "jobs", "trainer", "app"):
        (tmp_path / package).symlink_to(ROOT / package)
    result = codash_bench(tmp_path, "--quick")
    assert result.returncode == 2
    assert result.stderr.startswith("codash: error: codash bench needs a codash checkout")


def _lambda_run(co=None, peak=0.3, last=0.25, clean=0.95) -> dict:
    return {"co": co, "peak_pgd": peak, "last_pgd": last, "last_clean": clean}


@pytest.mark.parametrize(
    ("run", "kept"),
    [
        (_lambda_run(), True),
        (_lambda_run(co=300), False),  # the detector's verdict
        (_lambda_run(last=0.1), False),  # faded below half its peak without the CO rule's FGSM-PGD gap
        (_lambda_run(peak=0.0, last=0.0), False),  # never robust: FGSM from eps 0.2 on, no CO flagged
        (_lambda_run(peak=0.06, last=0.06, clean=0.06), False),  # a constant classifier
        (_lambda_run(peak=0.09, last=0.06, clean=0.8), True),
    ],
)
def test_digits_lambda_keeps_only_robustness_of_a_working_classifier(run, kept):
    assert digits_lambda.kept_robustness(run) is kept


def test_digits_lambda_covering_fit_is_at_or_above_every_measured_lambda():
    points = [(0.15, 256), (0.175, 1024), (0.2, 1024), (0.25, 1024), (0.3, 4096)]
    line = digits_lambda.fit(points)
    above = [line["a_covering"] + line["b"] * eps - math.log10(lam) for eps, lam in points]
    assert min(above) == pytest.approx(0, abs=1e-12)  # at or above every point, touching one
    assert line["b"] > 0 and digits_lambda.fit(points[:1]) is None


def test_onset_check_collapse_width_tells_a_step_from_a_slow_drift():
    """80 % -> 20 % of the peak: a step is 14 iterations wide after the +-10 smoothing, a 100-iteration
    linear decline 60; a series that never falls that low has no width."""
    step = [[it, 0.3 if it < 117 else 0.02] for it in range(1, 301)]
    assert onset_check.collapse_width(step, onset=117) == 14
    drift = [[it, 0.3 * min(1.0, max(0.0, (200 - it) / 100))] for it in range(1, 301)]
    assert onset_check.collapse_width(drift, onset=150) == 60
    halfway = [[it, 0.3 if it < 117 else 0.15] for it in range(1, 301)]
    assert onset_check.collapse_width(halfway, onset=117) is None


def test_onset_check_settings_are_runconfig_values():
    assert onset_check.setting("n_filters=64") == ("n_filters", 64)
    assert onset_check.setting("eps=0.19") == ("eps", 0.19)
    assert onset_check.setting("optimizer=sgd") == ("optimizer", "sgd")


def test_onset_check_image_sampling_spread_is_nil_for_a_step_and_wide_for_a_drift(monkeypatch):
    """Per-image PGD results: when every robust image falls at one iteration, every resample and subset
    places the onset there; when each falls at its own time (spread over ~100 iterations), a 32-image
    subset rarely lands within the tolerance of the 256-image reference, nor do two disjoint halves."""
    monkeypatch.setattr(onset_check, "DRAWS", 60)

    def rows(falls) -> list[Row]:  # 64 of 256 images robust, image i until iteration falls[i]
        out = []
        for it in range(101, 301):
            robust = [i < 64 and it < falls[i] for i in range(256)]
            out.append(Row(it, sum(robust) / 256, 0.8, robust))
        return out

    spread = onset_check.sampling_spread(rows([217] * 256), confirmed_at=300, seed=0)
    assert spread["bootstrap_sd"] == 0 and spread["bootstrap_range"] == [217, 217]
    agreements = [*spread["subsets"].values(), spread["halves"]]
    assert all(s["within_tolerance"] == 1 and s["median_distance"] == 0 for s in agreements)
    falls = (200 + 60 * torch.randn(256, generator=torch.Generator().manual_seed(0))).tolist()
    drift = onset_check.sampling_spread(rows(falls), confirmed_at=300, seed=0)
    assert drift["bootstrap_sd"] > onset_check.TOLERANCE
    assert drift["subsets"][32]["within_tolerance"] < 0.5 < drift["subsets"][32]["median_distance"]
    assert sorted(drift["subsets"]) == [32, 64, 128] and drift["halves"]["size"] == 128
    assert drift["halves"]["within_tolerance"] < 0.5


def test_onset_check_evaluates_every_iteration_as_the_live_eval_does():
    """The reference series is the live eval's numbers at every iteration: at the eval iterations it equals
    the run's eval events (same weights, attacks, seed)."""
    overrides = {"eval_every": 10, "eval_points": 64, "probe_points": 16, "probe_every": 5}
    result = onset_check.check_seed(0, 20, onset_check.DEFAULT_PRESET, overrides)
    assert result["co"] is None and [row[0] for row in result["eval_series"]] == list(range(1, 21))
    events = []
    train(make_config(result["config"]), events.append)
    evals = {e["iteration"]: (e["pgd_acc"], e["fgsm_acc"]) for e in events if e["type"] == "eval"}
    assert {it: tuple(result["eval_series"][it - 1][1:]) for it in evals} == evals


def test_probe_cost_times_a_cifar_preset_on_cifar_shaped_data(tmp_path):
    """--synthetic: a CIFAR-10 preset's probe overhead without CIFAR-10 on disk (the GPU check's case)."""
    preset = next(name for name in PRESETS if name.startswith("CIFAR-10 single-layer CNN"))
    out = tmp_path / "cost.json"
    argv = ["--iters", "3", "--rounds", "1", "--every", "1", "--points", "8", "--steps", "2"]
    probe_cost.main([*argv, "--presets", preset, "--synthetic", "--out", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert [(r["probe_points"], r["probe_every"]) for r in rows] == [(0, 1), (8, 1)]
    # Over 3 iterations a time per iteration is the difference of two noisy timings: its sign means nothing.
    assert all(r["preset"] == preset and math.isfinite(r["ms_per_iteration"]) for r in rows)
    assert rows[0]["overhead"] == 0 and math.isfinite(rows[1]["overhead"])
