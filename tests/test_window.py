"""The detector's window kept as weights (trainer.window): the onset placed on the eval at every iteration.

The collapsing run below is trained once for the module, by the onset check (experiments/onset_check.py),
which also evaluates the live model after every step: its stream is the run's own (the run without the
replay, trained here too, equals it event for event), and its figures check the replay against that
reference.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import without_timing

from experiments import onset_check
from trainer import window
from trainer.checkpoint import model_for
from trainer.co import Row, dense_onset
from trainer.config import make_config
from trainer.data import load_dataset
from trainer.evaluate import per_image_results
from trainer.fast import FastPath
from trainer.loop import train
from trainer.presets import DEFAULT_PRESET, PRESETS

pytestmark = pytest.mark.train  # trains models beyond a few steps

# digits FGSM at eps 0.19, seed 1: the eval rule fires at 150 and is confirmed at 175
SEED, ITERS = 1, 180
CHANGES = {"eps": 0.19, "eval_every": 25, "eval_points": 64, "probe_every": 5, "device": "cpu"}
COLLAPSING = {**PRESETS[DEFAULT_PRESET], **CHANGES, "seed": SEED, "max_iters": ITERS, "final_eval_points": 0}


def run(**fields) -> list[dict]:
    events = []
    train(make_config({**COLLAPSING, **fields}), events.append)
    return events


def co_of(events: list[dict]) -> dict:
    (co,) = [event for event in events if event["type"] == "co"]
    return co


@pytest.fixture(scope="module")
def checked() -> tuple[list[dict], dict]:
    """The run with onset_replay on (its events) and the onset check's result on it, on one torch thread
    (the same numbers in every test of the module)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    events = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onset_check, "DRAWS", 40)
        changes = {**CHANGES, "onset_replay": "on"}
        result = onset_check.check_seed(SEED, ITERS, DEFAULT_PRESET, changes, False, on_event=events.append)
    yield events, result
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def replayed(checked) -> list[dict]:
    return checked[0]


def test_the_kept_weights_are_the_runs_own_their_eval_equals_the_live_one_at_every_eval(replayed):
    co = co_of(replayed)
    assert (co["iteration"], co["confirmed_at"]) == (150, 175)
    rows = co["onset_evals"]
    # the detector's window: after the eval before the last uncollapsed one (100), to the confirming eval
    assert [row[0] for row in rows] == list(range(101, 176))
    evals = {e["iteration"]: [e["pgd_acc"], e["fgsm_acc"]] for e in replayed if e["type"] == "eval"}
    assert {row[0]: row[1:] for row in rows if row[0] in evals} == {it: evals[it] for it in (125, 150, 175)}


def test_the_onset_is_placed_on_the_replayed_eval_and_its_interval_on_the_evals_images(replayed):
    co = co_of(replayed)
    assert co["onset_iteration"] == dense_onset(co["onset_evals"], co["confirmed_at"])
    assert co["onset_rule"].endswith("on the eval at every iteration")
    low, high = co["onset_interval"]
    assert low <= co["onset_iteration"] <= high
    assert co["onset_probes"] and all(row[0] % 5 == 0 for row in co["onset_probes"])  # still the evidence
    (final,) = [e for e in replayed if e["type"] == "final"]
    assert final["co_iteration"] == co["onset_iteration"]


def test_without_the_replay_the_probe_places_the_onset_and_the_run_is_the_same(replayed):
    plain = run(onset_replay="off")
    co = co_of(plain)
    assert co["onset_evals"] is None and co["onset_rule"].endswith("on the dense probe")
    assert co["onset_iteration"] == dense_onset(co["onset_probes"], co["confirmed_at"])
    # keeping weights changes nothing in training, its evals or its probes
    dense = {"metrics", "probe", "eval", "snapshot"}
    assert [without_timing(e) for e in plain if e["type"] in dense] == [
        without_timing(e) for e in replayed if e["type"] in dense
    ]
    assert make_config({}).replays_onset("cuda") and not make_config({}).replays_onset("cpu")


