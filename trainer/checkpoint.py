"""Run directories: config.json, last.pt (everything needed to resume exactly), previous.pt (the last.pt it
replaced) and best.pt (weights).

Writes are atomic (temp file + rename), so a crash mid-save never leaves a run without a usable checkpoint.
Reads never run code: a run directory may be shared (NFS), so a checkpoint is untrusted input, and
`torch.load(weights_only=True)` accepts only tensors and plain containers, which is all codash writes.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.config import RunConfig
from trainer.data import DATA_SHAPES
from trainer.models import build_model

CONFIG_FILE, LAST_FILE, PREVIOUS_FILE, BEST_FILE = "config.json", "last.pt", "previous.pt", "best.pt"
CHECKPOINT_FILES = {"last": LAST_FILE, "previous": PREVIOUS_FILE, "best": BEST_FILE}


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
        tmp = previous.with_name(previous.name + ".tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(last, tmp)
        except OSError:
            shutil.copyfile(last, tmp)
        os.replace(tmp, previous)
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


def model_for(config: RunConfig) -> nn.Module:
    channels, size, classes = DATA_SHAPES[config.dataset]
    return build_model(
        config.model,
        in_channels=channels,
        image_size=size,
        n_classes=classes,
        n_layers=config.n_layers,
        n_filters=config.n_filters,
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
