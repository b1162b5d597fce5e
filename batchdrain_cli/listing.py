"""`batchdrain list`: the batch history, newest first (GET /batches), a page or `--all`."""

from __future__ import annotations

import argparse
from typing import Any

from batchdrain_cli.client import Api, add_api_options, print_json, run_api


def add_parser(commands: Any) -> argparse.ArgumentParser:
    listing = commands.add_parser("list", help="the batch history, newest first", description=__doc__)
    listing.add_argument("--status", help="only batches in this status, e.g. COMPLETED_WITH_FAILURES")
    listing.add_argument("--definition", help="only this definition's batches")
    listing.add_argument("--limit", type=int, default=None, help="batches per page (the API's default: 25, at most 100)")
    listing.add_argument("--all", action="store_true", help="every page, not only the first")
    return add_api_options(listing)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    def work(api: Api) -> int:
        query = {"status": args.status, "definition": args.definition, "limit": args.limit}
        batches, cursor = collect(api, "/batches", "batches", query, args.all)
        if args.json:
            print_json({"batches": batches, "cursor": cursor})
            return 0
        for batch in batches:
            print(
                f"{batch['batch_id']:<36} {batch.get('status', '?'):<24} {int(batch.get('total_items', 0)):>12,} items "
                f"{int(batch.get('failed', 0)):>9,} failed  {batch.get('created_at', '')}"
            )
        if cursor:
            print("(more: --all lists every page)")
        return 0

    return run_api(args, work)


def collect(api: Api, path: str, key: str, query: dict[str, Any], every_page: bool) -> tuple[list[dict[str, Any]], str | None]:
    """The first page's entries and its cursor, or (`every_page`) every page's entries and None."""
    if not every_page:
        page = api.get(path, query)
        return page[key], page.get("cursor")
    return [entry for page in api.pages(path, key, query) for entry in page], None
