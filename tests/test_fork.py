"""Forks in the trainer: evaluation checkpoints, their disk budget, a fork continuing its parent exactly."""

from __future__ import annotations

import stat
from unittest import mock

import pytest
import torch
from conftest import TINY

from trainer.checkpoint import (
    BUDGET_ENV,
    budget_bytes,
    load_checkpoint,
    model_for,
    save_eval,
    thin,
)
from trainer.config import ConfigError, make_config
from trainer.fork import EVALS_DIR, FORK_FILE, eval_iterations, eval_path, link_or_copy, seed_fork
from trainer.loop import load_optimizer, make_optimizer, train

pytestmark = pytest.mark.train  # trains models beyond a few steps

PARENT = "0123456789ab"


def run(config, run_dir, **kwargs):
    events = []
    final = train(config, events.append, run_dir, **kwargs)
    return events, final


def after(events, iteration):
    return [e for e in events if e["type"] in ("metrics", "eval", "co") and e["iteration"] > iteration]


def assert_same(expected, got):
    assert [(e["type"], e["iteration"]) for e in got] == [(e["type"], e["iteration"]) for e in expected] != []
    for a, b in zip(expected, got, strict=True):
        for key, value in a.items():
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, abs=1e-5), (a["type"], a["iteration"], key)


@pytest.mark.parametrize("method", ["fgsm_rs", "free"])  # generator state; Free AT's replayed batch and delta
def test_a_fork_with_the_parents_config_continues_exactly_like_the_parent(tmp_path, method):
    cfg = make_config({**TINY, "method": method, "grad_align_lambda": 0.2})
    parent, parent_final = run(cfg, tmp_path / "parent")
    assert eval_iterations(tmp_path / "parent") == [20, 40, 60]  # every evaluation of a digits run
    seed_fork(tmp_path / "parent", 40, tmp_path / "child")  # mid-epoch (23 iterations per epoch)
    fork = cfg.model_copy(update={"parent": PARENT, "fork_iteration": 40})
    child, child_final = run(fork, tmp_path / "child")
    assert child[0]["type"] == "config" and child[0]["start_iteration"] == 40
    assert child[0]["config"]["parent"] == PARENT and child[0]["config"]["fork_iteration"] == 40
    assert [e["iteration"] for e in child if e["type"] == "metrics"] == list(range(41, 61))  # only its own
    assert_same(after(parent, 40), after(child, 40))
    for which in ("last", "best"):
        assert child_final[which] == pytest.approx(parent_final[which], abs=1e-5)
    assert child_final["best_iteration"] == parent_final["best_iteration"]


def test_a_fork_with_gradalign_diverges_from_its_parent_and_resumes_from_its_own_checkpoints(tmp_path):
    cfg = make_config(TINY)
    parent, _ = run(cfg, tmp_path / "parent")
    fork = cfg.model_copy(update={"parent": PARENT, "fork_iteration": 20, "grad_align_lambda": 1.0})
    seed_fork(tmp_path / "parent", 20, tmp_path / "whole")
    whole, _ = run(fork, tmp_path / "whole")
    assert all(e["reg"] > 0 for e in whole if e["type"] == "metrics")  # GradAlign is on in the fork
    assert after(whole, 20)[1]["train_loss"] != pytest.approx(after(parent, 20)[1]["train_loss"], abs=1e-6)

    seed_fork(tmp_path / "parent", 20, tmp_path / "child")
    calls = iter(range(10**9))
    partial, final = run(fork, tmp_path / "child", should_stop=lambda: next(calls) >= 9)
    assert final is None and partial[-1] == {"type": "checkpoint", "iteration": 30, "epoch": 30 / 23}
    resumed, _ = run(fork, tmp_path / "child", resume=True)  # from its own last.pt, not fork.pt
    assert resumed[0]["start_iteration"] == 30
    assert_same(after(whole, 30), after(resumed, 30))


def test_a_fork_without_its_parents_checkpoint_or_past_its_end_says_which_field(tmp_path):
    fork = make_config({**TINY, "parent": PARENT, "fork_iteration": 20})
    with pytest.raises(ConfigError, match="parent: no fork.pt"):
        run(fork, tmp_path / "child")
    with pytest.raises(ConfigError, match="fork_iteration: 60 is not before"):
        run(fork.model_copy(update={"fork_iteration": 60}), tmp_path / "child")
    with pytest.raises(ConfigError, match="fork_iteration: the parent has no checkpoint at iteration 30"):
        seed_fork(tmp_path / "nothing", 30, tmp_path / "child")
    with pytest.raises(ConfigError, match="a fork needs both parent and fork_iteration"):
        make_config({"parent": PARENT})
    with pytest.raises(ConfigError, match="parent"):
        make_config({"parent": "../../etc", "fork_iteration": 3})


def test_deleting_the_parent_leaves_the_fork_able_to_start(tmp_path):
    import shutil

    cfg = make_config({**TINY, "max_iters": 40})
    run(cfg, tmp_path / "parent")
    seed_fork(tmp_path / "parent", 20, tmp_path / "child")
    shutil.rmtree(tmp_path / "parent")
    _, final = run(cfg.model_copy(update={"parent": PARENT, "fork_iteration": 20}), tmp_path / "child")
    assert final["iterations"] == 40


def test_eval_checkpoints_load_weights_only_and_hold_the_best_weights_so_far(tmp_path):
    run(make_config(TINY), tmp_path)
    for iteration in eval_iterations(tmp_path):
        point = torch.load(eval_path(tmp_path, iteration), weights_only=True)
        assert point["state"]["iteration"] == iteration
        best = point["state"]["best_iteration"]
        assert (point["best_model"] is None) == (best == iteration)
    assert load_checkpoint(tmp_path, "last")["state"]["iteration"] == 60