def test_the_onset_check_replays_the_detectors_window_with_the_runs_own_weights(checked):
    """The window's offline probe, run on the kept weights, equals the live probe at every probe iteration,
    so the weights replayed are the run's; the window spans the detector's (after the eval two before the
    onset eval, to the confirming one) and every figure of the check is there. With onset_replay on, the
    run's onset, placed on the weights it kept, is the reference's, placed on the live model after each
    step."""
    events, result = checked
    co = result["co"]
    assert co is not None and (co["iteration"], co["confirmed_at"]) == (150, 175)
    assert co == {key: value for key, value in co_of(events).items() if key != "onset_probes"}
    window = [row[0] for row in result["probe_series"]]
    assert window == list(range(co["iteration"] - 2 * 25 + 1, co["confirmed_at"] + 1))
    offline = {row[0]: row[1:] for row in result["probe_series"]}
    live = [row for row in result["probes"] if row[0] in offline]
    assert len(live) == len(window) // 5
    for iteration, pgd_acc, fgsm_acc in live:
        assert offline[iteration] == pytest.approx([pgd_acc, fgsm_acc], abs=1e-6)
    assert result["run_onset"] == co["onset_iteration"] == result["eval_onset"] and result["difference"] == 0
    low, high = co["onset_interval"]  # over resamples of the eval's 64 images
    assert low <= co["onset_iteration"] <= high and result["probe_onset"] is not None
    assert result["eval_onset"] is not None and result["sampling"]["bootstrap_sd"] is not None
    assert set(result["offline_probe_onsets"]) == set(onset_check.CADENCES)
    assert result["other_start_onset"] is None and result["train_images_onset"] is None  # not asked for


def test_a_model_too_large_for_the_budget_keeps_every_few_steps(monkeypatch, replayed):
    state_bytes = sum(t.numel() * t.element_size() for t in _model_state(COLLAPSING))
    monkeypatch.setattr(window, "WINDOW_BYTES", 19 * state_bytes)  # 75 steps' window, 19 fit: every 4th
    co = co_of(run(onset_replay="on"))
    rows = co["onset_evals"]
    assert [row[0] for row in rows] == list(range(104, 176, 4))
    assert co["onset_rule"].endswith("on the eval every 4 iterations")
    full = {row[0]: row[1:] for row in co_of(replayed)["onset_evals"]}
    assert all(full[row[0]] == row[1:] for row in rows)  # the same weights, evaluated the same way


def test_a_resumed_run_that_has_not_kept_the_windows_start_places_the_onset_on_the_probe(tmp_path):
    config = make_config({**COLLAPSING, "onset_replay": "on"})
    calls = iter(range(1, 10**6))  # should_stop is asked once per iteration: stop at 130, before the fire
    assert train(config, None, tmp_path, should_stop=lambda: next(calls) == 130) is None
    events = []
    train(config, events.append, tmp_path, resume=True)
    co = co_of(events)
    assert co["onset_evals"] is None and co["onset_rule"].endswith("on the dense probe")


def _model_state(fields: dict) -> list[torch.Tensor]:
    return list(model_for(make_config(fields)).state_dict().values())


def test_under_bf16_each_replayed_row_is_its_own_steps_weights_evaluated_alone():
    """Autocast keeps a weight's bf16 copy until the outermost context exits: the replay, inside the eval's
    autocast as in the loop, reloads one replica per kept step and must not evaluate the first step's."""
    config = make_config({**COLLAPSING, "eps": 0.05, "eval_points": 32})
    path = FastPath(torch.device("cpu"), bf16=True, channels_last=False, refusal="cpu")
    data = load_dataset(config.dataset, "cpu")
    x, y = data.test_x[:32], data.test_y[:32]
    torch.manual_seed(0)
    model = model_for(config)
    kept = window.WindowWeights(model, config, lambda: model_for(config))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    weights = {}
    for iteration in range(1, 5):  # clean steps: each changes what the eval sees
        batch = slice(64 * iteration, 64 * (iteration + 1))
        optimizer.zero_grad()
        F.cross_entropy(model(data.train_x[batch]), data.train_y[batch]).backward()
        optimizer.step()
        kept.keep(iteration)
        weights[iteration] = {name: t.clone() for name, t in model.state_dict().items()}
    with path.autocast():
        rows = kept.rows(1, 4, x, y, path)
    alone = []
    for iteration, state in weights.items():
        replica = model_for(config).eval()
        replica.load_state_dict(state)
        with path.autocast():
            pgd, fgsm = per_image_results(replica, x, y, config, config.seed + iteration, path.eval_batch)
        robust = pgd.float()
        alone.append(Row(iteration, robust.mean().item(), fgsm.float().mean().item(), robust.tolist()))
    assert len({str(row[1:]) for row in alone}) == 4  # four different evals, so a stale replay shows
    assert rows == alone
