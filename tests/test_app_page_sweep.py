"""The Sweep page through Streamlit's AppTest, against a real Redis (see test_app_pages)."""

from __future__ import annotations

import pytest
from conftest import (
    config_event,
    eval_event,
    final_event,
    probe_event,
    store_run,
)
from test_app_pages import app, charts, numbers

from app.text import md_escape
from jobs import api
from trainer.config import lambda_of_eps, make_config, paper_lambda
from trainer.presets import DIGITS_GRAD_ALIGN, PRESETS

# --- sweep ---


def test_sweep_submits_methods_times_eps_as_one_sweep(r):
    at = app().run()
    at.switch_page("views/sweep.py").run()
    at.multiselect(key="sweep.methods").set_value(["FGSM", "FGSM + GradAlign"])
    at.text_input(key="sweep.eps").set_value("0.1, 0.2")
    assert at.toggle(key="sweep.paper").value  # digits: the fitted λ(ε) by default
    assert at.number_input(key="sweep.lambda").disabled
    at.toggle(key="sweep.paper").set_value(False).run()
    assert at.number_input(key="sweep.lambda").value == PRESETS[DIGITS_GRAD_ALIGN]["grad_align_lambda"]
    at.number_input(key="sweep.lambda").set_value(1.5)
    at.run()
    at.button(key="sweep.submit").click().run()
    sweep_id = at.query_params["sweep"]
    runs = api.sweep_runs(r, sweep_id)
    base = PRESETS["Digits: FGSM catastrophic overfitting"]
    expected = [
        make_config({**base, "eps": eps, "grad_align_lambda": lam}) for lam in (0, 1.5) for eps in (0.1, 0.2)
    ]
    assert [run.config for run in runs] == expected
    assert at.selectbox(key="sweep.shown").value == sweep_id


def test_the_default_digits_sweep_takes_gradalign_and_elle_lambda_from_the_digits_fit(r):
    at = app().run()
    at.switch_page("views/sweep.py").run()
    at.multiselect(key="sweep.methods").set_value(["FGSM + GradAlign", "FGSM + ELLE"])
    at.text_input(key="sweep.eps").set_value("0.1, 0.25").run()
    at.button(key="sweep.submit").click().run()
    runs = api.sweep_runs(r, at.query_params["sweep"])
    assert len(runs) == 4
    for run in runs:
        config = run.config
        field = "grad_align_lambda" if config.grad_align_lambda else "elle_lambda"
        assert getattr(config, field) == lambda_of_eps(field, "digits", config.eps) > 0
    weights = sorted(run.config.grad_align_lambda for run in runs if run.config.grad_align_lambda)
    assert weights[0] < weights[1]  # λ grows with ε


def test_the_sweep_names_each_weight_once_and_marks_the_extrapolated_ones(r):
    at = app().run()
    at.switch_page("views/sweep.py").run()
    at.multiselect(key="sweep.methods").set_value(["FGSM + GradAlign", "FGSM + ELLE"])
    at.text_input(key="sweep.eps").set_value("0.1, 0.2, 0.3")
    at.text_input(key="sweep.seeds").set_value("0, 1").run()
    [caption] = [c.value.replace("\\", "") for c in at.caption if c.value.startswith("12 runs")]  # md-escaped
    lam = {eps: lambda_of_eps("grad_align_lambda", "digits", eps) for eps in (0.1, 0.2, 0.3)}
    elle = lambda_of_eps("elle_lambda", "digits", 0.3)
    for text in (
        f"GradAlign λ={lam[0.1]:g} at ε=0.1 (extrapolated)",  # below the measured 0.15-0.25
        f"GradAlign λ={lam[0.2]:g} at ε=0.2;",
        f"GradAlign λ={lam[0.3]:g} at ε=0.3 (extrapolated)",
        f"ELLE λ={elle:g} at ε=0.3.",  # ELLE was measured up to 0.3 (the last item)
    ):
        assert caption.count(text) == 1, (text, caption)  # once, not once per seed
    at.toggle(key="sweep.paper").set_value(False).run()  # fixed weights: nothing is extrapolated
    [caption] = [c.value for c in at.caption if c.value.startswith("12 runs")]
    assert "extrapolated" not in caption


