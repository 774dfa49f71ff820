"""Data sets as whole tensors on the training device, and the paper's augmentation as batched tensor ops.

Small images fit on any device in full, so batches are plain index lookups (airbench style): no DataLoader,
no worker processes, no per-image PIL transforms, and augmentation draws only from an explicit generator,
which keeps runs exactly reproducible and resumable.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainer.config import DATA_SHAPES, TRAIN_IMAGES
from trainer.datafiles import EXPECTED_FILES, data_dir

DATASETS = tuple(DATA_SHAPES)

DIGITS_SEED, DIGITS_TRAIN = 0, TRAIN_IMAGES["digits"]  # a fixed split of the 1,797 digits: 1,500 / 297
CROP_PAD = 4


@dataclass(frozen=True, eq=False)  # eq=False: tensor equality is elementwise, not a bool
class Dataset:
    name: str
    train_x: torch.Tensor  # float32, N×C×H×W in [0, 1]
    train_y: torch.Tensor  # int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    n_classes: int

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_x.shape[-1]


class DatasetMissing(FileNotFoundError):
    """A data set whose files are not on disk; the message says where they go and how to get them."""


def _missing(name: str, root: Path, reason: str) -> DatasetMissing:
    """Built from the message alone, so the exception pickles (e.g. across a job queue) like any OSError."""
    listing = "\n".join(f"  {root / f}" for f in EXPECTED_FILES[name])
    return DatasetMissing(
        f"data set {name!r} not found in {root} ({reason}). Expected files:\n{listing}\n"
        f"To get them, run once with internet access and CODASH_DOWNLOAD=1 (torchvision downloads them "
        f"into {root}), or copy the files there; set CODASH_DATA_DIR to use another directory."
    )


def load_dataset(name: str, device: torch.device | str = "cpu", root: Path | None = None) -> Dataset:
    """The whole data set as tensors on `device`; digits is bundled, the others are read from `root`."""
    if name not in DATASETS:
        raise ValueError(f"dataset: must be one of {', '.join(DATASETS)}; got {name!r}")
    if name == "digits":
        train_x, train_y, test_x, test_y = _digits()
    else:
        train_x, train_y, test_x, test_y = _torchvision(name, Path(root) if root else data_dir())
    return Dataset(
        name=name,
        train_x=_to_unit(train_x, device),
        train_y=train_y.to(device),
        test_x=_to_unit(test_x, device),
        test_y=test_y.to(device),
        n_classes=DATA_SHAPES[name][2],
    )


def _to_unit(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """uint8 images are moved first (4× less to copy), then scaled to float32 in [0, 1] on the device."""
    x = x.to(device)
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def _digits() -> tuple[torch.Tensor, ...]:
    """sklearn's bundled 8×8 digits, upsampled to 16×16 so the conv models have some room; works offline."""
    images, target = digits_arrays()
    order = np.random.default_rng(DIGITS_SEED).permutation(len(target))  # own RNG: same split always
    x = torch.from_numpy(images[order] / 16.0).float().unsqueeze(1)
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False).clamp_(0, 1)
    y = torch.from_numpy(target[order]).long()
    return x[:DIGITS_TRAIN], y[:DIGITS_TRAIN], x[DIGITS_TRAIN:], y[DIGITS_TRAIN:]


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """sklearn.datasets.load_digits()'s images (1,797 × 8 × 8, values 0-16) and labels, read from the CSV
    scikit-learn ships: importing sklearn.datasets (it imports scipy) takes ~1.7 s of a process's first
    digits run, reading the file 10 ms."""
    package = importlib.util.find_spec("sklearn")
    path = Path(package.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.exists():  # a scikit-learn that keeps its data elsewhere
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images, digits.target
    with gzip.open(path, "rt") as file:
        data = np.loadtxt(file, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def _torchvision(name: str, root: Path) -> tuple[torch.Tensor, ...]:
    """Read both splits through torchvision, keeping its raw uint8 arrays (N×C×H×W) and int64 labels."""
    from torchvision import datasets

    download = os.environ.get("CODASH_DOWNLOAD") == "1"
    try:
        if name == "mnist":
            splits = [datasets.MNIST(root, train=t, download=download) for t in (True, False)]
            arrays = [(s.data.unsqueeze(1), s.targets) for s in splits]
        elif name == "svhn":
            splits = [datasets.SVHN(root, split=s, download=download) for s in ("train", "test")]
            arrays = [(torch.from_numpy(s.data), torch.from_numpy(s.labels)) for s in splits]
        else:
            splits = [datasets.CIFAR10(root, train=t, download=download) for t in (True, False)]
            arrays = [(torch.from_numpy(s.data).permute(0, 3, 1, 2), torch.tensor(s.targets)) for s in splits]
    except RuntimeError as err:  # torchvision: "Dataset not found [or corrupted]. You can use download=True"
        if "not found" not in str(err):
            raise
        raise _missing(name, root, str(err).split(".")[0]) from err
    (train_x, train_y), (test_x, test_y) = arrays
    return train_x.contiguous(), train_y.long(), test_x.contiguous(), test_y.long()


def augment(name: str, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The paper's training augmentation for data set `name`, drawing randomness only from `generator`.

    cifar10: random crop from 4-pixel zero padding + horizontal flip; svhn: the crop only; mnist and digits:
    none (x itself is returned and no randomness is consumed).
    """
    if name not in DATASETS:
        raise ValueError(f"dataset: must be one of {', '.join(DATASETS)}; got {name!r}")
    if name in ("mnist", "digits"):
        return x
    return _crop_flip(x, generator, flip=name == "cifar10")


def _crop_flip(x: torch.Tensor, generator: torch.Generator, flip: bool) -> torch.Tensor:
    """Per-sample random crop (and flip) of the whole batch as a single gather from the padded images."""
    n, c, h, w = x.shape
    device, span = x.device, 2 * CROP_PAD + 1
    dy = torch.randint(span, (n, 1), device=device, generator=generator)
    dx = torch.randint(span, (n, 1), device=device, generator=generator)
    rows = dy + torch.arange(h, device=device)  # n×h rows of the padded image
    cols = torch.arange(w, device=device).expand(n, w)
    if flip:
        flipped = torch.rand(n, 1, device=device, generator=generator) < 0.5
        cols = torch.where(flipped, w - 1 - cols, cols)
    cols = dx + cols  # n×w columns of the padded image, reversed for flipped samples
    padded = F.pad(x, (CROP_PAD,) * 4).flatten(2)  # n×c×(h+8)(w+8)
    index = (rows[:, :, None] * (w + 2 * CROP_PAD) + cols[:, None, :]).flatten(1)  # n×hw
    return padded.gather(2, index[:, None, :].expand(n, c, h * w)).view(n, c, h, w)
