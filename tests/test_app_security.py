"""Access control and per-dashboard limits: the password gate, XSRF on, escaped text, bounded queueing."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app import auth
from app.auth import password_ok
from codash.up import app_argv
from jobs import api
from jobs.limits import Limits, violations
from trainer.config import make_config

MAIN = Path(__file__).resolve().parent.parent / "app" / "main.py"


def test_the_password_gate_keeps_every_page_closed_until_signed_in(r, monkeypatch):
    monkeypatch.setenv("CODASH_PASSWORD", "correct horse")  # 13 characters
    at = AppTest.from_file(str(MAIN), default_timeout=30).run()
    assert [t.value for t in at.title] == ["codash"]
    assert [b.label for b in at.button] == ["Sign in"]  # no launch button, no page content
    at.text_input(key="auth.password").set_value("wrong")
    at.button[0].click().run()
    assert [e.value for e in at.error] == ["Wrong password."]
    assert [t.value for t in at.title] == ["codash"]
    at.text_input(key="auth.password").set_value("correct horse")
    at.button[0].click().run()
    assert "Launch a run" in [t.value for t in at.title]
    at.run()  # the session stays signed in on the next rerun
    assert "Launch a run" in [t.value for t in at.title]


def test_no_password_configured_means_an_open_local_dashboard(r, monkeypatch):
    monkeypatch.delenv("CODASH_PASSWORD", raising=False)
    at = AppTest.from_file(str(MAIN), default_timeout=30).run()
    assert "Launch a run" in [t.value for t in at.title]


def test_password_comparison():
    assert password_ok("s3cret", "s3cret")
    assert not password_ok("s3cre", "s3cret") and not password_ok("", "s3cret")
    assert password_ok("pässwörd", "pässwörd")


def test_up_runs_the_dashboard_with_xsrf_protection():
    argv = app_argv("127.0.0.1", 8501)
    assert argv[argv.index("--server.enableXsrfProtection") + 1] == "true"


def test_limits_name_the_field_and_the_variable(monkeypatch):
    monkeypatch.setenv("CODASH_MAX_EPOCHS", "10")
    monkeypatch.setenv("CODASH_MAX_BATCH_SIZE", "128")
    monkeypatch.setenv("CODASH_MAX_QUEUED", "3")
    limits = Limits.from_env()
    assert limits == Limits(max_epochs=10, max_batch_size=128, max_queued=3)
    found = violations([make_config({"epochs": 11, "batch_size": 256})] * 2, queued=2, limits=limits)
    assert set(found) == {"epochs", "batch_size", "queue"}
    assert "CODASH_MAX_EPOCHS" in found["epochs"] and "at most 10" in found["epochs"]
    assert violations([make_config({"epochs": 10})], queued=2, limits=limits) == {}


@pytest.mark.parametrize("value", ["many", "0", "-4"])
def test_a_bad_limit_setting_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv("CODASH_MAX_QUEUED", value)
    with pytest.raises(ValueError, match="CODASH_MAX_QUEUED"):
        Limits.from_env()


def test_the_form_refuses_runs_past_the_limits_and_queues_nothing(r, monkeypatch):
    monkeypatch.setenv("CODASH_MAX_EPOCHS", "20")
    at = AppTest.from_file(str(MAIN), default_timeout=30).run()
    at.number_input(key="launch.epochs").set_value(30).run()
    assert any("at most 20 epochs" in error.value for error in at.error)
    assert at.button(key="launch.submit").disabled
    assert api.list_runs(r) == []


def test_a_full_queue_disables_launching(r, monkeypatch):
    monkeypatch.setenv("CODASH_MAX_QUEUED", "2")
    for _ in range(2):
        api.submit(r, make_config({"max_iters": 5}))
    at = AppTest.from_file(str(MAIN), default_timeout=30).run()
    assert any("already queued" in error.value for error in at.error)
    assert at.button(key="launch.submit").disabled
    assert len(api.list_runs(r)) == 2


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    """A fresh backoff (it is shared by every session of the process) on a clock the test moves."""
    fake = Clock()
    monkeypatch.setattr(auth, "BACKOFF", auth.Backoff(clock=fake))
    return fake


def sign_in(at: AppTest, password: str) -> list[str]:
    at.text_input(key="auth.password").set_value(password)
    at.button[0].click().run()
    return [error.value for error in at.error]


def test_failed_sign_ins_make_the_next_try_wait_longer_and_are_logged(r, monkeypatch, clock, caplog):
    monkeypatch.setenv("CODASH_PASSWORD", "correct horse battery")
    at = AppTest.from_file(str(MAIN), default_timeout=30).run()
    with caplog.at_level("WARNING", logger="codash.auth"):
        assert sign_in(at, "guess 1") == ["Wrong password."]  # a typo costs nothing
        assert sign_in(at, "guess 2") == ["Wrong password. Wait 1 s before the next try."]
    assert "failed sign-in from unknown (2 from there, 2 in all)" in caplog.text
    # while the wait runs, even the right password is not compared
    assert sign_in(at, "correct horse battery") == ["Too many failed sign-ins: try again in 1 s."]
    clock.now += 1.0
    assert sign_in(at, "guess 3") == ["Wrong password. Wait 2 s before the next try."]
    clock.now += 2.0
    sign_in(at, "correct horse battery")
    assert "Launch a run" in [t.value for t in at.title]


def test_many_clients_guessing_slow_every_guesser_down_but_never_the_owners_first_try(clock):
    backoff = auth.BACKOFF
    for i in range(auth.GLOBAL_FREE_FAILURES):
        assert backoff.failed(f"10.0.0.{i}") == 0.0  # one failure each: free
    assert backoff.failed("10.0.1.1") == 1.0 and backoff.wait_s("10.0.0.3") == 1.0  # guessers wait
    assert backoff.wait_s("192.168.1.1") == 0.0  # the owner, from elsewhere, is not locked out
    for _ in range(10):
        backoff.failed("10.0.1.1")
    assert backoff.wait_s("10.0.1.1") == auth.MAX_DELAY_S  # capped
    clock.now += auth.FORGET_S + auth.MAX_DELAY_S + 1
    assert backoff.wait_s("10.0.1.1") == 0.0 and backoff.wait_s("192.168.1.1") == 0.0


@pytest.mark.parametrize(
    ("password", "says"),
    [
        ("xyz", "must be at least 12 characters (got 3)"),
        ("a" * 12, "at least 8 different characters (got 1)"),
    ],
)
def test_a_short_or_guessable_password_keeps_the_dashboard_closed(r, monkeypatch, password, says):
    monkeypatch.setenv("CODASH_PASSWORD", password)
    at = AppTest.from_file(str(MAIN), default_timeout=30).run()
    assert any(says in error.value for error in at.error)
    assert not at.button and not at.text_input


@pytest.mark.parametrize(("page", "title"), [("runs", "Runs"), ("compare", "Compare runs")])
def test_signing_in_on_a_page_lands_on_that_page(r, monkeypatch, clock, page, title):
    monkeypatch.setenv("CODASH_PASSWORD", "correct horse battery")
    at = AppTest.from_file(str(MAIN), default_timeout=30)
    at.switch_page(f"views/{page}.py").run()
    assert [t.value for t in at.title] == ["codash"]
    sign_in(at, "correct horse battery")
    assert title in [t.value for t in at.title]


def test_the_chart_page_is_served_from_a_private_directory_not_a_planted_one(tmp_path, monkeypatch):
    """Another user could create the old shared path in /tmp first; its page would run in our origin."""
    import hashlib
    import stat

    import plotly

    from app import chart

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    digest = hashlib.sha256(chart.FRONTEND.encode()).hexdigest()[:12]  # the name it once had: guessable
    for name in (f"codash-chart-{os.getuid()}-{plotly.__version__}-{digest}", "codash-chart-planted"):
        planted = tmp_path / name
        planted.mkdir()
        (planted / "index.html").write_text("<script>alert('planted')</script>")
    chart._component.cache_clear()
    try:
        served = Path(chart._component().path)
    finally:
        chart._component.cache_clear()
    assert served.parent == tmp_path and served.name.startswith("codash-chart-")
    assert (served / "index.html").read_text() == chart.FRONTEND
    assert served.stat().st_uid == os.getuid() and stat.S_IMODE(served.stat().st_mode) == 0o700
