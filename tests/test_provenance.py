"""Every run says which code, machine and device produced it, attempt by attempt, on its page and in its
export; and its checkpoints can be downloaded from its page."""

from __future__ import annotations

import io
import json
import socket
import zipfile

from conftest import TINY, co_run_events, config_event, metrics_event, store_run
from test_app_pages import app

import trainer
from app.export import runs_zip
from jobs import api
from trainer.config import make_config
from trainer.fork import BEST_FILE, EVALS_DIR, LAST_FILE
from trainer.loop import train


def test_the_config_event_names_the_code_the_host_and_the_device():
    events: list[dict] = []
    train(make_config({**TINY, "max_iters": 2, "eval_every": 2, "final_eval_points": 0}), events.append)
    [config] = [event for event in events if event["type"] == "config"]
    assert config["codash_version"] == trainer.__version__
    assert config["codash_commit"] == trainer.git_commit()  # a checkout's commit, None when installed
    assert config["host"] == socket.gethostname()
    assert isinstance(config["device_name"], str) and config["device_name"]


def resumed_run(r) -> str:
    """A run interrupted at 40 and resumed there on another host: two config events, two attempts."""
    events = co_run_events()
    second = {
        **config_event(start=40),
        "host": "gpu-2",
        "device_name": "NVIDIA H200",
        "codash_commit": "abc1234",
    }
    events = [
        {**events[0], "host": "laptop", "device_name": "x86_64"},
        *(e for e in events[1:] if e.get("iteration", 0) <= 40),
        second,
        *(e for e in events[1:] if e.get("iteration", 0) > 40 or e["type"] == "final"),
    ]
    return store_run(r, events)


def test_the_run_page_shows_each_attempts_provenance_and_offers_its_checkpoints(r):
    run_id = resumed_run(r)
    directory = api.run_dir(run_id)
    (directory / EVALS_DIR).mkdir(parents=True)
    (directory / EVALS_DIR / "40.pt").write_bytes(b"forty")
    (directory / LAST_FILE).write_bytes(b"last")
    (directory / BEST_FILE).write_bytes(b"best")
    at = app(run=run_id).run()
    assert not at.exception
    [table] = [frame.value for frame in at.dataframe if "host" in frame.value]
    assert table["host"].tolist() == ["laptop", "gpu-2"]
    assert table["start_iteration"].tolist() == [0, 40]
    assert table["device_name"].tolist() == ["x86_64", "NVIDIA H200"]
    assert table["codash_commit"].tolist()[1] == "abc1234"
    assert at.selectbox(key=f"live.checkpoint.{run_id}").options == ["last", "best", "iteration 40"]
    assert api.checkpoints(run_id)["iteration 40"].read_bytes() == b"forty"
    assert [b.label for b in at.get("download_button")] == ["Download checkpoint"]


def test_the_export_carries_each_attempts_provenance(r):
    run_id = resumed_run(r)
    run = api.get_run(r, run_id)
    archive = zipfile.ZipFile(io.BytesIO(runs_zip([run], lambda one: api.all_events(r, one))))
    record = json.loads(archive.read(f"{run_id}/provenance.json"))
    assert [attempt["host"] for attempt in record["attempts"]] == ["laptop", "gpu-2"]
    assert record["worker"] == "test-worker" and record["status"] == "finished"


def test_a_run_stored_before_provenance_was_recorded_still_shows(r):
    new_fields = ("host", "device_name", "codash_commit")
    old = {key: value for key, value in config_event().items() if key not in new_fields}  # stored before
    run_id = store_run(r, [old, *(metrics_event(it) for it in range(1, 5))], status="running")
    at = app(run=run_id).run()
    assert not at.exception
    assert "No checkpoint kept" in " ".join(c.value for c in at.caption)
