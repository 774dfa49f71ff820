"""The paper's optimizers and learning-rate schedules, and how a checkpoint's optimizer state is taken."""

from __future__ import annotations

import torch
from torch import nn

from trainer.config import RunConfig


def lr_at(cfg: RunConfig, iteration: int, total: int) -> float:
    """Learning rate for the step that follows `iteration` steps (a pure function: nothing to checkpoint)."""
    progress = (iteration + 1) / total
    if cfg.lr_schedule == "cyclic":
        # The authors' triangle 0 -> lr -> 0 in fractional epochs t, peaking at epoch `epochs * 2 // 5`
        # (integer division: np.interp(t, [0, epochs * 2 // 5, epochs], [0, lr, 0]) in their utils.py).
        t, peak = (iteration + 1) * cfg.epochs / total, cfg.epochs * 2 // 5
        return cfg.lr * (t / peak if t <= peak else (cfg.epochs - t) / (cfg.epochs - peak))
    if cfg.lr_schedule == "piecewise":
        return cfg.lr * (1.0 if progress < 0.5 else 0.1 if progress < 0.75 else 0.01)
    return cfg.lr


def lr_schedule(cfg: RunConfig, total: int, device: torch.device | str) -> torch.Tensor:
    """lr_at for every step as one float32 tensor on the device: what a captured step's optimizer reads."""
    return torch.tensor([lr_at(cfg, i, total) for i in range(total)], dtype=torch.float32, device=device)


def make_optimizer(cfg: RunConfig, model: nn.Module, capturable: bool = False) -> torch.optim.Optimizer:
    """The paper's optimizers. `capturable`: the variant whose step runs inside a CUDA graph and reads a
    device-tensor lr (Adam capturable=True; SGD fused, as its foreach variant reads the lr on the host)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            **({"fused": True} if capturable else {}),
        )
    extra = {"capturable": True} if capturable else {}
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)


def load_optimizer(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Take a checkpoint's optimizer state (moments, step counts) and keep this run's own settings.

    `load_state_dict` replaces each param group with the saved one, so a fork that changes weight_decay or
    momentum, or whose optimizer differs in kind (fused, capturable), would train with its parent's. Each
    group's hyperparameters and flags are written back from the run's optimizer, and Adam's step counts laid
    out as its own would be: on the parameter's device when capturable or fused, else on the CPU.
    """
    own = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, settings in zip(optimizer.param_groups, own, strict=True):
        group.update(settings)
        on_device = group.get("capturable") or group.get("fused")
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(param.device if on_device else "cpu", torch.float32)
