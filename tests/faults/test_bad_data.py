"""Garbage written straight into Redis: every kind of bad stream entry and bad run-hash field, then every
page (AppTest) and every CLI command. A bad entry is skipped and counted, a bad run shows as "unreadable"
with the reason, and every other run renders exactly as before.
"""

from __future__ import annotations

import io
import json
import time
import zipfile

import pytest
from streamlit.testing.v1 import AppTest
from test_app_pages import co_run_events, store_run

from app.export import runs_zip
from codash.cli import main
from jobs import api, keys
from trainer.config import make_config
from trainer.events import MAX_EVENT_BYTES, encode, read_jsonl
from trainer.loop import train

from .conftest import ROOT, TINY, snapshot

pytestmark = pytest.mark.timeout(240)

MAIN = str(ROOT / "app" / "main.py")
# Stream entries that are not events, each in the stream of a run that is otherwise fine.
BAD_ENTRIES: dict[str, dict[str, bytes | str]] = {
    "invalid JSON": {"event": "{not json"},
    "not UTF-8": {"event": b"\xff\xfe\x00"},
    "no event field": {"other": "x"},
    "not an object": {"event": "[1, 2, 3]"},
    "unknown type": {"event": json.dumps({"type": "evil", "iteration": 1})},
    "missing fields": {"event": json.dumps({"type": "eval", "iteration": 5})},
    "wrong type": {"event": json.dumps({"type": "metrics", "iteration": "many", "epoch": 0, "lr": 0,
                                        "train_loss": 0, "train_acc": 0, "reg": 0})},
    "ragged snapshot": {"event": json.dumps({"type": "snapshot", "iteration": 20, "label": 1,
                                             "predictions": {}, "cos_grad_random": 0.5,
                                             "image": [[1, 2], [3]], "fgsm_delta": None, "pgd_delta": None,
                                             "grad_x": None, "grad_random": None, "filters": None})},
    "nested 100k deep": {"event": "[" * 100_000},
    "past the size bound": {"event": json.dumps({"type": "metrics", "pad": "x" * MAX_EVENT_BYTES})},
}  # fmt: skip
# Run-hash fields that cannot be parsed, each in a run of its own.
BAD_FIELDS = {
    "status": "exploded",
    "created_at": "yesterday",
    "iteration": "many",
    "total_iterations": "1e999",
    "final": "{not json",
    "attempt": "-3",
    "sweep_id": "bad id\n",
    "queue": "../../etc",
}


@pytest.fixture(scope="module")
def tiny_events() -> list[dict]:
    events: list[dict] = []
    train(make_config(TINY), events.append)
    return events


def test_garbage_in_redis_is_skipped_or_shown_unreadable_on_every_page_and_command(
    r, tiny_events, figures, capsys, tmp_path
):
    good = store_run(r, tiny_events)
    garbled = store_run(r, tiny_events, sweep_id="garbled")
    for name, fields in BAD_ENTRIES.items():
        r.xadd(keys.stream(garbled), fields)
        figures.fault(f"stream entry: {name}")
    broken = {}
    for field, value in BAD_FIELDS.items():
        broken[field] = store_run(r, tiny_events)
        r.hset(keys.run(broken[field]), field, value)
        figures.fault(f"run field {field}={value!r}")
    r.hset(keys.worker("w-bad"), mapping={"pid": "abc", "device": "cpu", "state": "idle"})
    r.sadd(keys.WORKERS, "w-bad")
    figures.fault("worker field pid='abc'")
    before = snapshot(r)

    runs = {run.id: run for run in api.list_runs(r)}
    assert runs[good].status == runs[garbled].status == "finished"
    for field, run_id in broken.items():
        run = runs[run_id]
        assert run.status == api.RunStatus.UNREADABLE and f"{field}: " in run.error, run
    bad: list = []
    ragged = json.loads(BAD_ENTRIES["ragged snapshot"]["event"])  # an event, that only the charts skip
    assert api.all_events(r, garbled, bad=bad) == [*tiny_events, ragged]  # the garbage is skipped, only it
    assert len(bad) == len(BAD_ENTRIES) - 1

    pages = [
        AppTest.from_file(MAIN, default_timeout=60),
        *(app_at("views/live.py", run=run_id) for run_id in [good, garbled, *broken.values()]),
        app_at("views/runs.py"),
        app_at("views/compare.py", compare=",".join([good, garbled, *broken.values()])),
        app_at("views/sweep.py", sweep="garbled"),
    ]
    for at in pages:
        at.run()
        assert not at.exception, [e.value for e in at.exception]
    garbled_live = pages[2]
    skipped = f"{len(BAD_ENTRIES)} stream entries could not be read"
    assert any(skipped in caption.value for caption in garbled_live.caption)
    unreadable_live = pages[3]
    assert any("Why the run is unreadable" in e.value for e in unreadable_live.error)
    assert any("unreadable record: status: 'exploded'" in c.value for c in unreadable_live.code)

    capsys.readouterr()
    assert main(["runs"]) == 0
    table = capsys.readouterr().out
    assert table.count(api.RunStatus.UNREADABLE) == len(BAD_FIELDS) and good in table
    for run_id in [good, garbled, *broken.values()]:
        assert main(["status", run_id]) == 0
        for form in ("jsonl", "csv"):
            out = str(tmp_path / f"{run_id}.{form}")
            assert main(["export", run_id, "--format", form, "--out", out]) == 0
    with open(tmp_path / f"{garbled}.jsonl") as file:
        assert read_jsonl(file) == [*tiny_events, ragged]
    capsys.readouterr()

    after = snapshot(r)
    assert after.records == before.records and after.streams == before.streams  # reading changed nothing
    lost = sum(encode(event) not in {payload for _, payload in after.streams[good]} for event in tiny_events)
    figures.check(2 * len(tiny_events), lost)
    assert lost == 0
    assert main(["delete", broken["status"]]) == 0  # an unreadable run can still be deleted
    assert api.get_run(r, broken["status"]) is None


def app_at(page: str, **query: str) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.query_params.update(query)
    at.switch_page(page)
    return at


def test_a_planted_id_in_the_run_index_is_no_run_anywhere(r):
    """Ids read back from Redis are checked like ids typed in: a planted `../` member never reaches a key,
    a path or an export."""
    good = store_run(r, co_run_events())
    record = r.hgetall(keys.run(good))
    for planted in ("../../../etc", "0123456789ab\n", "ABCDEF012345"):
        r.hset(keys.run(planted), mapping=record)
        r.zadd(keys.RUNS, {planted: time.time()})
        r.zadd(keys.sweep("s1"), {planted: time.time()})
        r.zadd(keys.children(good), {planted: time.time()})
    assert [run.id for run in api.list_runs(r)] == [good]
    assert api.sweep_runs(r, "s1") == [] and [run.id for run in api.lineage(r, good)] == [good]
    archive = zipfile.ZipFile(io.BytesIO(runs_zip(api.list_runs(r), lambda one: api.all_events(r, one))))
    assert not [name for name in archive.namelist() if ".." in name or name.startswith("/")]
