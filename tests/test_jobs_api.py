"""The job API against a real redis-server, without workers: registry, queue, controls, streams, CLI."""

from __future__ import annotations

import json
import time

import pytest
from conftest import TINY, co_event, wait_for
from rq.job import Job

from codash.cli import main
from jobs import api, keys, queue, registry, stream
from jobs.registry import transition
from jobs.stream import StreamSink
from trainer.config import make_config
from trainer.events import FIELDS, make_event
from trainer.presets import DIGITS_GRAD_ALIGN, PRESETS

CONFIG = make_config(TINY)


def claim(r, run_id: str, attempt: int = 1, ttl_ms: int = 60_000) -> None:
    """What a worker does when it starts an attempt: queued -> running, with a first heartbeat."""
    fields = {"status": "running", "started_at": time.time(), "worker": "test", "device": "cpu"}
    assert registry.transition(r, run_id, {"queued"}, fields, attempt=attempt, heartbeat=("test", ttl_ms))


def event(kind: str, **fields) -> dict:
    """An event of `kind` whose unspecified fields are 0 (the sink does not look at them)."""
    return make_event(kind, **{name: 0 for name in FIELDS[kind]} | fields)


def metrics(iteration: int) -> dict:
    return event("metrics", iteration=iteration, epoch=iteration / 10, train_loss=1.0)


def checkpoint(iteration: int) -> dict:
    return event("checkpoint", iteration=iteration, epoch=iteration / 10)


def co(iteration: int) -> dict:
    return co_event(iteration)


def config_event(start: int = 0) -> dict:
    return make_event(
        "config",
        config=CONFIG.model_dump(mode="json"),
        device="cpu",
        torch_version="x",
        codash_version="y",
        codash_commit=None,
        host="h",
        device_name="cpu",
        start_iteration=start,
        total_iterations=100,
        step="eager",
        step_reason="cpu",
        probe_step="eager",
        probe_step_reason="cpu",
        precision="fp32",
    )


def test_submit_records_a_queued_run_with_its_job(r):
    run_id = api.submit(r, CONFIG)
    assert keys.RUN_ID.match(run_id)
    run = api.get_run(r, run_id)
    assert (run.status, run.config, run.attempt, run.iteration) == ("queued", CONFIG, 1, 0)
    assert run.started_at is run.finished_at is run.worker is run.total_iterations is run.final is None
    assert time.time() - 5 < run.created_at <= time.time()
    assert api.queued_count(r) == 1
    job = Job.fetch(queue.job_id(run_id, 1), connection=r, serializer=queue.JSONSerializer)
    assert (job.func_name, job.args) == (queue.RUN_JOB, [run_id, 1])  # plain JSON: the run id and attempt
    assert json.loads(job.data) == [queue.RUN_JOB, None, [run_id, 1], {}]
    assert api.get_run(r, "0123456789ab") is None and api.get_run(r, "../etc") is None


def test_listing_is_newest_first_with_hundreds_of_runs(r, monkeypatch):  # its time: bench/listing.py
    monkeypatch.setenv("CODASH_MAX_QUEUED", "1000")  # all 300 stay queued: no worker here
    ids = [api.submit(r, make_config({**TINY, "seed": seed})) for seed in range(300)]
    runs = api.list_runs(r)
    assert [run.id for run in runs] == ids[::-1]
    assert [run.config.seed for run in runs[:3]] == [299, 298, 297]
    assert [run.id for run in api.list_runs(r, limit=5)] == ids[::-1][:5]
    assert api.list_runs(r, limit=0) == []
    assert api.queued_count(r) == 300


def test_sweeps_group_runs_in_submission_order(r):
    sweep = [api.submit(r, make_config({**TINY, "eps": eps}), sweep_id="eps-grid") for eps in (0.1, 0.2, 0.3)]
    api.submit(r, CONFIG)
    runs = api.sweep_runs(r, "eps-grid")
    assert [run.id for run in runs] == sweep
    assert [run.config.eps for run in runs] == [0.1, 0.2, 0.3]
    assert {run.sweep_id for run in runs} == {"eps-grid"}
    assert api.sweep_runs(r, "nothing") == []
    with pytest.raises(ValueError, match="sweep_id"):
        api.submit(r, CONFIG, sweep_id="a b")


