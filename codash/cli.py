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

import trainer
from jobs import api, keys
from jobs.paths import codash_home
from jobs.server import (
    PASSWORD_FILE,
    ensure_server,
    parse_tcp,
    public_url,
    run_in_foreground,
    stop_server,
    tcp_url,
)
from jobs.worker_flags import HELP as WORKER_HELP
from jobs.worker_flags import add_worker_flags
from trainer.cli import (
    EXPECTED_ERRORS,
    add_config_flags,
    add_train_command,
    config_from_args,
    flag_values,
    run,
)
from trainer.events import events_csv, events_jsonl, percent, printable
from trainer.fork import LINK_FIELDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codash", description="Watch catastrophic overfitting happen live.")
    parser.add_argument("--version", action=VersionAction)
    commands = parser.add_subparsers(dest="command", required=True)
    add_train_command(commands)

    submit = commands.add_parser("submit", help="queue a run for the workers; prints its id")
    add_config_flags(submit)
    submit.add_argument("--sweep", metavar="ID", help="group the run into sweep ID")
    submit.add_argument("--queue", default=keys.DEFAULT_QUEUE, help="RQ queue (default: %(default)s)")
    submit.set_defaults(handler=run_submit)

    fork = commands.add_parser(
        "fork",
        help="queue a run that continues RUN from its evaluation at iteration K; prints its id",
        description="The fork starts from RUN's weights, optimizer state and data order at K, with RUN's "
        "config changed by the flags given (a --preset replaces RUN's config, then flags apply). Dataset, "
        "model, layers, filters and optimizer stay RUN's.",
    )
    fork.add_argument("run_id", metavar="RUN")
    fork.add_argument("--at", type=int, required=True, metavar="K", help="an evaluation of RUN (iteration)")
    add_config_flags(fork, exclude=LINK_FIELDS)
    fork.add_argument("--queue", help="RQ queue (default: RUN's)")
    fork.set_defaults(handler=run_fork)

    runs = commands.add_parser("runs", help="table of runs, newest first")
    runs.add_argument("--limit", type=int, default=50, help="at most this many (default: %(default)s)")
    only = runs.add_mutually_exclusive_group()
    only.add_argument("--sweep", metavar="ID", help="only the runs of sweep ID")
    only.add_argument("--lineage", metavar="ID", help="only run ID's family: its ancestors and forks")
    runs.set_defaults(handler=run_runs)

    for name, help_text, handler in (
        ("status", "a run's record as JSON", run_status),
        ("cancel", "stop a running run (resumable) or take a queued one off the queue", run_cancel),
        ("resume", "continue an interrupted or cancelled run from its last checkpoint", run_resume),
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
    server.add_argument(
        "--tcp",
        metavar="HOST:PORT",
        help="also listen on TCP, for workers on other hosts (default: a Unix socket in CODASH_HOME only)",
    )
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
    stack.add_argument(
        "--redis-tcp",
        metavar="HOST:PORT",
        help="the embedded Redis also listens on TCP, for workers on other hosts (default: Unix socket only)",
    )
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


class VersionAction(argparse.Action):
    """`codash --version`: asks git for the commit only when asked, so no other command waits for it."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        help_text = "print codash's version (and its git commit, in a checkout) and exit"
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help_text)

    def __call__(self, parser: argparse.ArgumentParser, *args) -> None:
        print(f"codash {trainer.provenance()}")
        parser.exit()


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
    print(api.submit(api.connect(), config, sweep_id=args.sweep, queue=args.queue))
    return 0


def run_fork(args: argparse.Namespace) -> int:
    """A --preset replaces the parent's config (then flags apply); flags alone change only themselves."""
    changes = flag_values(args)
    if args.preset:
        changes = config_from_args(args).model_dump(exclude=set(LINK_FIELDS))
    print(api.fork(api.connect(), args.run_id, at=args.at, queue=args.queue, **changes))
    return 0


def run_runs(args: argparse.Namespace) -> int:
    r = api.connect()
    if args.lineage:
        runs = api.lineage(r, args.lineage)
    else:
        runs = api.sweep_runs(r, args.sweep) if args.sweep else api.list_runs(r, limit=args.limit)
    print("\n".join([format_table(runs), *reasons(runs)]))
    return 0


def format_table(runs: list[api.Run]) -> str:
    header = ("ID", "STATUS", "PROGRESS", "CO AT", "WARNED", "PGD ACC", "FORK OF", "WORKER", "CREATED", "RUN")
    rows = [header]
    for item in runs:
        pgd = ((item.final or {}).get("last") or {}).get("pgd_acc")
        rows.append(
            (
                item.id,
                item.status,
                f"{item.iteration}/{item.total_iterations or '?'}",
                "-" if item.co_iteration is None else str(item.co_iteration),
                "-" if item.warning_iteration is None else str(item.warning_iteration),
                "-" if pgd is None else percent(pgd),
                f"{item.config.parent}@{item.config.fork_iteration}" if item.config.parent else "-",
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


STOPPED = frozenset({api.RunStatus.INTERRUPTED, api.RunStatus.FAILED})  # runs whose record says why


def reasons(runs: list[api.Run]) -> list[str]:
    """Below the table, why each interrupted or failed run stopped, as recorded: whether resuming (or
    relaunching edited) is worth it depends on it."""
    return [
        printable(f"{item.id}  {item.status}: {item.error}")
        for item in runs
        if item.status in STOPPED and item.error
    ]


def run_status(args: argparse.Namespace) -> int:
    run_record = api.get_run(api.connect(), args.run_id)
    if run_record is None:
        raise api.RunNotFound(args.run_id)
    print(json.dumps(run_record.to_dict(), indent=2))
    return 0


CANCELLED = {
    api.RunStatus.QUEUED: "cancelled run {} (was queued): taken off the queue, it never starts",
    api.RunStatus.RUNNING: "cancelling run {} (was running): its worker stops it at the next iteration "
    "with a checkpoint and marks it cancelled (resumable)",
    api.RunStatus.INTERRUPTED: "cancelled run {} (was interrupted)",
    api.RunStatus.CANCELLED: "run {} was already cancelled",
}


def run_cancel(args: argparse.Namespace) -> int:
    print(CANCELLED[api.cancel(api.connect(), args.run_id)].format(args.run_id))
    return 0


def run_resume(args: argparse.Namespace) -> int:
    """Resume what the dashboard offers to (api.USER_RESUMABLE); say where the new attempt continues from."""
    r = api.connect()
    run_record = api.get_run(r, args.run_id)
    if run_record is None:
        raise api.RunNotFound(args.run_id)
    if run_record.status == api.RunStatus.FAILED:
        raise api.InvalidTransition(
            f"run {args.run_id} failed, and resuming it would fail the same way: relaunch it with an edited "
            f"config instead (`codash status {args.run_id}` shows why it failed and its config; "
            "`codash submit` takes the config's fields as flags)"
        )
    if run_record.status not in api.USER_RESUMABLE:
        allowed = " or ".join(sorted(api.USER_RESUMABLE))
        raise api.InvalidTransition(
            f"run {args.run_id} is {run_record.status}: only {allowed} runs can be resumed"
        )
    attempt = api.resume(r, args.run_id)
    checkpoint = api.last_checkpoint(r, args.run_id)
    where = "from the start (no checkpoint yet)" if checkpoint is None else f"from iteration {checkpoint:,}"
    print(f"resumed run {args.run_id} {where}: queued as attempt {attempt}")
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
    tcp = parse_tcp(args.tcp) if args.tcp else None
    if args.stop:
        if tcp:
            raise ValueError("--tcp: not with --stop")
        print("stopped" if stop_server() else "not running")
    elif args.foreground:
        run_in_foreground(tcp=tcp)
    else:
        print(public_url(ensure_server(tcp=tcp)))
        if tcp:
            print(f"{tcp_url(tcp)} (for other hosts; the password is in {codash_home() / PASSWORD_FILE})")
    return 0


def run_up(args: argparse.Namespace) -> int:
    from codash.up import AlreadyRunning, up

    if not 0 < args.port < 65536:
        raise ValueError(f"--port: must be in 1..65535, got {args.port}")
    if args.workers is not None and not 0 <= args.workers <= 64:
        raise ValueError(f"--workers: must be in 0..64, got {args.workers}")
    try:
        redis_tcp = parse_tcp(args.redis_tcp) if args.redis_tcp else None
        return up(args.host, args.port, args.workers, args.no_worker, redis_tcp)
    except AlreadyRunning as exc:
        print(exc)
        return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv, expected=(*EXPECTED_ERRORS, *api.JOB_ERRORS))


if __name__ == "__main__":
    sys.exit(main())
