"""last.pt rotation: the checkpoint a stream may still point at is kept as previous.pt."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import TINY

from trainer.checkpoint import UnsafeCheckpoint, load_checkpoint, save_last
from trainer.config import ConfigError, make_config
from trainer.loop import train


def test_save_last_keeps_the_checkpoint_it_replaces(tmp_path):
    save_last({"state": {"iteration": 23}}, tmp_path)
    assert load_checkpoint(tmp_path, "previous") is None
    save_last({"state": {"iteration": 46}}, tmp_path)
    save_last({"state": {"iteration": 69}}, tmp_path)
    assert load_checkpoint(tmp_path, "last")["state"]["iteration"] == 69
    assert load_checkpoint(tmp_path, "previous")["state"]["iteration"] == 46
    assert sorted(path.name for path in tmp_path.iterdir()) == ["last.pt", "previous.pt"]
    torch.load(tmp_path / "previous.pt", weights_only=True)  # a file of its own, not a dangling link


class Planted:
    """What an attacker would put in a shared runs directory: unpickling it runs a command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(run_dir, marker) -> None:
    """A last.pt that looks like codash's but carries a payload."""
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"state": {"iteration": 23}, "model": Planted(marker)}, run_dir / "last.pt")


def test_a_planted_checkpoint_is_refused_without_running_its_code(tmp_path):
    marker = tmp_path / "pwned"
    plant(tmp_path / "run", marker)
    with pytest.raises(UnsafeCheckpoint, match=r"refused to load .*last\.pt.*posix\.system"):
        load_checkpoint(tmp_path / "run", "last")
    assert not marker.exists()


def test_every_checkpoint_codash_writes_loads_weights_only(tmp_path):
    """The allow-list is torch's default one: what the loop saves for each optimizer and Free AT's state."""
    for method, optimizer in (("free", "adam"), ("pgd", "sgd")):
        run_dir = tmp_path / method
        config = {"method": method, "optimizer": optimizer, "max_iters": 24, "eval_every": 12}
        train(make_config({**TINY, **config}), None, run_dir)
        for which in ("last", "best"):
            assert load_checkpoint(run_dir, which) is not None


@pytest.mark.parametrize("which", ["resume", "fork"])
def test_a_checkpoint_from_the_other_kind_of_device_is_refused_before_the_run_starts(tmp_path, which):
    """A CUDA generator's state (16 bytes: seed and offset) cannot become a CPU one's (5,056 bytes)."""
    cfg = make_config({**TINY, "max_iters": 20})
    train(cfg, None, tmp_path / "parent")
    saved = load_checkpoint(tmp_path / "parent", "last")
    assert saved["generator"].numel() == 5056
    saved["generator"] = torch.zeros(16, dtype=torch.uint8)  # as a CUDA run saves it
    (tmp_path / "run").mkdir()
    if which == "fork":
        torch.save({**saved, "best_model": None}, tmp_path / "run" / "fork.pt")
        cfg = cfg.model_copy(update={"parent": "0123456789ab", "fork_iteration": 20, "max_iters": 40})
    else:
        torch.save(saved, tmp_path / "run" / "last.pt")
    events = []
    with pytest.raises(
        ConfigError, match="device: the checkpoint was trained on cuda and this run is on cpu"
    ):
        train(cfg, events.append, tmp_path / "run", resume=which == "resume")
    assert events == []
