"""`batchdrain redrive ID`: run a batch's failed items again, as a new attempt (POST /batches/{id}/redrive).

With `--wait`, then wait for that attempt as `batchdrain wait` does (and exit as it does;
with --json, its last answer is the one document printed).
"""

from __future__ import annotations

import argparse
from typing import Any

from batchdrain_cli import wait
from batchdrain_cli.client import Api, add_api_options, quoted, run_api


def add_parser(commands: Any) -> argparse.ArgumentParser:
    redrive = commands.add_parser("redrive", help="run a batch's failed items again (a new attempt)", description=__doc__)
    redrive.add_argument("batch_id", metavar="ID", help="the batch")
    redrive.add_argument("--wait", action="store_true", help="then wait for the new attempt to complete")
    wait.add_wait_options(redrive)
    return add_api_options(redrive)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    def work(api: Api) -> int:
        started = api.post(f"/batches/{quoted(args.batch_id)}/redrive")
        return wait.answered(api, args, started, f"batch {started['batch_id']}: attempt {started['attempt']} started ({started['status']})")

    return run_api(args, work)
