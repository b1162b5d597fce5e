"""`batchdrain add ID FILE`: items for an open batch (POST /batches/{id}/items), from a JSON Lines file.

The file's values (one a line; at most 1,000, 64 KiB in all) become one part of the batch.
Each call carries an Idempotency-Key: by default the digest of the batch id and the file's
values, so running the same command again (a retry) adds nothing, and the same file added
twice to one batch is added once; `--idempotency-key KEY` names the call yourself. After
`batchdrain seal ID` the batch takes no more items (409).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from typing import Any

from batchdrain_cli.client import Api, add_api_options, print_json, quoted, run_api
from batchdrain_cli.submit import json_lines


def add_parser(commands: Any) -> argparse.ArgumentParser:
    add = commands.add_parser("add", help="add items from a JSON Lines file to an open batch", description=__doc__)
    add.add_argument("batch_id", metavar="ID", help="the open batch (`batchdrain submit DEFINITION --open`)")
    add.add_argument("items", metavar="FILE", type=json_lines, help="a JSON Lines file, one JSON value a line")
    add.add_argument("--idempotency-key", metavar="KEY", help="the call's key (default: from the batch id and the items)")
    return add_api_options(add)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    key = args.idempotency_key or "add-" + hashlib.sha256(
        json.dumps([args.batch_id, args.items], sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()[:40]

    def work(api: Api) -> int:
        added = api.post(f"/batches/{quoted(args.batch_id)}/items", {"items": args.items}, {"Idempotency-Key": key})
        if args.json:
            print_json(added)
        else:
            print(f"batch {added['batch_id']}: {added['items']:,} items added (part {added['segment']})", flush=True)
        return 0

    return run_api(args, work)
