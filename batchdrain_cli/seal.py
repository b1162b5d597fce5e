"""`batchdrain seal ID`: an open batch takes no more items (POST /batches/{id}/seal).

The batch then completes once its items have run, with its one alert. Sealing again is
harmless. With `--wait`, then wait for the batch as `batchdrain wait` does (and exit as it
does; with --json, its last answer is the one document printed).
"""

from __future__ import annotations

import argparse
from typing import Any

from batchdrain_cli import wait
from batchdrain_cli.client import Api, add_api_options, quoted, run_api


def add_parser(commands: Any) -> argparse.ArgumentParser:
    seal = commands.add_parser("seal", help="an open batch takes no more items; it completes once they ran", description=__doc__)
    seal.add_argument("batch_id", metavar="ID", help="the open batch")
    seal.add_argument("--wait", action="store_true", help="then wait for the batch to complete")
    wait.add_wait_options(seal)
    return add_api_options(seal)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    def work(api: Api) -> int:
        sealed = api.post(f"/batches/{quoted(args.batch_id)}/seal")
        return wait.answered(api, args, sealed, f"batch {sealed['batch_id']}: sealed ({sealed['status']})")

    return run_api(args, work)
