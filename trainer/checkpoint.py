"""Run directories: config.json, last.pt (everything needed to resume exactly), previous.pt (the last.pt it
replaced), best.pt (weights), evals/<iteration>.pt (the state at each live evaluation, for forks) and, in a
fork's directory, fork.pt (its parent's evaluation checkpoint it starts from).

Writes are atomic (temp file + rename), so a crash mid-save never leaves a run without a usable checkpoint.
Reads never run code: a run directory may be shared (NFS), so a checkpoint is untrusted input, and
`torch.load(weights_only=True)` accepts only tensors and plain containers, which is all codash writes.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.co import WINDOW_EVALS
from trainer.config import ConfigError, RunConfig
from trainer.data import DATA_SHAPES
from trainer.fork import (
    BEST_FILE,
    FORK_FILE,
    LAST_FILE,
    PREVIOUS_FILE,
    eval_iterations,
    eval_path,
    link_or_copy,
)
from trainer.models import build_model

CONFIG_FILE = "config.json"
CHECKPOINT_FILES = {"last": LAST_FILE, "previous": PREVIOUS_FILE, "best": BEST_FILE, "fork": FORK_FILE}
BUDGET_ENV = "CODASH_CHECKPOINT_BUDGET_MB"
CPU_GENERATOR_BYTES = torch.Generator().get_state().numel()  # a CUDA generator's state is 16 bytes
DEFAULT_BUDGET_MB = 1024  # every evaluation of a digits run (~0.5 MB each); ~11 of a ResNet-18's (~90 MB)


class UnsafeCheckpoint(ValueError):
    """A checkpoint file holding something other than tensors and plain values: never what codash wrote."""


def atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_last(obj: Any, run_dir: Path) -> None:
    """Write last.pt, keeping the one it replaces as previous.pt.

    A reader of the events (the worker's Redis stream) may have missed the newest checkpoint event, when
    the writer died between saving and reporting it; the run then continues from previous.pt without a gap.
    last.pt exists at every moment: previous.pt is made by a hard link (a copy where links are unsupported).
    """
    last, previous = run_dir / LAST_FILE, run_dir / PREVIOUS_FILE
    if last.exists():
        link_or_copy(last, previous)
    atomic_save(obj, last)


def write_config(run_dir: Path, config: RunConfig) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / (CONFIG_FILE + ".tmp")
    tmp.write_text(config.model_dump_json(indent=2))
    os.replace(tmp, run_dir / CONFIG_FILE)


def read_config(run_dir: Path) -> RunConfig:
    return RunConfig.model_validate_json((Path(run_dir) / CONFIG_FILE).read_text())


def load_checkpoint(run_dir: Path, which: str = "last", device: str | torch.device = "cpu") -> dict | None:
    """The saved dict, or None when there is no such file; UnsafeCheckpoint when it would run code."""
    path = Path(run_dir) / CHECKPOINT_FILES[which]
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line]
        raise UnsafeCheckpoint(
            f"refused to load {path}: it holds objects that only code can rebuild, which codash never "
            f"writes (a planted or foreign file?); {(refused or ['not a weights-only checkpoint'])[0]}"
        ) from None


# --- evaluation checkpoints: where a fork can start ---


def budget_bytes() -> int:
    """The disk one run's evaluation checkpoints may take ($CODASH_CHECKPOINT_BUDGET_MB; 0 keeps none)."""
    text = os.environ.get(BUDGET_ENV, str(DEFAULT_BUDGET_MB))
    try:
        megabytes = float(text)
    except ValueError:
        megabytes = -1.0
    if not 0 <= megabytes <= 10_000_000:
        raise ConfigError({BUDGET_ENV: f"must be megabytes in [0, 10000000] (got {text!r})"})
    return int(megabytes * 2**20)


def save_eval(obj: dict, run_dir: Path, iteration: int, co_onset: int | None) -> None:
    """Keep the run's state at this evaluation, then thin the older ones to the disk budget.

    Always kept: the newest WINDOW_EVALS (a CO onset can still be declared among them, and the evaluation
    before it is the one to fork from) and, once CO is declared, its onset and the evaluation before it.
    """
    budget = budget_bytes()
    if budget == 0:
        return
    path = eval_path(run_dir, iteration)
    path.parent.mkdir(exist_ok=True)
    atomic_save(obj, path)
    sizes = {it: eval_path(run_dir, it).stat().st_size for it in eval_iterations(run_dir)}
    kept = sorted(sizes)
    protected = set(kept[-WINDOW_EVALS:])
    if co_onset is not None:
        protected |= {co_onset, *[it for it in kept if it < co_onset][-1:]}
    for dropped in thin(sizes, protected, budget):
        eval_path(run_dir, dropped).unlink(missing_ok=True)


def thin(sizes: dict[int, int], protected: set[int], budget: int) -> list[int]:
    """Which checkpoints to drop so the rest fit `budget` bytes, spread evenly over the run.

    Each step drops the unprotected checkpoint whose neighbours are closest together (the smallest hole
    it would leave), the earliest of equals; protected ones stay even over budget.
    """
    kept, dropped = sorted(sizes), []
    while sum(sizes[it] for it in kept) > budget:
        candidates = [i for i, it in enumerate(kept) if it not in protected]
        if not candidates:
            break

        def hole(i: int) -> tuple[int, int]:
            left = kept[i - 1] if i > 0 else 0
            right = kept[i + 1] if i + 1 < len(kept) else kept[i]
            return right - left, kept[i]

        dropped.append(kept.pop(min(candidates, key=hole)))
    return dropped


def fork_state(run_dir: Path, config: RunConfig, device: str | torch.device) -> dict:
    """A fork's starting point: its parent's state at fork_iteration (fork.pt); also seeds its best.pt.

    The parent's best weights up to that iteration become the fork's, so its early-stopped model is the
    same as the parent's until the fork does better.
    """
    saved = load_checkpoint(run_dir, "fork", device)
    if saved is None:
        raise ConfigError(
            {
                "parent": f"no fork.pt in {run_dir}: a fork starts from its parent's checkpoint at iteration "
                f"{config.fork_iteration}; queue forks with `codash fork` (or jobs.api.fork)"
            }
        )
    if saved["state"]["iteration"] != config.fork_iteration:
        held = saved["state"]["iteration"]
        raise ConfigError({"fork_iteration": f"fork.pt holds iteration {held}, not {config.fork_iteration}"})
    best = saved["best_model"] if saved["best_model"] is not None else saved["model"]
    atomic_save({"model": best, "iteration": saved["state"]["best_iteration"]}, Path(run_dir) / BEST_FILE)
    return saved


def check_device(saved: dict, generator: torch.Generator) -> None:
    """Refuse, before the run starts, a checkpoint trained on the other kind of device: its training
    generator's state cannot become this one's (a CPU generator's is 5,056 bytes, a CUDA one's 16), so the
    run could not continue as it would have. Between CUDA devices a checkpoint moves as it is."""
    held = saved["generator"].numel()
    if held == generator.get_state().numel():
        return
    trained_on = "cpu" if held == CPU_GENERATOR_BYTES else "cuda"
    raise ConfigError(
        {
            "device": f"the checkpoint was trained on {trained_on} and this run is on {generator.device}: "
            f"a training generator's state cannot move between the CPU and a GPU; run it on {trained_on}"
        }
    )


def model_for(config: RunConfig) -> nn.Module:
    channels, size, classes = DATA_SHAPES[config.dataset]
    return build_model(
        config.model,
        in_channels=channels,
        image_size=size,
        n_classes=classes,
        n_layers=config.n_layers,
        n_filters=config.n_filters,
        init=config.init,
    )


def load_model(run_dir: str | Path, which: str = "last", device: str | torch.device = "cpu") -> nn.Module:
    """The trained network of a run, in eval mode, taking inputs in [0,1]."""
    if which not in ("last", "best"):
        raise ValueError(f"which: must be 'last' or 'best', got {which!r}")
    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir, which, device)
    if state is None:
        raise FileNotFoundError(f"no {which} checkpoint in {run_dir}")
    model = model_for(read_config(run_dir)).to(device)
    model.load_state_dict(state["model"])
    return model.eval()
