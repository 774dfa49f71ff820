"""Forks: a run that continues another run's state at one of its evaluations, with a changed config.

Torch-free, so the queue (jobs/) can check and prepare a fork without importing torch: where evaluation
checkpoints live in a run directory, what a fork may change, the fork's own copy of its starting point,
and the GradAlign weight a one-click rescue uses.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from trainer.config import ConfigError, RunConfig, lambda_of_eps

FORK_FILE, EVALS_DIR = "fork.pt", "evals"
LAST_FILE, PREVIOUS_FILE, BEST_FILE = "last.pt", "previous.pt", "best.pt"
LINK_FIELDS = ("parent", "fork_iteration")  # the RunConfig fields that make a run a fork
# The parent's weights and optimizer state must fit the fork's network and optimizer.
FIXED = ("dataset", "model", "n_layers", "n_filters", "optimizer")


def checkpoint_files(run_dir: Path) -> dict[str, Path]:
    """The checkpoints a user can download, by name: the last, the early-stopped best, each evaluation's."""
    run_dir = Path(run_dir)
    named = {"last": run_dir / LAST_FILE, "best": run_dir / BEST_FILE}
    files = {name: path for name, path in named.items() if path.is_file()}
    return files | {f"iteration {it}": eval_path(run_dir, it) for it in eval_iterations(run_dir)}


def eval_path(run_dir: Path, iteration: int) -> Path:
    return Path(run_dir) / EVALS_DIR / f"{iteration}.pt"


def eval_iterations(run_dir: Path) -> list[int]:
    """The iterations that have an evaluation checkpoint (where a fork can start), ascending."""
    folder = Path(run_dir) / EVALS_DIR
    names = (path.stem for path in folder.glob("*.pt")) if folder.is_dir() else ()
    return sorted(int(name) for name in names if name.isdigit())


def last_before(iterations: list[int], iteration: int) -> int | None:
    """The latest of `iterations` before `iteration`: the evaluation to fork from before a CO onset."""
    return max((it for it in iterations if it < iteration), default=None)


def link_or_copy(source: Path, target: Path) -> None:
    """Make `target` a file with `source`'s bytes that outlives `source` (a hard link, else a copy),
    atomically."""
    tmp = target.with_name(target.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp, follow_symlinks=False)
    except OSError:
        shutil.copyfile(source, tmp, follow_symlinks=False)
        shutil.copymode(source, tmp, follow_symlinks=False)  # a private checkpoint stays private
    os.replace(tmp, target)


def seed_fork(parent_dir: Path, iteration: int, child_dir: Path) -> None:
    """Give a fork its own copy of the parent's evaluation checkpoint (a hard link where possible), so
    deleting the parent, or the parent thinning its checkpoints, leaves the fork able to start and resume."""
    source = eval_path(parent_dir, iteration)
    if source.is_symlink() or source.parent.is_symlink():  # a planted link would copy whatever it points at
        raise ConfigError({"fork_iteration": f"the parent's checkpoint at iteration {iteration} is a link"})
    if not source.exists():
        available = ", ".join(map(str, eval_iterations(parent_dir))) or "none"
        message = f"the parent has no checkpoint at iteration {iteration}; available: {available}"
        raise ConfigError({"fork_iteration": message})
    Path(child_dir).mkdir(parents=True, exist_ok=True)
    link_or_copy(source, Path(child_dir) / FORK_FILE)


def check_fork(parent: RunConfig, child: RunConfig) -> None:
    """A fork may change anything but what its parent's checkpoint must fit (FIXED)."""
    changed = [field for field in FIXED if getattr(parent, field) != getattr(child, field)]
    if changed:
        keeps = "{}: a fork keeps its parent's {!r} (got {!r})"
        raise ConfigError("; ".join(keeps.format(f, getattr(parent, f), getattr(child, f)) for f in changed))


def rescue_lambda(config: RunConfig) -> float:
    """GradAlign's λ for a rescue fork of `config`: λ(ε) for its data set and ε (the digits fit on digits,
    the paper's rule elsewhere), so the rescue follows ε as the launch form's suggestion does."""
    return lambda_of_eps("grad_align_lambda", config.dataset, config.eps)
