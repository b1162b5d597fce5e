"""`batchdrain fire NAME`: fire a definition's cron batch now, on the running local stack (`make local`).

The stack fires it itself, through the definition's schedule handler (the same code path
as its cron rule), so nothing but the stack's process runs handlers; this command only
asks, through the stack's control endpoint (batchdrain_local.control), and prints the
batch. `--at` fires another minute than this one (a definition has one batch per
minute, and its S3 source's {date} comes from it). With `--wait` it waits for the
batch's completion alert and prints it.

Exit status: 0 fired (with --wait: the batch completed with no failure); 1 the stack
could not fire it (no stack running, unknown definition, the batcher failed, no alert
in time); 3 (with --wait) the batch ended with failures, or FAILED.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from typing import Any

from batchdrain_local import control

FAILED_EXIT = 3


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """The `fire` command's parser, added to the command line's subparsers."""
    fire = commands.add_parser(
        "fire",
        help="fire a definition's cron batch now on the running local stack (make local)",
        description="Fire a definition's cron batch for this minute on the running local stack (make local), "
        "through its schedule handler, and print the batch.",
    )
    fire.add_argument("name", help="the definition to fire")
    fire.add_argument(
        "--at", default=None, metavar="TIME",
        help="the schedule minute to fire, e.g. 2026-12-06T05:00Z (UTC; default: now): it fills {date} in S3 URIs",
    )
    fire.add_argument("--wait", action="store_true", help="wait for the batch's completion alert and print it")
    fire.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits for the alert (default 600)")
    fire.add_argument("--port", type=int, default=None, help="the stack's API port, when several stacks run (make local PORT=)")
    return fire


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """`batchdrain fire`: see the module docstring."""
    try:
        stack = control.find_stack(args.port)
        status, body = control.request(stack, "POST", "/fire", {"definition": args.name, "at": args.at})
        if status != 200:
            return _error(body.get("error", f"the stack answered {status}"))
        print(body["summary"], flush=True)
        if not args.wait:
            return 0
        alert = _wait_for_alert(stack, body["batch_id"], args.timeout)
    except control.StackNotRunningError as error:
        return _error(str(error))
    if alert is None:
        return _error(f"no alert for batch {body['batch_id']} within {args.timeout:g} s")
    print(f"alert: {alert['subject']}")
    print(json.dumps(alert["message"], indent=2))
    return 0 if alert["message"].get("status") == "COMPLETED" else FAILED_EXIT


def _wait_for_alert(stack: dict[str, Any], batch_id: str, timeout: float) -> dict[str, Any] | None:
    """The batch's first alert, long-polling the stack (each request at most MAX_ALERT_WAIT_SECONDS)."""
    deadline = time.monotonic() + timeout
    path = f"/alerts/{urllib.parse.quote(batch_id, safe='')}"
    while True:
        left = deadline - time.monotonic()
        wait = max(0.0, min(left, control.MAX_ALERT_WAIT_SECONDS))
        status, body = control.request(stack, "GET", f"{path}?timeout={wait:.1f}", timeout=wait + 30)
        if status != 200:
            raise control.StackNotRunningError(body.get("error", f"the stack answered {status}"))
        if body.get("alert") or left <= 0:
            return body.get("alert")


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return 1
