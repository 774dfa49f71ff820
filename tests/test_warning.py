"""The CO early warning (trainer.warning) on synthetic eval series, and its event at the boundary."""

import random

import pytest
from conftest import TINY

from trainer.config import make_config
from trainer.events import BadEvent, encode, make_event, parse_event
from trainer.loop import train
from trainer.warning import FALL, RULE, SIGNAL, SPAN, COWarning


def feed(cosines, pgd=0.25, co_at=None, warning=None, every=50, first=1):
    """The co_warning fields each eval of `cosines` (every `every` iterations, from the `first`-th) gives."""
    warning = warning or COWarning()
    fired = []
    for i, cos in enumerate(cosines, first):
        event = warning.update(
            every * i, {SIGNAL: cos, "pgd_acc": pgd}, co_fired=co_at is not None and every * i >= co_at
        )
        if event is not None:
            fired.append(event)
    return fired


def test_fires_once_on_a_falling_alignment_against_the_eval_span_iterations_earlier():
    falling = [0.95, 0.86, 0.72, 0.60, 0.52, 0.45, 0.41, 0.35]  # the digits FGSM preset, seed 0
    (event,) = feed(falling)
    assert event["iteration"] == 150 == 50 + SPAN and event["value"] == 0.72
    assert event["threshold"] == pytest.approx(0.95 - FALL)
    assert event["signal"] == SIGNAL and event["rule"] == RULE


@pytest.mark.parametrize(("every", "warned_at"), [(10, 100), (50, 100), (200, 200)])
def test_the_reference_is_the_latest_eval_at_least_span_iterations_back_whatever_the_cadence(
    every, warned_at
):
    """A steady fall of 0.06 per 50 iterations: 0.12 per SPAN, at every cadence."""
    falling = [0.95 - 0.06 * every / 50 * i for i in range(30)]
    (event,) = feed(falling, every=every, first=0)
    assert event["iteration"] == warned_at


@pytest.mark.parametrize("seed", range(20))
def test_quiet_on_noise_around_a_flat_alignment(seed):
    rng = random.Random(seed)
    assert feed([0.95 + rng.uniform(-0.03, 0.03) for _ in range(40)]) == []


def test_quiet_on_a_slow_drift_like_a_regularised_run():
    """ELLE's alignment drifts 0.97 -> 0.82 over a whole digits run: not the collapse's fall."""
    assert feed([0.97 - 0.011 * i for i in range(14)]) == []


def test_quiet_where_the_run_never_was_robust():
    """Condition 1, as the CO rule's: a run with nothing to lose is not warned."""
    assert feed([0.95, 0.70, 0.50], pgd=0.05) == []


def test_never_after_the_co_event():
    assert feed([0.95, 0.90, 0.60, 0.40], co_at=150) == []


def test_a_missing_alignment_is_skipped_not_fatal():
    warning = COWarning()
    assert warning.update(50, {SIGNAL: None, "pgd_acc": 0.3}) is None
    assert warning.update(100, {SIGNAL: float("nan"), "pgd_acc": 0.3}) is None
    assert warning.recent == [] and feed([0.9, 0.8, 0.5], warning=warning, first=3)[0]["iteration"] == 250


def test_state_round_trips_for_resume_and_a_fired_warning_stays_fired():
    warning = COWarning()
    feed([0.95, 0.93], warning=warning)
    restored = COWarning.from_state(warning.state_dict())
    assert feed([0.70], warning=restored, first=3)[0]["threshold"] == pytest.approx(0.95 - FALL)
    assert feed([0.10], warning=COWarning.from_state(restored.state_dict()), first=4) == []
    assert COWarning.from_state(None) == COWarning()  # a checkpoint from before the warning existed


def test_the_co_warning_event_round_trips_and_is_checked_at_the_boundary():
    event = make_event("co_warning", **feed([0.95, 0.86, 0.72])[0])
    assert parse_event(encode(event)) == event
    for bad in ({"iteration": 1.5}, {"value": "low"}, {"threshold": True}, {"signal": 3}, {"rule": None}):
        with pytest.raises(BadEvent):
            parse_event(encode({**event, **bad}))
    with pytest.raises(BadEvent, match="without threshold"):
        parse_event(encode({k: v for k, v in event.items() if k != "threshold"}))


def test_the_rescue_event_round_trips_and_is_checked_at_the_boundary():
    event = make_event("rescue", iteration=150, grad_align_lambda=5.66, step="cuda_graph", step_reason=None)
    assert parse_event(encode(event)) == event
    for bad in ({"iteration": "150"}, {"grad_align_lambda": "5"}, {"step": None}, {"step_reason": 1}):
        with pytest.raises(BadEvent):
            parse_event(encode({**event, **bad}))


def stop_after(n):
    """should_stop is polled once after every iteration: stop after the n-th."""
    calls = iter(range(1, 10**9))
    return lambda: next(calls) >= n


def run(config, **kwargs):
    events = []
    train(config, events.append, **kwargs)
    return events


@pytest.mark.train
def test_the_loop_emits_one_warning_right_after_its_eval_and_a_resumed_run_not_again(tmp_path, eager_rule):
    cfg = make_config({**TINY, "final_eval_points": 0})
    events = run(cfg, run_dir=tmp_path / "a")
    warned = [e for e in events if e["type"] == "co_warning"]
    assert [e["iteration"] for e in warned] == [40]
    at = events.index(warned[0])
    assert events[at - 1]["type"] == "snapshot" and events[at - 2] == next(
        e for e in events if e["type"] == "eval" and e["iteration"] == 40
    )
    assert warned[0]["value"] == events[at - 2]["cos_grad_random"]
    for stop_at in (30, 45):  # before the warning, and after it: the warning comes exactly once in all
        first = run(cfg, run_dir=tmp_path / str(stop_at), should_stop=stop_after(stop_at))
        resumed = run(cfg, run_dir=tmp_path / str(stop_at), resume=True)
        again = [e for e in first + resumed if e["type"] == "co_warning"]
        assert again == warned, stop_at
