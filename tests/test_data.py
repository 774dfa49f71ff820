"""Data loading through the real torchvision code, fed miniature data sets written in its on-disk formats."""

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.data import DATA_SHAPES, DATASETS, DatasetMissing, augment, data_dir, digits_arrays, load_dataset

N_TRAIN, N_TEST = 6, 4


def _images(n: int, channels: int, size: int, seed: int) -> np.ndarray:
    """Random uint8 images N×C×H×W: every pixel differs, so any axis mix-up changes the values."""
    return np.random.default_rng(seed).integers(0, 256, (n, channels, size, size), dtype=np.uint8)


def _labels(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.uint8) % 10


def write_mnist(root, images: dict, labels: dict) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split in ("train", "t10k"):
        x, y = images[split][:, 0], labels[split]
        (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, *x.shape) + x.tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, len(y)) + y.tobytes())


def write_svhn(root, images: dict, labels: dict) -> None:
    import scipy.io  # here, not at the top: only these tests need scipy and torchvision (~3 s to import)

    for split in ("train", "test"):
        y = np.where(labels[split] == 0, 10, labels[split])  # SVHN stores digit 0 as label 10
        x = images[split].transpose(2, 3, 1, 0)  # N×C×H×W -> H×W×C×N, as in the .mat files
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x, "y": y[:, None]})


def write_cifar10(root, images: dict, labels: dict) -> None:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    # torchvision unpickles with encoding="latin1", so the keys must be str (py2 str keys load as str too).
    batches = {f"data_batch_{i}": slice(i - 1, i) for i in range(1, 6)}
    batches["data_batch_5"] = slice(4, None)
    for name, rows in batches.items():
        x, y = images["train"][rows], labels["train"][rows]
        _pickle(base / name, {"data": x.reshape(len(x), -1), "labels": y.tolist()})
    x, y = images["test"], labels["test"]
    _pickle(base / "test_batch", {"data": x.reshape(len(x), -1), "labels": y.tolist()})
    _pickle(base / "batches.meta", {"label_names": [f"class{i}" for i in range(10)]})


def _pickle(path, obj) -> None:
    path.write_bytes(pickle.dumps(obj))


WRITERS = {"mnist": write_mnist, "svhn": write_svhn, "cifar10": write_cifar10}


@pytest.fixture
def skip_md5(monkeypatch):
    """Our miniature files cannot match torchvision's md5 sums: keep its existence check, skip the md5.

    Both data sets call the module-level `check_integrity` (CIFAR10 also for batches.meta, outside
    `CIFAR10._check_integrity`), so that function is what is replaced, in each module that imported it.
    """

    import torchvision.datasets.cifar
    import torchvision.datasets.svhn

    def exists(fpath, md5=None) -> bool:
        return os.path.isfile(fpath)

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", exists)
    monkeypatch.setattr(torchvision.datasets.svhn, "check_integrity", exists)


def _mini(name: str, root):
    channels, size, _ = DATA_SHAPES[name]
    images = {"train": _images(N_TRAIN, channels, size, 1), "test": _images(N_TEST, channels, size, 2)}
    labels = {"train": _labels(N_TRAIN), "test": _labels(N_TEST)[::-1].copy()}
    WRITERS[name](root, {"t10k": images["test"], **images}, {"t10k": labels["test"], **labels})
    return images, labels


@pytest.mark.parametrize("name", ["mnist", "svhn", "cifar10"])
def test_torchvision_data_sets_load_as_unit_float_tensors(name, tmp_path, skip_md5):
    images, labels = _mini(name, tmp_path)
    data = load_dataset(name, "cpu", root=tmp_path)
    channels, size, classes = DATA_SHAPES[name]
    assert data.name == name and data.n_classes == classes == 10
    assert (data.in_channels, data.image_size) == (channels, size)
    for x, y, split in ((data.train_x, data.train_y, "train"), (data.test_x, data.test_y, "test")):
        assert x.shape == (len(labels[split]), channels, size, size)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.is_contiguous()
        assert x.min() >= 0 and x.max() <= 1
        assert torch.equal(x, torch.from_numpy(images[split]).float() / 255)  # same pixels, same axes
        assert y.tolist() == labels[split].tolist()  # svhn: the stored label 10 comes back as 0


def test_data_dir_defaults_to_the_user_cache(monkeypatch):
    monkeypatch.delenv("CODASH_DATA_DIR", raising=False)
    assert data_dir() == Path.home() / ".cache" / "codash" / "data"


