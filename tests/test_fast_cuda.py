"""The captured training step on a real GPU (skipped without one; bench/gpu_check.sh runs these).

Captured steps are compared with the same steps run directly by the same machinery (the `called_again`
capture of tests/test_fast.py: same layout, precision, buffers and lr tensor), so only the graph differs;
and with today's eager step (fast_path off). cudnn.benchmark may pick other convolution algorithms in
each run, and a sign attack amplifies the last bits of an input gradient, so the comparisons allow float32
(or bf16) rounding that grows over 20 steps rather than demanding bit equality.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY
from test_fast import called_again, config_event, metric_values, small_svhn

from bench.workloads import CIFAR_RESNET, codash_data, synthetic_cifar
from trainer import loop
from trainer.checkpoint import load_model, model_for
from trainer.config import TRAIN_IMAGES, make_config
from trainer.data import load_dataset
from trainer.evaluate import per_image_results, pgd_accuracy
from trainer.fast import cuda_graph, fast_path, warm_up
from trainer.fork import eval_path, seed_fork
from trainer.loop import make_optimizer, train
from trainer.probe import DenseProbe

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

BASE = {
    **TINY,
    "device": "cuda",
    "max_iters": 20,
    "eval_every": 10,
    "eval_points": 16,
    "final_eval_points": 0,
}
CAPTURED = [
    {"method": "standard"},
    {"method": "fgsm"},
    {"method": "fgsm_rs"},
    {"method": "nfgsm"},
    {"method": "pgd", "pgd_steps": 3},
    {"method": "pgd_corner", "pgd_steps": 3},
    {"method": "random_corner"},
    {"method": "fgsm", "grad_align_lambda": 0.5},
    {"method": "fgsm_rs", "grad_align_lambda": 0.5, "grad_align_fraction": 0.5},
    {"method": "pgd", "pgd_steps": 2, "grad_align_lambda": 0.5},
    {"method": "nfgsm", "grad_align_lambda": 0.5, "optimizer": "sgd", "lr": 0.05, "lr_schedule": "cyclic"},
    {"method": "fgsm", "elle_lambda": 20.0},
    {"method": "fgsm_rs", "elle_lambda": 20.0, "elle_adaptive": True},
]


def run(config, run_dir, **kwargs):
    events = []
    final = train(config, events.append, run_dir=run_dir, **kwargs)
    return events, final


def assert_close_runs(a, b, run_dirs, loss_tol: float, weight_tol: float) -> None:
    ma, mb = metric_values(a), metric_values(b)
    assert [row[0] for row in ma] == [row[0] for row in mb] == list(range(1, len(ma) + 1))
    for (it, lr_a, loss_a, _, reg_a), (_, lr_b, loss_b, _, reg_b) in zip(ma, mb, strict=True):
        assert lr_a == lr_b
        assert abs(loss_a - loss_b) <= loss_tol * max(1.0, abs(loss_a)), (it, loss_a, loss_b)
        assert abs(reg_a - reg_b) <= loss_tol, (it, reg_a, reg_b)
    first, second = (load_model(d, "last", "cuda") for d in run_dirs)
    for (name, p), q in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        if p.is_floating_point():
            assert (p - q).norm() <= weight_tol * max(p.norm(), 1e-6), name


@pytest.mark.parametrize("fields", CAPTURED, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_20_captured_steps_equal_20_steps_run_directly(tmp_path, fields):
    cfg = make_config({**BASE, **fields, "amp": "off"})
    graphed, _ = run(cfg, tmp_path / "graph")
    direct, _ = run(cfg, tmp_path / "direct", capture=called_again)
    assert (config_event(graphed)["step"], config_event(graphed)["step_reason"]) == ("cuda_graph", None)
    assert config_event(graphed)["precision"] == "fp32"
    assert_close_runs(graphed, direct, (tmp_path / "graph", tmp_path / "direct"), 1e-3, 1e-3)


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_captured_steps_in_the_svhn_warm_up_equal_steps_run_directly(tmp_path, monkeypatch, method):
    """The graph reads the attack's share of its size (trainer/ramp.py) from a tensor filled before each
    replay: 15 steps of warm-up, then 5 at the full size."""
    monkeypatch.setattr(loop, "load_dataset", small_svhn)
    monkeypatch.setitem(TRAIN_IMAGES, "svhn", 48)  # a warm-up of 5 * 48 // 16 = 15 steps
    fields = {"dataset": "svhn", "n_filters": 4, "batch_size": 16, "pgd_steps": 2, "probe_points": 0}
    cfg = make_config({**BASE, **fields, "method": method, "amp": "off"})
    graphed, _ = run(cfg, tmp_path / "graph")
    direct, _ = run(cfg, tmp_path / "direct", capture=called_again)
    assert config_event(graphed)["step"] == "cuda_graph"
    assert_close_runs(graphed, direct, (tmp_path / "graph", tmp_path / "direct"), 1e-3, 1e-3)


@pytest.mark.parametrize("fields", [{"method": "fgsm"}, {"method": "fgsm", "grad_align_lambda": 0.5}])
def test_captured_bf16_steps_follow_the_eager_float32_step(tmp_path, fields):
    captured, _ = run(make_config({**BASE, **fields}), tmp_path / "graph")
    assert config_event(captured)["precision"] == "bf16"  # amp auto: on for CUDA
    eager, _ = run(make_config({**BASE, **fields, "amp": "off", "fast_path": False}), tmp_path / "eager")
    assert (config_event(eager)["step"], config_event(eager)["step_reason"]) == ("eager", "fast_path off")
    assert_close_runs(captured, eager, (tmp_path / "graph", tmp_path / "eager"), 0.05, 0.05)


def test_a_captured_resnet_with_batch_norm_fused_sgd_and_the_cyclic_lr_matches_direct_steps(tmp_path):
    cfg = make_config({**CIFAR_RESNET, **{k: BASE[k] for k in ("max_iters", "eval_every", "eval_points")},
                       "batch_size": 32, "device": "cuda", "final_eval_points": 0})  # fmt: skip
    with codash_data(synthetic_cifar("cuda", 512)):
        graphed, _ = run(cfg, tmp_path / "graph")
        direct, _ = run(cfg, tmp_path / "direct", capture=called_again)
    assert config_event(graphed)["step"] == "cuda_graph"
    assert_close_runs(graphed, direct, (tmp_path / "graph", tmp_path / "direct"), 0.02, 0.02)


def test_the_captured_probe_reads_the_live_weights_and_draws_the_eager_probes_numbers():
    """The dense probe replayed from its graph against the eager probe on the same weights, at iterations
    between which the weights move: the same random numbers (reseeded per iteration), so the same values up
    to float32 rounding, which a sign attack may turn into one point of 32 flipped."""
    cfg = make_config({**BASE, "method": "fgsm", "amp": "off", "probe_points": 32})
    data = load_dataset("digits", torch.device("cuda"))
    x, y = data.train_x[-32:], data.train_y[-32:]
    model = model_for(cfg).cuda()
    captured = DenseProbe(model, cfg, x, y, fast_path(cfg, torch.device("cuda"), None), None)
    eager_cfg = make_config({**BASE, "method": "fgsm", "amp": "off", "fast_path": False})
    eager = DenseProbe(model, eager_cfg, x, y, fast_path(eager_cfg, torch.device("cuda"), None), None)
    assert (captured.kind, captured.reason, eager.kind) == ("cuda_graph", None, "eager")
    for iteration in (5, 6, 7):
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.05 * torch.randn_like(param))
        got, want, again = (
            captured(iteration).tolist(),
            eager(iteration).tolist(),
            captured(iteration).tolist(),
        )
        # reseeded: a second replay at one iteration draws the same numbers (the cosines show the draws)
        assert all(abs(g - a) <= 1e-4 for g, a in zip(got[2:4], again[2:4], strict=True)), (got, again)
        assert all(abs(g - w) <= 1 / 32 + 1e-6 for g, w in zip(got[:2], want[:2], strict=True)), (got, want)
        assert all(abs(g - w) <= 0.02 for g, w in zip(got[2:4], want[2:4], strict=True)), (got, want)
        assert sum(g != w for g, w in zip(got[4:], want[4:], strict=True)) <= 1  # each image's PGD result
    assert model.training


def test_a_captured_run_resumed_mid_run_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    """Deterministic cuDNN algorithms and no TF32: a sign attack would turn their last-bit differences
    between the two runs into more than the tolerance, which is about the resumed state, not rounding."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cfg = make_config({**BASE, "method": "fgsm_rs", "grad_align_lambda": 0.5, "amp": "off"})
    reference, _ = run(cfg, tmp_path / "a")
    calls = iter(range(1, 10**9))
    _, final = run(cfg, tmp_path / "b", should_stop=lambda: next(calls) >= 7)
    assert final is None
    resumed, _ = run(cfg, tmp_path / "b", resume=True)
    assert config_event(resumed)["step"] == "cuda_graph" and config_event(resumed)["start_iteration"] == 7
    expected = [row for row in metric_values(reference) if row[0] > 7]
    for want, got in zip(expected, metric_values(resumed), strict=True):
        assert want[0] == got[0] and abs(want[2] - got[2]) <= 1e-4, (want, got)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_lr_tensor_value_at_replay_is_the_lr_applied(optimizer):
    cfg = make_config({"optimizer": optimizer, "momentum": 0.0, "weight_decay": 0.0, "lr": 0.1})
    model = torch.nn.Linear(4, 1).cuda()
    opt = make_optimizer(cfg, model, capturable=True)
    lr = torch.tensor(0.0, device="cuda")
    for group in opt.param_groups:
        group["lr"] = lr
    x = torch.randn(8, 4, device="cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        opt.step()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    before = model.weight.detach().clone()
    graph.replay()  # lr 0: nothing moves
    torch.testing.assert_close(model.weight, before, rtol=0, atol=0)
    lr.fill_(0.5)
    graph.replay()
    moved = (model.weight - before).norm()
    assert moved > 0
    grad = model.weight.grad.detach()
    if optimizer == "sgd":  # p -= lr * g, no momentum or weight decay
        torch.testing.assert_close(model.weight, before - 0.5 * grad)


def test_a_cuda_worker_warms_up_cuda_and_cudnn():
    warm_up(torch.device("cuda"))
    assert torch.backends.cudnn.benchmark


@pytest.fixture(scope="module")
def collapsed(tmp_path_factory):
    """A collapsing digits run on the captured path in bf16 (onset_replay auto: on for CUDA), its events
    and each step's weights, recorded after the step."""
    from test_window import COLLAPSING

    cfg = make_config({**COLLAPSING, "device": "cuda"})
    assert cfg.replays_onset("cuda")
    weights = {}

    def record(iteration, model):
        weights[iteration] = {name: t.detach().clone() for name, t in model.state_dict().items()}

    events, _ = run(cfg, tmp_path_factory.mktemp("collapsed"), after_step=record)
    return cfg, events, weights


def test_on_the_captured_path_the_kept_window_is_the_runs_own_weights(collapsed):
    """The window replayed as the live eval evaluates (the same weights, attacks, seed, precision and
    layout): at each eval iteration of the window the replayed eval is the eval event's."""
    from test_window import co_of

    _, events, _ = collapsed
    assert events[0]["step"] == "cuda_graph" and events[0]["precision"] == "bf16"
    co = co_of(events)
    rows = co["onset_evals"]
    assert rows and co["onset_rule"].endswith("on the eval at every iteration")
    assert [row[0] for row in rows] == list(range(co["iteration"] - 49, co["confirmed_at"] + 1))
    evals = {e["iteration"]: [e["pgd_acc"], e["fgsm_acc"]] for e in events if e["type"] == "eval"}
    replayed = {row[0]: row[1:] for row in rows if row[0] in evals}
    assert replayed and all(replayed[it] == pytest.approx(evals[it], abs=1 / 64 + 1e-6) for it in replayed)


def test_under_bf16_each_replayed_row_is_its_own_steps_weights_evaluated_alone(collapsed):
    """Autocast keeps a weight's bf16 copy until the outermost context exits: a replay that reloads one
    replica per step inside one autocast must still evaluate each step's own weights, not the first's."""
    from test_window import co_of

    cfg, events, weights = collapsed
    path = fast_path(cfg, torch.device("cuda"), None)
    data = load_dataset(cfg.dataset, torch.device("cuda"))
    x, y = path.layout(data.test_x[: cfg.eval_points]), data.test_y[: cfg.eval_points]
    rows = co_of(events)["onset_evals"]
    alone = []
    for row in rows:
        replica = path.prepare(model_for(cfg).cuda()).eval()
        replica.load_state_dict(weights[row[0]])
        with path.autocast():
            pgd, fgsm = per_image_results(replica, x, y, cfg, cfg.seed + row[0], path.eval_batch)
        alone.append([row[0], pgd.float().mean().item(), fgsm.float().mean().item(), pgd.float().tolist()])
    assert len({str(row[1:3]) for row in alone}) > 1  # the evals differ, so a stale replay shows
    for got, want in zip(rows, alone, strict=True):
        assert got[0] == want[0] and got[1:3] == pytest.approx(want[1:3], abs=1 / 64 + 1e-6), (got, want)
        assert sum(a != b for a, b in zip(got[3], want[3], strict=True)) <= 1, got[0]


def test_a_fork_on_the_gpu_trains_with_its_own_optimizer_settings(tmp_path):
    """The parent's captured SGD is fused and reads a tensor lr; the fork changes momentum and weight decay
    and must train as its own settings would from the parent's weights and optimizer state."""
    cfg = make_config(
        {**BASE, "method": "fgsm", "amp": "off", "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
         "weight_decay": 5e-4}
    )  # fmt: skip
    run(cfg, tmp_path / "parent")
    fork = cfg.model_copy(
        update={"parent": "0123456789ab", "fork_iteration": 10, "momentum": 0.5, "weight_decay": 0.01}
    )
    saved = torch.load(eval_path(tmp_path / "parent", 10), weights_only=True)
    assert [(g["momentum"], g["fused"]) for g in saved["optimizer"]["param_groups"]] == [(0.9, True)]
    seed_fork(tmp_path / "parent", 10, tmp_path / "child")
    child, _ = run(fork, tmp_path / "child")
    fresh = make_optimizer(fork, model_for(fork)).state_dict()["param_groups"]
    (tmp_path / "reference").mkdir()
    own = {**saved, "optimizer": {**saved["optimizer"], "param_groups": fresh}}
    torch.save(own, tmp_path / "reference" / "fork.pt")
    reference, _ = run(fork, tmp_path / "reference")
    assert (config_event(child)["step"], config_event(child)["start_iteration"]) == ("cuda_graph", 10)
    got, want = metric_values(child), metric_values(reference)
    assert [row[0] for row in got] == [row[0] for row in want] == list(range(11, 21))
    for (it, _, loss_a, _, _), (_, _, loss_b, _, _) in zip(got, want, strict=True):
        assert abs(loss_a - loss_b) <= 1e-3 * max(1.0, abs(loss_a)), (it, loss_a, loss_b)


def test_a_captured_runs_final_attack_on_subsets_agrees_with_attacking_every_point(tmp_path):
    """On CUDA each restart attacks only the points still robust, with cudnn.benchmark off for the attack
    and on again after it; the figure must be the all-points attack's up to other random starts."""
    cfg = make_config({**BASE, "method": "fgsm", "final_eval_points": 128, "final_pgd_restarts": 3})
    _, final = run(cfg, tmp_path)
    assert final["attack_points"] == 128 and torch.backends.cudnn.benchmark
    path = fast_path(cfg, torch.device("cuda"), None)
    model = path.prepare(load_model(tmp_path, "last", "cuda")).eval()
    data = load_dataset(cfg.dataset, torch.device("cuda"))
    x, y = path.layout(data.test_x[:128]), data.test_y[:128]
    generator = torch.Generator("cuda").manual_seed(cfg.seed)
    with path.autocast():
        every = pgd_accuracy(model, x, y, cfg.eps, cfg.final_pgd_steps, 3, generator, path.eval_batch)
    assert final["last"]["pgd_acc"] == pytest.approx(every, abs=0.1)


def failing(how: str):
    """A real capture (cuda_graph) whose step fails once the graph is recording: after the generator is
    registered and has drawn inside the capture."""

    def capture(step, generator):
        def failing_step():
            out = step()
            if torch.cuda.is_current_stream_capturing():
                if how == "sync":
                    out.sum().item()  # not permitted while capturing: invalidates the capture
                raise RuntimeError("fails mid-capture")
            return out

        return cuda_graph(failing_step, generator)

    return capture


@pytest.mark.parametrize("how", ["raise", "sync"])
def test_a_capture_failing_on_the_gpu_leaves_the_run_to_the_eager_step(tmp_path, how):
    """The fast path never fails a run: the step and the probe, whose generators a failed capture may leave
    flagged as capturing, go on eagerly from fresh ones and train as the direct steps do."""
    cfg = make_config({**BASE, "method": "fgsm_rs", "amp": "off", "probe_points": 16, "probe_every": 5})
    fallback, _ = run(cfg, tmp_path / "fallback", capture=failing(how))
    event = config_event(fallback)
    assert event["step"] == "eager" and event["step_reason"].startswith("capture failed: ")
    assert event["probe_step"] == "eager" and event["probe_step_reason"].startswith("capture failed: ")
    direct, _ = run(cfg, tmp_path / "direct", capture=called_again)
    assert_close_runs(fallback, direct, (tmp_path / "fallback", tmp_path / "direct"), 1e-3, 1e-3)
