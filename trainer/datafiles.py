"""What is known about each data set without loading it (and without torch): its shape, its training-set
size, the files torchvision reads and where they live. The dashboard reads these to warn before a launch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

DATASETS = ("digits", "mnist", "svhn", "cifar10")

# (channels, image size, classes) of each data set: lets a model be rebuilt without loading its data.
DATA_SHAPES: dict[str, tuple[int, int, int]] = {
    "digits": (1, 16, 10),
    "mnist": (1, 28, 10),
    "svhn": (3, 32, 10),
    "cifar10": (3, 32, 10),
}

DIGITS_SEED, DIGITS_TRAIN = 0, 1500  # fixed split of the 1,797 sklearn digits: 1,500 train / 297 test
TRAIN_SIZES = {"digits": DIGITS_TRAIN, "mnist": 60_000, "svhn": 73_257, "cifar10": 50_000}

# The files torchvision reads, relative to the data directory; named in DatasetMissing so users can copy them.
EXPECTED_FILES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(
        f"MNIST/raw/{split}-{kind}-ubyte"
        for split in ("train", "t10k")
        for kind in ("images-idx3", "labels-idx1")
    ),
    "svhn": ("train_32x32.mat", "test_32x32.mat"),
    "cifar10": tuple(
        f"cifar-10-batches-py/{name}"
        for name in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
    ),
}


def data_dir() -> Path:
    """Where mnist/svhn/cifar10 live: $CODASH_DATA_DIR, else ~/.cache/codash/data."""
    env = os.environ.get("CODASH_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "codash" / "data"


def missing_files(name: str, root: Path | None = None) -> list[Path]:
    """The files of data set `name` that are not under `root` (the data directory); [] for bundled digits."""
    root = root or data_dir()
    return [root / relative for relative in EXPECTED_FILES.get(name, ()) if not (root / relative).exists()]


def run_length(n_train: int, epochs: int, batch_size: int, max_iters: int | None) -> tuple[int, int]:
    """(iterations per epoch, iterations in the run): the last partial batch of an epoch is dropped."""
    per_epoch = max(1, n_train // batch_size)
    return per_epoch, int(min(epochs * per_epoch, max_iters or math.inf))
