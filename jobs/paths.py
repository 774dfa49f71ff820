"""Where codash keeps its files: CODASH_HOME (server, password) and CODASH_RUNS_DIR (checkpoints).

The runs directory is separate so that workers on many hosts can share one volume for artifacts.
"""

from __future__ import annotations

import os
from pathlib import Path

from jobs import keys


def codash_home() -> Path:
    """$CODASH_HOME, else ~/.local/state/codash (XDG state: outlives a session, but is not config)."""
    env = os.environ.get("CODASH_HOME")
    return Path(env).expanduser() if env else Path.home() / ".local" / "state" / "codash"


def runs_dir() -> Path:
    env = os.environ.get("CODASH_RUNS_DIR")
    return Path(env).expanduser() if env else codash_home() / "runs"


def run_dir(run_id: str) -> Path:
    """A run's checkpoints (last.pt, best.pt, config.json); the id is checked so it can never escape."""
    if not keys.RUN_ID.fullmatch(run_id):
        raise ValueError(f"not a run id: {run_id!r}")
    return runs_dir() / run_id
