"""Forks through the queue: api.fork, lineage, `codash fork`, the faults (a killed fork, a deleted parent).

The api tests train the parent in this process into its run directory (the queue only needs its
checkpoints); the worker tests run everything in real `python -m jobs.worker` processes.
"""

from __future__ import annotations

import signal

import pytest
from conftest import TINY, wait_for, without_timing

from codash.cli import main as cli_main
from jobs import api, keys
from trainer.checkpoint import load_model
from trainer.config import ConfigError, make_config
from trainer.fork import FORK_FILE, eval_iterations
from trainer.loop import train
from trainer.presets import DIGITS_GRAD_ALIGN

SHORT = {**TINY, "max_iters": 40, "eval_every": 10, "eval_points": 32, "final_eval_points": 16}


def trained_parent(r) -> str:
    """A queued run whose checkpoints exist (trained here): all a fork needs of its parent."""
    return train_here(r, api.submit(r, make_config(SHORT), queue="nobody"))


def train_here(r, run_id: str) -> str:
    """Train a queued run in this process into its run directory (its record stays queued)."""
    train(api.get_run(r, run_id).config, None, api.run_dir(run_id))
    return run_id


def test_fork_copies_the_parents_checkpoint_and_records_the_lineage(r):
    parent = trained_parent(r)
    assert api.fork_points(parent) == [10, 20, 30, 40]
    child = train_here(r, api.fork(r, parent, at=20, grad_align_lambda=4.0))
    assert api.fork_points(child) == [30, 40]  # its own evaluations only
    grandchild = api.fork(r, child, at=30)
    run = api.get_run(r, child)
    assert (run.config.parent, run.config.fork_iteration, run.config.grad_align_lambda) == (parent, 20, 4.0)
    assert run.status == "queued" and (api.run_dir(child) / FORK_FILE).exists()
    assert [one.id for one in api.lineage(r, grandchild)] == [parent, child, grandchild]
    sibling = api.fork(r, parent, at=10, name="sibling")
    assert [one.id for one in api.lineage(r, sibling)] == [parent, child, grandchild, sibling]
    assert api.get_run(r, sibling).config.name == "sibling"

    api.delete(r, parent)
    assert (api.run_dir(child) / FORK_FILE).exists()  # its own copy survives the parent's directory
    assert [one.id for one in api.lineage(r, child)] == [child, grandchild, sibling]  # still one family
    api.delete(r, child)
    api.delete(r, sibling)
    assert not r.exists(keys.children(parent))  # the last fork of a deleted run takes its index with it
    assert [one.id for one in api.lineage(r, grandchild)] == [grandchild]


def test_a_fork_that_cannot_start_is_refused_naming_the_field_and_leaves_nothing(r):
    parent = trained_parent(r)
    before = set(r.keys())
    runs_dir = api.run_dir(parent).parent
    dirs = set(runs_dir.iterdir())
    for changes, field in (
        (
            {"at": 25},
            "fork_iteration: the parent has no checkpoint at iteration 25; available: 10, 20, 30, 40",
        ),
        ({"at": 20, "model": "lenet"}, "model: a fork keeps its parent's 'cnn'"),
        ({"at": 20, "n_filters": 8}, "n_filters: a fork keeps"),
        ({"at": 20, "eps": 7}, "eps: Input should be less than or equal to 1"),
        ({"at": 0}, "fork_iteration: Input should be greater than or equal to 1"),
    ):
        with pytest.raises(ConfigError, match=field):
            api.fork(r, parent, **changes)
    with pytest.raises(api.RunNotFound):
        api.fork(r, "0" * 12, at=20)
    with pytest.raises(ConfigError, match="parent: no run with id"):
        api.submit(r, make_config({**SHORT, "parent": "0" * 12, "fork_iteration": 20}))
    assert set(r.keys()) == before and set(runs_dir.iterdir()) == dirs