def test_cancel_takes_a_queued_run_off_the_queue_and_resume_queues_a_new_attempt(r):
    run_id = api.submit(r, CONFIG)
    api.cancel(r, run_id)
    run = api.get_run(r, run_id)
    assert run.status == "cancelled" and run.finished_at is not None
    assert api.queued_count(r) == 0
    assert 0 < r.ttl(Job.key_for(queue.job_id(run_id, 1))) <= queue.RESULT_TTL_S  # RQ's record expires
    api.cancel(r, run_id)  # cancelling twice is harmless
    api.resume(r, run_id)
    run = api.get_run(r, run_id)
    assert (run.status, run.attempt, run.finished_at) == ("queued", 2, None)
    assert r.lrange(queue.rq_queue(r, keys.DEFAULT_QUEUE).key, 0, -1) == [queue.job_id(run_id, 2).encode()]
    with pytest.raises(api.InvalidTransition, match="is queued: only failed, cancelled or interrupted"):
        api.resume(r, run_id)


def test_controls_refuse_what_the_status_does_not_allow(r):
    run_id = api.submit(r, CONFIG)
    claim(r, run_id)
    registry.transition(r, run_id, {"running"}, {"status": "finished", "finished_at": time.time()})
    with pytest.raises(api.InvalidTransition, match="finished"):
        api.resume(r, run_id)
    with pytest.raises(api.InvalidTransition, match="nothing to cancel"):
        api.cancel(r, run_id)
    for action in (api.cancel, api.resume, api.delete):
        with pytest.raises(api.RunNotFound, match="no run with id 'feedfeedfeed'"):
            action(r, "feedfeedfeed")


def test_cancel_of_a_running_run_asks_its_worker_to_stop(r):
    run_id = api.submit(r, CONFIG)
    claim(r, run_id)
    api.cancel(r, run_id)
    assert api.get_run(r, run_id).status == "running"  # until the worker has saved a checkpoint
    assert r.exists(keys.stop(run_id))


def test_delete_removes_record_stream_job_and_artifacts(r):
    run_id = api.submit(r, CONFIG, sweep_id="s")
    directory = api.run_dir(run_id)
    directory.mkdir(parents=True)
    (directory / "last.pt").write_bytes(b"checkpoint")
    claim(r, run_id)
    sink = StreamSink(r, run_id, 1)
    sink(config_event())
    sink.close()
    api.delete(r, run_id)
    assert api.get_run(r, run_id) is None
    assert api.list_runs(r) == [] and api.sweep_runs(r, "s") == []
    assert not directory.exists()
    assert not r.exists(keys.stream(run_id), keys.run(run_id), Job.key_for(queue.job_id(run_id, 1)))
    assert r.scard(keys.RUNNING) == 0


def test_a_running_run_whose_heartbeat_expired_is_interrupted_by_any_reader(r):
    lost, cancelled = api.submit(r, CONFIG), api.submit(r, CONFIG)
    for run_id in (lost, cancelled):
        claim(r, run_id, ttl_ms=300)
    r.set(keys.stop(cancelled), 1)  # a cancel was pending when the worker died
    assert api.get_run(r, lost).status == "running"
    wait_for(lambda: api.get_run(r, lost).status != "running", 2, "the heartbeat to expire")
    run = api.get_run(r, lost)
    assert run.status == "interrupted" and "heartbeat" in run.error and run.finished_at
    assert {run.id: run.status for run in api.list_runs(r)}[cancelled] == "cancelled"
    assert r.scard(keys.RUNNING) == 0


