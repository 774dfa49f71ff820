"""The `codash` command as a user meets it: what each command prints, its help, its refusals."""

from __future__ import annotations

import subprocess
import time

import pytest
from conftest import ROOT, TINY, co_run_events, final_event, running_events, store_run

import trainer
from codash.cli import main
from jobs import api, keys
from jobs.registry import LOST, transition
from trainer.config import make_config
from trainer.events import make_event


def printed(capsys) -> str:
    """What the command printed: one line on stdout, nothing on stderr."""
    out, err = capsys.readouterr()
    assert err == "" and out.count("\n") == 1, (out, err)
    return out.strip()


def test_cancel_and_resume_say_what_they_did(r, capsys):
    queued = api.submit(r, make_config(TINY))
    assert main(["cancel", queued]) == 0
    assert printed(capsys) == f"cancelled run {queued} (was queued): taken off the queue, it never starts"
    assert main(["cancel", queued]) == 0
    assert printed(capsys) == f"run {queued} was already cancelled"
    assert main(["resume", queued]) == 0
    assert printed(capsys) == f"resumed run {queued} from the start (no checkpoint yet): queued as attempt 2"

    running = store_run(r, running_events(until=40), status=api.RunStatus.RUNNING)
    assert main(["cancel", running]) == 0
    assert printed(capsys).startswith(f"cancelling run {running} (was running): its worker stops it")

    checkpointed = running_events(until=40) + [make_event("checkpoint", iteration=40, epoch=4.0)]
    cancelled = store_run(r, checkpointed, status=api.RunStatus.CANCELLED)
    assert main(["resume", cancelled]) == 0
    assert printed(capsys) == f"resumed run {cancelled} from iteration 40: queued as attempt 2"


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["cancel", "feedfeedfeed"], "no run with id 'feedfeedfeed'"),
        (["resume", "feedfeedfeed"], "no run with id 'feedfeedfeed'"),
        (["cancel", "FINISHED"], "is finished: there is nothing to cancel"),
        (["resume", "FINISHED"], "is finished: only cancelled or interrupted runs can be resumed"),
    ],
)
def test_cancel_and_resume_refusals_are_one_line_on_stderr_and_exit_2(r, capsys, argv, error):
    finished = store_run(r, co_run_events())
    argv = [finished if arg == "FINISHED" else arg for arg in argv]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("codash: error: ") and error in err and err.count("\n") == 1


def failed_run(r, reason: str) -> str:
    run_id = store_run(r, running_events(until=40), status=api.RunStatus.RUNNING)
    failed = {"status": api.RunStatus.FAILED, "finished_at": time.time(), "error": reason}
    assert transition(r, run_id, {api.RunStatus.RUNNING}, failed, attempt=1)
    return run_id


def test_resume_refuses_a_failed_run_and_says_to_relaunch_it_edited(r, capsys):
    run_id = failed_run(r, "out of memory on the GPU: lower batch_size")
    assert main(["resume", run_id]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert f"run {run_id} failed, and resuming it would fail the same way" in err
    assert "relaunch it with an edited config" in err and f"codash status {run_id}" in err
    run = api.get_run(r, run_id)
    assert (run.status, run.attempt) == ("failed", 1)
    assert api.RunStatus.FAILED not in api.USER_RESUMABLE <= api.RESUMABLE


def test_version_names_the_release_and_the_checkout_commit(capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert capsys.readouterr().out == f"codash {trainer.__version__} (git {commit.stdout.strip()})\n"

    monkeypatch.setenv("PATH", "")  # no git: the version alone
    trainer.git_commit.cache_clear()
    try:
        assert trainer.provenance() == trainer.__version__
    finally:
        trainer.git_commit.cache_clear()


def test_help_says_auto_where_the_config_fills_a_default_in(capsys):
    with pytest.raises(SystemExit):
        main(["submit", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps help lines
    assert "default: None" not in text
    auto = "default: auto (the paper's default for this method and model)"
    for flag in ("--alpha ALPHA", "--optimizer OPTIMIZER", "--lr LR", "--weight-decay WEIGHT_DECAY"):
        assert f"{flag} " in text and text.split(f"{flag} ", 1)[1].split(" --", 1)[0].endswith(auto)
    assert text.split("--max-iters MAX_ITERS ", 1)[1].split(" --", 1)[0].endswith("default: none")


def test_runs_shows_accuracies_as_the_dashboard_does_and_why_runs_stopped(r, capsys):
    finished = store_run(r, [*co_run_events()[:-1], final_event(60, pgd=0.2054)])
    interrupted = store_run(r, running_events(until=40), status=api.RunStatus.RUNNING)
    r.delete(keys.heartbeat(interrupted))  # its worker died: the next reader marks it interrupted
    failed = failed_run(r, "boom")
    assert main(["runs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith(finished))
    assert "20.5%" in row.split() and "0.205" not in row
    assert f"{interrupted}  interrupted: {LOST}" in lines and f"{failed}  failed: boom" in lines
