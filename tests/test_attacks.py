"""Attack invariants and GradAlign, on small models so the checks are fast and exact."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainer.attacks import (
    cosine,
    fgsm,
    fgsm_rs,
    input_grad,
    pgd,
    project,
    random_point,
    random_point_grad,
    uniform_noise,
)
from trainer.gradalign import grad_align_reg

EPS = 0.1


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def assert_feasible(delta, x, eps):
    assert delta.abs().max() <= eps + 1e-7
    assert (x + delta).min() >= 0 and (x + delta).max() <= 1


def test_every_attack_stays_in_the_ball_and_the_box(batch):
    x, y = batch
    model = small_cnn()
    g = torch.Generator().manual_seed(0)
    for delta in (
        fgsm(model, x, y, EPS),
        fgsm(model, x, y, EPS, alpha=3 * EPS),
        fgsm_rs(model, x, y, EPS, 1.25 * EPS, g),
        pgd(model, x, y, EPS, EPS / 4, 7, restarts=2, generator=g),
        uniform_noise(x, EPS, g),
    ):
        assert_feasible(delta, x, EPS)


def test_fgsm_is_one_signed_gradient_step(batch):
    x, y = batch
    x = x.clamp(0.2, 0.8)  # interior points: no box clipping
    model = small_cnn()
    point = x.clone().requires_grad_(True)
    F.cross_entropy(model(point), y).backward()
    assert torch.equal(fgsm(model, x, y, EPS), EPS * point.grad.sign())


def test_pgd_is_at_least_as_strong_as_fgsm_on_a_trained_model(batch):
    x, y = batch
    model = small_cnn()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(200):  # fit the batch so that it is clean-correct and attackable
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean()
        fgsm_acc = (model(x + fgsm(model, x, y, EPS)).argmax(1) == y).float().mean()
    pgd_acc = (
        (model(x + pgd(model, x, y, EPS, EPS / 4, 20, restarts=2, generator=g)).argmax(1) == y).float().mean()
    )
    assert clean > 0.9
    assert pgd_acc <= fgsm_acc
    assert pgd_acc < clean


def test_random_generator_makes_attacks_reproducible(batch):
    x, y = batch
    model = small_cnn()
    a = pgd(model, x, y, EPS, EPS / 4, 3, generator=torch.Generator().manual_seed(5))
    b = pgd(model, x, y, EPS, EPS / 4, 3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_cosine_skips_zero_rows():
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, -1.0]])
    assert torch.allclose(cosine(a, b), torch.tensor([1.0, -1.0]))


def test_grad_align_equals_an_independent_computation(batch):
    x, y = batch
    model = small_cnn()
    reg = grad_align_reg(model, x, y, EPS, generator=torch.Generator().manual_seed(3))
    # Independent: per-example loss gradients, one example at a time, at the paper's unclipped random point.
    eta = (torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1) * EPS
    cosines = []
    for i in range(len(x)):
        xi = x[i : i + 1].clone().requires_grad_(True)
        g1 = torch.autograd.grad(F.cross_entropy(model(xi), y[i : i + 1]), xi)[0].flatten()
        xr = (x[i : i + 1] + eta[i : i + 1]).clone().requires_grad_(True)
        g2 = torch.autograd.grad(F.cross_entropy(model(xr), y[i : i + 1]), xr)[0].flatten()
        if g1.norm() > 0 and g2.norm() > 0:
            cosines.append(torch.dot(g1, g2) / (g1.norm() * g2.norm()))
    expected = 1 - torch.stack(cosines).mean()
    assert reg.item() == pytest.approx(expected.item(), abs=1e-5)
    assert 0 <= reg.item() <= 2


def test_grad_align_on_a_fraction_of_the_batch_is_grad_align_on_its_first_rows(batch):
    """fraction=0.25 of 32 points: exactly the regulariser (and weight gradients) of the first 8 points."""
    x, y = batch
    model = small_cnn()
    grad_at_x = input_grad(model, x, y)
    part = grad_align_reg(model, x, y, EPS, grad_at_x, torch.Generator().manual_seed(3), fraction=0.25)
    part_grads = torch.autograd.grad(part, list(model.parameters()))
    first = grad_align_reg(model, x[:8], y[:8], EPS, grad_at_x[:8], torch.Generator().manual_seed(3))
    first_grads = torch.autograd.grad(first, list(model.parameters()))
    assert part.item() == pytest.approx(first.item(), abs=1e-6) and part.item() > 0
    for a, b in zip(part_grads, first_grads, strict=True):
        torch.testing.assert_close(a, b)


def test_grad_align_gradient_reaches_the_weights_through_double_backprop(batch):
    x, y = batch
    model = small_cnn()
    reg = grad_align_reg(model, x, y, EPS, first_grad=input_grad(model, x, y))
    reg.backward()
    for param in model.parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_grad_align_with_all_zero_gradients_is_zero_not_nan(batch):
    x, y = batch
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    nn.init.zeros_(model[1].weight)
    reg = grad_align_reg(model, x, y, EPS)
    reg.backward()
    assert reg.item() == 0 and not torch.isnan(model[1].weight.grad).any()


def test_the_alignment_probe_point_is_not_projected_to_the_box_but_training_attacks_are(batch):
    """The paper's GradAlign point x + eta, eta ~ U[-eps, eps], may leave [0,1]; attacks a model is trained
    or evaluated on (FGSM-RS, PGD from a random start, uniform_noise) stay inside it with the same draws."""
    x, y = batch
    eta = random_point(x, EPS, torch.Generator().manual_seed(3))
    assert eta.abs().max() <= EPS and eta.abs().max() > 0.9 * EPS
    assert (x + eta).min() < 0 and (x + eta).max() > 1  # the 0- and 1-valued rows of the batch
    assert torch.equal(uniform_noise(x, EPS, torch.Generator().manual_seed(3)), project(eta, x, EPS))
    model = small_cnn()
    grad = random_point_grad(model, x, y, EPS, torch.Generator().manual_seed(3))
    torch.testing.assert_close(grad, input_grad(model, x, y, eta))
    g = torch.Generator().manual_seed(3)
    assert_feasible(fgsm_rs(model, x, y, EPS, 1.25 * EPS, g), x, EPS)
    assert_feasible(pgd(model, x, y, EPS, EPS / 4, 3, generator=g), x, EPS)


def test_random_point_grad_is_differentiable_only_when_asked(batch):
    x, y = batch
    model = small_cnn()
    assert not random_point_grad(model, x, y, EPS).requires_grad
    assert random_point_grad(model, x, y, EPS, create_graph=True).requires_grad