def test_thinning_spreads_what_it_keeps_and_never_drops_the_protected():
    sizes = dict.fromkeys(range(50, 1050, 50), 10)  # 20 checkpoints of 10 bytes
    dropped = thin(sizes, protected={250, 300, 950, 1000}, budget=100)
    kept = sorted(set(sizes) - set(dropped))
    assert len(kept) == 10 and {250, 300, 950, 1000} <= set(kept)
    gaps = [b - a for a, b in zip(kept, kept[1:], strict=False)]
    assert max(gaps) <= 250, kept  # spread over the run, not the first ten
    assert thin(sizes, protected=set(sizes), budget=0) == []  # nothing unprotected: over budget, all kept


def test_a_small_budget_keeps_the_evaluations_around_co_and_the_newest(tmp_path, monkeypatch):
    point = {"weights": torch.zeros(1000)}  # ~4 KB each
    save_eval(point, tmp_path, 50, co_onset=None)
    monkeypatch.setenv(BUDGET_ENV, str(5.5 * eval_path(tmp_path, 50).stat().st_size / 2**20))
    for iteration in range(100, 1050, 50):
        save_eval(point, tmp_path, iteration, co_onset=300 if iteration >= 350 else None)
    kept = eval_iterations(tmp_path)
    assert len(kept) <= 6 and {250, 300} <= set(kept) and kept[-3:] == [900, 950, 1000], kept


@pytest.mark.parametrize("value", ["-1", "lots", "nan"])
def test_a_bad_budget_names_the_variable(monkeypatch, value):
    monkeypatch.setenv(BUDGET_ENV, value)
    with pytest.raises(ConfigError, match=BUDGET_ENV):
        budget_bytes()


def test_budget_zero_keeps_no_eval_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "0")
    run(make_config({**TINY, "max_iters": 20}), tmp_path)
    assert eval_iterations(tmp_path) == []


def test_a_fork_trains_with_its_own_optimizer_settings_and_flags_not_its_parents(tmp_path):
    """Only the optimizer's state and step count come from the parent: a fork that changes momentum and
    weight decay, from a parent whose optimizer was of another kind (fused, as a captured step's), trains
    as a fresh run with its own settings would from the same weights and optimizer state."""
    cfg = make_config({**TINY, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4})
    run(cfg, tmp_path / "parent")
    fork = cfg.model_copy(
        update={"parent": PARENT, "fork_iteration": 20, "momentum": 0.5, "weight_decay": 0.01}
    )
    saved = torch.load(eval_path(tmp_path / "parent", 20), weights_only=True)
    fresh = make_optimizer(fork, model_for(fork)).state_dict()["param_groups"]

    def start(name, groups):
        (tmp_path / name).mkdir()
        optimizer = {**saved["optimizer"], "param_groups": groups}
        torch.save({**saved, "optimizer": optimizer}, tmp_path / name / "fork.pt")
        return run(fork, tmp_path / name)[0]

    parents = [{**group, "fused": True, "foreach": False} for group in saved["optimizer"]["param_groups"]]
    child = start("child", parents)
    reference = start("reference", fresh)  # the fork's own settings and flags, the parent's state
    assert fresh[0]["momentum"] == 0.5 and parents[0]["momentum"] == 0.9
    assert_same(after(reference, 20), after(child, 20))


def test_a_loaded_optimizer_keeps_its_own_settings_and_flags_and_takes_the_saved_state():
    model = torch.nn.Linear(3, 2)
    parent = torch.optim.Adam(model.parameters(), lr=0.1, weight_decay=0.5, fused=True)
    model(torch.ones(1, 3)).sum().backward()
    parent.step()
    own = torch.optim.Adam(model.parameters(), lr=0.01)
    settings = [{k: v for k, v in group.items() if k != "params"} for group in own.param_groups]
    load_optimizer(own, parent.state_dict())
    assert [{k: v for k, v in group.items() if k != "params"} for group in own.param_groups] == settings
    state, saved = own.state[model.weight], parent.state[model.weight]
    assert torch.equal(state["exp_avg"], saved["exp_avg"]) and torch.equal(
        state["exp_avg_sq"], saved["exp_avg_sq"]
    )
    assert (state["step"].item(), state["step"].dtype) == (1.0, torch.float32)


def test_a_fork_refuses_a_linked_checkpoint_and_a_copy_keeps_the_files_mode(tmp_path):
    """A planted symlink in the parent's evals/ would make a fork copy whatever it points at."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"private")
    secret.chmod(0o600)
    parent = tmp_path / "parent"
    (parent / EVALS_DIR).mkdir(parents=True)
    (parent / EVALS_DIR / "20.pt").symlink_to(secret)
    with pytest.raises(ConfigError, match="iteration 20 is a link"):
        seed_fork(parent, 20, tmp_path / "child")
    assert not (tmp_path / "child" / FORK_FILE).exists()

    (parent / EVALS_DIR / "40.pt").write_bytes(b"state")
    (parent / EVALS_DIR / "40.pt").chmod(0o600)
    copy = tmp_path / "copy"
    with mock.patch("os.link", side_effect=OSError("cross-device")):  # the copy fallback
        link_or_copy(parent / EVALS_DIR / "40.pt", copy)
    assert copy.read_bytes() == b"state" and stat.S_IMODE(copy.stat().st_mode) == 0o600
