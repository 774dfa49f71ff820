"""The recipe around the step against the authors' code (tml-epfl/understanding-fast-adv-training), each
from an oracle written here from the formula, in float64: the cyclic lr, GradAlign's first gradient, the
final clean accuracy, SVHN's λ(ε) and warm-up, the initialisation and the paper presets."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from app.presets import SWEEP_PRESETS
from trainer.attacks import pgd
from trainer.config import lambda_of_eps, make_config
from trainer.data import load_dataset
from trainer.free import FreeAT
from trainer.gradalign import grad_align_reg
from trainer.loop import _radius, _step_size, _train_step, lr_at, make_optimizer, train
from trainer.models import build_model
from trainer.presets import CIFAR_RESNET, CNN_PRESET, PRESET_NOTES, PRESETS
from trainer.ramp import ramp_at, ramp_table, warmup_steps

EPS, LAMBDA, LR = 0.2, 2.0, 0.1


def test_the_cyclic_lr_of_a_30_epoch_run_of_391_steps_is_the_authors_triangle_peaking_at_2_5():
    """train.py: lr = np.interp(t, [0, epochs * 2 // 5, epochs], [0, lr_max, 0]) at t = epoch - 1 +
    (i + 1) / len(batches) for epochs 1..30 and batches i; codash's iteration is (epoch - 1) * 391 + i."""
    epochs, steps = 30, 391
    cfg = make_config({"optimizer": "sgd", "lr": 0.2, "lr_schedule": "cyclic", "epochs": epochs})
    for epoch in range(1, epochs + 1):
        for i in range(steps):
            t = epoch - 1 + (i + 1) / steps
            want = float(np.interp(t, [0, epochs * 2 // 5, epochs], [0, 0.2, 0]))
            assert lr_at(cfg, (epoch - 1) * steps + i, epochs * steps) == pytest.approx(want, rel=1e-12)
    assert max(range(epochs * steps), key=lambda k: lr_at(cfg, k, epochs * steps)) == 12 * steps - 1


@pytest.mark.parametrize("epochs", [1, 2, 3, 7, 15])
def test_the_cyclic_peak_is_at_the_integer_division_of_the_authors(epochs):
    cfg = make_config({"optimizer": "sgd", "lr": 0.05, "lr_schedule": "cyclic", "epochs": epochs})
    total = epochs * 10
    for k in range(total):
        t = (k + 1) / 10
        want = float(np.interp(t, [0, epochs * 2 // 5, epochs], [0, 0.05, 0]))
        assert lr_at(cfg, k, total) == pytest.approx(want, rel=1e-12, abs=1e-15)


# --- GradAlign's first gradient, on a linear model whose input gradient is written out by hand ---


def linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 10)).double()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(8, 1, 4, 4, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, 10, (8,), generator=gen)


def input_gradient(weight, bias, x, y):
    """d/dx of the mean cross-entropy of softmax(W x + b): (softmax - onehot) W / n, per example."""
    p = torch.softmax(x.flatten(1) @ weight.T + bias, dim=1)
    return ((p - nn.functional.one_hot(y, 10).double()) @ weight / len(x)).view_as(x)


def oracle_reg(weight, bias, x, y, first, eta):
    """1 - mean cos(first gradient, gradient at x + eta): the formula, on the hand-written gradients."""
    a, b = first.flatten(1), input_gradient(weight, bias, x + eta, y).flatten(1)
    return 1 - ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean()


def noise(gen: torch.Generator, x: torch.Tensor) -> torch.Tensor:
    """U[-1, 1] draws as codash's attacks take them from the run's generator."""
    return torch.rand(x.shape, generator=gen, dtype=x.dtype) * 2 - 1


@pytest.mark.parametrize("detach", [False, True])
def test_grad_align_with_no_first_gradient_double_backpropagates_through_it_as_the_authors(detach):
    """PGD (and every method without an FGSM step): the authors' first gradient is get_input_grad(...,
    backprop=True), so the regulariser's weight gradient includes how it moves; detaching it gives the same
    value but another weight gradient."""
    model, (x, y) = linear_model(), batch()
    reg = grad_align_reg(model, x, y, EPS, None, torch.Generator().manual_seed(5))
    got = torch.autograd.grad(reg, list(model.parameters()))

    weight, bias = (p.detach().clone().requires_grad_(True) for p in model.parameters())
    eta = noise(torch.Generator().manual_seed(5), x) * EPS
    first = input_gradient(weight, bias, x, y)
    want_reg = oracle_reg(weight, bias, x, y, first.detach() if detach else first, eta)
    want = torch.autograd.grad(want_reg, [weight, bias])
    assert reg.item() == pytest.approx(want_reg.item(), rel=1e-12)
    same = all(torch.allclose(g, w, rtol=1e-10, atol=1e-14) for g, w in zip(got, want, strict=True))
    assert same != detach  # equal to the authors' (not detached), and not to the detached one
    if detach:
        assert max((g - w).abs().max().item() for g, w in zip(got, want, strict=True)) > 1e-4


def sgd_config(method: str):
    sgd = {"optimizer": "sgd", "lr": LR, "momentum": 0, "weight_decay": 0, "lr_schedule": "constant"}
    return make_config({"method": method, "eps": EPS, "grad_align_lambda": LAMBDA, **sgd})


def sgd_step(objective, *params):
    """The weights after one plain SGD step on `objective`."""
    grads = torch.autograd.grad(objective, list(params))
    return [p - LR * g for p, g in zip(params, grads, strict=True)]


def test_fgsm_rs_grad_align_takes_the_fgsm_gradient_at_the_random_start_and_no_more_passes():
    """train.py, attack_init=random: grad is the FGSM gradient at x + delta_rs (detached), reused by
    GradAlign. So one step is three forward passes (start, x + delta, random point), not four."""
    cfg, model, (x, y) = sgd_config("fgsm_rs"), linear_model(), batch()
    weight, bias = (p.detach().clone().requires_grad_(True) for p in model.parameters())

    gen = torch.Generator().manual_seed(7)
    start = torch.clamp(torch.clamp(noise(gen, x) * EPS, -EPS, EPS), -x, 1 - x)
    grad_start = input_gradient(weight, bias, x + start, y).detach()
    delta = torch.clamp(torch.clamp(start + 1.25 * EPS * grad_start.sign(), -EPS, EPS), -x, 1 - x)
    eta = noise(gen, x) * EPS
    logits = (x + delta).flatten(1) @ weight.T + bias
    reg = oracle_reg(weight, bias, x, y, grad_start, eta)
    want = sgd_step(nn.functional.cross_entropy(logits, y) + LAMBDA * reg, weight, bias)

    passes = []
    model.register_forward_hook(lambda *_: passes.append(1))
    _train_step(model, make_optimizer(cfg, model), cfg, x, y, torch.Generator().manual_seed(7))
    assert len(passes) == 3
    for got, w in zip(model.parameters(), want, strict=True):
        torch.testing.assert_close(got.detach(), w.detach(), rtol=1e-10, atol=1e-13)


def test_a_pgd_grad_align_step_differentiates_the_first_gradient_at_x():
    """The whole PGD + GradAlign step: PGD's delta from the run's generator, then the regulariser with the
    first gradient at x differentiated, as the authors' train.py does for --attack=pgd."""
    cfg, model, (x, y) = sgd_config("pgd"), linear_model(), batch()
    before = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(9)
    delta = pgd(before, x, y, EPS, 0.25 * EPS, 10, generator=gen)  # PGD itself is tested in test_attacks
    weight, bias = (p.detach().clone().requires_grad_(True) for p in before.parameters())
    eta = noise(gen, x) * EPS
    logits = (x + delta).flatten(1) @ weight.T + bias
    first = input_gradient(weight, bias, x, y)
    reg = oracle_reg(weight, bias, x, y, first, eta)
    want = sgd_step(nn.functional.cross_entropy(logits, y) + LAMBDA * reg, weight, bias)

    _train_step(model, make_optimizer(cfg, model), cfg, x, y, torch.Generator().manual_seed(9))
    for got, w in zip(model.parameters(), want, strict=True):
        torch.testing.assert_close(got.detach(), w.detach(), rtol=1e-10, atol=1e-13)


# --- SVHN's warm-up: train.py's n_alpha_warmup_epochs = n_eps_warmup_epochs = 5, on SVHN only ---


def test_the_svhn_warm_up_is_train_py_ramp_at_every_step_to_the_last_bit():
    """train.py at its iteration it (codash's step k = it - 1, since its epoch 0 is one step without an
    update): fgsm_alpha = min(it / n_max * 1.25, 1.25), its step fgsm_alpha * eps * sign(grad), and
    eps_pgd_train = min(it / n_max * eps, eps), with n_max = 5 * 73257 // 128 = 2861. Over 8 epochs of 572
    steps, as the eager step computes them (a float) and as the captured step does (a float64 tensor)."""
    eps, n_max = 8 / 255, 5 * 73257 // 128
    svhn = {"dataset": "svhn", "eps": eps, "batch_size": 128}
    fgsm_rs, pgd_cfg = make_config({**svhn, "method": "fgsm_rs"}), make_config({**svhn, "method": "pgd"})
    steps = warmup_steps(fgsm_rs)
    assert steps == warmup_steps(pgd_cfg) == n_max
    table = ramp_table(steps, "cpu")
    assert table.dtype == torch.float64
    for k in range(8 * (73257 // 128)):
        it = k + 1
        want_step, want_eps = min(it / n_max * 1.25, 1.25) * eps, min(it / n_max * eps, eps)
        ramp = ramp_at(k, steps)
        assert (_step_size(fgsm_rs, ramp), _radius(pgd_cfg, ramp)) == (want_step, want_eps), k
        shared = table[min(k, steps - 1)]
        assert (_step_size(fgsm_rs, shared).item(), _radius(pgd_cfg, shared).item()) == (want_step, want_eps)
    assert ramp_at(0, steps) == 1 / n_max and ramp_at(n_max - 1, steps) is None  # full from step 2860 on
    for fields in ({"dataset": "cifar10"}, {"dataset": "mnist"}, {"dataset": "digits"}, {"method": "nfgsm"}):
        assert warmup_steps(make_config({**svhn, "method": "fgsm", **fields})) == 0, fields


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_a_step_in_the_svhn_warm_up_attacks_with_the_ramped_size_and_regularises_at_the_full_eps(method):
    """FGSM's step r * alpha * eps, or PGD within r * eps at its full step; GradAlign's random point, as
    train.py's get_input_grad(..., delta_init='random_uniform'), at the full eps."""
    ramp = 300 / 2861
    cfg, model, (x, y) = sgd_config(method), linear_model(), batch()
    before = copy.deepcopy(model)
    weight, bias = (p.detach().clone().requires_grad_(True) for p in before.parameters())
    gen = torch.Generator().manual_seed(11)
    first = input_gradient(weight, bias, x, y)
    if method == "fgsm":
        step = ramp * 1.0 * EPS * first.detach().sign()
        delta, first = torch.clamp(torch.clamp(step, -EPS, EPS), -x, 1 - x), first.detach()
        assert 0 < delta.abs().max() <= ramp * EPS
    else:
        delta = pgd(before, x, y, ramp * EPS, 0.25 * EPS, 10, generator=gen)
        assert delta.abs().max() <= ramp * EPS + 1e-15 and delta.abs().max() > 0.9 * ramp * EPS
    eta = noise(gen, x) * EPS
    logits = (x + delta).flatten(1) @ weight.T + bias
    reg = oracle_reg(weight, bias, x, y, first, eta)
    want = sgd_step(nn.functional.cross_entropy(logits, y) + LAMBDA * reg, weight, bias)

    _train_step(model, make_optimizer(cfg, model), cfg, x, y, torch.Generator().manual_seed(11), ramp=ramp)
    for got, w in zip(model.parameters(), want, strict=True):
        torch.testing.assert_close(got.detach(), w.detach(), rtol=1e-10, atol=1e-13)


def test_free_at_in_the_svhn_warm_up_steps_its_delta_by_the_ramped_alpha():
    """train.py's Free AT (--minibatch_replay) is its FGSM branch: delta + fgsm_alpha * eps * sign(grad),
    with fgsm_alpha ramped, then clamped to the ball and the box."""
    ramp, (x, _) = 300 / 2861, batch()
    free = FreeAT(make_config({"dataset": "svhn", "method": "free", "eps": EPS}))
    delta = (noise(torch.Generator().manual_seed(3), x) * EPS / 2).requires_grad_(True)
    delta.grad = noise(torch.Generator().manual_seed(4), x)
    free.update(delta, x, ramp)
    step = ramp * 1.0 * EPS * delta.grad.sign()
    assert torch.equal(free.delta, torch.clamp(torch.clamp(delta.detach() + step, -EPS, EPS), -x, 1 - x))


def test_final_clean_accuracy_is_on_the_attacked_points_and_the_whole_set_is_a_second_figure():
    """train.py evaluates clean and PGD accuracy on the same first n_final_eval test points."""
    cfg = make_config(
        {
            "dataset": "digits",
            "method": "fgsm",
            "max_iters": 3,
            "eval_every": 3,
            "eval_points": 16,
            "probe_points": 0,
            "final_eval_points": 40,
            "final_pgd_steps": 1,
            "final_pgd_restarts": 1,
        }
    )
    kept = {}
    final = train(cfg, after_step=lambda k, model: kept.update(model=copy.deepcopy(model).eval()))
    data = load_dataset("digits", torch.device("cpu"))
    with torch.no_grad():
        right = (kept["model"](data.test_x).argmax(1) == data.test_y).double()
    assert final["attack_points"] == 40
    assert final["last"]["clean_acc"] == pytest.approx(right[:40].mean().item(), abs=1e-12)
    assert final["last"]["clean_acc_all"] == pytest.approx(right.mean().item(), abs=1e-12)
    assert right[:40].mean() != right.mean()  # the two figures differ here, so the test tells them apart


# sh/exps_diff_eps_svhn.sh's --grad_align_cos_lambda at --eps=1..12
SVHN_SCRIPT_LAMBDAS = [1.657, 1.757, 1.864, 1.976, 2.096, 2.223, 2.357, 2.500, 2.651, 2.812, 2.982, 3.162]


def test_svhn_grad_align_lambda_is_the_authors_svhn_scripts_and_cifar_keeps_its_rule():
    for k, want in enumerate(SVHN_SCRIPT_LAMBDAS, start=1):
        assert lambda_of_eps("grad_align_lambda", "svhn", k / 255) == want
    assert lambda_of_eps("grad_align_lambda", "cifar10", 8 / 255) == pytest.approx(0.2)


def authors_initialize_weights(module):
    """utils.initialize_weights of the authors' code, as written there."""
    if isinstance(module, nn.Conv2d):
        n = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
        module.weight.data.normal_(0, math.sqrt(2.0 / n))
        if module.bias is not None:
            module.bias.data.zero_()
    elif isinstance(module, nn.Linear):
        module.weight.data.normal_(0, math.sqrt(2.0 / module.in_features))
        if module.bias is not None:
            module.bias.data.zero_()
    elif isinstance(module, nn.BatchNorm2d):
        module.weight.data.fill_(1)
        module.bias.data.zero_()


@pytest.mark.parametrize("name", ["cnn", "lenet", "preact_resnet18"])
def test_he_init_is_the_authors_initialize_weights_applied_to_the_built_model(name):
    shape = {"in_channels": 3, "image_size": 32, "n_classes": 10, "n_filters": 4}
    torch.manual_seed(3)
    ours = build_model(name, **shape, init="he")
    torch.manual_seed(3)
    theirs = build_model(name, **shape, init="torch")
    theirs.apply(authors_initialize_weights)
    for (key, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


def test_the_paper_presets_train_with_the_authors_recipe():
    """train.py's defaults (He init, weight decay 5e-4, cyclic lr, batch 128) and the scripts' settings."""
    sweep = SWEEP_PRESETS["Paper Fig. 1: CIFAR-10 ε sweep"]["base"]
    for name, preset in [*((n, p) for n, p in PRESETS.items() if "(paper" in n), ("Paper Fig. 1", sweep)]:
        cfg = make_config(preset)
        recipe = (cfg.init, cfg.weight_decay, cfg.lr_schedule, cfg.batch_size, cfg.epochs)
        assert recipe == ("he", 5e-4, "cyclic", 128, 30), name
        assert (cfg.final_eval_points, cfg.final_pgd) == (1000, "PGD-50-10"), name
        assert name in PRESET_NOTES or name == "Paper Fig. 1", name
    cnn = make_config(PRESETS[CNN_PRESET])  # the README's command for the Fig. 4/5 CNN
    assert (cnn.optimizer, cnn.lr, cnn.n_filters, cnn.eval_every) == ("adam", 0.003, 4, 50)
    resnet = make_config(CIFAR_RESNET)
    assert (resnet.optimizer, resnet.momentum, resnet.eval_every) == ("sgd", 0.9, 200)