def test_the_paper_fig1_sweep_preset_queues_the_papers_grid_with_lambda_of_eps(r):
    name = "Paper Fig. 1: CIFAR-10 ε sweep"
    at = app().run()
    at.switch_page("views/sweep.py").run()
    at.selectbox(key="sweep.base").set_value(name).run()
    assert not at.exception
    methods = ["FGSM", "FGSM-RS", "FGSM + GradAlign", "PGD-2", "PGD-10"]
    assert at.multiselect(key="sweep.methods").value == methods
    assert at.text_input(key="sweep.eps255").value == "2, 4, 6, 8, 10, 12, 14, 16"
    assert at.toggle(key="sweep.paper").value
    at.button(key="sweep.submit").click().run()
    runs = api.sweep_runs(r, at.query_params["sweep"])
    labels = [run.config.label() for run in runs]
    assert len(labels) == len(set(labels)) == 5 * 8
    base = {"dataset": "cifar10", "model": "preact_resnet18", "epochs": 30, "batch_size": 128}
    for run in runs:
        config = run.config
        assert {key: getattr(config, key) for key in base} == base
        assert (config.optimizer, config.lr_schedule) == ("sgd", "cyclic")
        assert round(config.eps * 255) in range(2, 17, 2)
        grad_align = config.grad_align_lambda > 0
        assert config.grad_align_lambda == (paper_lambda(config.eps) if grad_align else 0.0)
        assert config.lr == (0.3 if grad_align else 0.2)  # as the paper's scripts
    by_label = {run.config.label(): run.config for run in runs}
    assert by_label["FGSM+GradAlign λ=2 ε=16/255"].grad_align_lambda == 2.0
    assert by_label["FGSM+GradAlign λ=0.2 ε=8/255"].method == "fgsm"
    assert by_label["FGSM-RS ε=8/255"].alpha == 1.25
    assert (by_label["PGD-2 ε=8/255"].pgd_steps, by_label["PGD-2 ε=8/255"].pgd_alpha) == (2, 0.5)
    assert (by_label["PGD-10 ε=8/255"].pgd_steps, by_label["PGD-10 ε=8/255"].pgd_alpha) == (10, 0.2)


def test_sweep_runs_every_method_and_eps_once_per_seed_and_names_the_seeds(r):
    at = app().run()
    at.switch_page("views/sweep.py").run()
    base = make_config(PRESETS["Digits: FGSM catastrophic overfitting"])
    assert at.text_input(key="sweep.seeds").value == str(base.seed)  # the base preset's
    at.multiselect(key="sweep.methods").set_value(["FGSM", "PGD-10"])
    at.text_input(key="sweep.eps").set_value("0.1, 0.2")
    at.text_input(key="sweep.seeds").set_value("0, 1, 2").run()
    assert at.button(key="sweep.submit").label == "Launch 12 runs"
    assert any(caption.value.startswith("12 runs, based on") for caption in at.caption)
    at.button(key="sweep.submit").click().run()
    runs = api.sweep_runs(r, at.query_params["sweep"])
    combinations = {(run.config.method, run.config.eps, run.config.seed) for run in runs}
    assert len(runs) == len(combinations) == 12
    assert {seed for _, _, seed in combinations} == {0, 1, 2}
    shown = at.selectbox(key="sweep.shown")
    assert "× ε 0.1–0.2 × seeds 0, 1, 2 (digits)" in shown.format_func(shown.value)


@pytest.mark.parametrize(
    ("seeds", "says"),
    [
        ("0, one", "'one' is not a whole number in the allowed range [0, 2147483647]"),
        ("-1", "'-1' is not a whole number in the allowed range [0, 2147483647]"),
        ("0, 2147483648", "'2147483648' is not a whole number in the allowed range [0, 2147483647]"),
        ("²", "'²' is not a whole number in the allowed range [0, 2147483647]"),
        ("1, 1", "each seed once"),
        (" , ", "give at least one seed"),
        (",".join(map(str, range(17))), "at most 16, got 17"),
    ],
)
def test_sweep_rejects_bad_seeds_naming_the_field_and_its_range(r, seeds, says):
    at = app().run()
    at.switch_page("views/sweep.py").run()
    at.text_input(key="sweep.seeds").set_value(seeds).run()
    [error] = at.error
    assert error.value == md_escape(f"seeds: {says}")
    assert "sweep.submit" not in [button.key for button in at.button]
    assert api.list_runs(r) == []


def test_sweep_rejects_an_invalid_eps_list(r):
    at = app().run()
    at.switch_page("views/sweep.py").run()
    at.text_input(key="sweep.eps").set_value("0.1, lots").run()
    assert at.error and api.list_runs(r) == []


def test_sweep_plot_shows_finished_co_and_running_runs_and_a_click_opens_one(r):
    def events(eps, lam=0.0, co=None, pgd=0.3):
        return [
            config_event(total=100, eps=eps, grad_align_lambda=lam),
            eval_event(50, pgd),
            final_event(co, pgd),
        ]

    collapsed = store_run(r, events(0.2, co=60, pgd=0.01), sweep_id="s1")
    fine = store_run(r, events(0.1, pgd=0.5), sweep_id="s1")
    rescued = store_run(r, events(0.2, lam=2.0, pgd=0.35), sweep_id="s1")
    running = store_run(r, events(0.1, lam=2.0)[:2], status="running", sweep_id="s1")
    at = app(sweep="s1").run()
    assert not at.exception
    figure = charts(at)["sweep.chart.s1"]
    traces = {trace["name"]: trace for trace in figure["data"] if trace["x"] != [None]}
    assert traces["FGSM (runs)"]["marker"]["symbol"] == ["circle", "x"]
    assert [row[0] for row in traces["FGSM (runs)"]["customdata"]] == [fine, collapsed]
    assert traces["FGSM+GradAlign (runs)"]["marker"]["symbol"] == ["circle-open", "circle"]
    assert [row[0] for row in traces["FGSM+GradAlign (runs)"]["customdata"]] == [running, rescued]
    assert len(at.get("page_link")) == 4

    at.session_state["sweep.chart.s1"] = {"customdata": [rescued, "finished", 2.0], "at": 1}
    at.run()
    assert at.query_params["run"] == rescued
    assert charts(at)["live.chart"]["layout"]["uirevision"] == rescued


