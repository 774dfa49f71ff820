import json
import math

import pytest

from trainer.config import (
    ConfigError,
    RunConfig,
    format_eps,
    lambda_extrapolated,
    make_config,
    paper_lambda,
)
from trainer.methods import METHODS


def test_json_round_trip_is_exact():
    cfg = make_config({"dataset": "cifar10", "model": "preact_resnet18", "eps": "8/255", "method": "fgsm_rs"})
    assert RunConfig.model_validate_json(cfg.model_dump_json()) == cfg
    assert json.loads(cfg.model_dump_json())["eps"] == pytest.approx(8 / 255)


def test_defaults_follow_the_paper():
    resnet = make_config({"model": "preact_resnet18", "dataset": "cifar10"})
    assert (resnet.optimizer, resnet.lr_schedule, resnet.momentum, resnet.weight_decay) == (
        "sgd",
        "cyclic",
        0.9,
        5e-4,
    )
    cnn = make_config({})
    assert (cnn.optimizer, cnn.lr_schedule) == ("adam", "constant")
    assert make_config({"method": "fgsm"}).alpha == 1.0
    assert make_config({"method": "fgsm_rs"}).alpha == 1.25
    assert make_config({"method": "fgsm_rs", "alpha": 0.5}).alpha == 0.5
    # N-FGSM: k = 2, step eps (de Jorge et al. 2022); Free AT: m = 4, step eps (Shafahi et al. 2019)
    nfgsm, free = make_config({"method": "nfgsm"}), make_config({"method": "free"})
    assert (nfgsm.nfgsm_k, nfgsm.alpha, free.free_replays, free.alpha) == (2.0, 1.0, 4, 1.0)
    assert make_config({}).autoattack is False


def test_config_is_frozen():
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises its own ValidationError subclass
        make_config({}).eps = 0.3


@pytest.mark.parametrize(
    ("data", "field", "hint"),
    [
        ({"eps": -0.1}, "eps", "[0.0, 1.0]"),
        ({"eps": float("nan")}, "eps", "[0.0, 1.0]"),
        ({"eps": 1.5}, "eps", "[0.0, 1.0]"),
        ({"eps": "8/0"}, "eps", "8/255"),
        ({"eps": "lots"}, "eps", "8/255"),
        ({"dataset": "imagenet"}, "dataset", "digits, mnist, svhn, cifar10"),
        ({"model": "vit"}, "model", "cnn, lenet, preact_resnet18"),
        ({"method": "trades"}, "method", "fgsm_rs, pgd, free, nfgsm, pgd_corner, random_corner"),
        ({"free_replays": 0}, "free_replays", "[1, 32]"),
        ({"free_replays": 33}, "free_replays", "[1, 32]"),
        ({"nfgsm_k": -1}, "nfgsm_k", "[0.0, 8.0]"),
        ({"nfgsm_k": 9}, "nfgsm_k", "[0.0, 8.0]"),
        ({"autoattack": "maybe"}, "autoattack", "AutoAttack"),
        ({"epochs": 0}, "epochs", "[1, 1000]"),
        ({"batch_size": 0}, "batch_size", "[1, 4096]"),
        ({"batch_size": -5}, "batch_size", "[1, 4096]"),
        ({"grad_align_lambda": -1}, "grad_align_lambda", "[0.0, 100.0]"),
        ({"device": "tpu"}, "device", "cuda:N"),
        ({"colour": "red"}, "colour", "unknown field"),
    ],
)
def test_bad_values_name_the_field_and_the_allowed_values(data, field, hint):
    with pytest.raises(ConfigError) as err:
        make_config(data)
    message = str(err.value)
    assert message.startswith(f"{field}:")
    assert hint in message


def test_eps_fraction_and_display():
    assert make_config({"eps": "16/255"}).eps == pytest.approx(16 / 255)
    assert format_eps(8 / 255, "cifar10") == "8/255"
    assert format_eps(0.15, "digits") == "0.15"


def test_paper_lambda_is_log_linear():
    assert paper_lambda(8 / 255) == pytest.approx(0.2)
    assert paper_lambda(16 / 255) == pytest.approx(2.0)
    ratios = [paper_lambda((k + 1) / 255) / paper_lambda(k / 255) for k in range(1, 16)]
    assert all(math.isclose(r, ratios[0], rel_tol=1e-2) for r in ratios)


def test_label_describes_the_run():
    assert (
        make_config({"method": "fgsm", "eps": 0.2, "grad_align_lambda": 2}).label()
        == "FGSM+GradAlign λ=2 ε=0.2"
    )


@pytest.mark.parametrize(
    ("data", "label"),
    [
        ({"method": "nfgsm"}, "N-FGSM k=2 ε=0.175"),
        ({"method": "free", "free_replays": 8}, "Free m=8 ε=0.175"),
        ({"method": "pgd_corner", "pgd_steps": 5}, "PGD-5-corner ε=0.175"),
        ({"method": "random_corner"}, "Random-corner ε=0.175"),
    ],
)
def test_label_names_the_new_methods_and_their_parameter(data, label):
    assert make_config(data).label() == label


def test_the_method_registry_speaks_only_of_real_config_fields():
    assert RunConfig.model_fields["method"].annotation.__args__ == tuple(METHODS)
    method_specific = {name for method in METHODS.values() for name in method.reads}
    for method in METHODS.values():
        assert set(method.reads) | set(method.label_fields) <= set(RunConfig.model_fields), method.name
        assert set(method.defaults) <= set(method.reads), method.name
        for line in method.sweep:  # its own parameters, or fields every method reads (elle_adaptive)
            assert set(line.fields) <= set(RunConfig.model_fields), line.name
            assert set(line.fields) & method_specific <= set(method.reads), line.name
        config = make_config({"method": method.name})
        assert all(getattr(config, name) == value for name, value in method.defaults.items())


def test_config_errors_keep_each_fields_message_apart():
    with pytest.raises(ConfigError) as caught:
        make_config({"eps": 1.5, "method": "trades", "seed": 3})
    problems = caught.value.problems
    assert set(problems) == {"eps", "method"}
    assert problems["eps"].startswith("Input should be less than or equal to 1 (got 1.5); allowed: range")
    assert str(caught.value) == "; ".join(f"{field}: {text}" for field, text in problems.items())
    assert ConfigError("--resume needs --run-dir").problems == {"config": "--resume needs --run-dir"}


def test_lambda_extrapolated_outside_the_measured_eps_on_digits_only():
    assert lambda_extrapolated("grad_align_lambda", "digits", 0.2) == ""
    assert lambda_extrapolated("grad_align_lambda", "digits", 0.25) == ""  # the ends are measured
    ga = "extrapolated: measured for ε = 0.15–0.25"
    assert lambda_extrapolated("grad_align_lambda", "digits", 0.3) == ga
    assert lambda_extrapolated("elle_lambda", "digits", 0.3) == ""
    assert lambda_extrapolated("elle_lambda", "digits", 0.1) == "extrapolated: measured for ε = 0.15–0.3"
    assert lambda_extrapolated("grad_align_lambda", "cifar10", 1.0) == ""  # the paper's rule, said elsewhere
