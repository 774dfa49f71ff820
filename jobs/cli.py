"""`codash`: train in this process, or submit runs to workers and manage them.

`codash train` is trainer.cli's command unchanged; `codash submit` takes the same config flags (both are
generated from RunConfig). Bad input is one line on stderr naming the field, and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import redis

from jobs import api, keys
from jobs.queue import check_name
from jobs.server import ensure_server, public_url, run_in_foreground, stop_server
from trainer.cli import add_config_flags, add_train_command, config_from_args, run
from trainer.events import events_csv, events_jsonl

JOB_ERRORS = (api.RunNotFound, api.InvalidTransition, redis.RedisError, ValueError)


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

    worker = commands.add_parser("worker", help="train queued runs, one at a time, on one device")
    worker.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    worker.add_argument(
        "--queue", action="append", help=f"queue to serve; repeat for several (default: {keys.DEFAULT_QUEUE})"
    )
    worker.add_argument("--name", help="unique worker name (default: host.pid)")
    worker.add_argument("--burst", action="store_true", help="exit once the queues are empty")
    worker.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
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

    bench = commands.add_parser("bench", help="speed benchmark against a plain PyTorch loop (checkout only)")
    bench.set_defaults(handler=run_bench)
    _add_bench_arguments(bench)
    return parser


def _bench_module():
    """bench/ lives in the checkout next to jobs/, not in the installed package."""
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    import bench.__main__

    return bench.__main__


def _add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    with contextlib.suppress(ImportError):  # an installed codash without its checkout
        _bench_module().add_arguments(parser)


def run_bench(args: argparse.Namespace) -> int:
    return _bench_module().run_and_report(args)


def run_submit(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    print(api.submit(api.connect(), config, sweep_id=args.sweep, queue=args.queue))
    return 0


def run_runs(args: argparse.Namespace) -> int:
    r = api.connect()
    runs = api.sweep_runs(r, args.sweep) if args.sweep else api.list_runs(r, limit=args.limit)
    print(format_table(runs))
    return 0


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
    from jobs.worker import CodashWorker, worker_device  # imports torch: only workers pay for it

    queues = [check_name("queue", queue) for queue in args.queue or [keys.DEFAULT_QUEUE]]
    name = check_name("name", args.name) if args.name else None
    worker = CodashWorker(queues, connection=api.connect(), device=worker_device(args.device), name=name)
    worker.work(burst=args.burst, logging_level=args.log_level)
    return 0


def run_redis(args: argparse.Namespace) -> int:
    if args.stop:
        print("stopped" if stop_server() else "not running")
    elif args.foreground:
        run_in_foreground()
    else:
        print(public_url(ensure_server()))
    return 0


def run_up(args: argparse.Namespace) -> int:
    from jobs.up import AlreadyRunning, up

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
    try:
        return run(build_parser(), argv)
    except JOB_ERRORS as exc:
        print(f"codash: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
