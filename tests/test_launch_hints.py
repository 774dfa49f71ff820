"""The launch form's λ(ε) hints and the time estimates of the Launch and Sweep pages: what they say, and
that an estimate counts everything a run does. AppTest against a real Redis, as test_app_pages.
"""

from __future__ import annotations

import re

import pytest
from conftest import config_event, final_event, store_run
from test_app_pages import app
from test_app_ux import RESNET_PRESET

from app import estimate
from jobs import api
from jobs.limits import cost
from trainer.config import lambda_of_eps, make_config
from trainer.presets import DIGITS_ELLE, DIGITS_GRAD_ALIGN, PRESETS


def _captions(at) -> list[str]:
    return [caption.value for caption in at.caption]


# --- λ(ε) hints ---


def test_an_out_of_range_lambda_says_where_its_rule_holds_without_printing_it(r):
    at = app().run()  # digits
    at.number_input(key="launch.eps").set_value(5.0).run()  # 4 · 2^97 by the fit
    grad_align, elle = [c for c in _captions(at) if "out of range" in c]
    assert grad_align.startswith(
        "Digits λ(ε) fit at ε=5: out of range (λ ≤ 100); it is measured for ε = 0.15–0.25."
    )
    assert elle.startswith(
        "Digits λ(ε) fit at ε=5: out of range (λ ≤ 100,000); it is measured for ε = 0.15–0.3."
    )
    assert not [c for c in _captions(at) if re.search(r"\d{6}|\d,\d{3},\d{3}", c)]  # no huge numbers
    assert at.button(key="launch.paper_lambda").disabled


def test_an_out_of_range_lambda_names_the_rule_of_the_forms_data_set(r):
    at = app().run()
    at.number_input(key="launch.eps").set_value(0.4).run()  # GradAlign's digits fit: 128, above 100
    [note] = [c for c in _captions(at) if "out of range" in c]
    assert note.startswith(
        "Digits λ(ε) fit at ε=0.4: out of range (λ ≤ 100); it is measured for ε = 0.15–0.25"
    )
    assert "CIFAR-10" not in note and "Paper" not in note
    elle = lambda_of_eps("elle_lambda", "digits", 0.4)
    assert f"Digits λ(ε) fit at ε=0.4: **{elle:g}** (extrapolated: measured for ε = 0.15–0.3)" in _captions(
        at
    )


def test_the_elle_hint_points_to_the_elle_preset(r):
    at = app().run()
    at.number_input(key="launch.eps").set_value(0.9).run()  # both fits out of range
    notes = [c for c in _captions(at) if "out of range" in c]
    assert len(notes) == 2
    grad_align, elle = notes  # in the form's order
    assert f"“{DIGITS_GRAD_ALIGN}” uses λ={PRESETS[DIGITS_GRAD_ALIGN]['grad_align_lambda']:g}" in grad_align
    assert f"“{DIGITS_ELLE}” uses λ={PRESETS[DIGITS_ELLE]['elle_lambda']:g}" in elle
    assert DIGITS_GRAD_ALIGN not in elle and "(λ ≤ 100,000)" in elle
    assert at.button(key="launch.elle_lambda_rule").disabled


def test_switching_gradalign_on_takes_the_lambda_shown_beside_it(r):
    at = app().run()  # FGSM at ε = 0.175: GradAlign off, λ a placeholder
    at.toggle(key="launch.grad_align").set_value(True).run()
    lam = lambda_of_eps("grad_align_lambda", "digits", 0.175)
    assert at.number_input(key="launch.grad_align_lambda").value == lam
    at = app().run()
    at.number_input(key="launch.eps").set_value(0.4).run()  # out of range: the placeholder stays
    at.toggle(key="launch.grad_align").set_value(True).run()
    assert at.number_input(key="launch.grad_align_lambda").value == 1


def test_switching_gradalign_off_and_on_keeps_a_typed_lambda(r):
    at = app().run()
    at.selectbox(key="launch.preset").set_value(DIGITS_GRAD_ALIGN).run()
    at.number_input(key="launch.grad_align_lambda").set_value(7.0).run()
    at.toggle(key="launch.grad_align").set_value(False).run()
    at.toggle(key="launch.grad_align").set_value(True).run()
    assert at.number_input(key="launch.grad_align_lambda").value == 7


# --- time estimates ---


def _measured(r, **config) -> list:
    """The finished runs after one of `config` that took 12 s on the CPU (conftest's final event)."""
    store_run(r, [config_event(total=100, max_iters=100, **config), final_event(None)])
    return api.list_runs(r)