def test_stream_sink_batches_metrics_and_sends_other_events_at_once(r):
    run_id = api.submit(r, CONFIG)
    claim(r, run_id)
    sink = StreamSink(r, run_id, 1)
    sink(config_event())
    assert [e["type"] for e in api.read_events(r, run_id)[0]] == ["config"]  # not a metric: sent at once
    sink(metrics(1))
    wait_for(lambda: len(api.read_events(r, run_id)[0]) == 2, 1.0, "the background flush (every 0.25 s)")
    for iteration in range(2, 11):
        sink(metrics(iteration))
    sink(checkpoint(10))  # sent before the trainer goes on, with every metric before it
    events, last_id = api.read_events(r, run_id)
    assert [e.get("iteration") for e in events] == [None, *range(1, 11), 10]
    assert events[1] == metrics(1)
    run = api.get_run(r, run_id)
    assert (run.iteration, run.total_iterations, run.device) == (10, 100, "cpu")
    sink(co(10))
    assert api.get_run(r, run_id).co_iteration == 10
    sink.close()

    newer, newest_id = api.read_events(r, run_id, after=last_id)
    assert newer == [co(10)] and stream_id(newest_id) > stream_id(last_id)
    assert api.read_events(r, run_id, after=newest_id) == ([], newest_id)
    page, page_id = api.read_events(r, run_id, count=3)
    assert [e["type"] for e in page] == ["config", "metrics", "metrics"]
    assert api.read_events(r, run_id, after=page_id, count=2)[0] == [metrics(3), metrics(4)]
    started = time.monotonic()
    assert api.read_events(r, run_id, after=newest_id, block_ms=100) == ([], newest_id)
    assert time.monotonic() - started >= 0.09


def test_a_sink_whose_attempt_lost_the_run_cannot_write(r):
    run_id = api.submit(r, CONFIG)
    claim(r, run_id)
    stale = StreamSink(r, run_id, 1)
    stale(config_event())
    # the run is reaped and resumed: attempt 2 owns it now
    registry.transition(r, run_id, {"running"}, {"status": "interrupted"})
    api.resume(r, run_id)
    claim(r, run_id, attempt=2)
    with pytest.raises(registry.Fenced):
        stale(checkpoint(5))
    fresh = StreamSink(r, run_id, 2, skip_config=True)
    fresh(config_event(start=5))  # a resumed attempt's config event is dropped: the stream opens with one
    fresh(metrics(6))
    fresh.close()
    assert [e["type"] for e in api.read_events(r, run_id)[0]] == ["config", "metrics"]


def test_rewind_drops_everything_after_the_last_checkpoint(r):
    run_id = api.submit(r, CONFIG)
    claim(r, run_id)
    sink = StreamSink(r, run_id, 1)
    for event in (config_event(), metrics(1), checkpoint(1), metrics(2), checkpoint(2), metrics(3)):
        sink(event)
    sink(co(3))
    sink(metrics(4))
    sink.close()
    assert api.get_run(r, run_id).co_iteration == 3
    assert stream.rewind_to_checkpoint(r, run_id, 1) == 2
    events = api.read_events(r, run_id)[0]
    assert [(e["type"], e.get("iteration")) for e in events][-2:] == [("metrics", 2), ("checkpoint", 2)]
    run = api.get_run(r, run_id)
    assert (run.iteration, run.co_iteration) == (2, None)
    assert stream.rewind_to_checkpoint(r, run_id, 1) == 2  # idempotent
    stream.clear(r, run_id, 1)
    assert api.read_events(r, run_id)[0] == [] and stream.rewind_to_checkpoint(r, run_id, 1) is None


def test_a_corrupted_record_still_lists(r):
    run_id = api.submit(r, CONFIG)
    r.hset(keys.run(run_id), "config", json.dumps({**TINY, "eps": 7, "seed": 3}))
    run = api.get_run(r, run_id)
    assert run.config.seed == 3 and run.config.eps == make_config({}).eps
    r.hset(keys.run(run_id), "config", "not json")
    assert api.list_runs(r)[0].config == make_config({})


def stream_id(text: str) -> tuple[int, int]:
    milliseconds, sequence = text.split("-")
    return int(milliseconds), int(sequence)


def flags(config: dict) -> list[str]:
    return [part for key, value in config.items() for part in ("--" + key.replace("_", "-"), str(value))]


