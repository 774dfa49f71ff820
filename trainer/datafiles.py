"""What is known about a data set's files without loading it (and without torch): which files torchvision
reads and where they live. The dashboard reads these to warn before a launch.
"""

from __future__ import annotations

import os
from pathlib import Path

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
