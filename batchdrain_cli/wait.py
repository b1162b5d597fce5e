"""`batchdrain wait ID`: wait until a batch completes, showing its progress (GET /batches/{id}/wait, long polls).

On a terminal, one progress line redrawn in place (percent, items/s, ETA); otherwise a
line each time the status or the percent changes. Then the batch's summary.

Exit status: 0 the batch COMPLETED with no failure; 3 it ended with failures, FAILED or CANCELLED;
1 it did not end within --timeout (or the API refused).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Mapping

from batchdrain_cli.client import Api, add_api_options, print_json, quoted, run_api
from batchdrain_cli.fire import FAILED_EXIT
from batchdrain_local.progressbar import Progress

# Each request waits at most this long (the API's own limit: API Gateway answers by 29 s); while
# progress is shown, a shorter wait redraws it (each answer is one GetItem and a Query per shard).
POLL_SECONDS = 25
PROGRESS_POLL_SECONDS = 2


def add_parser(commands: Any) -> argparse.ArgumentParser:
    wait = commands.add_parser("wait", help="wait for a batch to complete, showing its progress", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    wait.add_argument("batch_id", metavar="ID", help="the batch")
    add_wait_options(wait)
    return add_api_options(wait)


def add_wait_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS", help="give up after this long (default 3600)")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    return run_api(args, lambda api: wait(api, args.batch_id, args.timeout, args.json))


def wait(api: Api, batch_id: str, timeout: float, as_json: bool) -> int:
    """Long-poll the batch until it is done or `timeout` seconds pass; print as the module docstring says."""
    deadline = time.monotonic() + timeout
    show = None if as_json else Progress(interactive())
    poll = POLL_SECONDS if show is None else PROGRESS_POLL_SECONDS
    while True:
        left = max(0.0, deadline - time.monotonic())
        answer = api.get(f"/batches/{quoted(batch_id)}/wait", {"timeout": int(min(poll, left))})
        batch = answer["batch"]
        if show:
            show.update(batch)
        if answer["done"] or time.monotonic() >= deadline:
            break
    if show is None:
        print_json(answer)
    else:
        show.end(batch)
    if not answer["done"]:
        print(f"error: batch {batch_id} did not complete within {timeout:g} s (it is {batch.get('status')})", file=sys.stderr, flush=True)
        return 1
    # Anything else (with failures, FAILED, CANCELLED) is not the run that was asked for: 3.
    return 0 if batch.get("status") == "COMPLETED" and not int(batch.get("failed", 0)) else FAILED_EXIT


def interactive() -> bool:
    return sys.stdout.isatty()


def answered(api: Api, args: argparse.Namespace, answer: Mapping[str, Any], begun: str) -> int:
    """What a command that starts something prints (submit, redrive, cancel): with `--wait`, the line `begun`
    then the wait (exiting as it does); else the API's answer (--json) or `begun` and how to follow the batch."""
    batch_id = answer["batch_id"]
    if args.wait:
        if not args.json:
            print(begun, flush=True)
        return wait(api, batch_id, args.timeout, args.json)
    if args.json:
        print_json(answer)
    else:
        print(f"{begun}; follow it with `batchdrain wait {batch_id}`", flush=True)
    return 0
