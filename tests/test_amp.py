"""The mixed-precision path (bf16 autocast, `amp` on CUDA) exercised on the CPU, where this suite runs.

CPU autocast casts the same kinds of ops (convolutions, matmuls) to bf16 as CUDA autocast, so this checks
what matters for the CUDA path without a GPU: GradAlign's double backward goes through the autocast graph,
weights, gradients and batch-norm statistics stay float32, and the values agree with float32 to bf16
precision.
"""

from __future__ import annotations

import copy

import pytest
import torch

from trainer.checkpoint import model_for
from trainer.config import make_config
from trainer.loop import _train_step, make_optimizer

pytestmark = pytest.mark.train  # trains models beyond a few steps


def step(model, cfg, x, y, autocast: bool):
    optimizer = make_optimizer(cfg, model)
    context = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)
    with context:
        return _train_step(model, optimizer, cfg, x, y, torch.Generator().manual_seed(0))


RESNET = {"dataset": "cifar10", "model": "preact_resnet18", "eps": "8/255", "batch_size": 4, "device": "cpu"}
SIDE = 12  # 32 px checks the same graph 7x slower (bf16 on a CPU is slow); the pooling is adaptive


def test_gradalign_under_bf16_autocast_trains_float32_weights_and_batch_norm():
    """On a fixed perturbation (standard + GradAlign), so only the precision differs between the two runs.

    (With FGSM, bf16 flips the sign of near-zero input-gradient entries, so δ itself differs: the attack,
    not the autocast graph, would be what differs.)
    """
    cfg = make_config({**RESNET, "method": "standard", "grad_align_lambda": 0.2})
    torch.manual_seed(0)
    model = model_for(cfg)
    reference = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(4, 3, SIDE, SIDE, generator=g), torch.randint(0, 10, (4,), generator=g)

    loss, acc, reg = step(model, cfg, x, y, autocast=True)
    loss32, acc32, reg32 = step(reference, cfg, x, y, autocast=False)

    assert torch.isfinite(loss) and torch.isfinite(reg) and 0 < reg.item() <= 2
    assert abs(loss.item() - loss32.item()) < 0.05 and abs(reg.item() - reg32.item()) < 0.05
    pairs = zip(model.named_parameters(), reference.named_parameters(), strict=True)
    for (name, param), (_, param32) in pairs:
        assert param.dtype == torch.float32 and param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        cosine = torch.nn.functional.cosine_similarity(param.grad.flatten(), param32.grad.flatten(), dim=0)
        assert cosine > 0.85, (name, cosine.item())  # the same update direction, to bf16 precision
    for name, buffer in model.named_buffers():
        if "running" in name:
            assert buffer.dtype == torch.float32, name
            torch.testing.assert_close(buffer, dict(reference.named_buffers())[name], atol=0.02, rtol=0.05)


def test_fgsm_and_gradalign_under_bf16_autocast_give_finite_float32_updates():
    """The attack's own backward under autocast too; on the digits CNN (batch norm is checked above, and a
    ResNet step in bf16 takes this CPU ~15 s)."""
    cfg = make_config({"dataset": "digits", "method": "fgsm", "grad_align_lambda": 0.2, "device": "cpu"})
    torch.manual_seed(0)
    model = model_for(cfg)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(64, 1, 16, 16, generator=g), torch.randint(0, 10, (64,), generator=g)
    loss, acc, reg = step(model, cfg, x, y, autocast=True)
    assert torch.isfinite(loss) and 0 < reg.item() <= 2 and 0 <= acc.item() <= 1
    assert all(p.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters())
