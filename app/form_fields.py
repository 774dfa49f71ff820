"""The launch form's widgets: one per RunConfig field, generated from its type (a selectbox for a Literal,
a toggle for a bool, a number box otherwise), and three made by hand: ε in the units the literature uses for
the data set, GradAlign as a toggle with λ(ε), and the device. Each widget's state lives under KEY + field.
"""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

import streamlit as st

from app.text import md_escape
from trainer.config import (
    DIGITS_LAMBDA_MEASURED,
    NATURAL_IMAGES,
    RunConfig,
    allowed,
    format_eps,
    lambda_extrapolated,
    lambda_of_eps,
)
from trainer.methods import MODEL_FIELDS, USED_BY, reads
from trainer.presets import DIGITS_ELLE, DIGITS_GRAD_ALIGN, PRESETS

LABELS = {
    "name": "Name (optional)",
    "n_layers": "conv layers",
    "n_filters": "filters per layer",
    "alpha": "FGSM step (× ε)",
    "pgd_steps": "PGD steps (pgd training)",
    "pgd_alpha": "PGD step (× ε)",
    "grad_align_lambda": "GradAlign λ",
    "grad_align_fraction": "GradAlign batch share",
    "elle_lambda": "ELLE λ (0 = off)",
    "elle_adaptive": "ELLE-A: adaptive λ (ELLE λ is its max)",
    "rescue": "autopilot: GradAlign λ(ε) from the CO warning on",
    "probe_points": "dense probe: train images",
    "probe_every": "dense probe every (iterations)",
    "probe_pgd_steps": "dense probe PGD steps",
    "onset_replay": "CO onset on the eval at every iteration",
    "max_iters": "max iterations (optional)",
    "batch_size": "batch size",
    "lr": "learning rate",
    "lr_schedule": "lr schedule",
    "weight_decay": "weight decay",
    "init": "weight initialisation",
    "eval_every": "eval every (iterations)",
    "eval_points": "eval subset size",
    "eval_pgd_steps": "eval PGD steps",
    "final_eval_points": "final eval points (PGD)",
    "final_pgd_steps": "final PGD steps",
    "final_pgd_restarts": "final PGD restarts",
    "autoattack": "AutoAttack final eval (slow)",
    "free_replays": "Free AT replays m",
    "nfgsm_k": "N-FGSM noise k (× ε)",
    "amp": "bf16 autocast (CUDA)",
    "fast_path": "CUDA graph fast path",
}
FORMATS = {"eps": "%.3f", "momentum": "%.2f"}
KEY = "launch."


PLACEHOLDER_LAMBDA = 1.0  # GradAlign's λ while it is off: switching it on replaces it with λ(ε)


def form_values() -> dict[str, Any]:
    """The RunConfig fields as the form holds them now (not yet validated)."""
    values = {name: st.session_state.get(KEY + name) for name in RunConfig.model_fields}
    if values["dataset"] in NATURAL_IMAGES:
        eps255 = st.session_state.get(KEY + "eps255")
        values["eps"] = None if eps255 is None else eps255 / 255
    if not st.session_state.get(KEY + "grad_align"):
        values["grad_align_lambda"] = 0.0
    if not reads("rescue", values["method"], False, values["model"]):  # its widget is disabled there
        values["rescue"] = "off"
    return values


def is_optional(name: str) -> bool:
    """Whether None is a value of the field ("auto": the paper's default for this method and model)."""
    return type(None) in get_args(RunConfig.model_fields[name].annotation)


def group(title: str, names: tuple[str, ...], per_row: int, problems: dict[str, str]) -> None:
    if title:
        st.markdown(f"**{title}**")
    for start in range(0, len(names), per_row):
        for column, name in zip(st.columns(per_row), names[start : start + per_row], strict=False):
            with column:
                _field(name, problems)


def _field(name: str, problems: dict[str, str]) -> None:
    special = {"eps": _eps, "grad_align_lambda": _grad_align, "elle_lambda": _elle, "device": _device}
    if name in special:
        special[name]()
    else:
        _generic(name)
    if name in problems:
        st.error(md_escape(problems[name]), icon=":material/error:")


def _generic(name: str) -> None:
    info = RunConfig.model_fields[name]
    args = [arg for arg in get_args(info.annotation) if arg is not type(None)]
    optional = is_optional(name)
    base = args[0] if optional else info.annotation
    label, key = LABELS.get(name, name), KEY + name
    auto = "Empty: the paper's default for this method and model." if optional else ""
    unused = _unused_by_this_run(name)
    help_text = " ".join(
        filter(None, [info.description and info.description.capitalize() + ".", allowed(name), auto, unused])
    )
    disabled = bool(unused)
    if get_origin(base) is Literal:
        st.selectbox(
            label,
            get_args(base),
            key=key,
            index=None if optional else 0,
            placeholder="auto",
            help=help_text,
            disabled=disabled,
        )
    elif base is bool:
        st.toggle(label, key=key, help=help_text, disabled=disabled)
    elif base is str:
        st.text_input(label, key=key, help=help_text, max_chars=80, disabled=disabled)
    else:
        st.number_input(
            label,
            key=key,
            step=1 if base is int else None,
            format=FORMATS.get(name, "%d" if base is int else "%g"),
            value=None,  # a cleared box reads as None (blank), never as a number the user did not type
            placeholder="auto" if optional else "required",
            help=help_text,
            disabled=disabled,
        )


