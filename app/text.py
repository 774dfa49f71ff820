"""Text the dashboard shows: run names (by what differs between runs), numbers, durations, escaping.

Pure functions of configs and values, so pages and tables name things the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from trainer.config import RunConfig, format_eps
from trainer.events import percent as percent  # the CLI's too: one formatter for accuracies
from trainer.fork import LINK_FIELDS
from trainer.methods import LABEL_FIELDS, reads

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+\-.!|~$:])")


def md_escape(text: str) -> str:
    """User text inside Markdown-rendering elements, shown literally (no links, no emphasis, no HTML)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def plural(count: int, noun: str) -> str:
    """'1 run', '3 runs'."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def model_name(config: RunConfig) -> str:
    if config.model == "cnn":
        return f"cnn {config.n_layers}×{config.n_filters}"
    return config.model


def snapshot_label(iteration: int, co_iteration: int | None) -> str:
    """The snapshot slider's text: the iteration, and where catastrophic overfitting set in."""
    if co_iteration is None:
        return f"{iteration:,}"
    if iteration == co_iteration:
        return f"{iteration:,} · CO"
    return f"{iteration:,}" + (" · after CO" if iteration > co_iteration else "")


# --- naming runs by what differs between them ---

_SHORT = {
    "eps": "ε",
    "grad_align_lambda": "λ",
    "batch_size": "batch",
    "n_filters": "filters",
    "n_layers": "layers",
}
# what method_label shows
_METHOD_FIELDS = (*LABEL_FIELDS, "grad_align_lambda", "grad_align_fraction", "elle_lambda")
_IGNORED = frozenset({"name", *LINK_FIELDS})  # a fork is named by where it starts, below


def method_label(config: RunConfig) -> str:
    """'FGSM', 'FGSM+GradAlign λ=2', 'PGD-10': the trainer's own label without ε."""
    return config.model_copy(update={"name": ""}).label().rsplit(" ε=", 1)[0]


def method_family(config: RunConfig) -> str:
    """'FGSM+GradAlign' whatever its λ: what a sweep's line stands for across its ε grid (λ may follow ε)."""
    return method_label(config).split(" λ=")[0]


def distinguishing_labels(configs: Sequence[RunConfig], ids: Sequence[str] | None = None) -> list[str]:
    """Legend labels from only the fields in which the configs differ: 'FGSM ε=0.1' vs 'FGSM ε=0.2'.

    The method (with its GradAlign λ) always leads, since it is the story's main contrast; a run's own name,
    when it has one, comes first. Identical configs are told apart by run id.
    """
    if len(configs) == 1:
        return [configs[0].label()]
    dumps = [config.model_dump() for config in configs]
    differing = [key for key in differing_fields(configs) if key not in _METHOD_FIELDS]
    labels = []
    for config, dump in zip(configs, dumps, strict=True):
        parts = [method_label(config)] + [
            f"{_SHORT.get(key, key)}={_format_value(key, dump[key], config)}"
            for key in differing
            if _reads(key, config)  # an FGSM run's PGD step size is no difference worth naming
        ]
        forked = len({(c.parent, c.fork_iteration) for c in configs}) > 1
        parts += [f"fork @{config.fork_iteration:,}"] if forked and config.parent else []
        labels.append(f"{config.name}: " * bool(config.name) + " ".join(parts))
    if ids is not None:  # only the labels two runs share get the run id
        shared = {label for label in labels if labels.count(label) > 1}
        labels = [
            f"{label} [{run_id[:8]}]" if label in shared else label
            for label, run_id in zip(labels, ids, strict=True)
        ]
    return labels


def differing_fields(configs: Sequence[RunConfig]) -> list[str]:
    """The config fields in which the runs differ, among the runs that read each field (an FGSM run's PGD
    step size is no difference), in RunConfig's order; a run's name and fork link are not settings."""
    dumps = [config.model_dump() for config in configs]
    return [
        key
        for key in RunConfig.model_fields
        if key not in _IGNORED
        and len({json.dumps(d[key]) for c, d in zip(configs, dumps, strict=True) if _reads(key, c)}) > 1
    ]


def _reads(key: str, config: RunConfig) -> bool:
    return reads(key, config.method, config.uses_grad_align, config.model)


def _format_value(key: str, value: Any, config: RunConfig) -> str:
    if key == "eps":
        return format_eps(value, config.dataset)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
