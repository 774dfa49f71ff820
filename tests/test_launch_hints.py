"""The launch form's λ(ε) hints and the time estimates of the Launch and Sweep pages: what they say, and
that an estimate counts everything a run does. AppTest against a real Redis, as test_app_pages.
"""

from __future__ import annotations

import re

from test_app_pages import app

from trainer.config import lambda_of_eps
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