def test_cli_submit_status_runs_and_export(r, capsys, tmp_path):
    assert main(["submit", *flags(TINY), "--sweep", "s1"]) == 0
    run_id = capsys.readouterr().out.strip()
    assert api.get_run(r, run_id).config == CONFIG
    assert main(["status", run_id]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["status"] == "queued" and status["config"]["max_iters"] == 60 and status["sweep_id"] == "s1"
    assert main(["runs"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["ID", "STATUS", "PROGRESS"] and table[1].split()[:3] == [
        run_id,
        "queued",
        "0/?",
    ]

    claim(r, run_id)
    sink = StreamSink(r, run_id, 1)
    for event in (config_event(), metrics(1), checkpoint(1)):
        sink(event)
    sink.close()
    assert main(["export", run_id, "--out", str(tmp_path / "e.jsonl")]) == 0
    lines = (tmp_path / "e.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [config_event(), metrics(1), checkpoint(1)]
    assert main(["export", run_id, "--format", "csv"]) == 0
    rows = capsys.readouterr().out.splitlines()
    header = rows[0].split(",")
    assert header[:3] == ["type", "config.name", "config.dataset"] and "train_loss" in header
    assert [row.split(",")[0] for row in rows[1:]] == ["config", "metrics", "checkpoint"]


def test_cli_submit_starts_from_a_preset_and_flags_override_it(r, capsys):
    assert main(["submit", "--preset", DIGITS_GRAD_ALIGN, "--seed", "3", "--eps", "0.15"]) == 0
    run_id = capsys.readouterr().out.strip()
    expected = make_config({**PRESETS[DIGITS_GRAD_ALIGN], "seed": 3, "eps": 0.15})
    assert api.get_run(r, run_id).config == expected and expected.grad_align_lambda == 4.0


def test_cli_unknown_preset_lists_the_presets_and_queues_nothing(r, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["submit", "--preset", "Digits"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--preset" in err and DIGITS_GRAD_ALIGN in err
    assert api.list_runs(r) == []


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["submit", "--eps", "7"], "eps"),
        (["submit", "--dataset", "imagenet"], "dataset"),
        (["submit", "--max-iters", "0"], "max_iters"),
        (["submit", "--sweep", "no spaces"], "sweep_id"),
        (["resume", "feedfeedfeed"], "feedfeedfeed"),
    ],
)
def test_cli_bad_input_is_one_line_naming_the_field_and_exit_2(r, capsys, argv, named):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("codash: error: ") and named in err and "\n" not in err
    assert api.list_runs(r) == []


def test_a_resumed_runs_elapsed_time_goes_on_from_its_earlier_attempts(r):
    run_id = api.submit(r, CONFIG)
    start = time.time() - 100
    claim = {"status": "running", "started_at": start, "worker": "w", "device": "cpu"}
    transition(r, run_id, {"queued"}, claim, attempt=1, heartbeat=("w", 60_000))
    transition(r, run_id, {"running"}, {"status": "interrupted", "finished_at": start + 60}, attempt=1)
    assert api.get_run(r, run_id).elapsed_s(time.time()) == pytest.approx(60)
    api.resume(r, run_id)
    queued = api.get_run(r, run_id)
    assert queued.elapsed_s(time.time()) == pytest.approx(60)  # waiting in the queue adds nothing
    again = time.time() - 5
    transition(r, run_id, {"queued"}, {**claim, "started_at": again}, attempt=2, heartbeat=("w", 60_000))
    assert api.get_run(r, run_id).elapsed_s(again + 5) == pytest.approx(65)  # not 5: it goes on
    r.hset(keys.run(run_id), "elapsed_before", "-3")
    assert api.get_run(r, run_id).status == "unreadable"  # a bad field is named, not believed


def test_cancelling_an_interrupted_run_does_not_count_the_wait_as_running_time(r):
    run_id = api.submit(r, CONFIG)
    start = time.time() - 100
    claim = {"status": "running", "started_at": start, "worker": "w", "device": "cpu"}
    transition(r, run_id, {"queued"}, claim, attempt=1, heartbeat=("w", 60_000))
    transition(r, run_id, {"running"}, {"status": "interrupted", "finished_at": start + 40}, attempt=1)
    assert api.cancel(r, run_id) == "interrupted"
    cancelled = api.get_run(r, run_id)
    assert cancelled.status == "cancelled"
    assert cancelled.elapsed_s(time.time()) == pytest.approx(40)  # not 100: it ran 40 s, then waited
