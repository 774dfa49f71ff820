"""last.pt rotation: the checkpoint a stream may still point at is kept as previous.pt."""

from __future__ import annotations

import torch

from trainer.checkpoint import load_checkpoint, save_last


def test_save_last_keeps_the_checkpoint_it_replaces(tmp_path):
    save_last({"state": {"iteration": 23}}, tmp_path)
    assert load_checkpoint(tmp_path, "previous") is None
    save_last({"state": {"iteration": 46}}, tmp_path)
    save_last({"state": {"iteration": 69}}, tmp_path)
    assert load_checkpoint(tmp_path, "last")["state"]["iteration"] == 69
    assert load_checkpoint(tmp_path, "previous")["state"]["iteration"] == 46
    assert sorted(path.name for path in tmp_path.iterdir()) == ["last.pt", "previous.pt"]
    torch.load(tmp_path / "previous.pt", weights_only=False)  # a file of its own, not a dangling link
