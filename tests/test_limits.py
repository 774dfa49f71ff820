"""The deployment's limits bound the work and the stream of a run at every door: form, sweep, CLI, worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY
from streamlit.testing.v1 import AppTest

from app.presets import SWEEP_PRESETS
from app.views.sweep import parse_eps_list, sweep_configs
from jobs import api
from jobs.limits import (
    MB,
    NUMBER_BYTES,
    Limits,
    OverLimit,
    StreamBudget,
    check,
    cost,
    run_violations,
    violations,
)
from jobs.stream import StreamSink
from trainer.checkpoint import model_for
from trainer.config import FIRST_CONV, SNAPSHOT_FILTERS, make_config
from trainer.events import encode
from trainer.loop import train
from trainer.presets import PRESETS

MAIN = Path(__file__).resolve().parent.parent / "app" / "main.py"
# Runs that the form once let through: each one within RunConfig's ranges.
EVAL_HEAVY = {"eval_every": 1, "eval_points": 10_000, "eval_pgd_steps": 1000}
# on CIFAR-10: digits has 297 test images to attack, whatever final_eval_points says
FINAL_HEAVY = {
    "dataset": "cifar10",
    "final_eval_points": 10_000,
    "final_pgd_steps": 1000,
    "final_pgd_restarts": 100,
}
PROBE_HEAVY = {"probe_points": 1024, "probe_every": 1, "probe_pgd_steps": 100, "epochs": 200}
STREAM_HEAVY = {"dataset": "mnist", "eval_every": 1, "epochs": 10}  # 9,370 snapshots, ~250 MB
TRAIN_HEAVY = {"dataset": "mnist", "method": "pgd", "pgd_steps": 100, "batch_size": 1024, "epochs": 200}


@pytest.fixture(autouse=True)
def _default_limits(monkeypatch):
    for name in Limits.__dataclass_fields__:
        monkeypatch.delenv(f"CODASH_{name.upper()}", raising=False)


@pytest.mark.parametrize(
    ("changes", "field", "says"),
    [
        (EVAL_HEAVY, "eval_every", "live evaluations 1.2e+09"),  # 297 test and 1,500 training images
        (FINAL_HEAVY, "final_eval_points", "final evaluation 2e+09"),
        (PROBE_HEAVY, "probe_every", "dense probes 4.9e+08"),
        (TRAIN_HEAVY, "epochs", "training 1.2e+09"),
        (STREAM_HEAVY, "eval_every", "CODASH_MAX_STREAM_MB"),
    ],
)
def test_runs_past_the_work_or_stream_bound_are_refused_naming_the_field(changes, field, says):
    problems = run_violations(make_config(changes))
    assert list(problems) == [field] and says in problems[field], problems
    with pytest.raises(OverLimit, match=f"^{field}: "):
        check([make_config(changes)])


def test_every_preset_and_the_paper_sweep_fit_the_default_limits():
    for preset in PRESETS.values():
        assert run_violations(make_config(preset)) == {}, preset
    for preset in SWEEP_PRESETS.values():
        eps = parse_eps_list(preset["eps"], natural=True)
        configs = sweep_configs(
            preset["base"], preset["methods"], eps, [0], True, 1.0, preset["method_fields"]
        )
        assert violations(configs, queued=0) == {}


def test_codash_max_variables_raise_the_bounds(monkeypatch):
    monkeypatch.setenv("CODASH_MAX_WORK", "1e11")
    assert run_violations(make_config(EVAL_HEAVY)) == {}
    monkeypatch.setenv("CODASH_MAX_STREAM_MB", "300")
    assert Limits.from_env().max_work == 10**11 and run_violations(make_config(STREAM_HEAVY)) == {}


@pytest.mark.timeout(900)  # two short trainings; slow only on a crowded machine
def test_the_stream_estimate_bounds_what_a_run_streams():
    for changes in ({"eval_every": 2, "max_iters": 30, "final_eval_points": 16}, {"final_eval_points": 16}):
        config = make_config({**TINY, **changes})
        events: list[dict] = []
        train(config, events.append)
        streamed = sum(len(encode(event)) for event in events)
        estimate = cost(config).stream_bytes
        assert streamed <= estimate < 3 * streamed + 50_000, (streamed, estimate)


def test_the_sink_stops_a_run_whose_stream_passes_the_bound(r, monkeypatch):
    """The backstop, should an estimate ever be short: the worker's sink refuses the event that passes it."""
    monkeypatch.setenv("CODASH_MAX_STREAM_MB", "1")
    budget = StreamBudget()
    budget.spend(MB)
    with pytest.raises(OverLimit, match=r"stream: .* past this deployment's 1 MB \(CODASH_MAX_STREAM_MB\)"):
        budget.spend(1)
    run_id = api.submit(r, make_config(TINY))
    r.hset(f"codash:run:{run_id}", mapping={"status": "running"})
    sink = StreamSink(r, run_id, attempt=1)
    snapshot = {"type": "checkpoint", "iteration": 1, "epoch": 0.1, "padding": "x" * (MB // 4 - 100)}
    with pytest.raises(OverLimit):
        for _ in range(5):
            sink(snapshot)
    sink.close()
    assert r.xlen(f"codash:stream:{run_id}") == 4  # the event that passed the bound was never sent


def test_the_form_refuses_an_evaluation_that_would_cost_more_than_training(r):
    at = AppTest.from_file(str(MAIN), default_timeout=30).run()
    for field, value in EVAL_HEAVY.items():
        at.number_input(key="launch." + field).set_value(value).run()
    assert any("CODASH\\_MAX\\_WORK" in error.value for error in at.error), [e.value for e in at.error]
    assert at.button(key="launch.submit").disabled
    assert api.list_runs(r) == []


def test_the_sweep_refuses_a_sweep_past_the_limits(r, monkeypatch):
    monkeypatch.setenv("CODASH_MAX_WORK", "500000")  # a digits PGD-10 run: ~900,000
    at = AppTest.from_file(str(MAIN), default_timeout=30)
    at.switch_page("views/sweep.py").run()
    at.multiselect(key="sweep.methods").set_value(["PGD-10"]).run()
    assert any("CODASH\\_MAX\\_WORK" in error.value for error in at.error), [e.value for e in at.error]
    assert at.button(key="sweep.submit").disabled
    assert api.list_runs(r) == []


def test_every_path_that_queues_a_run_is_held_to_the_limits(r, monkeypatch, capsys):
    """Rescue (api.fork), `codash fork` and resume queue through api.submit or the queue, which check."""
    from codash.cli import main
    from trainer.fork import EVALS_DIR

    parent = api.submit(r, make_config({"max_iters": 20}))
    (api.run_dir(parent) / EVALS_DIR).mkdir(parents=True)
    (api.run_dir(parent) / EVALS_DIR / "10.pt").touch()
    monkeypatch.setenv("CODASH_MAX_QUEUED", "1")
    with pytest.raises(api.OverLimit, match="CODASH_MAX_QUEUED"):
        api.fork(r, parent, at=10, grad_align_lambda=4.0)
    assert main(["fork", parent, "--at", "10", "--epochs", "1000"]) == 2
    assert "codash: error: " in capsys.readouterr().err
    api.cancel(r, parent)
    waiting = api.submit(r, make_config({"max_iters": 20}))  # the queue is full again
    with pytest.raises(api.OverLimit, match="CODASH_MAX_QUEUED"):
        api.resume(r, parent)
    assert [run.id for run in api.list_runs(r)] == [waiting, parent]
    assert api.get_run(r, parent).status == "cancelled"


def test_the_cost_counts_elle_and_the_onset_replay():
    base = make_config({**TINY, "eval_every": 50, "eval_points": 256, "onset_replay": "off"})
    elle = base.model_copy(update={"elle_lambda": 1.0})
    replayed = base.model_copy(update={"onset_replay": "on"})
    plain = cost(base)
    assert cost(elle).train - plain.train == plain.iterations * base.batch_size * 3  # three points, both ways
    window = min(3 * base.eval_every, plain.iterations)  # the detector's window: PATIENCE + 1 evals
    assert cost(replayed).replay == window * 256 * (base.eval_pgd_steps + 4) and plain.replay == 0
    assert cost(base.model_copy(update={"onset_replay": "auto", "device": "auto"})).replay > 0  # may be CUDA
    assert cost(base.model_copy(update={"onset_replay": "auto", "device": "cpu"})).replay == 0
    limits = Limits(max_work=cost(replayed).work - 1)
    assert run_violations(base, limits) == {}
    assert "onset replay" in run_violations(replayed, limits).get("onset_replay", "")


def test_a_step_costs_its_methods_passes_and_its_regularisers():
    """One fact per method (trainer.methods): FGSM's step is 2 passes per example, GradAlign and ELLE add 3
    each (x2.5: the digits CNN measures x2.22 and x2.29), an autopilot run counts GradAlign throughout."""
    fgsm = make_config({**TINY, "onset_replay": "off"})
    train = {
        name: cost(fgsm.model_copy(update=changes)).train / cost(fgsm).train
        for name, changes in {
            "elle": {"elle_lambda": 1.0},
            "grad_align": {"grad_align_lambda": 1.0},
            "grad_align_half": {"grad_align_lambda": 1.0, "grad_align_fraction": 0.5},
            "pgd10": {"method": "pgd", "pgd_steps": 10},
            "free": {"method": "free"},
            "standard": {"method": "standard"},
            "random_corner": {"method": "random_corner"},
        }.items()
    }
    assert train == {
        "elle": 2.5,
        "grad_align": 2.5,
        "grad_align_half": 1.75,
        "pgd10": 5.5,
        "free": 0.5,
        "standard": 0.5,
        "random_corner": 0.5,
    }
    autopilot = make_config({**TINY, "onset_replay": "off", "rescue": "auto"})
    assert cost(autopilot).train == cost(fgsm.model_copy(update={"grad_align_lambda": 1.0})).train


def test_the_stream_bound_counts_each_models_first_filters_at_their_size():
    """trainer.config.FIRST_CONV is what the models build and what the snapshot bound counts: LeNet's first
    filters are 5x5, the CNN's and the ResNet's 3x3."""
    for name, (filters, kernel) in FIRST_CONV.items():
        conv = model_for(make_config({"model": name, "dataset": "mnist"})).first_conv
        assert conv.kernel_size == (kernel, kernel) and conv.out_channels == (filters or conv.out_channels)
    lenet, cnn = (
        make_config({"model": model, "dataset": "mnist", "epochs": 1}) for model in ("lenet", "cnn")
    )
    n_evals = -(-cnn.total_iterations() // cnn.eval_every)
    extra = n_evals * NUMBER_BYTES * SNAPSHOT_FILTERS * (5 * 5 - 3 * 3)  # one channel
    assert cost(lenet).stream_bytes - cost(cnn).stream_bytes == extra