def _unused_by_this_run(name: str) -> str:
    """Why a field does nothing with the form's current model / method / GradAlign choice ('' if used)."""
    method, model = st.session_state.get(KEY + "method"), st.session_state.get(KEY + "model")
    if reads(name, method, bool(st.session_state.get(KEY + "grad_align")), model):
        return ""
    if name == "grad_align_fraction":
        return "Used with GradAlign only."
    if name in MODEL_FIELDS:
        return f"Used by the {', '.join(MODEL_FIELDS[name])} model only; {model} has a fixed architecture."
    return f"Used by {', '.join(USED_BY[name])} only."


def _bounds(name: str) -> dict[str, float]:
    """The inclusive bounds RunConfig declares for a field (exclusive ones are left to validation)."""
    metadata = RunConfig.model_fields[name].metadata
    return {
        bound: getattr(meta, bound) for meta in metadata for bound in ("ge", "le") if hasattr(meta, bound)
    }


def _eps() -> None:
    """ε in /255 on CIFAR-10/SVHN, as a fraction on digits/MNIST; the two boxes are kept in sync."""
    if st.session_state.get(KEY + "dataset") in NATURAL_IMAGES:
        st.number_input(
            "ε (× 1/255)",
            key=KEY + "eps255",
            value=None,
            placeholder="required",
            step=1.0,
            format="%g",
            on_change=_sync_eps,
            args=("eps255",),
            help="L∞ radius in pixel levels: 8 means 8/255.",
        )
    else:
        st.number_input(
            "ε",
            key=KEY + "eps",
            value=None,
            placeholder="required",
            step=0.01,
            format=FORMATS["eps"],
            on_change=_sync_eps,
            args=("eps",),
            help="L∞ radius on [0, 1] inputs.",
        )


def _sync_eps(changed: str) -> None:
    value = st.session_state[KEY + changed]
    if value is None:
        return
    if changed == "eps255":
        st.session_state[KEY + "eps"] = value / 255
    else:
        st.session_state[KEY + "eps255"] = round(value * 255, 3)


def _grad_align() -> None:
    """A toggle and λ, with λ(ε) offered when it is in range."""
    on = st.toggle(
        "GradAlign",
        key=KEY + "grad_align",
        on_change=_grad_align_switched,
        help="Add λ·(1 − cos(∇x, ∇x+η)) to the loss.",
    )
    st.number_input(
        LABELS["grad_align_lambda"],
        key=KEY + "grad_align_lambda",
        value=None,
        placeholder="required",
        format="%g",
        disabled=not on,
        help=allowed("grad_align_lambda"),
    )
    _lambda_rule("grad_align_lambda", on)


def _grad_align_switched() -> None:
    """Switched on over the placeholder λ (one the user did not type), GradAlign starts at the λ(ε) shown
    beside it, or at the placeholder where there is none in range."""
    lam = KEY + "grad_align_lambda"
    if st.session_state[KEY + "grad_align"] and st.session_state.get(lam) == PLACEHOLDER_LAMBDA:
        st.session_state[lam] = _suggestion("grad_align_lambda") or PLACEHOLDER_LAMBDA


def _elle() -> None:
    _generic("elle_lambda")
    _lambda_rule("elle_lambda", True)


def _suggestion(field: str) -> float | None:
    """lambda_of_eps at the form's data set and ε where it is within the field's range, else None."""
    eps, dataset = form_values()["eps"], st.session_state.get(KEY + "dataset")
    suggestion = None if eps is None or dataset is None else lambda_of_eps(field, dataset, eps)
    return suggestion if suggestion is not None and suggestion <= _bounds(field)["le"] else None


def _lambda_rule(field: str, on: bool) -> None:
    """Offer lambda_of_eps for GradAlign's or ELLE's weight at the form's data set and ε (nothing where the
    data set has no rule for it). Out of the field's range it is explained by where the rule was fitted,
    without its value: far from that range the exponential gives numbers of thirty digits."""
    eps = form_values()["eps"]
    dataset = st.session_state.get(KEY + "dataset")
    if eps is None or dataset is None or lambda_of_eps(field, dataset, eps) is None:
        return
    suggestion = _suggestion(field)
    digits = dataset == "digits"
    rule = "Digits λ(ε) fit" if digits else "Paper's λ(ε)"
    at = f"ε={format_eps(eps, dataset)}"
    if suggestion is not None:
        note = "tuned on CIFAR-10; a starting point here"
        note = lambda_extrapolated(field, dataset, eps) if dataset in ("cifar10", "digits") else note
        st.caption(f"{rule} at {at}: **{suggestion:g}**" + (f" ({note})" if note else ""))
    else:
        low, high = DIGITS_LAMBDA_MEASURED[field]
        fitted = f"measured for ε = {low:g}–{high:g}" if digits else "calibrated on CIFAR-10 for ε ≤ 16/255"
        preset = DIGITS_GRAD_ALIGN if field == "grad_align_lambda" else DIGITS_ELLE
        st.caption(
            f"{rule} at {at}: out of range (λ ≤ {_bounds(field)['le']:,g}); it is {fitted}. "
            f"The preset “{preset}” uses λ={PRESETS[preset][field]:g}."
        )
    st.button(
        f"Use {rule[0].lower()}{rule[1:]}",
        key=KEY + ("paper_lambda" if field == "grad_align_lambda" else f"{field}_rule"),
        disabled=not on or suggestion is None,
        on_click=lambda: st.session_state.update({KEY + field: suggestion}),
    )


def _device() -> None:
    st.selectbox(
        "device",
        ["auto", "cpu", "cuda"],
        key=KEY + "device",
        accept_new_options=True,
        help="auto picks CUDA when the worker has it; type cuda:N for a specific GPU. " + allowed("device"),
    )
