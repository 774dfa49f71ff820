"""RunConfig: the one schema for the CLI, the job queue and the dashboard.

Every field is resolved at construction (method- and model-dependent defaults are filled in), so the JSON
of a config is the complete, explicit description of a run and round-trips exactly.
"""

from __future__ import annotations

import math
import re
import unicodedata
from fractions import Fraction
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from trainer.methods import METHODS

Dataset = Literal["digits", "mnist", "svhn", "cifar10"]
# What is known of each data set without loading it (torch-free, for jobs.limits and model rebuilding):
# (channels, image size, classes), and the number of training and test images.
DATA_SHAPES: dict[str, tuple[int, int, int]] = {
    "digits": (1, 16, 10),
    "mnist": (1, 28, 10),
    "svhn": (3, 32, 10),
    "cifar10": (3, 32, 10),
}
TRAIN_IMAGES: dict[str, int] = {"digits": 1500, "mnist": 60_000, "svhn": 73_257, "cifar10": 50_000}
TEST_IMAGES: dict[str, int] = {"digits": 297, "mnist": 10_000, "svhn": 26_032, "cifar10": 10_000}
Model = Literal["cnn", "lenet", "preact_resnet18"]
# Each model's first convolution, the one a snapshot shows: (its filters, None for the cnn's n_filters; the
# side of its square kernel). trainer.models builds it from here; jobs.limits sizes snapshots by it.
FIRST_CONV: dict[str, tuple[int | None, int]] = {
    "cnn": (None, 3),
    "lenet": (32, 5),
    "preact_resnet18": (64, 3),
}
SNAPSHOT_FILTERS = 64  # first-layer filters a snapshot keeps at most (PreAct ResNet-18 has exactly 64)
Method = Literal[tuple(METHODS)]  # trainer.methods is the list
Optimizer = Literal["sgd", "adam"]
Schedule = Literal["constant", "cyclic", "piecewise"]
Init = Literal["he", "torch"]
Rescue = Literal["off", "auto"]  # the autopilot: trainer/rescue.py
RESCUE_METHODS = ("fgsm", "fgsm_rs")  # the methods an autopilot run may train with until its warning
Switch = Literal["auto", "on", "off"]  # auto: on where it pays (CUDA), off elsewhere; resolved at run start

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


MAX_EPS_TEXT = 32  # characters: "8/255" needs 5; a fraction of huge integers would take long to reduce


def parse_eps(value: Any) -> Any:
    """Accept 0.15, "0.15" or "8/255" (the form in which the papers write eps); junk, and numbers too large
    for a float (1e1000, 10**400/1), are a ValueError quoting at most MAX_EPS_TEXT characters."""
    if isinstance(value, str):
        text = value.strip()
        try:
            if len(text) > MAX_EPS_TEXT:
                raise ValueError
            number = float(Fraction(text)) if "/" in text else float(text)
            if not math.isfinite(number):
                raise ValueError
            return number
        except (ValueError, ZeroDivisionError, OverflowError):
            raise ValueError(f"not a number or fraction like 8/255: {text[:MAX_EPS_TEXT]!r}") from None
    return value


def paper_lambda(eps: float) -> float:
    """The paper's GradAlign weight, log-linear in eps: 0.2 at eps=8/255 on CIFAR-10.

    The paper's scripts interpolate log-linearly, lambda = 0.02 * 10 ** (eps_255 / 8): 0.2 at 8/255,
    2.0 at 16/255 on CIFAR-10. On other data sets it is only a starting point.
    """
    return round(0.2 * 10 ** ((eps - 8 / 255) / (8 / 255)), 4)


def svhn_lambda(eps: float) -> float:
    """The authors' SVHN GradAlign weight (sh/exps_diff_eps_svhn.sh): exp(eps_255 ln(1.6) / 8 +
    ln(2.5^2 / 4)), 1.657 at 1/255, 2.5 at 8/255, 3.162 at 12/255, rounded to 3 decimals as the script."""
    return round(2.5**2 / 4 * 1.6 ** (eps * 255 / 8), 3)


