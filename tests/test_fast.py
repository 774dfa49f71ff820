"""The GPU fast path's CPU-testable parts: the config switches, the eager fallback, the captured-step
machinery (static buffers, device-tensor lr, state restored after warm-up) and the lr schedule as a tensor.

The capture itself is a CUDA graph only on CUDA (tests/test_fast_cuda.py). Here `train(capture=...)`, the
loop's real seam for it, gets capture functions that run on the CPU: one that runs the step and then
fails (the fallback), and one that warms the step up and then simply calls it again at every iteration,
which exercises everything around the graph except the graph.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY

from trainer import final, loop
from trainer.cli import build_parser, config_from_args
from trainer.config import TRAIN_IMAGES, ConfigError, make_config
from trainer.data import Dataset
from trainer.evaluate import pgd_accuracy
from trainer.events import FIELDS, BadEvent, encode, parse_event
from trainer.fast import check_replay, fresh_generator
from trainer.loop import lr_at, lr_schedule, train
from trainer.models import build_model
from trainer.ramp import ramp_at

pytestmark = pytest.mark.train  # trains models beyond a few steps


def run(config, **kwargs):
    events = []
    final = train(config, events.append, **kwargs)
    return events, final


def config_event(events):
    (event,) = [e for e in events if e["type"] == "config"]
    return event


def metric_values(events):
    return [
        (e["iteration"], e["lr"], e["train_loss"], e["train_acc"], e["reg"])
        for e in events
        if e["type"] == "metrics"
    ]


def probe_values(events):
    return [tuple(e[key] for key in FIELDS["probe"]) for e in events if e["type"] == "probe"]


def called_again(step, generator):
    """A capture for the CPU: warm the step up as cuda_graph does, then replay = run the step again."""
    for _ in range(3):
        step()
    return step


# SGD with momentum and weight decay, the cyclic schedule, random noise in the attack and in GradAlign:
# every piece of state the warm-up disturbs and the restore must put back.
NOISY = {
    **TINY,
    **{"max_iters": 12, "eval_every": 6, "eval_points": 16, "final_eval_points": 16, "probe_every": 3},
    **{
        "method": "fgsm_rs",
        "grad_align_lambda": 0.5,
        "optimizer": "sgd",
        "lr": 0.05,
        "lr_schedule": "cyclic",
    },
}


def test_on_the_cpu_the_step_is_eager_in_float32_and_the_config_event_says_why():
    events, _ = run(make_config({**TINY, "max_iters": 2, "eval_points": 8, "final_eval_points": 0}))
    event = config_event(events)
    assert (event["step"], event["step_reason"], event["precision"]) == ("eager", "cpu", "fp32")
    assert (event["probe_step"], event["probe_step_reason"]) == ("eager", "cpu")


@pytest.mark.parametrize(
    ("fields", "reason"),
    [({"fast_path": False}, "fast_path off"), ({"method": "free"}, "free: ")],
)
def test_the_config_event_says_why_a_step_is_not_captured(fields, reason):
    events, _ = run(
        make_config({**TINY, **fields, "max_iters": 2, "eval_points": 8, "final_eval_points": 0}),
        capture=called_again,
    )
    event = config_event(events)
    assert event["step"] == "eager" and event["step_reason"].startswith(reason)


def test_a_failing_capture_leaves_the_run_to_the_eager_step_exactly_as_it_stood():
    def fails_after_two_steps(step, generator):
        step()
        step()  # weights, momentum, batch-norm statistics and the generator have all moved on
        raise RuntimeError("operation not permitted when stream is capturing")

    cfg = make_config(NOISY)
    eager, eager_final = run(cfg)
    fallback, fallback_final = run(cfg, capture=fails_after_two_steps)
    event = config_event(fallback)
    assert event["step"] == "eager"
    assert (
        event["step_reason"]
        == "capture failed: RuntimeError: operation not permitted when stream is capturing"
    )
    assert metric_values(fallback) == metric_values(eager)
    assert fallback_final["last"] == eager_final["last"]
    assert event["probe_step"] == "eager" and event["probe_step_reason"] == event["step_reason"]
    assert probe_values(fallback) == probe_values(eager) != []


@pytest.mark.parametrize("extra", [{}, {"elle_lambda": 20.0, "elle_adaptive": True}], ids=["", "elle_a"])
def test_the_captured_step_machinery_trains_exactly_like_the_eager_step(extra):
    """Static buffers, the lr read from the schedule tensor, the state put back after the warm-up (ELLE-A's
    lambda and error record included)."""
    cfg = make_config({**NOISY, **extra})
    eager, _ = run(cfg)
    replayed, _ = run(cfg, capture=called_again)
    event = config_event(replayed)
    assert (event["step"], event["step_reason"]) == ("called_again", None)
    assert metric_values(replayed) == metric_values(eager)
    assert (event["probe_step"], event["probe_step_reason"]) == ("called_again", None)
    assert [row[0] for row in probe_values(replayed)] == [3, 6, 9, 12]
    assert probe_values(replayed) == probe_values(eager)  # reseeded per iteration, in eval mode
    assert len({values[1] for values in metric_values(eager)}) > 5  # the cyclic lr did change


def small_svhn(name, device):
    """48 training and 16 test images shaped like SVHN's, for runs that need no SVHN files."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(64, 3, 32, 32, generator=gen).to(device)
    labels = torch.randint(0, 10, (64,), generator=gen).to(device)
    return Dataset("svhn", images[:48], labels[:48], images[48:], labels[48:], n_classes=10)


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_the_captured_step_reads_the_svhn_warm_up_at_every_replay_as_the_eager_step(monkeypatch, method):
    """The attack's share of its size changes at every step of the warm-up (trainer/ramp.py): a recorded
    step reads it from a device tensor filled before each replay, so it trains exactly as the eager step."""
    monkeypatch.setattr(loop, "load_dataset", small_svhn)
    monkeypatch.setitem(TRAIN_IMAGES, "svhn", 48)  # so the warm-up is 5 * 48 // 16 = 15 steps
    seen = []
    adversary = loop.ADVERSARY[method]

    def recorded(model, x, y, cfg, gen, ramp=None):
        seen.append(None if ramp is None else float(ramp))
        return adversary(model, x, y, cfg, gen, ramp)

    monkeypatch.setitem(loop.ADVERSARY, method, recorded)
    fields = {"dataset": "svhn", "n_filters": 4, "batch_size": 16, "pgd_steps": 2, "max_iters": 20}
    cfg = make_config({**NOISY, **fields, "method": method, "grad_align_lambda": 0.0, "probe_points": 0})
    eager, _ = run(cfg)
    want = [ramp_at(k, 15) for k in range(20)]
    assert seen == want and want[0] == 1 / 15 and want[14:] == [None] * 6
    seen.clear()
    replayed, _ = run(cfg, capture=called_again)
    assert config_event(replayed)["step"] == "called_again"
    assert seen[-20:] == [1.0 if share is None else share for share in want]  # after warm-up and capture
    assert metric_values(replayed) == metric_values(eager)


