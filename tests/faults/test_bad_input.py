"""Bad input through every door: the launch form, the CLI, raw payloads written into Redis, and RunConfig
itself (property-based). Each is refused or fails with a clear reason that names the field; nothing crashes
and nothing already stored changes.
"""

from __future__ import annotations

import json
import math
import re

import pytest
from conftest import store_run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rq.job import Job
from streamlit.testing.v1 import AppTest

from codash.cli import main
from jobs import api, keys, queue
from trainer.config import ConfigError, RunConfig, make_config
from trainer.loop import train

from .conftest import ROOT, TINY, snapshot, wait_status

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def tiny_events() -> list[dict]:
    events: list[dict] = []
    train(make_config(TINY), events.append)
    return events


@pytest.fixture
def stored(r, tiny_events) -> str:
    """A finished run with its events in the store: every bad input below must leave it exactly as it is."""
    return store_run(r, tiny_events)


# --- the launch form ---

FORM = [
    ("lr", 0.0, "greater than 0"),
    ("alpha", 0.0, "greater than 0"),
    ("momentum", 1.5, "less than 1"),
    ("epochs", 500, "at most 200 epochs"),  # the dashboard's limit, not RunConfig's (1000)
    ("batch_size", 2048, "at most 1024"),  # the dashboard's limit
    ("momentum", 1.0, "less than 1"),
    ("lr", -1.0, "greater than 0"),
    ("alpha", -0.5, "greater than 0"),
]


@pytest.mark.parametrize(("field", "value", "says"), FORM)
def test_the_form_refuses_a_bad_value_next_to_its_field_and_queues_nothing(
    r, stored, figures, field, value, says
):
    before = snapshot(r)
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=30).run()
    at.number_input(key="launch." + field).set_value(value).run()
    assert not at.exception
    messages = [error.value for error in at.error]
    assert any(says in message for message in messages), messages
    assert "Fix 1 problem(s) before launching." in messages
    assert at.button(key="launch.submit").disabled
    figures.fault(f"form {field}={value}")
    after = snapshot(r)
    assert after.records == before.records and after.streams == before.streams
    figures.check(before.events)


# --- the CLI ---

CLI = [
    (["submit", "--eps", "abc"], "eps"),
    (["submit", "--eps", "8/0"], "eps"),
    (["submit", "--eps", "2"], "eps"),
    (["submit", "--batch-size", "99999"], "batch_size"),
    (["submit", "--device", "tpu"], "device"),
    (["submit", "--lr", "nan"], "lr"),
    (["submit", "--seed", "-1"], "seed"),
    (["submit", "--n-filters", "0"], "n_filters"),
    (["submit", "--max-iters", "1.5"], "max_iters"),
    (["submit", "--method", "trades"], "method"),
    (["submit", "--name", "x" * 81], "name"),
    (["submit", "--queue", "no spaces"], "queue"),
    (["train", "--grad-align-lambda", "-1"], "grad_align_lambda"),
    (["status", "../../etc/passwd"], "run"),
    (["cancel", "feedfeedfeed"], "feedfeedfeed"),
    (["export", "feedfeedfeed", "--format", "jsonl"], "feedfeedfeed"),
]


@pytest.mark.parametrize(("argv", "named"), CLI, ids=[" ".join(argv)[:40] for argv, _ in CLI])
def test_the_cli_answers_bad_input_in_one_line_naming_the_field(r, stored, capsys, figures, argv, named):
    before = snapshot(r)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("codash: error: ") and named in err and "\n" not in err, err
    assert "Traceback" not in err
    figures.fault("cli " + " ".join(argv)[:60])
    after = snapshot(r)
    assert after.records == before.records and after.streams == before.streams
    figures.check(before.events)


# --- raw payloads in Redis, read by a real worker ---


def test_malformed_payloads_in_redis_fail_their_run_with_a_reason_and_the_worker_serves_on(
    r, worker_pool, stored, figures
):
    good = make_config(TINY)
    finished = api.submit(r, good)
    [worker] = worker_pool.spawn("bad1")
    wait_status(r, finished, {"finished"}, 60)
    before = snapshot(r)

    def job_key(run_id: str) -> str:
        return Job.key_for(queue.job_id(run_id, 1))

    config_faults = {
        "config is not JSON": "{not json",
        "config is a list": json.dumps([1, 2]),
        "unknown field": json.dumps({**TINY, "colour": "red"}),
        "eps out of range": json.dumps({**TINY, "eps": 7}),
        "eps not a number": json.dumps({**TINY, "eps": "lots"}),
        "negative batch": json.dumps({**TINY, "batch_size": -3}),
        "unknown method": json.dumps({**TINY, "method": "trades"}),
        "bad device": json.dumps({**TINY, "device": "tpu:0"}),
    }
    payload_faults = {
        "payload not JSON": b"\x00\xff not json",
        "payload not a call": json.dumps({"a": 1}),
        "foreign function": json.dumps(["os.system", None, ["true"], {}]),
        "wrong arguments": json.dumps([queue.RUN_JOB, None, ["not-a-run", "x"], {}]),
        "extra arguments": json.dumps([queue.RUN_JOB, None, [1, 2, 3, 4], {"evil": True}]),
    }
    held = {name: api.submit(r, good, queue="held") for name in [*config_faults, *payload_faults]}
    for name, text in config_faults.items():
        r.hset(keys.run(held[name]), "config", text)
    for name, data in payload_faults.items():
        r.hset(job_key(held[name]), "data", data)
    while r.lmove("rq:queue:held", "rq:queue:" + keys.DEFAULT_QUEUE):
        pass
    figures.faults.extend(f"redis {name}" for name in held)

    errors = {name: wait_status(r, run_id, {"failed"}, 60).error for name, run_id in held.items()}
    for name, error in errors.items():
        assert error and "\n" not in error and "Traceback" not in error, (name, error)
    for name in config_faults:
        assert errors[name].startswith(("ConfigError", "malformed")), (name, errors[name])
    assert errors["eps out of range"].startswith("ConfigError: eps:")
    assert errors["unknown method"].startswith("ConfigError: method:")
    assert errors["bad device"].startswith("ConfigError: device:")
    for name in payload_faults:
        assert "malformed job payload" in errors[name], (name, errors[name])
    assert "not a codash job ('os.system')" in errors["foreign function"]

    assert worker.alive()
    after_good = api.submit(r, good)
    assert wait_status(r, after_good, {"finished", "failed"}, 60).status == "finished"
    after = snapshot(r)
    for run_id in before.records:  # what was stored before is untouched
        assert after.records[run_id] == before.records[run_id]
        assert after.streams[run_id] == before.streams[run_id]
    figures.check(before.events)


# --- RunConfig, property-based ---

VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["8/255", "1/0", "cuda:1", "digits", "cifar10", "fgsm", "pgd", "cnn", "nan", "inf"]),
    st.lists(st.integers(), max_size=2),
)
FIELDS = st.sampled_from([*RunConfig.model_fields, "colour", ""])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(FIELDS, VALUES, max_size=5))
def test_any_config_dict_is_either_a_valid_config_or_a_config_error_naming_a_given_field(data):
    try:
        config = make_config(data)
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message
        named = set(re.findall(r"(?:^|; )(\w*): ", message)) - {"allowed"}
        given = {key or "''" for key in data}  # an empty key is named ''
        assert message.split(":")[0] in given and named <= given, (message, data)
        return
    assert RunConfig.model_validate_json(config.model_dump_json()) == config
    assert math.isfinite(config.eps) and 0 <= config.eps <= 1
    assert config.batch_size >= 1 and config.epochs >= 1