# log10(lambda) = a + b * eps on digits (`python -m experiments.digits_lambda --seeds 0 1 2`;
# docs/reproduction.md): each weight is at or above the smallest one on the experiment's ladder that kept
# the robustness of seeds 0-2. GradAlign needed 2, 4, 8, 8 at eps 0.15, 0.175, 0.2, 0.25 (none from 0.5 to
# 64 kept a working classifier at 0.3): the rule is lambda = 4 * 2 ** ((eps - 0.15) / 0.05), first fitted
# on seed 0, which the experiment's covering fit over seeds 0-2 (10 ** (-0.267 + 5.849 eps)) matches
# within 6 % on the sweep's grid.
# ELLE needed 256, 1024, 1024, 1024, 4096 at 0.15 ... 0.3: the experiment's covering fit, through 1024
# at 0.175.
DIGITS_LAMBDA_FIT = {
    "grad_align_lambda": (math.log10(2 * 2) - math.log10(2) / 0.05 * 0.15, math.log10(2) / 0.05),
    "elle_lambda": (math.log10(1024) - 6.2282 * 0.175, 6.2282),
}
# The eps where the weights above were measured: below 0.15 FGSM keeps its own robustness (nothing to
# rescue); at 0.3 no GradAlign weight from 0.5 to 64 kept it.
DIGITS_LAMBDA_MEASURED = {"grad_align_lambda": (0.15, 0.25), "elle_lambda": (0.15, 0.3)}
REGULARISERS = ("grad_align_lambda", "elle_lambda")


def lambda_of_eps(field: str, dataset: str, eps: float) -> float | None:
    """The weight lambda(eps) of GradAlign (`grad_align_lambda`) or ELLE (`elle_lambda`) for a data set.

    Digits: the fit above (the paper's rule, calibrated for CIFAR-10, gives thousands there). SVHN: the
    authors' SVHN rule. CIFAR-10 and MNIST: the paper's CIFAR-10 rule. ELLE has no rule off digits (None: a
    fixed lambda).
    """
    if dataset == "digits":
        a, b = DIGITS_LAMBDA_FIT[field]
        return round(10 ** (a + b * eps), 2)
    if field != "grad_align_lambda":
        return None
    return svhn_lambda(eps) if dataset == "svhn" else paper_lambda(eps)


def lambda_extrapolated(field: str, dataset: str, eps: float) -> str:
    """Why lambda_of_eps is not a measured weight at this eps on digits ('' where it is, and off digits,
    whose rule is the paper's): the form and the Sweep page say so next to the weight."""
    if dataset != "digits":
        return ""
    low, high = DIGITS_LAMBDA_MEASURED[field]
    return "" if low <= eps <= high else f"extrapolated: measured for ε = {low:g}–{high:g}"


# Unicode categories of characters that are not visible text: control, format (bidi overrides, zero-width),
# surrogates, private use, unassigned, line and paragraph separators.
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


class ConfigError(ValueError):
    """A config that cannot run: `problems` maps each bad field to what is wrong and what it allows.

    Its text is every problem on one line, "field: message; field: message"; an error about the config as a
    whole (a plain message) is filed under "config".
    """

    def __init__(self, problems: dict[str, str] | str):
        self.problems = problems if isinstance(problems, dict) else {"config": problems}
        text = problems if isinstance(problems, str) else "; ".join(f"{f}: {m}" for f, m in problems.items())
        super().__init__(text)


class RunConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    name: str = Field("", max_length=80, description="free label shown in the dashboard")
    dataset: Dataset = "digits"
    model: Model = "cnn"
    n_layers: int = Field(1, ge=1, le=8)
    n_filters: int = Field(16, ge=1, le=512)
    method: Method = "fgsm"
    eps: float = Field(0.175, ge=0.0, le=1.0, description="L-inf radius on [0,1] inputs; '8/255' accepted")
    alpha: float | None = Field(None, gt=0.0, le=4.0, description="FGSM step as a multiple of eps")
    pgd_steps: int = Field(10, ge=1, le=100, description="PGD steps of the pgd and pgd_corner methods")
    pgd_alpha: float = Field(0.25, gt=0.0, le=4.0, description="PGD step as a multiple of eps")
    grad_align_lambda: float = Field(0.0, ge=0.0, le=100.0)
    grad_align_fraction: float = Field(
        1.0, gt=0.0, le=1.0, description="share of each batch GradAlign's random-point gradient is taken on"
    )
    elle_lambda: float = Field(
        0.0, ge=0.0, le=100_000.0, description="ELLE weight λ (0 = off): local-linearity error of the loss"
    )
    elle_adaptive: bool = Field(
        False,
        description="ELLE-A: λ starts at 0, jumps to elle_lambda when the linearity error spikes (above mean"
        " + 2 std of all earlier steps), else decays x0.99 per step (trainer/elle.py)",
    )
    rescue: Rescue = Field(
        "off",
        description="auto: train without a regulariser until the CO early warning (a co_warning event), then"
        " with GradAlign at λ(ε) for the rest of the run (trainer/rescue.py); FGSM and FGSM-RS only",
    )
    free_replays: int = Field(4, ge=1, le=32, description="Free AT: iterations on each minibatch (m)")
    nfgsm_k: float = Field(2.0, ge=0.0, le=8.0, description="N-FGSM: noise size as a multiple of eps (k)")
    epochs: int = Field(30, ge=1, le=1000)
    max_iters: int | None = Field(None, ge=1, le=10_000_000)
    batch_size: int = Field(64, ge=1, le=4096)
    optimizer: Optimizer | None = None
    lr: float | None = Field(None, gt=0.0, le=10.0)
    lr_schedule: Schedule | None = None
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float | None = Field(None, ge=0.0, le=1.0)
    init: Init | None = Field(
        None,
        description="weights: he (the authors' He-normal initialize_weights) or torch (PyTorch's defaults);"
        " auto: torch on digits (its tables were measured so), he on the authors' data sets",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1)
    eval_every: int = Field(50, ge=1, le=100_000)
    eval_points: int = Field(256, ge=1, le=10_000)
    eval_pgd_steps: int = Field(10, ge=1, le=1000)
    probe_points: int = Field(
        32, ge=0, le=1024, description="training images of the dense probe (0 = no probe events)"
    )
    probe_every: int = Field(20, ge=1, le=100_000, description="iterations between dense probes")
    probe_pgd_steps: int = Field(10, ge=1, le=100, description="PGD steps of the dense probe (step ε/4)")
    onset_replay: Switch = Field(
        "auto",
        description="when CO fires, place its onset on the eval of every iteration of the window, from kept"
        " weights (auto: on for CUDA; on the CPU the digits FGSM preset pays 45 s once, trainer/window.py)",
    )
    final_eval_points: int = Field(1000, ge=0, le=100_000)
    final_pgd_steps: int = Field(50, ge=1, le=1000)
    final_pgd_restarts: int = Field(10, ge=1, le=100)
    autoattack: bool = Field(False, description="final evaluation also with AutoAttack (standard, L-inf)")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    amp: Switch = Field("auto", description="bf16 autocast on CUDA (auto: on for CUDA)")
    fast_path: bool = Field(
        True, description="on CUDA: channels_last, cudnn.benchmark, the training step as one CUDA graph"
    )
    # A fork continues another run from one of its evaluations (its checkpoint there: fork.pt in the run
    # directory, copied when the fork is queued), so its iterations start at fork_iteration + 1.
    parent: str | None = Field(
        None, pattern=r"^[0-9a-f]{12}$", description="fork: id of the run this one continues"
    )
    fork_iteration: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        validate_default=True,  # so that a parent without fork_iteration is caught
        description="fork: the parent's evaluation (iteration) it starts from",
    )

    @field_validator("name")
    @classmethod
    def _visible(cls, value: str) -> str:
        """Names reach terminals and pages: no control characters (terminal escapes), no invisible format
        characters (U+202E turns text around), nothing unassigned."""
        hidden = [char for char in value if unicodedata.category(char) in HIDDEN_CATEGORIES]
        if hidden:
            found = f"U+{ord(hidden[0]):04X}"
            raise ValueError(f"must not contain control or invisible characters (found {found})")
        return value

    @field_validator("eps", mode="before")
    @classmethod
    def _eps_fraction(cls, value: Any) -> Any:
        return parse_eps(value)

    @field_validator("elle_adaptive")
    @classmethod
    def _elle_a_needs_lambda(cls, value: bool, info: ValidationInfo) -> bool:
        if value and not info.data.get("elle_lambda", 1.0) > 0:  # a bad elle_lambda is named on its own
            raise ValueError("ELLE-A needs elle_lambda > 0, its λ_max")
        return value

    @field_validator("rescue")
    @classmethod
    def _rescue_from_plain_fgsm(cls, value: str, info: ValidationInfo) -> str:
        """The autopilot turns GradAlign on in a run of FGSM or FGSM-RS that has no regulariser yet, with a
        λ(ε) inside GradAlign's range."""
        if value == "off":
            return value
        data = info.data
        if data.get("method", "fgsm") not in RESCUE_METHODS:
            raise ValueError(f"auto needs method {' or '.join(RESCUE_METHODS)} (it switches GradAlign on)")
        if data.get("grad_align_lambda", 0) or data.get("elle_lambda", 0):
            raise ValueError("auto needs grad_align_lambda 0 and elle_lambda 0: it turns GradAlign on itself")
        if "eps" in data and "dataset" in data:
            weight = lambda_of_eps("grad_align_lambda", data["dataset"], data["eps"])
            top = field_bounds("grad_align_lambda")["le"]
            if weight > top:
                raise ValueError(
                    f"auto: GradAlign's λ(ε) = {weight:g} at this ε is above its range (≤ {top:g})"
                )
        return value

    @field_validator("fork_iteration")
    @classmethod
    def _fork_link(cls, value: int | None, info: ValidationInfo) -> int | None:
        if (info.data.get("parent") is None) != (value is None):
            raise ValueError("a fork needs both parent and fork_iteration (a fresh run neither)")
        return value

    @field_validator("amp", mode="before")
    @classmethod
    def _amp_switch(cls, value: Any) -> Any:
        """Configs stored before amp had an "auto" said true or false: they keep meaning on and off (and,
        without a fast_path field, run without it: _resolve_defaults)."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE.fullmatch(value):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value

    @model_validator(mode="before")
    @classmethod
    def _resolve_defaults(cls, data: Any) -> Any:
        """Fill the method- and model-dependent defaults so the stored config is explicit."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if isinstance(data.get("amp"), bool):  # stored before the fast path: resumed as it was trained
            data.setdefault("fast_path", False)
        method = data.get("method", "fgsm")
        known = isinstance(method, str) and method in METHODS  # else validation names the field
        for name, value in METHODS[method].defaults.items() if known else ():
            if data.get(name) is None:
                data[name] = value
        if data.get("alpha") is None:  # a method that does not step by alpha stores 1.0
            data["alpha"] = 1.0
        resnet = data.get("model", "cnn") == "preact_resnet18"
        if data.get("init") is None:  # only a fresh start reads it: a resumed or forked run loads its weights
            data["init"] = "torch" if data.get("dataset", "digits") == "digits" else "he"
        # SGD + the cyclic lr for ResNets, as the authors; Adam with a constant lr and no weight decay for the
        # small CNNs is codash's digits setting (the authors' code: the cyclic lr and 5e-4 for every model,
        # which the paper presets set).
        if data.get("optimizer") is None:
            data["optimizer"] = "sgd" if resnet else "adam"
        if data.get("lr") is None:
            data["lr"] = 0.3 if data["optimizer"] == "sgd" else 3e-3
        if data.get("lr_schedule") is None:
            data["lr_schedule"] = "cyclic" if resnet else "constant"
        if data.get("weight_decay") is None:
            data["weight_decay"] = 5e-4 if data["optimizer"] == "sgd" else 0.0
        return data

    @property
    def uses_grad_align(self) -> bool:
        return self.grad_align_lambda > 0

    def steps_per_epoch(self, train_images: int | None = None) -> int:
        """Training steps per epoch: the whole batches of its training set (`train_images`, by default the
        data set's TRAIN_IMAGES), at least one."""
        images = TRAIN_IMAGES[self.dataset] if train_images is None else train_images
        return max(1, images // self.batch_size)

    def total_iterations(self, train_images: int | None = None) -> int:
        """The run's training steps: its epochs' steps, or `max_iters` if that is fewer."""
        return int(min(self.epochs * self.steps_per_epoch(train_images), self.max_iters or math.inf))

    def bf16(self, device_type: str) -> bool:
        """Whether a run on this kind of device trains and evaluates under bf16 autocast (amp resolved)."""
        return device_type == "cuda" and self.amp != "off"

    def replays_onset(self, device_type: str) -> bool:
        """Whether a run on this kind of device keeps the window's weights to place the onset on the eval."""
        return self.onset_replay == "on" or (self.onset_replay == "auto" and device_type == "cuda")

    @property
    def uses_elle(self) -> bool:
        return self.elle_lambda > 0

    @property
    def final_pgd(self) -> str:
        """The final evaluation's PGD as the papers name it: 'PGD-50-10' (steps, restarts)."""
        return f"PGD-{self.final_pgd_steps}-{self.final_pgd_restarts}"

    def final_measures(self) -> str:
        """What the final evaluation computes, in words: 'clean accuracy, PGD-50-10, AutoAttack'."""
        measures = ["clean accuracy"]
        if self.final_eval_points:
            measures += [self.final_pgd]
            measures += ["AutoAttack"] if self.autoattack else []
        return ", ".join(measures)

    def label(self) -> str:
        """A short human name: 'FGSM+GradAlign λ=2 ε=0.2'."""
        if self.name:
            return self.name
        method = METHODS[self.method]
        text = method.label.format(**{name: getattr(self, name) for name in method.label_fields})
        if self.uses_grad_align:
            text += f"+GradAlign λ={self.grad_align_lambda:g}"
            if self.grad_align_fraction < 1:
                text += f" ({self.grad_align_fraction:.0%} batch)"
        if self.uses_elle:
            text += f"+ELLE{'-A λmax' if self.elle_adaptive else ' λ'}={self.elle_lambda:g}"
        if self.rescue == "auto":
            text += "+auto GradAlign"
        return f"{text} ε={format_eps(self.eps, self.dataset)}"


NATURAL_IMAGES = ("cifar10", "svhn")  # data sets on which the literature states ε in 1/255


def format_eps(eps: float, dataset: str) -> str:
    """Show eps as k/255 on natural-image data sets, where the literature states it that way."""
    if dataset in NATURAL_IMAGES:
        k = eps * 255
        if math.isclose(k, round(k), abs_tol=1e-6):
            return f"{round(k)}/255"
    return f"{eps:g}"


def allowed(field: str) -> str:
    """The allowed values of a field, for error messages: choices or a numeric range."""
    info = RunConfig.model_fields[field]
    choices = _literal_choices(info.annotation)
    if choices:
        return "one of " + ", ".join(choices)
    bounds = field_bounds(field)
    if not bounds:
        return info.description or ""
    low = f"[{bounds['ge']}" if "ge" in bounds else f"({bounds.get('gt', '-inf')}"
    high = f"{bounds['le']}]" if "le" in bounds else f"{bounds.get('lt', 'inf')})"
    return f"range {low}, {high}"


def field_bounds(field: str) -> dict[str, float]:
    """A numeric field's declared bounds, by kind: {'ge': 0.0, 'le': 100.0}."""
    return {
        key: getattr(meta, key)
        for meta in RunConfig.model_fields[field].metadata
        for key in ("ge", "gt", "le", "lt")
        if getattr(meta, key, None) is not None
    }


def _literal_choices(annotation: Any) -> tuple[str, ...]:
    for arg in (annotation, *getattr(annotation, "__args__", ())):
        if getattr(arg, "__origin__", None) is Literal:
            return tuple(str(a) for a in arg.__args__)
    return ()


def make_config(data: dict[str, Any] | str) -> RunConfig:
    """Build a RunConfig from a dict or JSON, turning pydantic's errors into one clear ConfigError."""
    try:
        if isinstance(data, str):
            return RunConfig.model_validate_json(data)
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(problems_of(exc)) from None


def problems_of(exc: ValidationError) -> dict[str, str]:
    """Pydantic's errors by field, each with the value given and the values allowed."""
    problems: dict[str, str] = {}
    for err in exc.errors():
        field = (".".join(str(part) for part in err["loc"]) or "''") if err["loc"] else "config"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        hint = allowed(field) if field in RunConfig.model_fields else ""
        got = f" (got {err['input']!r})" if err["type"] != "missing" else ""
        text = f"{message}{got}" + (f"; allowed: {hint}" if hint else "")
        problems[field] = f"{problems[field]}; {text}" if field in problems else text
    return problems