def test_an_estimate_counts_the_evaluations_probes_and_final_attack(r):
    finished = _measured(r)
    base = make_config({})

    def seconds(**changes) -> float:
        return estimate.expected(make_config(changes), finished, gpu=False).seconds

    assert seconds(eval_every=1) > 10 * seconds()  # 690 evaluations instead of 14, each ~7,000 image passes
    assert seconds(eval_points=16) < seconds() < seconds(eval_points=10_000)
    assert seconds(eval_points=10_000) == seconds(eval_points=1500)  # all 297 test and 1,500 train images
    assert seconds(probe_points=0) < seconds() < seconds(probe_every=1)
    assert seconds(final_eval_points=0) < seconds() < seconds(final_pgd_restarts=20)
    work = cost(base)
    assert work.probes == 690 // 20 * 32 * (10 + 4)
    assert work.final == 2 * (297 * 50 * 10 + 297)  # digits has 297 test images, not final_eval_points' 1,000
    assert work.evals == 14 * (256 + 256) * (10 + 4)


def test_an_estimate_says_whether_it_was_measured_or_is_a_guess(r):
    guess = estimate.expected(make_config({}), [], gpu=False)
    assert not guess.measured and guess.basis.startswith("a guess: no finished run like it yet")
    measured = estimate.expected(make_config({}), _measured(r), gpu=False)
    assert measured.measured and measured.basis == "measured on 1 finished run like it"
    at = app().run()
    at.selectbox(key="launch.preset").set_value(RESNET_PRESET).run()
    [slow] = [w.value for w in at.warning if "No GPU worker is alive" in w.value]
    assert "a guess: no finished run like it yet, so from the CPU figures of docs/benchmarks.md" in slow


def test_the_launch_warning_counts_evaluations(r):
    finished = _measured(r)
    at = app().run()
    assert not [w for w in at.warning if "No GPU worker is alive" in w.value]  # the preset: seconds
    for field, value in {"epochs": 200, "eval_every": 1, "eval_pgd_steps": 50}.items():
        at.number_input(key="launch." + field).set_value(value).run()
    config = make_config({"epochs": 200, "eval_every": 1, "eval_pgd_steps": 50})
    hours = estimate.format_hours(estimate.expected(config, finished, gpu=False).seconds)
    [slow] = [w.value for w in at.warning if "No GPU worker is alive" in w.value]
    assert f"about {hours}**" in slow and "measured on 1 finished run like it" in slow


def test_a_sweep_estimate_says_which_runs_are_measured_guessed_or_left_out(r):
    finished = _measured(r)
    configs = [make_config({"seed": seed}) for seed in range(3)] + [make_config({"method": "pgd"})]
    text = estimate.sweep_expected(configs, finished, gpu=False, workers=1)
    total = sum(estimate.expected(config, finished, gpu=False).seconds for config in configs)
    assert text == (
        f"About {estimate.format_hours(total)} on 1 worker: 3 runs measured on finished runs like them; "
        "1 run of a kind not measured yet guessed from the CPU figures of docs/benchmarks.md."
    )
    lenet = make_config({"model": "lenet"})  # no CPU figure to guess from
    text = estimate.sweep_expected([*configs, lenet], finished, gpu=False, workers=2)
    assert text.startswith(f"About {estimate.format_hours(total / 2)} on 2 workers for 4 of 5 runs: ")
    assert text.endswith("; 1 run of a kind not measured yet not counted (no figure to guess from).")
    assert estimate.sweep_expected(configs, finished, gpu=True, workers=1).startswith("No finished run")


def test_the_sweep_page_counts_its_unmeasured_runs_in_words(r):
    _measured(r)
    at = app()
    at.switch_page("views/sweep.py").run()
    at.multiselect(key="sweep.methods").set_value(["FGSM", "PGD-10"])
    at.text_input(key="sweep.eps").set_value("0.1, 0.2").run()
    [caption] = [c for c in _captions(at) if c.startswith("4 runs")]
    assert "2 runs measured on finished runs like them; 2 runs of a kind not measured yet guessed" in caption


def test_an_estimate_counts_elle_and_the_autopilot_at_their_passes(r):
    """An ELLE run's step is 5 image passes per example to FGSM's 2 (trainer.methods), and an autopilot run
    is counted at GradAlign's for the whole run (its worst case); neither is measured on FGSM runs."""
    fgsm = make_config({"probe_points": 0})
    elle = make_config({"probe_points": 0, "elle_lambda": 1024.0})
    autopilot = make_config({"probe_points": 0, "rescue": "auto"})
    guess = {config: estimate.expected(config, [], gpu=False).seconds for config in (fgsm, elle, autopilot)}
    extra = 690 * 64 * 3  # 690 steps of 64 examples, 3 more passes each
    per_pass = guess[fgsm] / cost(fgsm, "cpu").work
    assert cost(elle, "cpu").train == 2.5 * cost(fgsm, "cpu").train
    assert guess[elle] - guess[fgsm] == pytest.approx(extra * per_pass)
    assert guess[autopilot] == pytest.approx(guess[elle])
    finished = _measured(r)  # an FGSM run: not the kind of an ELLE or autopilot run
    assert estimate.expected(fgsm, finished, gpu=False).measured
    assert not estimate.expected(elle, finished, gpu=False).measured
    assert not estimate.expected(autopilot, finished, gpu=False).measured