def test_data_dir_is_used_when_no_root_is_given(tmp_path, monkeypatch):
    _mini("mnist", tmp_path)
    monkeypatch.setenv("CODASH_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path
    assert load_dataset("mnist").train_x.shape == (N_TRAIN, 1, 28, 28)


@pytest.mark.parametrize(
    ("name", "a_file"),
    [
        ("mnist", "t10k-labels-idx1-ubyte"),
        ("svhn", "test_32x32.mat"),
        ("cifar10", "batches.meta"),
    ],
)
def test_missing_files_raise_dataset_missing_naming_dir_and_files(name, a_file, tmp_path):
    with pytest.raises(DatasetMissing) as info:
        load_dataset(name, root=tmp_path / "nowhere")
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message and a_file in message and "CODASH_DOWNLOAD" in message
    assert isinstance(info.value, FileNotFoundError)
    assert str(pickle.loads(pickle.dumps(info.value))) == message  # survives a trip through a job queue


def test_cifar10_with_one_batch_missing_is_reported_missing(tmp_path, skip_md5):
    _mini("cifar10", tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetMissing, match="data_batch_3"):
        load_dataset("cifar10", root=tmp_path)


def test_unknown_dataset_is_rejected():
    with pytest.raises(ValueError, match="cifar10"):
        load_dataset("imagenet")


def test_digits_fixed_split_independent_of_global_seeds():
    torch.manual_seed(123)
    np.random.seed(123)
    a = load_dataset("digits")
    torch.manual_seed(0)
    np.random.seed(0)
    b = load_dataset("digits")
    assert a.train_x.shape == (1500, 1, 16, 16) and a.test_x.shape == (297, 1, 16, 16)
    assert (a.train_y.shape, a.test_y.shape) == ((1500,), (297,))
    assert a.train_x.dtype == torch.float32 and a.train_y.dtype == torch.int64
    assert (a.in_channels, a.image_size, a.n_classes) == DATA_SHAPES["digits"]
    assert a.train_x.min() >= 0 and a.train_x.max() <= 1 and a.train_x.max() > 0.9
    assert set(a.train_y.tolist()) == set(a.test_y.tolist()) == set(range(10))
    for field in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, field), getattr(b, field))


def test_digits_are_scikit_learns_to_the_last_bit(monkeypatch):
    """Read from scikit-learn's CSV, and through load_digits where a scikit-learn keeps it elsewhere."""
    from sklearn.datasets import load_digits

    reference = load_digits()
    for images, target in (digits_arrays(), fallback_digits(monkeypatch)):
        assert np.array_equal(images, reference.images) and images.dtype == reference.images.dtype
        assert np.array_equal(target, reference.target) and target.dtype == reference.target.dtype


def fallback_digits(monkeypatch):
    monkeypatch.setattr(Path, "exists", lambda self: False)
    return digits_arrays()


def test_digits_split_is_shuffled():
    from sklearn.datasets import load_digits

    data = load_dataset("digits")
    assert data.train_y[:50].tolist() != load_digits().target[:50].tolist()


def test_tensors_go_to_the_requested_device():
    data = load_dataset("digits", "meta")  # "meta" stands in for an accelerator on a CPU-only machine
    assert {t.device.type for t in (data.train_x, data.train_y, data.test_x, data.test_y)} == {"meta"}
    assert data.train_x.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_load_and_augment():
    data = load_dataset("digits", "cuda")
    assert data.train_x.is_cuda and data.test_y.is_cuda
    gen = torch.Generator("cuda").manual_seed(0)
    x = torch.rand(8, 3, 32, 32, device="cuda")
    assert augment("cifar10", x, gen).is_cuda


def _find_transform(out: torch.Tensor, x: torch.Tensor) -> set:
    """Every (dy, dx, flipped) such that `out` is that crop of the 4-pixel zero-padded `x` (C×H×W)."""
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    h, w = x.shape[-2:]
    found = set()
    for dy in range(9):
        for dx in range(9):
            crop = padded[:, dy : dy + h, dx : dx + w]
            found |= {
                (dy, dx, flip) for flip in (False, True) if torch.equal(out, crop.flip(-1) if flip else crop)
            }
    return found


def test_cifar10_augment_is_a_random_crop_and_flip_of_each_sample():
    x = torch.rand(64, 3, 32, 32)
    out = augment("cifar10", x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    transforms = [_find_transform(o, xi) for o, xi in zip(out, x, strict=True)]
    assert all(len(t) == 1 for t in transforms)  # each sample is exactly one crop (+ flip) of its own input
    chosen = [t.pop() for t in transforms]
    assert {flip for _, _, flip in chosen} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in chosen}) > 10  # (4, 4) is the unshifted crop


def test_svhn_augment_crops_but_never_flips():
    x = torch.rand(32, 3, 32, 32)
    out = augment("svhn", x, torch.Generator().manual_seed(1))
    transforms = [_find_transform(o, xi) for o, xi in zip(out, x, strict=True)]
    assert all(len(t) == 1 for t in transforms)
    chosen = [t.pop() for t in transforms]
    assert not any(flip for _, _, flip in chosen)
    assert len({(dy, dx) for dy, dx, _ in chosen}) > 5


@pytest.mark.parametrize("name", ["cifar10", "svhn"])
def test_augment_is_reproducible_from_the_generator(name):
    x = torch.rand(16, 3, 32, 32)
    a = augment(name, x, torch.Generator().manual_seed(7))
    b = augment(name, x, torch.Generator().manual_seed(7))
    c = augment(name, x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("name", ["digits", "mnist"])
def test_augment_is_identity_without_consuming_randomness(name):
    x = torch.rand(4, 1, 16, 16)
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    assert augment(name, x, gen) is x
    assert torch.equal(gen.get_state(), state)


def test_augment_rejects_unknown_dataset():
    with pytest.raises(ValueError, match="digits"):
        augment("imagenet", torch.rand(1, 1, 8, 8), torch.Generator())


def test_every_dataset_has_a_shape():
    assert set(DATA_SHAPES) == set(DATASETS)