def test_cli_fork_takes_any_train_flag_and_runs_lists_the_lineage(r, capsys):
    parent = trained_parent(r)
    assert cli_main(["fork", parent, "--at", "20", "--grad-align-lambda", "4", "--queue", "nobody"]) == 0
    child = capsys.readouterr().out.strip()
    run = api.get_run(r, child)
    assert (run.config.parent, run.config.fork_iteration, run.config.grad_align_lambda) == (parent, 20, 4.0)
    assert run.config.eps == SHORT["eps"] and run.config.max_iters == 40  # the rest is the parent's
    assert cli_main(["fork", parent, "--at", "20", "--preset", DIGITS_GRAD_ALIGN]) == 0
    preset_child = capsys.readouterr().out.strip()
    assert api.get_run(r, preset_child).config.max_iters is None  # a preset replaces the parent's config

    assert cli_main(["runs", "--lineage", child]) == 0
    table = capsys.readouterr().out
    assert len(table.splitlines()) == 4 and f"{parent}@20" in table  # header, parent, its two forks
    for argv, message in (
        (["fork", parent, "--at", "21"], "fork_iteration: the parent has no checkpoint at iteration 21"),
        (["fork", parent, "--at", "20", "--model", "lenet"], "model: a fork keeps its parent's"),
        (["fork", "nothere", "--at", "20"], "no run with id 'nothere'"),
    ):
        assert cli_main(argv) == 2
        assert message in capsys.readouterr().err


def wait_status(r, run_id: str, statuses: set[str], timeout: float) -> api.Run:
    def ended():
        run = api.get_run(r, run_id)
        return run if run.status in statuses else None

    return wait_for(ended, timeout, f"run {run_id} to become {statuses}: {api.get_run(r, run_id)}")


def after_config(events: list[dict]) -> list[dict]:
    return [without_timing(event) for event in events if event["type"] != "config"]


def test_forks_on_workers_continue_exactly_survive_a_kill_and_their_parents_deletion(r, worker_pool):
    worker_pool.spawn("f1", "f2", queue="fork")
    parent = api.submit(r, make_config(SHORT), queue="fork")
    wait_status(r, parent, {"finished"}, 180)
    parent_events = api.all_events(r, parent)

    # unchanged config: the fork's stream is exactly the parent's after the fork point
    same = api.fork(r, parent, at=20)
    wait_status(r, same, {"finished"}, 180)
    events = api.all_events(r, same)
    assert events[0]["start_iteration"] == 20 and events[0]["config"]["parent"] == parent
    fork_point = next(
        i for i, e in enumerate(parent_events) if e["type"] == "snapshot" and e["iteration"] == 20
    )
    assert after_config(events) == after_config(parent_events[fork_point + 1 :])

    # kill -9 of a fork's worker: it resumes from its own checkpoints, with no gap, like an unbroken fork
    changes = {"grad_align_lambda": 2.0, "max_iters": 100}  # ~2.5 s of training: the kill lands mid-run
    unbroken, killed = (api.fork(r, parent, at=20, **changes) for _ in range(2))  # one on each worker
    checkpointed = lambda: any(e["type"] == "checkpoint" for e in api.read_events(r, killed)[0])  # noqa: E731
    wait_for(checkpointed, 120, "the fork's first checkpoint")
    victim = next(w for w in worker_pool.started if w.name == api.get_run(r, killed).worker)
    victim.kill(signal.SIGKILL)
    wait_status(r, killed, {"interrupted"}, 10)
    wait_status(r, unbroken, {"finished"}, 300)

    api.delete(r, parent)  # the fork lost its parent while interrupted: it still resumes and reads
    api.resume(r, killed)
    done = wait_status(r, killed, {"finished"}, 300)
    events = api.all_events(r, killed)
    assert done.attempt == 2 and [e["iteration"] for e in events if e["type"] == "metrics"] == list(
        range(21, 101)
    )
    assert after_config(events) == after_config(api.all_events(r, unbroken))
    assert load_model(api.run_dir(killed), "best") is not None
    assert api.fork_points(killed)[-1] == 100 and eval_iterations(api.run_dir(killed))[0] == 30
