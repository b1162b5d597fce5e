"""`batchdrain status ID`: one batch's status, totals and progress (GET /batches/{id})."""

from __future__ import annotations

import argparse
from typing import Any, Mapping

from batchdrain_cli.client import Api, add_api_options, print_json, quoted, run_api
from batchdrain_local.progressbar import duration, summary
from chalicelib.model import FINAL_STATUSES as FINAL


def add_parser(commands: Any) -> argparse.ArgumentParser:
    status = commands.add_parser("status", help="a batch's status, totals and progress", description=__doc__)
    status.add_argument("batch_id", metavar="ID", help="the batch, e.g. nightly-2026-11-23T06:00Z")
    return add_api_options(status)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    def work(api: Api) -> int:
        batch = api.get(f"/batches/{quoted(args.batch_id)}")
        if args.json:
            print_json(batch)
        else:
            print("\n".join(describe(batch)), flush=True)
        return 0

    return run_api(args, work)


def describe(batch: Mapping[str, Any]) -> list[str]:
    """A batch as lines for a reader: a summary, then its progress (an estimate) and its times."""
    lines = [summary(batch)]
    progress = batch.get("progress") or {}
    if progress and batch.get("status") not in FINAL:
        eta = progress.get("eta_seconds")
        lines.append(
            f"  progress: {progress['percent']:.1f}% (about {progress['items_done_estimate']:,} items done, a lower bound)"
            + (f", ETA {duration(eta)}" if eta is not None else "")
        )
    lines.append(f"  created:  {batch.get('created_at', '?')}" + (f", completed {batch['completed_at']}" if batch.get("completed_at") else ""))
    if batch.get("reason"):
        lines.append(f"  reason:   {batch['reason']}")
    return lines


