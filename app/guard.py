"""The dashboard's front door: an ASGI middleware in front of every Streamlit route (app/server.py).

- Host allow-list, HTTP and websocket alike: a web page that rebinds its own name to 127.0.0.1 (DNS
  rebinding) sends its own name as Host and is refused, so it cannot drive a loopback dashboard. Allowed:
  the loopback names, the address `codash up --host` serves (CODASH_SERVE_HOST; for 0.0.0.0 or :: this
  machine's host names), and the names in CODASH_ALLOWED_HOSTS (comma-separated; `*` allows any).
- Origin check on the websocket and on every state-changing HTTP request: a browser names the page that
  opened them, and a page served from anywhere but the dashboard itself (another port on localhost too: a
  dev server, a notebook) is refused, unless CODASH_ALLOWED_ORIGINS names it. Clients that send no Origin
  (not browsers) are not the threat this closes and pass.
- Streamlit routes codash has no use for answer 404 to everyone, signed in or not: `/_stcore/metrics`,
  and the upload endpoint (codash has no uploader, so nothing may be uploaded).
- `load_git_info` messages are dropped: the answer names the checkout's repository, branch and untracked
  files, to anyone, before sign-in.
- `clear_cache` messages from browsers are dropped: codash has no use for them, and one would empty the
  shared caches (the Redis connection) for every user, signed in or not.
- Every HTTP answer forbids framing by other sites (X-Frame-Options, CSP frame-ancestors) and MIME sniffing;
  the dashboard's own chart components are same-origin iframes, so 'self' stays allowed.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SERVE_HOST_ENV, ALLOWED_HOSTS_ENV = "CODASH_SERVE_HOST", "CODASH_ALLOWED_HOSTS"
ALLOWED_ORIGINS_ENV = "CODASH_ALLOWED_ORIGINS"  # e.g. https://dash.lab.org, behind a proxy that rewrites Host
HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")  # labels; one trailing dot (the root) at most
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Browser messages codash has no use for: one empties the caches every session shares, the other answers
# with the checkout's repository, branch and untracked file names to anyone, signed in or not.
DROPPED = frozenset({"clear_cache", "load_git_info"})
CLOSED_PATHS = ("/_stcore/metrics", "/_stcore/upload_file")
SECURITY_HEADERS = [
    (b"x-frame-options", b"SAMEORIGIN"),
    (b"content-security-policy", b"frame-ancestors 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
log = logging.getLogger("codash.guard")


def allowed_hosts(serve_host: str | None = None, extra: str | None = None) -> frozenset[str]:
    """The Host names the dashboard answers to (lower case, without port)."""
    names = set(LOOPBACK_NAMES)
    if serve_host in ("0.0.0.0", "::"):
        names |= {socket.gethostname(), socket.getfqdn()}
    elif serve_host:
        names.add(serve_host)
    names |= {name.strip() for name in (extra or "").split(",") if name.strip()}
    return frozenset(name.lower().strip("[]").rstrip(".") for name in names)


def host_name(header: str) -> str:
    """The name in a Host header: 'Example.org:8501' -> 'example.org', '[::1]:8501' -> '::1'; '' for
    anything that is not exactly a name or an address with an optional port ('[::1].evil.example',
    'localhost..')."""
    header = header.strip().lower()
    bracketed = re.fullmatch(r"\[([^\]]+)\](?::\d{1,5})?", header)
    if bracketed:
        return bracketed[1] if _is_address(bracketed[1]) else ""
    if _is_address(header):  # a bare address: IPv4, or IPv6 without brackets
        return header
    name, port = re.fullmatch(r"(.*?)(?::(\d{1,5}))?", header).groups()
    return name.removesuffix(".") if HOST_NAME.fullmatch(name) else ""


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def same_origin(origin: str, host: str, allowed: frozenset[str]) -> bool:
    """Whether a request's Origin is the dashboard's own (the scheme's host and port are the Host it was
    sent to) or one CODASH_ALLOWED_ORIGINS names: a page served anywhere else (another port on localhost
    too) may not drive the dashboard."""
    origin = origin.strip().lower().rstrip("/")
    if origin in allowed or "*" in allowed:
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.netloc == host.strip().lower()


def dropped(data: bytes | None) -> str | None:
    """The type of a browser message codash drops (DROPPED), else None."""
    from streamlit.proto.BackMsg_pb2 import BackMsg  # here: `codash up` reads this module without Streamlit

    if not data:
        return None
    message = BackMsg()
    try:
        message.ParseFromString(data)
    except Exception:  # not ours to judge: Streamlit refuses what it cannot parse
        return None
    kind = message.WhichOneof("type")
    return kind if kind in DROPPED else None


class Guard:
    def __init__(
        self, app: ASGIApp, hosts: frozenset[str] | None = None, origins: frozenset[str] | None = None
    ):
        self.app = app
        self.hosts = hosts or allowed_hosts(os.environ.get(SERVE_HOST_ENV), os.environ.get(ALLOWED_HOSTS_ENV))
        listed = os.environ.get(ALLOWED_ORIGINS_ENV, "")
        self.origins = origins or frozenset(
            o.strip().lower().rstrip("/") for o in listed.split(",") if o.strip()
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        host = host_name(headers.get(b"host", b"").decode("latin-1"))
        if "*" not in self.hosts and host not in self.hosts:
            client = (scope.get("client") or ("?",))[0]
            log.warning("codash: refused a request for host %r from %s (CODASH_ALLOWED_HOSTS)", host, client)
            await self._refuse(kind, send, 403, b"unknown host: add it to CODASH_ALLOWED_HOSTS")
            return
        origin = headers.get(b"origin")
        changes_state = kind == "websocket" or scope.get("method", "GET") not in SAFE_METHODS
        raw_host = headers.get(b"host", b"").decode("latin-1")
        if (
            changes_state
            and origin is not None
            and not same_origin(origin.decode("latin-1"), raw_host, self.origins)
        ):
            log.warning("codash: refused a %s request from origin %r (CODASH_ALLOWED_ORIGINS)", kind, origin)
            await self._refuse(kind, send, 403, b"foreign origin: add it to CODASH_ALLOWED_ORIGINS")
            return
        if kind == "http" and any(path in scope["path"] for path in CLOSED_PATHS):
            await self._refuse(kind, send, 404, b"not found")
            return
        if kind == "http":
            await self.app(scope, receive, self._with_headers(send))
        else:
            await self.app(scope, self._without_dropped(receive), send)

    @staticmethod
    async def _refuse(kind: str, send: Send, status: int, body: bytes) -> None:
        if kind == "websocket":  # closing before accepting: the handshake gets HTTP 403
            await send({"type": "websocket.close", "code": 1008})
            return
        headers = [(b"content-type", b"text/plain"), *SECURITY_HEADERS]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _with_headers(send: Send) -> Send:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(name, value) for name, value in SECURITY_HEADERS if name not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return sending

    @staticmethod
    def _without_dropped(receive: Receive) -> Receive:
        async def receiving() -> Message:
            while True:
                message = await receive()
                kind = dropped(message.get("bytes")) if message["type"] == "websocket.receive" else None
                if kind:
                    log.warning("codash: dropped a %s message from a browser", kind)
                    continue
                return message

        return receiving
