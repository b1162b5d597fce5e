"""`batchdrain status ID`: one batch's status, totals, progress, item times and cost (GET /batches/{id})."""

from __future__ import annotations

import argparse
import math
from typing import Any, Mapping

from batchdrain_cli.client import Api, add_api_options, print_json, quoted, run_api
from batchdrain_local.progressbar import duration, summary
from chalicelib.model import FINAL_STATUSES as FINAL


def add_parser(commands: Any) -> argparse.ArgumentParser:
    status = commands.add_parser("status", help="a batch's status, totals, progress, item times and cost", description=__doc__)
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
    if batch.get("k_rule"):
        lines.append(f"  K:        {batch['k_rule']}")
    times = batch.get("item_seconds_observed") or {}
    if times.get("count"):
        lines.append(
            f"  items:    {times['count']:,} timed: p50 {times['p50']:g} s, p99 {times['p99']:g} s, max {times['max']:g} s "
            "(each within ~9 %)"
        )
    cost = batch.get("cost")
    if cost:
        services = ", ".join(f"{SERVICE_NAMES.get(name, name)} {usd(value)}" for name, value in cost["by_service"].items() if value)
        lines.append(
            f"  cost:     {usd(cost['infrastructure_usd'])} infrastructure"
            + (" so far" if batch.get("status") not in FINAL else "")
            + f" ({services}), task compute {usd(cost['task_compute_usd'])}; an estimate, within ~10 %"
        )
    return lines


SERVICE_NAMES = {"dynamodb": "DynamoDB", "sqs": "SQS", "sns": "SNS", "s3": "S3", "lambda_requests": "Lambda requests",
                 "lambda_time": "Lambda time"}


def usd(value: float) -> str:
    """Dollars with three significant digits, however small: `$0.0000715`, `$0.0213`, `$2.01`."""
    if not value:
        return "$0"
    if value >= 1:
        return f"${value:,.2f}"
    return f"${value:.{max(2, 2 - math.floor(math.log10(value)))}f}"