def test_a_captured_run_resumes_exactly(tmp_path):
    cfg = make_config(NOISY)
    reference, _ = run(cfg, run_dir=tmp_path / "a", capture=called_again)
    calls = iter(range(1, 10**9))
    partial, final = run(
        cfg, run_dir=tmp_path / "b", capture=called_again, should_stop=lambda: next(calls) >= 7
    )
    assert final is None
    resumed, _ = run(cfg, run_dir=tmp_path / "b", resume=True, capture=called_again)
    assert config_event(resumed)["start_iteration"] == 7
    assert metric_values(resumed) == [values for values in metric_values(reference) if values[0] > 7]
    assert probe_values(resumed) == [values for values in probe_values(reference) if values[0] > 7]


@pytest.mark.parametrize("schedule", ["constant", "cyclic", "piecewise"])
def test_the_lr_schedule_tensor_is_lr_at_for_every_step(schedule):
    cfg = make_config({**TINY, "optimizer": "sgd", "lr": 0.3, "lr_schedule": schedule})
    total = 1_000
    table = lr_schedule(cfg, total, "cpu")
    assert table.dtype == torch.float32 and table.shape == (total,)
    expected = torch.tensor([lr_at(cfg, i, total) for i in range(total)], dtype=torch.float64)
    assert torch.equal(table, expected.float())  # the float32 the optimizer computes with
    assert table.double().sub(expected).abs().max() <= 0.3 * 2**-24  # and nothing lost beyond rounding


def test_amp_is_auto_on_or_off_and_configs_stored_with_true_or_false_still_load():
    assert make_config({}).amp == "auto"
    assert make_config({"amp": True}).amp == "on" and make_config({"amp": False}).amp == "off"
    stored = make_config({"method": "fgsm"}).model_dump(mode="json")
    stored.pop("fast_path")
    old = make_config({**stored, "amp": False})  # a config.json written before the fast path existed
    assert (old.amp, old.fast_path) == ("off", False)  # so a resumed old run trains as it did
    cfg = make_config({"amp": "auto"})
    assert make_config(cfg.model_dump_json()) == cfg
    assert cfg.bf16("cuda") and not cfg.bf16("cpu")
    assert not make_config({"amp": "off"}).bf16("cuda") and not make_config({"amp": "on"}).bf16("cpu")
    with pytest.raises(ConfigError, match=r"amp: .*allowed: one of auto, on, off"):
        make_config({"amp": "fast"})


def test_the_cli_turns_the_fast_path_off_and_sets_amp():
    args = build_parser().parse_args(["train", "--no-fast-path", "--amp", "off", "--autoattack"])
    cfg = config_from_args(args)
    assert (cfg.fast_path, cfg.amp, cfg.autoattack) == (False, "off", True)
    assert config_from_args(build_parser().parse_args(["train"])).fast_path is True


