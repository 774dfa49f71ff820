"""The autopilot (`rescue: auto`, trainer.rescue): plain FGSM until the early warning, then GradAlign at λ(ε)
for the rest of the run, switched exactly once, kept across a resume, and the captured step recorded again.

The early warning is made to fire at the second eval of a tiny run (iteration 40 of 60, evals every 20)."""

import pytest
import torch
from conftest import TINY
from test_warning import run, stop_after

from trainer.cli import build_parser, config_from_args
from trainer.config import ConfigError, make_config
from trainer.fork import rescue_lambda
from trainer.rescue import step_config

pytestmark = pytest.mark.train  # trains models beyond a few steps

AUTO = {**TINY, "rescue": "auto", "final_eval_points": 0}


def regs(events):
    return {e["iteration"]: e["reg"] for e in events if e["type"] == "metrics"}


def test_rescue_is_a_config_field_for_plain_fgsm_and_fgsm_rs_only():
    assert make_config({}).rescue == "off"
    for method in ("fgsm", "fgsm_rs"):
        assert make_config({"method": method, "rescue": "auto"}).label().endswith("+auto GradAlign ε=0.175")
    for bad in ({"method": "pgd"}, {"grad_align_lambda": 1.0}, {"elle_lambda": 64.0}, {"eps": 0.9}):
        with pytest.raises(ConfigError) as caught:
            make_config({"rescue": "auto", **bad})
        assert list(caught.value.problems) == ["rescue"]
    args = build_parser().parse_args(["train", "--rescue", "auto", "--eps", "0.2"])
    assert config_from_args(args).rescue == "auto"


def test_step_config_adds_gradalign_at_lambda_of_eps_only_after_an_autopilot_switch():
    auto, off = make_config(AUTO), make_config({**AUTO, "rescue": "off"})
    assert step_config(auto, None) == auto and step_config(off, 40) == off
    rescued = step_config(auto, 40)
    assert (
        rescued.grad_align_lambda == rescue_lambda(auto) == 8.0 and rescued.uses_grad_align
    )  # digits, ε 0.2


@pytest.mark.train
def test_the_autopilot_switches_to_gradalign_exactly_once_right_after_the_warning(eager_rule):
    events = run(make_config(AUTO))
    kinds = [e["type"] for e in events]
    assert kinds.count("co_warning") == kinds.count("rescue") == 1
    (rescue,) = [e for e in events if e["type"] == "rescue"]
    assert rescue == {
        "type": "rescue",
        "iteration": 40,
        "grad_align_lambda": 8.0,
        "step": "eager",
        "step_reason": "cpu",
    }
    assert kinds.index("rescue") > kinds.index("co_warning")
    assert events[0]["config"]["rescue"] == "auto" and events[0]["config"]["grad_align_lambda"] == 0
    reg = regs(events)
    assert all(reg[it] == 0 for it in range(1, 41)) and all(reg[it] > 0 for it in range(41, 61))


@pytest.mark.train
def test_without_the_autopilot_the_warning_changes_nothing(eager_rule):
    events = run(make_config({**AUTO, "rescue": "off"}))
    assert [e["type"] for e in events].count("co_warning") == 1
    assert "rescue" not in [e["type"] for e in events] and not any(regs(events).values())


@pytest.mark.train
@pytest.mark.parametrize("stop_at", [30, 45])  # killed before the switch, and after it
def test_a_run_killed_and_resumed_switches_once_and_keeps_gradalign_on(tmp_path, eager_rule, stop_at):
    cfg = make_config(AUTO)
    reference = run(cfg, run_dir=tmp_path / "a")
    first = run(cfg, run_dir=tmp_path / "b", should_stop=stop_after(stop_at))
    resumed = run(cfg, run_dir=tmp_path / "b", resume=True)
    assert resumed[0]["start_iteration"] == stop_at
    switched = [e for e in first + resumed if e["type"] == "rescue"]
    assert switched == [e for e in reference if e["type"] == "rescue"]
    got, expected = regs(resumed), regs(reference)
    assert all(got[it] > 0 for it in range(max(stop_at, 40) + 1, 61))
    assert got == pytest.approx({it: expected[it] for it in got}, abs=1e-5)


@pytest.mark.train
def test_the_switch_records_the_captured_step_again_and_the_run_replays_the_new_one(eager_rule):
    """On the fast path the step is recorded once (a CUDA graph holds what it recorded): the switch must
    record it again with GradAlign, and the run must replay that recording from then on."""
    recordings = []  # per recording: the GradAlign term it recorded, and how often it was replayed

    def recording(step, generator):
        for _ in range(3):
            out = step()
        entry = {"size": len(out), "reg": float(out[2]), "replays": 0}
        recordings.append(entry)

        def replay():
            entry["replays"] += 1
            return step()

        return replay

    events = run(make_config(AUTO), capture=recording)
    (rescue,) = [e for e in events if e["type"] == "rescue"]
    assert rescue["step"] == "recording" and rescue["step_reason"] is None
    # the training step's recordings ([loss, acc, reg]), before and after the switch (the dense probe
    # records its own once)
    steps = [entry for entry in recordings if entry["size"] == 3]
    assert [entry["reg"] > 0 for entry in steps] == [False, True]
    assert [entry["replays"] for entry in steps] == [1 + 40, 1 + 20]  # check_replay, then every step


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_the_gpu_the_switch_records_the_cuda_graph_again(eager_rule):
    """A graph replays what it recorded: a stale one would train on without GradAlign (reg 0)."""
    events = run(make_config({**AUTO, "device": "cuda"}))
    (rescue,) = [e for e in events if e["type"] == "rescue"]
    assert events[0]["step"] == rescue["step"] == "cuda_graph" and rescue["step_reason"] is None
    reg = regs(events)
    assert all(reg[it] == 0 for it in range(1, 41)) and all(reg[it] > 0 for it in range(41, 61))
