"""The dashboard password (CODASH_PASSWORD): one shared secret for a lab, checked in constant time.

Without the variable the dashboard is open — `codash up` then only listens on 127.0.0.1. Once signed in,
a browser session stays signed in across pages and refreshes of the app's own state; a new tab asks again.
"""

from __future__ import annotations

import hmac
import os

import streamlit as st

SIGNED_IN = "auth.signed_in"


def password_ok(entered: str, expected: str) -> bool:
    return hmac.compare_digest(entered.encode(), expected.encode())


def require_password() -> None:
    """Show the sign-in form and stop the script until the right password is entered."""
    expected = os.environ.get("CODASH_PASSWORD")
    if not expected or st.session_state.get(SIGNED_IN):
        return
    st.title("codash")
    with st.form("sign_in"):
        entered = st.text_input("Dashboard password", type="password", key="auth.password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        if password_ok(entered, expected):
            st.session_state[SIGNED_IN] = True
            st.rerun()
        st.error("Wrong password.")
    st.stop()
