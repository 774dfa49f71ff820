"""The dashboard password (CODASH_PASSWORD): one shared secret for a lab, checked in constant time.

Without the variable the dashboard is open — `codash up` then only listens on loopback. Once signed in, a
browser session stays signed in across pages and refreshes of the app's own state; a new tab asks again.

Guessing is slow: after a client's first failure each further one doubles the wait before it may try again
(1 s, 2 s, 4 s, … up to 5 minutes), and past GLOBAL_FREE_FAILURES failures from anywhere every client that
has failed waits as well, so many addresses guessing at once are slowed too, while a first try (the owner's,
from anywhere) always goes through. The address is the connection's own: forwarded headers count only
from the proxies CODASH_TRUSTED_PROXIES names (codash up). While a wait runs the password is not even
compared. Each failure is logged with the client's address. Served beyond loopback, put it behind TLS
(README): the password crosses the network in every sign-in.
"""

from __future__ import annotations

import hmac
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import streamlit as st

from app.password import PASSWORD_ENV, password_problem

SIGNED_IN = "auth.signed_in"
BASE_DELAY_S, MAX_DELAY_S = 1.0, 300.0
GLOBAL_FREE_FAILURES = 20  # failures from all clients together before everyone waits
FORGET_S = 900.0  # a failure count starts over after this long without a failure
log = logging.getLogger("codash.auth")


def password_ok(entered: str, expected: str) -> bool:
    return hmac.compare_digest(entered.encode(), expected.encode())


def delay_s(failures: int, free: int) -> float:
    """The wait after `failures` failures of which the first `free` cost nothing: doubling, capped."""
    over = failures - free
    return 0.0 if over <= 0 else min(MAX_DELAY_S, BASE_DELAY_S * 2 ** min(over - 1, 32))


@dataclass
class Backoff:
    """Failed sign-ins per client address and in total, shared by every session of this server process."""

    clock: Callable[[], float] = time.monotonic
    _clients: dict[str, tuple[int, float]] = field(default_factory=dict)  # address -> (failures, last)
    _total: tuple[int, float] = (0, 0.0)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_s(self, client: str) -> float:
        """Seconds before `client` may try again (0: now)."""
        now = self.clock()
        with self._lock:
            mine, mine_at = self._current(self._clients.get(client, (0, 0.0)), now)
            total, total_at = self._current(self._total, now)
        own = delay_s(mine, free=1) - (now - mine_at)
        # many addresses guessing slow every guesser down, but never a client's first try: a guesser cannot
        # lock the owner out
        everyone = delay_s(total, free=GLOBAL_FREE_FAILURES) - (now - total_at) if mine else 0.0
        return max(0.0, own, everyone)

    def failed(self, client: str) -> float:
        """Count a failure; returns the wait it imposes on this client."""
        now = self.clock()
        with self._lock:
            mine = self._current(self._clients.get(client, (0, 0.0)), now)[0] + 1
            total = self._current(self._total, now)[0] + 1
            self._clients[client] = (mine, now)
            self._total = (total, now)
        wait = self.wait_s(client)
        log.warning(
            "codash: failed sign-in from %s (%d from there, %d in all); next try allowed in %.0f s",
            client,
            mine,
            total,
            wait,
        )
        return wait

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._clients.pop(client, None)

    @staticmethod
    def _current(count: tuple[int, float], now: float) -> tuple[int, float]:
        failures, at = count
        return (0, 0.0) if failures and now - at > FORGET_S else count


BACKOFF = Backoff()


def client_address() -> str:
    """The browser's address as the server sees it (a proxy's, behind one); 'unknown' in tests."""
    address = st.context.ip_address
    return address if isinstance(address, str) and address else "unknown"


def signed_in() -> bool:
    return not os.environ.get(PASSWORD_ENV) or bool(st.session_state.get(SIGNED_IN))


def require_password() -> None:
    """Show the sign-in form and stop the script until the right password is entered."""
    expected = os.environ.get(PASSWORD_ENV)
    if signed_in():
        return
    problem = password_problem(expected)
    if problem:
        st.error(f"The dashboard is closed: {problem}. Set a longer one and restart it.")
        st.stop()
    st.title("codash")
    with st.form("sign_in"):
        entered = st.text_input("Dashboard password", type="password", key="auth.password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        client = client_address()
        wait = BACKOFF.wait_s(client)
        if wait > 0:
            st.error(f"Too many failed sign-ins: try again in {math.ceil(wait)} s.")
        elif password_ok(entered, expected):
            BACKOFF.succeeded(client)
            st.session_state[SIGNED_IN] = True
            st.rerun()
        else:
            wait = BACKOFF.failed(client)
            st.error("Wrong password." + (f" Wait {math.ceil(wait)} s before the next try." if wait else ""))
    st.stop()
