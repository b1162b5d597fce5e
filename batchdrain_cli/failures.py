"""`batchdrain failures ID`: a batch's failed items with their errors (GET /batches/{id}/failures)."""

from __future__ import annotations

import argparse
from typing import Any

from batchdrain_cli.client import Api, add_api_options, print_json, quoted, run_api
from batchdrain_cli.listing import collect


def add_parser(commands: Any) -> argparse.ArgumentParser:
    failures = commands.add_parser("failures", help="a batch's failed items and their errors", description=__doc__)
    failures.add_argument("batch_id", metavar="ID", help="the batch")
    failures.add_argument("--all", action="store_true", help="every page, not only the first (25 chunks)")
    return add_api_options(failures)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    def work(api: Api) -> int:
        failures, cursor = collect(api, f"/batches/{quoted(args.batch_id)}/failures", "failures", {}, args.all)
        if args.json:
            print_json({"failures": failures, "cursor": cursor})
            return 0
        if not failures:
            print(f"batch {args.batch_id}: no failed items")
        for failure in failures:
            items = ", ".join(map(str, failure["items"]))
            reason = f": {failure['reason']}" if failure.get("reason") else ""
            print(f"chunk {failure['chunk']} (shard {failure['shard']}, attempt {failure['attempt']}): item(s) {items}{reason}")
            for item, error in sorted(failure.get("errors", {}).items(), key=lambda entry: (len(entry[0]), entry[0])):
                print(f"  item {item}: {error}")
        if cursor:
            print("(more: --all lists every page)")
        return 0

    return run_api(args, work)
