"""`codash`: train in this process, or submit runs to workers and manage them.

`codash train` is trainer.cli's command unchanged; `codash submit` takes the same config flags (both are
generated from RunConfig); `codash worker` takes jobs.worker's own flags. Bad input is one line on stderr
naming the field, and exit code 2. Importing this module does not import torch: `codash --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from jobs import api, keys
from jobs.server import ensure_server, public_url, run_in_foreground, stop_server
from jobs.worker_flags import HELP as WORKER_HELP
from jobs.worker_flags import add_worker_flags
from trainer.cli import EXPECTED_ERRORS, add_config_flags, add_train_command, config_from_args, run
from trainer.events import events_csv, events_jsonl


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codash", description="Watch catastrophic overfitting happen live.")
    commands = parser.add_subparsers(dest="command", required=True)
    add_train_command(commands)

    submit = commands.add_parser("submit", help="queue a run for the workers; prints its id")
    add_config_flags(submit)
    submit.add_argument("--sweep", metavar="ID", help="group the run into sweep ID")
    submit.add_argument("--queue", default=keys.DEFAULT_QUEUE, help="RQ queue (default: %(default)s)")
    submit.set_defaults(handler=run_submit)

    runs = commands.add_parser("runs", help="table of runs, newest first")
    runs.add_argument("--limit", type=int, default=50, help="at most this many (default: %(default)s)")
    runs.add_argument("--sweep", metavar="ID", help="only the runs of sweep ID")
    runs.set_defaults(handler=run_runs)

    for name, help_text, handler in (
        ("status", "a run's record as JSON", run_status),
        ("cancel", "stop a running run (resumable) or take a queued one off the queue", run_cancel),
        ("resume", "continue an interrupted, cancelled or failed run from its last checkpoint", run_resume),
        ("delete", "remove a run's record, events and checkpoints", run_delete),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("run_id", metavar="ID")
        command.set_defaults(handler=handler)

    export = commands.add_parser("export", help="a run's events as JSONL or CSV")
    export.add_argument("run_id", metavar="ID")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--out", type=Path, help="file to write (default: stdout)")
    export.set_defaults(handler=run_export)

    worker = commands.add_parser("worker", help=WORKER_HELP)
    add_worker_flags(worker)
    worker.set_defaults(handler=run_worker)

    server = commands.add_parser(
        "redis", help="start the embedded Redis (daemonised) unless it runs; print its URL without password"
    )
    mode = server.add_mutually_exclusive_group()
    mode.add_argument("--foreground", action="store_true", help="run it in the foreground instead")
    mode.add_argument("--stop", action="store_true", help="shut it down (it saves its data first)")
    server.set_defaults(handler=run_redis)

    stack = commands.add_parser("up", help="Redis, workers and the dashboard together; Ctrl-C stops them all")
    stack.add_argument("--host", default="127.0.0.1", help="dashboard address (default: %(default)s)")
    stack.add_argument("--port", type=int, default=8501, help="dashboard port (default: %(default)s)")
    stack.add_argument(
        "--workers",
        type=int,
        help="worker processes, spread over the GPUs (default: 2 per visible GPU, else 1)",
    )
    stack.add_argument("--no-worker", action="store_true", help="start no worker (they run on other hosts)")
    stack.set_defaults(handler=run_up)

    bench = commands.add_parser(
        "bench",
        help="speed benchmark against a plain PyTorch loop (run in a checkout; `codash bench --help`)",
        add_help=False,  # every flag, --help included, goes to the benchmark, which lists its own
        prefix_chars="+",
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    bench.set_defaults(handler=run_bench)
    return parser


def run_bench(args: argparse.Namespace) -> int:
    """`python -m bench ...` in the checkout: bench/ (and the tests it reuses) is not part of the package.

    The child finds bench/ where Python looks for it: the working directory or PYTHONPATH.
    """
    if importlib.util.find_spec("bench") is None and not Path("bench", "__main__.py").is_file():
        raise RuntimeError(
            "codash bench needs a codash checkout: bench/ is not installed with the package. "
            "Run it from the checkout's root directory (or run `python -m bench` there)."
        )
    return subprocess.call([sys.executable, "-m", "bench", *args.bench_args])


def run_submit(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    r = api.connect()
    api.check_limits([config], api.queued_count(r))  # the dashboard's limits apply here too
    print(api.submit(r, config, sweep_id=args.sweep, queue=args.queue))
    return 0


def run_runs(args: argparse.Namespace) -> int:
    r = api.connect()
    runs = api.sweep_runs(r, args.sweep) if args.sweep else api.list_runs(r, limit=args.limit)
    print(format_table(runs))
    return 0


def printable(text: str) -> str:
    """A cell for a terminal: any character that is not visible text (an escape sequence, U+202E) is shown
    as its code, so a run's name can never rewrite the screen."""
    return "".join(char if char.isprintable() else f"\\u{ord(char):04x}" for char in text)


def format_table(runs: list[api.Run]) -> str:
    header = ("ID", "STATUS", "PROGRESS", "CO AT", "PGD ACC", "WORKER", "CREATED", "RUN")
    rows = [header]
    for item in runs:
        pgd = ((item.final or {}).get("last") or {}).get("pgd_acc")
        rows.append(
            (
                item.id,
                item.status,
                f"{item.iteration}/{item.total_iterations or '?'}",
                "-" if item.co_iteration is None else str(item.co_iteration),
                "-" if pgd is None else f"{pgd:.3f}",
                item.worker or "-",
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(item.created_at)),
                item.config.label(),
            )
        )
    rows = [tuple(map(printable, row)) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1]
        for row in rows
    )


def run_status(args: argparse.Namespace) -> int:
    run_record = api.get_run(api.connect(), args.run_id)
    if run_record is None:
        raise api.RunNotFound(args.run_id)
    print(json.dumps(run_record.to_dict(), indent=2))
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    api.cancel(api.connect(), args.run_id)
    return 0


def run_resume(args: argparse.Namespace) -> int:
    api.resume(api.connect(), args.run_id)
    return 0


def run_delete(args: argparse.Namespace) -> int:
    api.delete(api.connect(), args.run_id)
    return 0


def run_export(args: argparse.Namespace) -> int:
    r = api.connect()
    if api.get_run(r, args.run_id) is None:
        raise api.RunNotFound(args.run_id)
    events = api.all_events(r, args.run_id)
    with ExitStack() as stack:
        out = stack.enter_context(open(args.out, "w", newline="")) if args.out else sys.stdout
        out.write(events_csv(events) if args.format == "csv" else events_jsonl(events))
    return 0


def run_worker(args: argparse.Namespace) -> int:
    from jobs.worker import serve  # imports torch: only workers pay for it

    return serve(args)


def run_redis(args: argparse.Namespace) -> int:
    if args.stop:
        print("stopped" if stop_server() else "not running")
    elif args.foreground:
        run_in_foreground()
    else:
        print(public_url(ensure_server()))
    return 0


def run_up(args: argparse.Namespace) -> int:
    from codash.up import AlreadyRunning, up

    if not 0 < args.port < 65536:
        raise ValueError(f"--port: must be in 1..65535, got {args.port}")
    if args.workers is not None and not 0 <= args.workers <= 64:
        raise ValueError(f"--workers: must be in 0..64, got {args.workers}")
    try:
        return up(args.host, args.port, args.workers, args.no_worker)
    except AlreadyRunning as exc:
        print(exc)
        return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv, expected=(*EXPECTED_ERRORS, *api.JOB_ERRORS))


if __name__ == "__main__":
    sys.exit(main())
