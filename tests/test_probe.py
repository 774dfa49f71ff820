"""The dense probe, the CO onset placed from it, and ELLE's regulariser, against direct computations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY
from test_attacks import EPS, small_cnn
from torch import nn

from trainer.attacks import cosine, fgsm, input_grad, pgd, random_point
from trainer.checkpoint import load_model
from trainer.co import SMOOTH_ITERS, CODetector, Row, dense_onset, onset_interval
from trainer.config import make_config
from trainer.data import load_dataset
from trainer.elle import DECAY, SENSITIVITY, AdaptiveLambda, elle_reg
from trainer.evaluate import EVAL_PGD_STEP
from trainer.events import FIELDS, BadEvent, encode, events_csv, make_event, parse_event
from trainer.loop import train
from trainer.probe import PROBE_FIELDS, probe_metrics, probe_seed

pytestmark = pytest.mark.train  # trains models beyond a few steps


def test_probe_values_equal_an_independent_computation(batch):
    """FGSM and PGD accuracy and both cosines, each from the attacks module on its own, same draws."""
    x, y = batch
    model = small_cnn()
    got = probe_metrics(model, x, y, EPS, 4, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    eta = random_point(x, EPS, g)  # drawn first, then PGD's random start from the same stream
    pgd_delta = pgd(model, x, y, EPS, EVAL_PGD_STEP * EPS, 4, generator=g)
    fgsm_delta = fgsm(model, x, y, EPS)
    with torch.no_grad():
        robust = (model(x + pgd_delta).argmax(1) == y).float()
        expected = [
            (model(x + fgsm_delta).argmax(1) == y).float().mean().item(),
            robust.mean().item(),
            cosine(fgsm_delta, pgd_delta).mean().item(),
            cosine(input_grad(model, x, y), input_grad(model, x, y, eta)).mean().item(),
        ]
    assert got[:4].tolist() == pytest.approx(expected, abs=1e-5)
    assert got[4:].tolist() == robust.tolist()  # each point's PGD result, for the onset's interval
    assert 0 < expected[1] < 1 and expected[3] < 0.999  # not a degenerate case


def test_the_loops_probe_events_equal_the_probe_on_the_same_weights(tmp_path):
    """The last probe of a run, recomputed from the checkpointed weights on the last training images."""
    config = make_config({**TINY, "max_iters": 23, "probe_every": 23, "probe_points": 48})
    events = []
    train(config, events.append, run_dir=tmp_path)
    probes = [e for e in events if e["type"] == "probe"]
    assert [e["iteration"] for e in probes] == [23] and set(probes[0]) - {"type"} == set(FIELDS["probe"])
    model = load_model(tmp_path, which="last")
    data = load_dataset("digits", torch.device("cpu"))
    x, y = data.train_x[-48:], data.train_y[-48:]
    generator = torch.Generator().manual_seed(probe_seed(config.seed, 23))
    expected = probe_metrics(model, x, y, config.eps, config.probe_pgd_steps, generator).tolist()
    assert [probes[0][key] for key in PROBE_FIELDS] == pytest.approx(expected[:4], abs=1e-6)
    assert sum(row.startswith("probe,") for row in events_csv(events).splitlines()) == 1  # exported


def test_probes_can_be_turned_off():
    events = []
    train(make_config({**TINY, "max_iters": 4, "probe_points": 0, "final_eval_points": 0}), events.append)
    assert not [e for e in events if e["type"] == "probe"]


def ramp(start, stop, high, low, collapse_at, every=1):
    """A synthetic dense series: `high` until collapse_at, then `low` (with a little deterministic noise)."""
    wiggle = [0.02, -0.01, 0.0, 0.015, -0.02]
    return [
        [it, (high if it < collapse_at else low) + wiggle[it % 5], 0.5]
        for it in range(start, stop + 1, every)
    ]


def test_dense_onset_finds_the_first_iteration_of_a_sudden_collapse():
    # With +-SMOOTH_ITERS smoothing, a step from 0.3 to 0.02 crosses half the peak within a few iterations.
    onset = dense_onset(ramp(51, 150, 0.3, 0.02, collapse_at=117), confirmed_at=150)
    assert abs(onset - 117) <= 3
    # a series that recovers before the confirming eval has no onset
    recovered = ramp(51, 120, 0.3, 0.02, collapse_at=90) + ramp(121, 150, 0.3, 0.3, collapse_at=0)
    assert dense_onset(recovered, confirmed_at=150) is None
    assert SMOOTH_ITERS == 10


def judge(detector: CODetector, it: int, pgd_acc: float, fgsm_acc: float, replay=None) -> dict | None:
    """One eval through the detector as the loop runs it: the co event's fields when the rule fires, the
    onset placed on `replay(start, confirmed_at)`'s rows when it has them."""
    collapse = detector.update(it, pgd_acc, fgsm_acc)
    if collapse is None:
        return None
    return detector.place(collapse, replay(collapse.start, collapse.confirmed_at) if replay else None)


