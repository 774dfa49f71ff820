"""The rules for CODASH_PASSWORD, without Streamlit: the dashboard (app.auth) and `codash up` apply them."""

from __future__ import annotations

import secrets

PASSWORD_ENV = "CODASH_PASSWORD"
MIN_PASSWORD_LENGTH = 12
MIN_DISTINCT_CHARACTERS = 8  # 'aaaaaaaaaaaa' is long and guessed at once


def password_problem(password: str) -> str | None:
    """Why a dashboard password is too weak to serve with (None if it is long enough)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"{PASSWORD_ENV}: must be at least {MIN_PASSWORD_LENGTH} characters (got {len(password)})"
    distinct = len(set(password))
    if distinct < MIN_DISTINCT_CHARACTERS:
        return (
            f"{PASSWORD_ENV}: too easy to guess: use at least {MIN_DISTINCT_CHARACTERS} different characters "
            f"(got {distinct})"
        )
    return None


def generated_password() -> str:
    """A password to offer: 24 URL-safe characters (144 random bits), easy to paste."""
    return secrets.token_urlsafe(18)
