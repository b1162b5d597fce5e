"""`batchdrain cancel ID`: stop a batch's items not yet run; it ends CANCELLED with its alert (POST /batches/{id}/cancel).

Items already running may still finish (they count as succeeded); the rest fail with
reason "cancelled". Cancelling twice is harmless. With `--wait`, then wait for the batch
to end as `batchdrain wait` does (a CANCELLED batch exits 3; with --json, its last answer
is the one document printed).
"""

from __future__ import annotations

import argparse
from typing import Any

from batchdrain_cli import wait
from batchdrain_cli.client import Api, add_api_options, quoted, run_api


def add_parser(commands: Any) -> argparse.ArgumentParser:
    cancel = commands.add_parser("cancel", help="stop a batch's remaining items; it ends CANCELLED", description=__doc__)
    cancel.add_argument("batch_id", metavar="ID", help="the batch")
    cancel.add_argument("--wait", action="store_true", help="then wait for the batch to end")
    wait.add_wait_options(cancel)
    return add_api_options(cancel)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    def work(api: Api) -> int:
        cancelled = api.post(f"/batches/{quoted(args.batch_id)}/cancel")
        return wait.answered(api, args, cancelled, f"batch {cancelled['batch_id']}: cancelled ({cancelled['status']} until its rows are gone)")

    return run_api(args, work)
