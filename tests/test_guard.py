"""The dashboard's front door against a real `streamlit run app/server.py` (what `codash up` runs): foreign
Host headers refused over HTTP and websocket (DNS rebinding), unused endpoints closed, framing forbidden,
and in a real browser, signing in on a page lands on that page.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS, ROOT, wait_for
from streamlit.proto.BackMsg_pb2 import BackMsg
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from app.guard import Guard, allowed_hosts, host_name
from codash.up import app_argv, app_env, dashboard_healthy
from jobs.server import ensure_server, free_port

PASSWORD = "correct horse battery"


@dataclass
class Served:
    port: int
    log: Path


@pytest.fixture(scope="module")
def served(shared_redis_home: Path, tmp_path_factory) -> Iterator[Served]:
    """The dashboard as `codash up` starts it, on a free port, with a password and one extra host name: one
    for the module (its tests make one failed sign-in in all, which costs no wait)."""
    port = free_port()
    log = tmp_path_factory.mktemp("guard") / "streamlit.log"
    env = {
        **os.environ,
        "REDIS_URL": ensure_server(shared_redis_home),
        "CODASH_PASSWORD": PASSWORD,
        "CODASH_ALLOWED_HOSTS": "dash.example.org",
        **app_env("127.0.0.1"),
    }
    with open(log, "w") as out:
        process = subprocess.Popen(app_argv("127.0.0.1", port), cwd=ROOT, env=env, stdout=out, stderr=out)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: dashboard_healthy(url) or process.poll() is not None, 90, "the dashboard to answer")
        assert process.poll() is None, log.read_text()
        yield Served(port, log)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module's browser tests; each test opens its own context (cookies, headers)."""
    playwright = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip(f"Debian Chromium not found at {CHROMIUM}")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def get(port: int, path: str, host: str, method: str = "GET") -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request(method, path, headers={"Host": host})
    response = connection.getresponse()
    response.read()
    return response


def websocket(port: int, host: str, origin: str | None = None) -> None:
    """Open the app's websocket with `host` in the Host header (and `origin` as the page that opens it), as
    a rebound page's script, or another origin's, would."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    headers = {"Origin": origin} if origin else None
    with connect(
        f"ws://{host}/_stcore/stream",
        sock=sock,
        subprotocols=["streamlit"],
        open_timeout=10,
        additional_headers=headers,
        origin=None,
    ):
        pass


def test_a_foreign_host_is_refused_over_http_and_websocket(served):
    port = served.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "dash.example.org"):
        assert get(port, "/", host).status == 200, host
        websocket(port, host)
    for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.attacker.example", ""):
        assert get(port, "/", host).status == 403, host
        assert get(port, "/_stcore/health", host).status == 403, host
        with pytest.raises(InvalidStatus, match="403"):
            websocket(port, host or "x")


def test_unused_endpoints_are_closed_and_framing_is_forbidden(served):
    port, host = served.port, f"127.0.0.1:{served.port}"
    assert get(port, "/_stcore/health", host).status == 200
    assert get(port, "/_stcore/metrics", host).status == 404
    assert get(port, "/_stcore/upload_file/session/file", host, "PUT").status == 404
    page = get(port, "/", host)
    assert page.getheader("X-Frame-Options") == "SAMEORIGIN"
    assert page.getheader("Content-Security-Policy") == "frame-ancestors 'self'"


def test_up_serves_the_guarded_app_with_the_smallest_upload_limit():
    argv = app_argv("0.0.0.0", 8501)
    assert argv[argv.index("run") + 1].endswith("app/server.py")
    assert argv[argv.index("--server.maxUploadSize") + 1] == "1"


def test_allowed_hosts():
    assert allowed_hosts() == {"localhost", "127.0.0.1", "::1"}
    assert "dash.lab.org" in allowed_hosts("dash.lab.org")
    assert socket.gethostname().lower() in allowed_hosts("0.0.0.0", "a.org, B.org.")
    assert {"a.org", "b.org"} <= allowed_hosts("0.0.0.0", "a.org, B.org.")
    assert [host_name(h) for h in ("Example.ORG:8501", "[::1]:8501", "::1", "a.org.")] == [
        "example.org",
        "::1",
        "::1",
        "a.org",
    ]
    strict = ("[::1].evil.example", "localhost..", "[::1]x", "[evil]:80", "localhost:abc", "a..b", "a b")
    assert [host_name(header) for header in strict] == [""] * len(strict)


def test_a_page_from_another_origin_cannot_open_the_websocket(served):
    """Another port on the same host is another origin: a dev server's page must not drive the dashboard."""
    port = served.port
    websocket(port, f"127.0.0.1:{port}", origin=f"http://127.0.0.1:{port}")  # the dashboard's own page
    websocket(port, f"127.0.0.1:{port}")  # no Origin: not a browser
    for origin in (f"http://127.0.0.1:{port + 1}", f"http://localhost:{port}", "null", "http://evil.example"):
        with pytest.raises(InvalidStatus, match="403"):
            websocket(port, f"127.0.0.1:{port}", origin=origin)


