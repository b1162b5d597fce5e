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
from batchdrain_cli.client import Api, add_api_options, print_json, quoted, run_api


def add_parser(commands: Any) -> argparse.ArgumentParser:
    cancel = commands.add_parser("cancel", help="stop a batch's remaining items; it ends CANCELLED", description=__doc__)
    cancel.add_argument("batch_id", metavar="ID", help="the batch")
    cancel.add_argument("--wait", action="store_true", help="then wait for the batch to end")
    wait.add_wait_options(cancel)
    return add_api_options(cancel)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    def work(api: Api) -> int:
        cancelled = api.post(f"/batches/{quoted(args.batch_id)}/cancel")
        if args.wait:
            if not args.json:
                print(f"batch {cancelled['batch_id']}: cancelled ({cancelled['status']} until its rows are gone)", flush=True)
            return wait.wait(api, args.batch_id, args.timeout, args.json)
        if args.json:
            print_json(cancelled)
        else:
            print(f"batch {cancelled['batch_id']}: cancelled; it ends CANCELLED once its remaining rows are gone; "
                  f"follow it with `batchdrain wait {cancelled['batch_id']}`", flush=True)
        return 0

    return run_api(args, work)