def test_sweep_page_draws_each_runs_dense_probe_under_its_evals_per_eps(r):
    def events(eps, lam=0.0, until=100):
        probes = [probe_event(it, 0.4 if it < 60 or lam else 0.0) for it in range(5, until + 1, 5)]
        return [config_event(total=100, eps=eps, grad_align_lambda=lam), *probes, eval_event(50, 0.4)]

    store_run(r, [*events(0.1), final_event(None, 0.4)], sweep_id="s3")
    store_run(r, [*events(0.2), final_event(60, 0.0)], sweep_id="s3")
    store_run(r, events(0.2, lam=2.0, until=40), status="running", sweep_id="s3")
    at = app(sweep="s3").run()
    assert not at.exception
    figure = charts(at)["sweep.curves.s3"]
    assert [a["text"] for a in figure["layout"]["annotations"]] == ["ε = 0.1", "ε = 0.2"]
    dense = [trace for trace in figure["data"] if (trace.get("meta") or {}).get("source") == "probes"]
    assert [len(numbers(trace["x"])) for trace in dense] == [
        20,
        20,
        8,
    ]  # FGSM at 0.1 and 0.2, then the running one
    assert [trace["xaxis"] for trace in dense] == ["x", "x2", "x2"]
    assert numbers(dense[1]["y"])[-1] == 0.0 and numbers(dense[2]["y"])[-1] == 0.4
    assert {trace["name"] for trace in figure["data"]} == {"FGSM", "FGSM+GradAlign"}


def test_a_resumed_run_waiting_in_the_queue_keeps_its_sweep_curve(r):
    events = [config_event(total=100, eps=0.2), *(probe_event(it, 0.4) for it in range(5, 41, 5))]
    run_id = store_run(r, [*events, eval_event(20, 0.4)], status="interrupted", sweep_id="s4")
    api.resume(r, run_id)
    assert api.get_run(r, run_id).status == "queued"
    at = app(sweep="s4").run()
    assert not at.exception
    data = charts(at)["sweep.curves.s4"]["data"]
    dense = [trace for trace in data if (trace.get("meta") or {}).get("source") == "probes"]
    assert [len(numbers(trace["x"])) for trace in dense] == [8]  # what its first attempt drew


def test_sweeps_are_listed_by_what_they_are_and_the_form_says_runs_time_and_epochs(r):
    def events(eps, lam=0.0, co=None):
        config = {"eps": eps, "grad_align_lambda": lam, "max_iters": 100}
        return [config_event(total=100, **config), final_event(co, 0.01 if co else 0.3)]

    for eps, lam, co in ((0.1, 0.0, None), (0.2, 0.0, 60), (0.1, 2.0, None), (0.2, 2.0, None)):
        store_run(r, events(eps, lam, co), sweep_id="s1")
    at = app(sweep="s1").run()
    shown = at.selectbox(key="sweep.shown")
    text = shown.format_func(shown.value)
    assert text.startswith("FGSM, FGSM+GradAlign × ε 0.1–0.2 × seed 0 (digits) · ") and text.endswith(
        "4 of 4 runs done"
    )

    at.multiselect(key="sweep.methods").set_value(["FGSM"])
    at.text_input(key="sweep.eps").set_value("0.15")
    at.number_input(key="sweep.epochs").set_value(10)
    at.run()
    assert at.button(key="sweep.submit").label == "Launch 1 run"
    # 12 s for 100 iterations and the final evaluation (326,970 image passes) measured on the two finished
    # FGSM runs; 10 epochs = 230 iterations and the same final evaluation: 367,802
    assert any("1 run, based on" in c.value and "About 13 s on 1 worker:" in c.value for c in at.caption)
    at.button(key="sweep.submit").click().run()
    [run] = api.sweep_runs(r, at.query_params["sweep"])
    assert run.config.epochs == 10

    at.number_input(key="sweep.epochs").set_value(0).run()
    assert any("epochs" in error.value for error in at.error)


def test_sweep_marks_at_one_point_are_drawn_side_by_side(r):
    for lam in (0.0, 2.0):
        store_run(
            r, [config_event(total=100, eps=0.2, grad_align_lambda=lam), final_event(60, 0.0)], sweep_id="s2"
        )
    figure = charts(app(sweep="s2").run())["sweep.chart.s2"]
    traces = [trace for trace in figure["data"] if trace["mode"] == "markers" and trace["x"] != [None]]
    xs = [numbers(trace["x"])[0] for trace in traces]
    assert [trace["marker"]["symbol"] for trace in traces] == [["x"], ["x"]]
    assert xs[0] != xs[1] and sum(xs) / 2 == pytest.approx(0.2)
    assert figure["layout"]["xaxis"]["tickvals"] == [0.2]
