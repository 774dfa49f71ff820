"""The defining property of each training method added after the paper's three.

N-FGSM leaves the eps-ball; PGD-corner and random-corner sit on its vertices; Free AT replays each minibatch
and updates its persistent delta with the gradient of the very backward pass that trains the weights.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from test_attacks import EPS, small_cnn
from torch.utils._python_dispatch import TorchDispatchMode

from trainer.attacks import input_grad, nfgsm, pgd, pgd_corner, project, random_corner
from trainer.config import make_config
from trainer.fast import fast_path
from trainer.free import FreeAT
from trainer.gradalign import grad_align_reg
from trainer.loop import ADVERSARY, _train_step, make_optimizer, train
from trainer.methods import METHODS, step_passes

pytestmark = pytest.mark.train  # trains models beyond a few steps


def interior(x, delta):
    """Coordinates where the [0,1] box did not bind."""
    return ((x + delta) > 0) & ((x + delta) < 1)


def test_nfgsm_is_noise_plus_an_unclipped_signed_step(batch):
    x, y = batch
    model, k = small_cnn(), 2.0
    delta = nfgsm(model, x, y, EPS, k, EPS, torch.Generator().manual_seed(0))
    # the same noise, drawn again: delta - eta is exactly one signed-gradient step of size alpha at x + eta
    noise = (torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1) * k * EPS
    eta = torch.clamp(noise, -x, 1 - x)
    step = EPS * input_grad(model, x, y, eta).sign()
    assert torch.equal(delta, torch.clamp(eta + step, -x, 1 - x))
    # no projection to the eps-ball: it goes well beyond eps, up to (k + 1) eps, and stays in the box
    assert delta.abs().max() > 2 * EPS
    assert delta.abs().max() <= (k + 1) * EPS + 1e-6
    assert (x + delta).min() >= 0 and (x + delta).max() <= 1
    inside = interior(x, delta)
    assert (delta[inside].abs() > EPS + 1e-6).float().mean() > 0.3  # a third of the coordinates are out


def test_nfgsm_with_k_zero_is_fgsm(batch):
    x, y = batch
    x = x.clamp(0.2, 0.8)
    model = small_cnn()
    assert torch.equal(nfgsm(model, x, y, EPS, 0.0, EPS), EPS * input_grad(model, x, y).sign())


def test_random_corner_is_a_vertex_independent_of_the_model(batch):
    x, y = batch
    delta = random_corner(x, EPS, torch.Generator().manual_seed(4))
    inside = interior(x, delta)
    assert torch.allclose(delta[inside].abs(), torch.full_like(delta[inside], EPS))  # free coordinates: ±eps
    assert (x + delta).min() >= 0 and (x + delta).max() <= 1
    # no model enters: the method's adversary gives the same delta for two different networks
    cfg = make_config({"method": "random_corner", "eps": EPS})
    a, _ = ADVERSARY["random_corner"](small_cnn(0), x, y, cfg, torch.Generator().manual_seed(4))
    b, _ = ADVERSARY["random_corner"](small_cnn(1), x, y, cfg, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and torch.equal(a, delta)
    signs = delta[x.clamp(0.2, 0.8) == x].sign()  # both signs, about equally often
    assert 0.4 < (signs > 0).float().mean() < 0.6


def test_pgd_corner_is_eps_times_the_sign_of_pgd(batch):
    x, y = batch
    model = small_cnn()
    corner = pgd_corner(model, x, y, EPS, EPS / 4, 5, torch.Generator().manual_seed(2))
    plain = pgd(model, x, y, EPS, EPS / 4, 5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(corner, torch.clamp(EPS * plain.sign(), -x, 1 - x))
    inside = interior(x, corner) & (plain != 0)
    assert torch.allclose(corner[inside].abs(), torch.full_like(corner[inside], EPS))
    assert inside.float().mean() > 0.5


# --- Free AT ---


def test_free_replays_each_minibatch_m_times():
    free = FreeAT(make_config({"method": "free", "free_replays": 3}))
    fresh = [(torch.full((2, 1, 8, 8), float(i)), torch.tensor([i, i])) for i in range(7)]
    used = [free.batch(i, *fresh[i])[0][0, 0, 0, 0].item() for i in range(7)]
    assert used == [0, 0, 0, 3, 3, 3, 6]


def test_free_step_uses_one_backward_for_weights_and_delta(batch):
    """One iteration: weights trained at x + delta; delta <- project(delta + eps sign(grad)), same pass."""
    x, y = batch
    sgd = {"optimizer": "sgd", "lr": 0.1, "momentum": 0, "weight_decay": 0}
    cfg = make_config({"method": "free", "eps": EPS, **sgd})
    model, free = small_cnn(), FreeAT(cfg)
    free.delta = project(torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) * EPS, x, EPS)
    before, delta0 = copy.deepcopy(model), free.delta.clone()

    # the reference: gradients of the loss at x + delta0 with the weights before the step
    point = (x + delta0).requires_grad_(True)
    F.cross_entropy(before(point), y).backward()
    expected_delta = project(delta0 + EPS * point.grad.sign(), x, EPS)
    expected_weights = [p - 0.1 * p.grad for p in before.parameters()]

    optimizer = make_optimizer(cfg, model)
    passes = []
    model.register_forward_hook(lambda *_: passes.append(1))
    _train_step(model, optimizer, cfg, x, y, None, free)
    assert len(passes) == 1  # one forward (and so one backward) pass in all: training "for free"
    assert torch.equal(free.delta, expected_delta)
    for got, want in zip(model.parameters(), expected_weights, strict=True):
        assert torch.allclose(got, want, atol=1e-6)
    assert free.delta.abs().max() <= EPS + 1e-7


@pytest.mark.parametrize("method", ["fgsm", "free"])
def test_grad_align_step_equals_the_full_backward_of_its_objective(batch, method):
    """_train_step backpropagates GradAlign only into what needs a gradient (the weights, Free AT's delta);
    the update must equal the plain full backward of loss(x + delta) + lambda * reg."""
    x, y = batch
    sgd = {"optimizer": "sgd", "lr": 0.1, "momentum": 0, "weight_decay": 0}
    cfg = make_config({"method": method, "eps": EPS, "grad_align_lambda": 2.0, **sgd})
    model, free = small_cnn(), (FreeAT(cfg) if method == "free" else None)
    before = copy.deepcopy(model)

    # the reference, with the same random numbers: everything that requires a gradient gets one
    reference_free = copy.deepcopy(free)
    delta, grad_at_x = (reference_free or ADVERSARY[method])(before, x, y, cfg, None)
    reg = grad_align_reg(before, x, y, EPS, grad_at_x, torch.Generator().manual_seed(5))
    (F.cross_entropy(before(x + delta), y) + 2.0 * reg).backward()
    expected_weights = [p - 0.1 * p.grad for p in before.parameters()]

    _train_step(model, make_optimizer(cfg, model), cfg, x, y, torch.Generator().manual_seed(5), free)
    for got, want in zip(model.parameters(), expected_weights, strict=True):
        assert torch.allclose(got, want, atol=1e-6)
    if free is not None:
        reference_free.update(delta, x)
        assert torch.equal(free.delta, reference_free.delta)


def test_grad_align_backward_skips_the_input_gradient_at_the_random_point(batch, monkeypatch):
    """The pruned backward's point: no convolution backward computes an input gradient (nothing reads it)."""
    x, y = batch
    cfg = make_config({"method": "fgsm", "eps": EPS, "grad_align_lambda": 2.0})
    model = small_cnn()
    log, backward = ConvolutionBackwardMasks(), torch.Tensor.backward

    def logged_backward(self, *args, **kwargs):
        with log:
            return backward(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", logged_backward)
    _train_step(model, make_optimizer(cfg, model), cfg, x, y, torch.Generator().manual_seed(5))
    assert log.masks and not any(computes_input for computes_input, *_ in log.masks), log.masks


class ConvolutionBackwardMasks(TorchDispatchMode):
    """Records which gradients (input, weight, bias) each convolution backward computes."""

    def __init__(self):
        super().__init__()
        self.masks: list[tuple[bool, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution_backward.default:
            self.masks.append(tuple(args[-1]))
        return func(*args, **(kwargs or {}))


def test_free_delta_persists_across_minibatches_and_resets_on_a_new_shape(batch):
    x, y = batch
    free = FreeAT(make_config({"method": "free", "eps": EPS}))
    free.delta = torch.full_like(x, EPS)
    delta, _ = free(small_cnn(), x.clamp(0.2, 0.8), y, None, None)
    assert delta.requires_grad and torch.equal(delta.detach(), torch.full_like(x, EPS))
    delta, _ = free(small_cnn(), x[:5], y[:5], None, None)
    assert torch.equal(delta.detach(), torch.zeros_like(x[:5]))


TINY = {
    "dataset": "digits",
    "method": "free",
    "free_replays": 4,
    "pgd_steps": 2,
    "eps": 0.2,
    "max_iters": 50,
    "eval_every": 25,
    "eval_points": 32,
    "final_eval_points": 32,
    "final_pgd_steps": 3,
    "final_pgd_restarts": 1,
    "device": "cpu",
}


@pytest.mark.parametrize("stop_at", [23, 30])  # both in the middle of a replay (m = 4)
def test_free_resume_continues_exactly(tmp_path, stop_at):
    cfg = make_config(TINY)
    reference = []
    train(cfg, reference.append, tmp_path / "a")
    calls = iter(range(1, 10**9))
    assert train(cfg, None, tmp_path / "b", should_stop=lambda: next(calls) >= stop_at) is None
    resumed = []
    final = train(cfg, resumed.append, tmp_path / "b", resume=True)
    after = [e for e in reference if e["type"] in ("metrics", "eval") and e["iteration"] > stop_at]
    got = [e for e in resumed if e["type"] in ("metrics", "eval") and e["iteration"] > stop_at]
    assert [e["iteration"] for e in got] == [e["iteration"] for e in after] != []
    for a, b in zip(after, got, strict=True):
        for key, value in a.items():
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, abs=1e-5), (a["type"], a["iteration"], key)
    assert final["last"] == pytest.approx(reference[-1]["last"])


@pytest.mark.parametrize("method", list(METHODS))
def test_every_registered_method_has_an_adversary_and_trains_end_to_end(method):
    """trainer.methods lists a method; trainer.loop must know how to attack for it (ADVERSARY, or FreeAT)."""
    events = []
    final = train(make_config({**TINY, "method": method, "max_iters": 10, "eval_every": 10}), events.append)
    assert final["iterations"] == 10 and final["last"]["autoattack_acc"] is None
    assert 0 <= final["last"]["pgd_acc"] <= 1


def test_each_method_is_one_entry_its_adversary_capture_and_cost_derive_from():
    """trainer.methods holds what the loop, the fast path and the cost model read of a method."""
    for name, method in METHODS.items():
        config = make_config({**TINY, "method": name})
        assert (name in ADVERSARY) == (method.adversary is not None) != (name == "free")
        assert fast_path(config, torch.device("cpu"), lambda step, gen: step).refusal == method.refusal
        assert step_passes(config) == method.passes(config) >= 1
    assert step_passes(make_config({**TINY, "method": "pgd", "pgd_steps": 7})) == 8  # 7 gradients, 1 update
    assert METHODS["free"].refusal and METHODS["free"].adversary is None
