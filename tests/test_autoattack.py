"""AutoAttack as the independent final evaluation, on a tiny digits model.

AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square) costs on CPU mostly per iteration, not per point;
16 points and one thread keep this test to seconds.
"""

import pytest
import torch

from trainer.autoattack import autoattack_accuracy
from trainer.checkpoint import model_for
from trainer.config import make_config
from trainer.data import load_dataset
from trainer.evaluate import accuracy
from trainer.loop import train

pytestmark = pytest.mark.train  # trains models beyond a few steps

TINY = {
    "dataset": "digits",
    "method": "pgd",
    "pgd_steps": 3,
    "pgd_alpha": 0.5,
    "eps": 0.175,
    "max_iters": 60,
    "eval_every": 60,
    "eval_points": 32,
    "final_eval_points": 16,
    "final_pgd_steps": 20,
    "final_pgd_restarts": 2,
    "device": "cpu",
}


@pytest.fixture(autouse=True)
def one_thread():
    """Thousands of tiny steps (Square's 5000 queries): one thread is faster, and far faster on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_autoattack_final_evaluation_is_at_least_as_strong_as_pgd():
    final = train(make_config({**TINY, "autoattack": True}))
    assert final["best_iteration"] == final["iterations"]  # one eval, at the end: AutoAttack runs once
    for which in ("last", "best"):
        result = final[which]
        auto, pgd, clean = result["autoattack_acc"], result["pgd_acc"], result["clean_acc"]
        assert 0 <= auto <= 1
        assert auto <= pgd + 1 / 16, result  # a stronger attack (one point of slack)
        assert auto <= clean + 1 / 16, result  # both over the same 16 attacked points
    assert final["last"]["pgd_acc"] > 0  # the model is robust somewhere, so the comparison means something


def test_autoattack_is_off_by_default_and_reported_as_none():
    cfg = make_config({**TINY, "max_iters": 5, "eval_every": 5})
    assert cfg.autoattack is False
    final = train(cfg)
    assert final["last"]["autoattack_acc"] is None and final["best"]["autoattack_acc"] is None


def test_autoattack_leaves_the_callers_random_state_alone():
    """torchattacks seeds the global RNG (APGD, Square); an untrained model keeps this quick."""
    data = load_dataset("digits")
    torch.manual_seed(0)
    model = model_for(make_config({})).eval()
    x, y = data.test_x[:16], data.test_y[:16]
    state = torch.get_rng_state()
    auto = autoattack_accuracy(model, x, y, 0.175, n_classes=10, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert auto <= accuracy(model, x, y)
    assert autoattack_accuracy(model, x, y, 0.175, n_classes=10, seed=3) == auto  # seeded: repeatable
