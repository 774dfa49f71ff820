"""Text from users and from Redis: refused when it could fool a terminal, inert in exports, shown as text."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from test_app_pages import running_events, store_run

from app.export import runs_zip
from app.text import md_escape
from app.views.sweep import parse_eps_list
from codash.cli import main
from jobs import api, keys
from jobs.queue import check_name
from jobs.registry import transition
from trainer.config import ConfigError, make_config
from trainer.events import events_csv, make_event

MAIN = Path(__file__).resolve().parent.parent / "app" / "main.py"


@pytest.mark.parametrize("name", ["red\x1b[31mtext", "abc\u202edcba", "bell\x07", "zero\u200bwidth", "a\nb"])
def test_names_with_control_or_invisible_characters_are_refused(name):
    with pytest.raises(ConfigError, match=r"name: must not contain control or invisible characters \(found"):
        make_config({"name": name})
    assert make_config({"name": "FGSM ε=8/255 — 第二"}).name == "FGSM ε=8/255 — 第二"


def test_csv_cells_a_spreadsheet_would_run_are_inert():
    config = make_config({"name": '=HYPERLINK("http://x")'}).model_dump(mode="json")
    events = [
        make_event("config", config=config, device="+cpu", torch_version="@x", codash_version="-1",
                   codash_commit="=1", host="-h", device_name="@cpu",
                   start_iteration=0, total_iterations=1, step="eager", step_reason="cpu",
                   probe_step="eager", probe_step_reason="cpu", precision="float32"),
        make_event("metrics", iteration=1, epoch=0.5, lr=0.1, train_loss=-0.5, train_acc=0.5, reg=0.0),
    ]  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(events_csv(events))))
    assert rows[0]["config.name"] == '\'=HYPERLINK("http://x")'
    assert (rows[0]["device"], rows[0]["torch_version"], rows[0]["codash_version"]) == ("'+cpu", "'@x", "'-1")
    assert rows[1]["train_loss"] == "-0.5"  # a number stays a number


def test_ids_and_names_must_match_whole_not_up_to_a_trailing_newline(r):
    run_id = api.submit(r, make_config({"max_iters": 5}))
    assert keys.RUN_ID.fullmatch(run_id) and not keys.RUN_ID.fullmatch(run_id + "\n")
    assert api.get_run(r, run_id) is not None and api.get_run(r, run_id + "\n") is None
    with pytest.raises(api.RunNotFound):
        api.cancel(r, run_id + "\n")
    with pytest.raises(ConfigError, match="queue: must be 1-64"):
        check_name("queue", "codash\n")
    with pytest.raises(ConfigError, match="device"):
        make_config({"device": "cpu\n"})


@pytest.mark.parametrize("text", ["1e1000", "1" + "0" * 400 + "/1", "9" * 40, ", ".join(["1"] * 33), "2, x"])
def test_the_sweep_eps_box_refuses_junk_with_a_message_not_a_traceback(text):
    with pytest.raises(ValueError) as refused:
        parse_eps_list(text, natural=True)
    assert "Traceback" not in str(refused.value) and len(str(refused.value)) < 200


def test_the_sweep_page_shows_an_overflowing_eps_as_an_error(r):
    at = AppTest.from_file(str(MAIN), default_timeout=30)
    at.switch_page("views/sweep.py").run()
    at.text_input(key="sweep.eps").set_value("0.1, 1e1000").run()
    assert not at.exception
    assert any("not a number or fraction" in error.value for error in at.error)
    assert not [button for button in at.button if button.key == "sweep.submit"]  # nothing to launch


def test_a_run_error_is_shown_as_text_not_markdown(r):
    run_id = store_run(r, running_events(), status="running")
    error = "**bold** [a link](http://attacker.example) <b>html</b>"
    transition(r, run_id, {"running"}, {"status": "failed", "error": error}, attempt=1)
    at = AppTest.from_file(str(MAIN), default_timeout=30)
    at.query_params["run"] = run_id
    at.switch_page("views/live.py").run()
    assert [code.value for code in at.code] == [error]  # shown once, verbatim, as text
    assert not any("attacker" in element.value for element in [*at.markdown, *at.error])


def test_codash_runs_shows_terminal_escapes_from_redis_as_codes(r, capsys):
    run_id = api.submit(r, make_config({"max_iters": 5}))
    r.hset(keys.run(run_id), "worker", "\x1b[2J\x1b[31mevil\u202e")
    assert main(["runs"]) == 0
    out = capsys.readouterr().out
    assert "\\u001b[2J\\u001b[31mevil\\u202e" in out and "\x1b" not in out and "\u202e" not in out


def test_codash_submit_applies_the_deployment_limits(r, capsys, monkeypatch):
    monkeypatch.setenv("CODASH_MAX_QUEUED", "1")
    assert (
        main(["submit", "--dataset", "cifar10", "--final-eval-points", "100000", "--final-pgd-steps", "1000"])
        == 2
    )
    error = capsys.readouterr().err
    assert error.startswith("codash: error: final_eval_points: this run would take")
    assert "CODASH_MAX_WORK" in error
    assert main(["submit", "--max-iters", "5"]) == 0
    assert main(["submit", "--max-iters", "5"]) == 2
    assert "CODASH_MAX_QUEUED" in capsys.readouterr().err
    assert len(api.list_runs(r)) == 1


def test_the_runs_table_in_an_export_is_inert_and_notes_hold_only_visible_text(r):
    run_id = api.submit(r, make_config({"name": '=HYPERLINK("http://x")', "max_iters": 5}))
    api.annotate(r, run_id, "baseline", "@SUM(A1) looks like a formula")
    archive = zipfile.ZipFile(io.BytesIO(runs_zip(api.list_runs(r), lambda one: api.all_events(r, one))))
    [row] = csv.DictReader(io.StringIO(archive.read("runs.csv").decode()))
    assert row["label"].startswith("'=HYPERLINK") and row["note"].startswith("'@SUM")
    for hidden in ("\x1b[2J", "\u202e", "\x00"):
        with pytest.raises(ValueError, match="note: only visible text"):
            api.annotate(r, run_id, "", f"fine {hidden} text")
    api.annotate(r, run_id, "", "two lines\n\tand a tab")  # the note's own layout stays allowed
    assert api.get_run(r, run_id).note == "two lines\n\tand a tab"


def test_a_workers_fields_from_redis_render_as_text_on_the_launch_page(r):
    r.hset(
        keys.worker("w-1"),
        mapping={"pid": "1", "device": "[click](http://evil.example)", "state": "**idle**"},
    )
    r.sadd(keys.WORKERS, "w-1")
    at = AppTest.from_file(str(MAIN), default_timeout=30).run()
    [alive] = [box.value for box in at.success if "alive" in box.value]
    device, state = md_escape("[click](http://evil.example)"), md_escape("**idle**")
    assert f"w\\-1 ({device}, {state})" in alive
