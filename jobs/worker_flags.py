"""A worker's command-line flags, apart from jobs.worker so that listing them does not import torch.

`codash worker` and `python -m jobs.worker` both take exactly these.
"""

from __future__ import annotations

import argparse

from jobs import keys

HELP = "train queued runs, one at a time, on one device"


def add_worker_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    parser.add_argument(
        "--queue", action="append", help=f"queue to serve; repeat for several (default: {keys.DEFAULT_QUEUE})"
    )
    parser.add_argument("--name", help="unique worker name (default: host.pid)")
    parser.add_argument("--burst", action="store_true", help="exit once the queues are empty")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