def test_the_detector_places_the_onset_from_the_probe_when_its_eval_rule_fires():
    """Evals every 50 iterations collapse at 150 and 200; the probe (every 2) collapsed at 131."""
    detector = CODetector()
    probes = ramp(2, 200, 0.3, 0.01, collapse_at=131, every=2)
    evals = {50: (0.25, 0.4), 100: (0.3, 0.45), 150: (0.05, 0.7), 200: (0.02, 0.8)}
    fired = []
    for it, pgd_acc, fgsm_acc in probes:
        detector.probe(it, pgd_acc, fgsm_acc)
        if it in evals:
            fired.append(judge(detector, it, *evals[it]))
    event = [e for e in fired if e][0]
    assert event["iteration"] == 150 and event["confirmed_at"] == 200
    assert abs(event["onset_iteration"] - 131) <= 3
    # the evidence: the probes of the window it was read from (after the eval at 50, up to 200)
    assert event["onset_probes"][0][0] == 52 and event["onset_probes"][-1][0] == 200
    assert set(event) - {"type"} == set(FIELDS["co"])


def falling(images: int, start: int, stop: int, every: int, falls) -> list[Row]:
    """Detector rows where image i is robust until iteration falls(i)."""
    rows = []
    for it in range(start, stop + 1, every):
        robust = [1.0 if it < falls(i) else 0.0 for i in range(images)]
        rows.append(Row(it, sum(robust) / images, 0.8, robust))
    return rows


