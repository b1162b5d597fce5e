"""`batchdrain submit DEFINITION`: a batch of a deployed definition, now (POST /batches).

The batch is made as the definition's schedule makes one; `--source`, `--k` and
`--task-options` change it (each checked by the API as in the definitions file).
`--idempotency-key KEY` makes a retry safe: the same command again finds the batch the
first one made. With `--wait`, then wait for it as `batchdrain wait` does (and exit as
it does; with --json, its last answer is the one document printed).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from batchdrain_cli import wait
from batchdrain_cli.client import Api, add_api_options, run_api


def add_parser(commands: Any) -> argparse.ArgumentParser:
    submit = commands.add_parser("submit", help="run a deployed definition now (a new batch)", description=__doc__)
    submit.add_argument("definition", metavar="DEFINITION", help="a definition of the deployed definitions file")
    submit.add_argument("--source", type=_json_object, help='the source instead of the definition\'s, as JSON: \'{"type": "s3-jsonl", "uri": "s3://..."}\'')
    submit.add_argument("--k", type=int, help="items per message instead of the definition's")
    submit.add_argument("--task-options", type=_json_object, help="the task's options instead of the definition's, as JSON")
    submit.add_argument("--idempotency-key", metavar="KEY", help="the same key again finds the same batch (safe retries)")
    submit.add_argument("--wait", action="store_true", help="then wait for the batch to complete")
    wait.add_wait_options(submit)
    return add_api_options(submit)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    body: dict[str, Any] = {"definition": args.definition}
    for field, value in (("source", args.source), ("items_per_message", args.k), ("task_options", args.task_options)):
        if value is not None:
            body[field] = value
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None

    def work(api: Api) -> int:
        made = api.post("/batches", body, headers)
        return wait.answered(api, args, made, f"batch {made['batch_id']} submitted ({made['status']})")

    return run_api(args, work)


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value