def test_final_pgd_restarts_on_the_unfooled_points_only_measure_the_same_robustness():
    torch.manual_seed(0)
    model = build_model("cnn", in_channels=1, image_size=8, n_classes=10, n_layers=1, n_filters=4).eval()
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(200, 1, 8, 8, generator=g), torch.randint(0, 10, (200,), generator=g)

    def acc(restarts, skip):
        generator = torch.Generator().manual_seed(5)
        return pgd_accuracy(model, x, y, 0.1, 5, restarts, generator, batch=64, skip_fooled=skip)

    one = acc(1, False)
    assert acc(1, True) == one  # one restart: the same attack on the same points with the same noise
    assert 0 < acc(4, True) <= one  # later restarts can only fool more of the points the first one left

    for skip in (False, True):  # the final evaluation's progress: points attacked, never back, to all
        done: list[int] = []
        generator = torch.Generator().manual_seed(5)
        pgd_accuracy(model, x, y, 0.1, 5, 4, generator, batch=64, skip_fooled=skip, progress=done.append)
        assert done == sorted(done) and done[-1] == 200 and 16 in done, (skip, done)  # 16: 1 of 4 restarts


def test_config_events_stored_before_the_fast_path_still_parse_and_new_ones_are_checked():
    events, _ = run(make_config({**TINY, "max_iters": 1, "eval_points": 8, "final_eval_points": 0}))
    event = config_event(events)
    assert parse_event(encode(event)) == event
    later = ("step", "step_reason", "probe_step", "probe_step_reason", "precision")
    old = {key: value for key, value in event.items() if key not in later}
    assert parse_event(encode(old)) == old  # a run stored before these fields existed stays readable
    with pytest.raises(BadEvent, match="step_reason must be a string or null"):
        parse_event(encode({**event, "step_reason": 3}))
    with pytest.raises(BadEvent, match="config event without device"):
        parse_event(encode({key: value for key, value in event.items() if key != "device"}))


def test_a_recorded_step_whose_replay_leaves_the_weights_unchanged_is_refused():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="left the weights unchanged"):
        check_replay(lambda: torch.zeros(3), model)
    check_replay(lambda: model.bias.data.add_(1e-6), model)  # any weight that moves is enough


def test_an_empty_graph_leaves_the_run_to_the_eager_step_exactly_as_it_stood():
    def records_nothing(step, generator):
        out = step()  # warmed up, but a replay does nothing and returns the same outputs
        return lambda: out

    cfg = make_config(NOISY)
    eager, _ = run(cfg)
    fallback, _ = run(cfg, capture=records_nothing)
    event = config_event(fallback)
    assert event["step"] == "eager" and "left the weights unchanged" in event["step_reason"]
    assert metric_values(fallback) == metric_values(eager)


class Recorded(Exception):
    """Stops a run once the device is chosen: no GPU here to go on with."""


def test_a_run_on_cuda_n_makes_it_the_current_device_before_building_anything(monkeypatch):
    """torch.cuda.graph captures on a stream of the current device: on cuda:1 without set_device the graph
    would be recorded on device 0 and hold nothing of the run's work."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))

    def load_dataset(name, device):
        calls.append(("load_dataset", device))
        raise Recorded

    monkeypatch.setattr(loop, "load_dataset", load_dataset)
    for device, expected in [("cuda:1", [("set_device", torch.device("cuda:1"))]), ("cuda", [])]:
        calls.clear()
        with pytest.raises(Recorded):
            train(make_config({**TINY, "device": device}))
        assert calls == [*expected, ("load_dataset", torch.device(device))]


def test_a_failed_capture_leaves_its_generators_behind_and_the_run_draws_the_same_numbers():
    """A capture that fails after registering a generator may leave it flagged as capturing (torch with
    eager registration), so that an eager draw from it would raise: the step and the probe go on with fresh
    generators in the state the old ones had, and never touch the ones the capture saw again."""
    seen = []

    def fails_mid_capture(step, generator):
        step()
        seen.append((generator, generator.get_state()))
        raise RuntimeError("operation not permitted when stream is capturing")

    cfg = make_config(NOISY)
    eager, _ = run(cfg)
    fallback, _ = run(cfg, capture=fails_mid_capture)
    assert metric_values(fallback) == metric_values(eager)
    assert probe_values(fallback) == probe_values(eager) != []
    assert len(seen) == 2  # the step's generator and the probe's
    assert all(torch.equal(generator.get_state(), state) for generator, state in seen)


def test_a_fresh_generator_draws_what_the_one_it_replaces_would_have():
    old = torch.Generator().manual_seed(3)
    torch.rand(5, generator=old)
    new = fresh_generator(old, old.get_state())
    assert new is not old and new.device == old.device
    assert torch.equal(torch.rand(7, generator=new), torch.rand(7, generator=old))


def test_the_final_attack_runs_with_cudnn_benchmark_off_and_puts_it_back(monkeypatch):
    """On CUDA its restarts attack ever smaller subsets: with benchmark on, cuDNN would tune every size."""
    seen = []
    attack = final.pgd_accuracy

    def recorded(*args, **kwargs):
        seen.append(torch.backends.cudnn.benchmark)
        return attack(*args, **kwargs)

    monkeypatch.setattr(final, "pgd_accuracy", recorded)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    run(make_config({**TINY, "max_iters": 2, "eval_points": 8, "final_eval_points": 8}))
    assert seen and not any(seen)
    assert torch.backends.cudnn.benchmark