def test_the_onset_interval_is_a_point_for_a_step_and_wide_for_a_drift():
    """Every image falling at 131: each resample of them places the onset there. Each falling at its own
    iteration, spread over 60-200: the interval spans tens of iterations around the onset."""
    step = falling(32, 52, 200, 2, lambda i: 131)
    assert onset_interval(step, 200) == [dense_onset(step, 200)] * 2
    drift = falling(32, 52, 200, 2, lambda i: 60 + 140 * i // 31)
    low, high = onset_interval(drift, 200)
    assert low < dense_onset(drift, 200) < high and high - low >= 20
    assert onset_interval([row._replace(robust=()) for row in drift], 200) is None  # no per-image results


def test_the_detectors_co_event_carries_the_onset_interval_from_the_probes_images():
    detector = CODetector()
    evals = {50: (0.25, 0.4), 100: (0.3, 0.45), 150: (0.05, 0.7), 200: (0.02, 0.8)}
    fired = []
    for it, pgd_acc, fgsm_acc, robust in falling(32, 2, 200, 2, lambda i: 100 + 60 * i // 31):
        detector.probe(it, pgd_acc, fgsm_acc, robust)
        if it in evals:
            fired.append(judge(detector, it, *evals[it]))
    (event,) = [e for e in fired if e]
    low, high = event["onset_interval"]
    assert low <= event["onset_iteration"] <= high
    assert all(len(row) == 3 for row in event["onset_probes"])  # the evidence, without the images


def test_the_detector_places_the_onset_on_the_eval_at_every_iteration_when_it_is_given_one():
    """The probe (every 2) says 131; the eval at every iteration of the window (its 64 images falling over
    140-160) is asked for exactly the window, and places the onset; without it, the probe does."""
    probes = ramp(2, 200, 0.3, 0.01, collapse_at=131, every=2)
    evals = {50: (0.25, 0.4), 100: (0.3, 0.45), 150: (0.05, 0.7), 200: (0.02, 0.8)}
    replay = falling(64, 51, 200, 1, lambda i: 140 + 20 * i // 63)
    asked = []

    def every_iteration(first, last):
        asked.append((first, last))
        return [row for row in replay if first <= row.iteration <= last]

    def fire(source) -> dict:
        detector, fired = CODetector(), []
        for it, pgd_acc, fgsm_acc in probes:
            detector.probe(it, pgd_acc, fgsm_acc)
            if it in evals:
                fired.append(judge(detector, it, *evals[it], source))
        return next(e for e in fired if e)

    event = fire(every_iteration)
    assert asked == [(51, 200)]
    assert event["onset_iteration"] == dense_onset(replay, 200) and 140 <= event["onset_iteration"] <= 160
    assert event["onset_rule"].endswith("on the eval at every iteration")
    assert event["onset_evals"] == [row.shown() for row in replay]
    assert event["onset_interval"] == onset_interval(replay, 200)
    assert len(event["onset_probes"]) == 75  # the probe's evidence stays
    for missing in (lambda first, last: None, None):
        event = fire(missing)
        assert abs(event["onset_iteration"] - 131) <= 3 and event["onset_evals"] is None
        assert event["onset_rule"].endswith("on the dense probe")


def test_without_probes_the_onset_is_the_first_collapsed_eval():
    detector = CODetector()
    for it, (pgd_acc, fgsm_acc) in {50: (0.3, 0.4), 100: (0.05, 0.7), 150: (0.0, 0.8)}.items():
        event = judge(detector, it, pgd_acc, fgsm_acc)
    assert event["onset_iteration"] == 100 and event["onset_probes"] == []
    assert event["onset_interval"] is None


def test_elle_equals_a_direct_computation(batch):
    x, y = batch
    x, model = x.double(), small_cnn().double()  # the error is ~1e-4 of the loss: float32 would blur it
    reg = elle_reg(model, x, y, EPS, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    x_a = x + (torch.rand(x.shape, generator=g, dtype=x.dtype) * 2 - 1) * EPS
    x_b = x + (torch.rand(x.shape, generator=g, dtype=x.dtype) * 2 - 1) * EPS
    alpha = torch.rand(len(x), generator=g, dtype=x.dtype)
    errors = []
    with torch.no_grad():
        for i in range(len(x)):
            a = alpha[i].item()
            x_c = (1 - a) * x_a[i : i + 1] + a * x_b[i : i + 1]

            def loss(point, i=i):
                return F.cross_entropy(model(point), y[i : i + 1]).item()

            errors.append((loss(x_c) - (1 - a) * loss(x_a[i : i + 1]) - a * loss(x_b[i : i + 1])) ** 2)
    assert reg.item() == pytest.approx(sum(errors) / len(errors), rel=1e-9)
    assert reg.item() > 1e-8
    reg.backward()  # one backward reaches the weights, no double backprop
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


class AffineLoss(nn.Module):
    """Outputs log-probabilities whose class-0 entry is -(c + w.x): cross-entropy for label 0 is then exactly
    c + w.x, affine in the input (c keeps it positive on the eps-ball). Cross-entropy over a linear model is
    convex, not affine, so it would not do."""

    def __init__(self, dim, classes=10):
        super().__init__()
        torch.manual_seed(0)
        self.w = nn.Parameter(torch.randn(dim) * 0.1)
        self.c, self.classes = 2.0 + 0.1 * dim**0.5 * 3, classes

    def forward(self, x):
        loss = self.c + x.flatten(1) @ self.w
        p0 = torch.exp(-loss)
        rest = torch.log1p(-p0) - torch.log(torch.tensor(self.classes - 1.0))
        return torch.cat([-loss[:, None], rest[:, None].expand(-1, self.classes - 1)], dim=1)


def test_elle_is_zero_when_the_loss_is_affine_in_the_input(batch):
    x, _ = batch
    y = torch.zeros(len(x), dtype=torch.long)
    model = AffineLoss(x[0].numel()).double()
    x = x.double()
    losses = F.cross_entropy(model(x), y, reduction="none")
    assert torch.allclose(losses, model.c + x.flatten(1) @ model.w)  # the construction is what it claims
    reg = elle_reg(model, x, y, EPS, torch.Generator().manual_seed(4))
    assert reg.item() < 1e-20
    assert elle_reg(small_cnn().double(), x, y, EPS, torch.Generator().manual_seed(4)).item() > 1e-8


def test_elle_a_follows_the_authors_rule_step_by_step():
    """AdaptiveLambda against the authors' loop (core/utils/train.py, lambda_schedule 'onoff'), written out
    with numpy over the full list of earlier errors, on a series with quiet stretches and spikes."""
    rng = np.random.default_rng(0)
    errors = list(rng.uniform(0.01, 0.02, 30)) + [0.5] + list(rng.uniform(0.01, 0.03, 40)) + [0.9, 0.02]
    adaptive = AdaptiveLambda(64.0, torch.device("cpu"))
    lam, history, seen = 0.0, [], []
    for error in errors:
        assert adaptive.value.item() == pytest.approx(lam, rel=1e-5, abs=1e-12)  # the weight this step used
        if len(history) > 2 and error > np.mean(history) + SENSITIVITY * np.std(history):
            lam = 64.0
        else:
            lam *= DECAY
        history.append(error)
        adaptive.update(torch.tensor(error))
        seen.append(adaptive.value.item())
    assert seen[30] == 64.0 and seen[31] == pytest.approx(64.0 * DECAY)  # the spikes raise it, then it decays
    assert seen[-2] == 64.0 and seen[-1] == pytest.approx(64.0 * DECAY) and min(seen) < 64.0 * DECAY**20
    assert adaptive.value.item() == pytest.approx(lam, rel=1e-5)
    assert adaptive.mean.item() == pytest.approx(np.mean(errors), rel=1e-5)


def test_an_elle_a_run_resumes_exactly(tmp_path):
    """λ and the error record are in the checkpoint: a resumed ELLE-A run continues the same schedule."""
    cfg = make_config(
        {
            **TINY,
            "max_iters": 12,
            "eval_every": 6,
            "eval_points": 16,
            "final_eval_points": 0,
            "elle_lambda": 50.0,
            "elle_adaptive": True,
        }
    )

    def metrics(events):
        return [(e["iteration"], e["train_loss"], e["reg"]) for e in events if e["type"] == "metrics"]

    reference: list[dict] = []
    train(cfg, reference.append, tmp_path / "a")
    calls = iter(range(1, 10**9))
    train(cfg, lambda e: None, tmp_path / "b", should_stop=lambda: next(calls) >= 7)
    resumed: list[dict] = []
    train(cfg, resumed.append, tmp_path / "b", resume=True)
    assert metrics(resumed) == [row for row in metrics(reference) if row[0] > 7]
    fixed: list[dict] = []
    train(make_config({**cfg.model_dump(), "elle_adaptive": False}), fixed.append, tmp_path / "c")
    assert metrics(fixed) != metrics(reference)  # the schedule changed the training


def test_probe_and_co_events_from_redis_are_checked_at_the_boundary():
    probe = make_event(
        "probe", iteration=40, fgsm_acc=0.6, pgd_acc=0.1, cos_fgsm_pgd=0.5, cos_grad_random=None
    )
    assert parse_event(encode(probe)) == probe
    for bad in ({"pgd_acc": "0.1"}, {"iteration": 4.5}, {"cos_grad_random": True}):
        with pytest.raises(BadEvent):
            parse_event(encode({**probe, **bad}))
    detector = CODetector()
    detector.probe(60, 0.3, 0.5)
    detector.update(50, 0.3, 0.4)
    detector.probe(100, 0.01, 0.8)
    detector.update(100, 0.01, 0.8)
    detector.probe(150, 0.0, 0.9)
    co = make_event("co", **judge(detector, 150, 0.0, 0.9))
    assert parse_event(encode(co)) == co
    old = {key: value for key, value in co.items() if key not in ("onset_interval", "onset_evals")}
    assert parse_event(encode(old)) == old  # stored before the interval and the replay existed
    replayed = {**co, "onset_evals": [[101, 0.2, 0.5], [102, 0.1, 0.6]]}
    assert parse_event(encode(replayed)) == replayed
    bad_values = (
        {"onset_iteration": "100"},
        {"onset_probes": [[1, "x", 0.5]]},
        {"onset_probes": {}},
        {"onset_interval": [200, 100]},
        {"onset_interval": [100]},
        {"onset_interval": ["<b>", 100]},
        {"onset_interval": "100-200"},
        {"onset_evals": [[101, None, "0.5"]]},
        {"onset_evals": "101-175"},
    )
    for bad in bad_values:
        with pytest.raises(BadEvent):
            parse_event(encode({**co, **bad}))
