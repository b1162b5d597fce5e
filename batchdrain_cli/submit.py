"""`batchdrain submit DEFINITION`: a batch of a deployed definition, now (POST /batches).

The batch is made as the definition's schedule makes one; `--source`, `--k` and
`--task-options` change it (each checked by the API as in the definitions file).
`--items-file FILE` sends the items inline instead (a JSON Lines file, one JSON value a
line, at most 1,000 and 64 KiB in all; the API keeps them in the stage's inbox).
`--open` makes an open batch instead: it takes its items in later calls (`batchdrain add
ID FILE`) and runs them once sealed (`batchdrain seal ID`).
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
    submit = commands.add_parser("submit", help="run a deployed definition (or a task) now: a new batch", description=__doc__)
    submit.add_argument("definition", metavar="DEFINITION", nargs="?", help="a definition of the deployed definitions file")
    submit.add_argument("--task", help="a task of the app instead of a definition (with --items-file, --source or --open)")
    submit.add_argument("--item-seconds", type=float, help="with --task: the most one item takes (default 1)")
    submit.add_argument("--source", type=_json_object, help='the source instead of the definition\'s, as JSON: \'{"type": "s3-jsonl", "uri": "s3://..."}\'')
    submit.add_argument(
        "--items-file", metavar="FILE", type=json_lines, help="the items inline, instead of a source: a JSON Lines file, one JSON value a line"
    )
    submit.add_argument("--open", action="store_true", help="an open batch: items come later (`batchdrain add`), until `batchdrain seal`")
    submit.add_argument("--k", type=int, help="items per message instead of the definition's")
    submit.add_argument("--task-options", type=_json_object, help="the task's options instead of the definition's, as JSON")
    submit.add_argument("--idempotency-key", metavar="KEY", help="the same key again finds the same batch (safe retries)")
    submit.add_argument("--wait", action="store_true", help="then wait for the batch to complete")
    wait.add_wait_options(submit)
    return add_api_options(submit)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if (args.definition is None) == (args.task is None):
        parser.error("name a DEFINITION, or a task with --task (one of the two)")
    body: dict[str, Any] = {"definition": args.definition} if args.task is None else {"task": args.task}
    if args.item_seconds is not None:
        body["item_seconds"] = args.item_seconds
    if args.source is not None and args.items_file is not None:
        parser.error("--items-file and --source: a batch takes its items from one or the other")
    if args.open and (args.source is not None or args.items_file is not None):
        parser.error("--open: an open batch takes its items later, not --source nor --items-file")
    if args.open and args.wait:
        parser.error("--open with --wait would wait for ever: seal it first (`batchdrain seal ID --wait`)")
    if args.open:
        body["open"] = True
    fields = (("source", args.source), ("items", args.items_file), ("items_per_message", args.k), ("task_options", args.task_options))
    for field, value in fields:
        if value is not None:
            body[field] = value
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None

    def work(api: Api) -> int:
        made = api.post("/batches", body, headers)
        if args.open and not args.wait and not args.json:
            batch_id = made["batch_id"]
            print(f"batch {batch_id} submitted ({made['status']}); add items with `batchdrain add {batch_id} FILE`, "
                  f"then `batchdrain seal {batch_id}`", flush=True)
            return 0
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


def json_lines(path: str) -> list[Any]:
    """A JSON Lines file's values, one a line (blank lines skipped); the error names the line."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {error}") from None
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{path} line {number}: not JSON ({error})") from None
    return items
