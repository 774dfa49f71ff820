"""Forks worker processes for the tests from one interpreter that has imported the worker once.

`python -m jobs.worker` spends ~6 s of CPU before it registers (torch, RQ, and torch.optim's first use);
the suite starts about twenty workers. This process pays that once: started by the tests (tests/conftest.py,
`Zygote`), it imports and warms jobs.worker, then reads one request per line on stdin
(`{"argv", "env", "cwd", "log"}`), forks, and answers the child's pid on stdout. The child is a worker
process as `python -m jobs.worker ARGV` would be from there on: its own environment, working directory,
stdout and stderr (the log), and `jobs.worker.main(ARGV)`'s exit status. Each child's exit status (as
Popen.returncode reads it: negative for a signal) is written to LOG.exit when it is reaped.

Nothing here is threaded, so fork() copies a consistent process; torch runs on one thread (OMP_NUM_THREADS=1
from the start), so no OpenMP pool is forked.
"""

from __future__ import annotations

import json
import os
import select
import sys
import traceback

import torch

import jobs.worker
from trainer.fast import warm_up


def run_child(request: dict) -> None:
    """In the forked child: become the worker the request describes; never returns."""
    code = 1
    try:
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)  # not the zygote's request pipe
        os.close(null)
        # the process's own standard streams, for as long as it lives
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        code = jobs.worker.main(request["argv"])
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def reap(exits: dict[int, str]) -> None:
    """Record the exit status of every child that has ended."""
    while exits:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        path = exits.pop(pid, None)
        if path is not None:
            with open(path + ".tmp", "w") as file:
                file.write(str(os.waitstatus_to_exitcode(status)))
            os.replace(path + ".tmp", path)


def main() -> None:
    warm_up(torch.device("cpu"))
    exits: dict[int, str] = {}
    print("ready", flush=True)
    while True:
        readable, _, _ = select.select([sys.stdin], [], [], 0.05)
        reap(exits)
        if not readable:
            continue
        line = sys.stdin.readline()
        if not line:
            break
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            run_child(request)
        exits[pid] = request["log"] + ".exit"
        print(pid, flush=True)


if __name__ == "__main__":
    main()