def test_chromium_on_a_second_local_origin_cannot_reach_the_dashboard(served, tmp_path, browser):
    page_port = free_port()
    (tmp_path / "index.html").write_text(
        "<script>const ws = new WebSocket('ws://127.0.0.1:PORT/_stcore/stream', 'streamlit');"
        "ws.onopen = () => { document.title = 'opened'; };"
        "ws.onerror = ws.onclose = () => { if (document.title !== 'opened') document.title = 'refused'; };"
        "</script>".replace("PORT", str(served.port))
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(page_port), "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: dashboard_reachable(page_port), 30, "the second origin's server")
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{page_port}/index.html")
        wait_for(lambda: page.title() in ("opened", "refused"), 30, "the websocket to open or fail")
        assert page.title() == "refused"
        page.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


def dashboard_reachable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_clear_cache_and_git_info_from_a_browser_never_reach_streamlit():
    """Any client (signed in or not) could otherwise empty the caches every session shares, or read the
    checkout's repository, branch and untracked file names."""
    clear, rerun, git = BackMsg(), BackMsg(), BackMsg()
    clear.clear_cache = True
    git.load_git_info = True
    rerun.rerun_script.page_name = "runs"
    incoming = [clear, git, rerun, clear]
    messages = [{"type": "websocket.receive", "bytes": m.SerializeToString()} for m in incoming]
    messages.append({"type": "websocket.disconnect"})
    seen = []

    async def streamlit(scope, receive, send):
        while (message := await receive())["type"] != "websocket.disconnect":
            parsed = BackMsg()
            parsed.ParseFromString(message["bytes"])
            seen.append(parsed.WhichOneof("type"))

    async def receive():
        return messages.pop(0)

    async def send(message):
        raise AssertionError(message)

    scope = {"type": "websocket", "path": "/_stcore/stream", "headers": [(b"host", b"localhost:8501")]}
    with ThreadPoolExecutor(1) as thread:  # a loop of its own: the module's Playwright runs one here
        thread.submit(asyncio.run, Guard(streamlit)(scope, receive, send)).result()
    assert seen == ["rerun_script"]


def test_a_forwarded_address_from_loopback_is_not_believed(served, browser):
    """Each guess under a fresh X-Forwarded-For would get a fresh budget, and forge the logged address."""
    page = browser.new_page(extra_http_headers={"X-Forwarded-For": "6.6.6.6", "X-Real-IP": "6.6.6.6"})
    page.goto(f"http://127.0.0.1:{served.port}/", timeout=60_000)
    page.get_by_label("Dashboard password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("Wrong password").wait_for(timeout=60_000)
    page.close()
    log = served.log.read_text()
    assert "failed sign-in from" in log and "6.6.6.6" not in log  # loopback itself logs as "unknown"


def test_signing_in_on_a_page_lands_on_that_page_in_a_browser(served, browser):
    page = browser.new_page()  # a context of its own: not signed in
    page.goto(f"http://127.0.0.1:{served.port}/runs", timeout=60_000)
    page.get_by_label("Dashboard password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Runs").wait_for(timeout=60_000)
    assert page.url.endswith("/runs")
    page.close()
