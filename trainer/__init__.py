"""codash's training engine: pure PyTorch, no Redis, no Streamlit.

What code is running (`__version__`, `git_commit`) lives here, in the lowest layer, so every layer can say.
"""

import subprocess
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("codash")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"


@cache
def git_commit() -> str | None:
    """The short commit of the checkout codash runs from; None when it is installed (or git is missing).

    Only a checkout whose root holds this package counts: an installed copy inside some other repository
    (a virtualenv in a checkout) would otherwise report that repository's commit.
    """
    package = Path(__file__).resolve().parent
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--show-toplevel", "--short", "HEAD"],
            cwd=package,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = result.stdout.splitlines()
    if result.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != package.parent:
        return None
    return lines[1]


def provenance() -> str:
    """'0.1.0', or '0.1.0 (git 9981d75)' when run from a checkout: which code produced a result."""
    commit = git_commit()
    return f"{__version__} (git {commit})" if commit else __version__
