"""`codash train`: run one config headless, events as JSONL, a progress bar on stderr.

The flags are generated from RunConfig's fields, so the CLI can never drift from the schema.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tqdm import tqdm

from trainer.co import interval_words
from trainer.config import ConfigError, RunConfig, allowed, make_config
from trainer.events import Event, JsonlSink, percent
from trainer.presets import PRESETS
from trainer.warning import warning_words

# OSError covers trainer.data.DatasetMissing (a FileNotFoundError) without importing torch here.
EXPECTED_ERRORS = (ConfigError, RuntimeError, OSError)
AUTO = "default: auto (the paper's default for this method and model)"


def add_config_flags(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """One --flag per RunConfig field but `exclude`; values are parsed by RunConfig itself, so errors name
    the field."""
    group = parser.add_argument_group("run config")
    group.add_argument(
        "--preset",
        choices=list(PRESETS),
        metavar="NAME",
        help="start from a preset (the launch form's); the flags below override it. "
        f"One of: {'; '.join(PRESETS)}",
    )
    resolved = make_config({})
    for name, info in RunConfig.model_fields.items():
        if name in exclude:
            continue
        flag = "--" + name.replace("_", "-")
        parts = dict.fromkeys([info.description, allowed(name), default_words(name, resolved)])  # no repeats
        help_text = " ".join(filter(None, parts))
        if info.annotation is bool:
            # --flag / --no-flag: a switch that defaults to on (fast_path) can be turned off too
            group.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            group.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=help_text)


def default_words(name: str, resolved: RunConfig) -> str:
    """'default: 64'; a None default the config fills in by method and model reads as the form's "auto"."""
    default = RunConfig.model_fields[name].get_default(call_default_factory=True)
    if default is None:
        return AUTO if getattr(resolved, name) is not None else "default: none"
    return f"default: {default}"


def config_from_args(args: argparse.Namespace) -> RunConfig:
    preset = getattr(args, "preset", None)
    return make_config({**(PRESETS[preset] if preset else {}), **flag_values(args)})


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields given as flags (not yet validated)."""
    return {
        name: getattr(args, name) for name in RunConfig.model_fields if getattr(args, name, None) is not None
    }


class ProgressSink:
    """Forwards events and keeps a tqdm bar on stderr with the latest robustness figures."""

    def __init__(self, forward, config: RunConfig, disable: bool = False):
        self.forward = forward
        self.config = config
        self.total = 0
        self.warned_at: int | None = None
        self.switched_at: int | None = None
        self.bar = tqdm(total=0, unit="it", file=sys.stderr, disable=disable, dynamic_ncols=True)

    def __call__(self, event: Event) -> None:
        self.forward(event)
        kind = event["type"]
        if kind == "config":
            self.total = event["total_iterations"]
            self.bar.reset(total=self.total)
            self.bar.update(event["start_iteration"])
        elif kind == "metrics":
            self.bar.update(event["iteration"] - self.bar.n)
        elif kind == "eval":
            self.bar.set_postfix(clean=event["clean_acc"], fgsm=event["fgsm_acc"], pgd=event["pgd_acc"])
            if event["iteration"] == self.total:  # the final evaluation comes next, and takes a while
                measures = self.config.final_measures()
                self.bar.write(
                    f"final evaluation: {measures} of the last and the best model…", file=sys.stderr
                )
        elif kind == "co":
            self.bar.write(
                f"catastrophic overfitting at iteration {event['onset_iteration']}"
                f"{interval_words(event.get('onset_interval'))} (first collapsed eval: {event['iteration']})",
                file=sys.stderr,
            )
        elif kind == "co_warning":
            self.warned_at = event["iteration"]
            self.bar.write(f"CO warning: {warning_words(event)}", file=sys.stderr)
        elif kind == "rescue":
            self.switched_at = event["iteration"]
            switch = f"GradAlign λ={event['grad_align_lambda']:g} on after iteration {event['iteration']}"
            self.bar.write(f"autopilot: {switch}", file=sys.stderr)
        elif kind == "final":
            self.bar.close()
            self.bar.write(
                final_summary(event, self.config, self.warned_at, self.switched_at), file=sys.stderr
            )


def final_summary(
    final: Event, config: RunConfig, warned_at: int | None = None, switched_at: int | None = None
) -> str:
    """One line of what the run achieved, for a reader of the terminal rather than of the JSONL: with the
    CO early warning's iteration and the autopilot's switch when the run had them."""
    last, best = final["last"], final["best"]
    parts = [f"clean {percent(last['clean_acc'])}"]
    if last["pgd_acc"] is not None:
        parts.append(
            f"{config.final_pgd} on {final['attack_points']:,} test images {percent(last['pgd_acc'])} "
            f"(early-stopped at iteration {final['best_iteration']:,}: {percent(best['pgd_acc'])})"
        )
    if last["autoattack_acc"] is not None:
        parts.append(f"AutoAttack {percent(last['autoattack_acc'])}")
    if warned_at is not None:
        parts.append(f"CO warning at iteration {warned_at:,}")
    if switched_at is not None:
        parts.append(f"GradAlign on from iteration {switched_at:,}")
    co = final["co_iteration"]
    parts.append(f"catastrophic overfitting at iteration {co:,}" if final["co_detected"] else "no CO")
    return "final: " + " · ".join(parts)


def add_train_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("train", help="train one run in this process, events as JSONL")
    add_config_flags(parser)
    parser.add_argument("--out", type=Path, help="JSONL file for the events (default: stdout)")
    parser.add_argument("--run-dir", type=Path, help="directory for checkpoints (default: a temporary one)")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint in --run-dir"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_train)


def truncate_after_last_checkpoint(path: Path) -> None:
    """A resumed run replays everything after its last checkpoint; drop those events so none is doubled."""
    lines = path.read_text().splitlines(keepends=True)
    kinds = [json.loads(line)["type"] for line in lines]
    keep = len(kinds) - kinds[::-1].index("checkpoint") if "checkpoint" in kinds else len(lines)
    path.write_text("".join(lines[:keep]))


def run_train(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.resume and args.run_dir is None:
        raise ConfigError("--resume needs --run-dir (the directory holding the checkpoint)")
    # torch's import takes seconds: `codash --help` and a mistyped flag answer before it
    from trainer.loop import train

    if args.resume and args.out and args.out.exists():
        truncate_after_last_checkpoint(args.out)
    with ExitStack() as stack:
        out = stack.enter_context(open(args.out, "a" if args.resume else "w")) if args.out else sys.stdout
        sink = ProgressSink(JsonlSink(out), config, disable=args.quiet)
        train(config, sink, args.run_dir, resume=args.resume)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codash", description="Watch catastrophic overfitting happen live.")
    commands = parser.add_subparsers(dest="command", required=True)
    add_train_command(commands)
    return parser


def run(
    parser: argparse.ArgumentParser,
    argv: list[str] | None = None,
    expected: tuple[type[BaseException], ...] = EXPECTED_ERRORS,
) -> int:
    """Parse and dispatch; `expected` failures become one line on stderr and exit code 2."""
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except expected as exc:
        print(f"codash: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
