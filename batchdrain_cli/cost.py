"""`batchdrain cost`: what one batch costs on AWS (the command line's first command; never deployed).

    batchdrain cost --items 100000000 --k 100 --task-ms 200 --memory-mb 256 --concurrency 1000
    batchdrain cost --json

`cost` prints what one batch costs on AWS by batchdrain_cli/costmodel.py: requests and dollars
by service, the task's own compute apart from batchdrain's overhead, the time floor at
that concurrency and the busiest partition's writes per second. Every option defaults
to the deployed stage (`--stage`, dev): its settings and its first definition.
`make setup` installs the command into .venv/bin (`pip install -e .`, pyproject.toml).
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable

from batchdrain_cli import costmodel
from chalicelib.config import MAX_ITEMS_PER_MESSAGE, MAX_RANDOM_COUNT

MAX_ITEMS = 10**12
MAX_TASK_MS = 900_000  # Lambda runs at most 15 minutes


def _bounded(kind: Callable[[str], Any], low: float, high: float, what: str) -> Callable[[str], Any]:
    """An argparse type: a number of `kind` within [low, high], or an error that says so."""

    def parse(text: str) -> Any:
        try:
            value = kind(text.replace("_", "").replace(",", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {what} from {low:,} to {high:,}, got {text}")
        return value

    return parse


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """The `cost` command's parser, added to the command line's subparsers."""
    cost = commands.add_parser(
        "cost",
        help="what one batch costs on AWS (batchdrain_cli/costmodel.py)",
        description="What one batch costs on AWS, by batchdrain_cli/costmodel.py and chalicelib/prices.json. "
        "Options left out take the deployed stage's settings and its first definition.",
    )
    cost.add_argument("--items", type=_bounded(int, 1, MAX_ITEMS, "a whole number of items"), help="items in the batch")
    cost.add_argument(
        "--k",
        type=_bounded(int, 1, MAX_ITEMS_PER_MESSAGE, "a whole number of items per message"),
        help="items per message and chunk row (items_per_message)",
    )
    cost.add_argument(
        "--task-ms",
        type=_bounded(float, 0, MAX_TASK_MS, "a number of milliseconds"),
        help="the task's own time per item (default: the definition's task; sleep averages 500 ms)",
    )
    cost.add_argument(
        "--item-seconds",
        type=_bounded(float, 0.001, 900, "a number of seconds"),
        help="the most one item takes (item_seconds), which sizes K when batchdrain chooses it "
        "(default: --task-ms, else the definition's)",
    )
    cost.add_argument(
        "--memory-mb",
        type=_bounded(int, 128, 10_240, "a whole number of MB"),
        help="Lambda memory (lambda_memory_size)",
    )
    cost.add_argument(
        "--concurrency",
        type=_bounded(int, 2, 1000, "a whole number of processors (PROCESSOR_MAX_CONCURRENCY)"),
        help="processors running at once (PROCESSOR_MAX_CONCURRENCY)",
    )
    cost.add_argument(
        "--source",
        choices=("random", "s3-jsonl"),
        help="where items come from: generated, or one S3 object of JSON lines (planners fill the batch from either)",
    )
    cost.add_argument(
        "--item-bytes",
        type=_bounded(int, 2, 256 * 1024, "a whole number of bytes"),
        help="bytes of one item as JSON (default: the random source's items; 24 for s3-jsonl)",
    )
    cost.add_argument("--results", action=argparse.BooleanOptionalAction, default=None, help="write task results to S3")
    cost.add_argument("--arch", choices=("x86_64", "arm64"), help="Lambda architecture")
    cost.add_argument(
        "--stage", default="dev", help="the .chalice/config.json stage whose settings are the defaults (dev)"
    )
    cost.add_argument(
        "--compare",
        action="store_true",
        help="also price the origin design (bench/baseline) and Step Functions Distributed Map for the same items",
    )
    cost.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return cost


def run(args: argparse.Namespace, cost: argparse.ArgumentParser) -> int:
    """`batchdrain cost`: print the estimate; `cost.error` for options that cannot go together."""
    try:
        defaults = costmodel.deployed_defaults(stage=args.stage)
    except ValueError as error:
        cost.error(f"argument --stage: {error}")
    source = args.source or (defaults.source if defaults.source in ("random", "s3-jsonl") else "s3-jsonl")
    items = args.items or defaults.items or 1_000_000
    if source == "random" and items > MAX_RANDOM_COUNT:
        cost.error(f"argument --items: a random source holds at most {MAX_RANDOM_COUNT:,} items (source.count), got {items:,}")
    workload = costmodel.workload_from_defaults(
        defaults,
        items=items,
        k=args.k,
        item_seconds=args.item_seconds,
        task_ms=args.task_ms,
        memory_mb=args.memory_mb,
        concurrency=args.concurrency,
        source=source,
        item_bytes=args.item_bytes,
        results=args.results,
        arch=args.arch,
    )
    prices = costmodel.load_prices()
    result = costmodel.estimate(workload, defaults, prices)
    alternatives = costmodel.alternatives(workload, defaults, prices) if args.compare else None
    if args.json:
        document = costmodel.to_json(result, prices)
        if alternatives is not None:
            document["alternatives"] = alternatives
        print(json.dumps(document, indent=2))
    else:
        print(render(result, defaults, prices))
        if alternatives is not None:
            print(render_alternatives(result, alternatives))
    return 0


def _n(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:,.2f}"


def _usd(value: float) -> str:
    return f"${value:,.4f}" if value < 100 else f"${value:,.2f}"


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:,.2f} s"
    if seconds < 120:
        return f"{seconds:,.1f} s"
    if seconds < 7200:
        return f"{seconds:,.0f} s ({seconds / 60:,.0f} min)"
    return f"{seconds:,.0f} s ({seconds / 3600:,.1f} h)"


def render(result: costmodel.Estimate, defaults: costmodel.Defaults, prices: costmodel.Prices) -> str:
    """The estimate as a readable table."""
    workload, shape, units = result.workload, result.shape, result.units
    by_service = result.requests_by_service()
    lines = [
        f"batchdrain cost: {workload.items:,} items, K={workload.k:,} -> {shape.chunks:,} chunks over {shape.shards:,} shard(s)"
        + (f", {shape.segments:,} segment(s)" if shape.segments else ""),
        *([f"  {workload.k_rule}"] if workload.k_rule else []),
        f"  task {workload.task_ms:g} ms/item at {workload.memory_mb} MB {workload.arch}, concurrency {workload.concurrency:,}, "
        f"source {workload.source}, results {'on' if workload.results else 'off'}; stage {defaults.stage} "
        f"(PROCESSOR_BATCH_SIZE {defaults.processor_batch_size}, FINALIZER_BATCH_SIZE {defaults.finalizer_batch_size}, "
        f"SHARD_CHUNK_TARGET {defaults.shard_chunk_target:,})",
        f"  sizes: message {shape.message_bytes:,.0f} B, chunk row {shape.row_bytes:,.0f} B, header {shape.header_bytes:,} B",
        f"  prices: us-east-1, checked {prices.checked} (chalicelib/prices.json)",
        "",
        f"{'service':<9} {'operation':<24} {'requests':>14}   {'billed as':<40} {'$':>12}",
    ]
    billed = {
        "sqs": f"{_n(units['sqs_billed_requests'])} requests (64 KiB chunks)",
        "dynamodb": f"{_n(units['dynamodb_wru'])} WRU + {_n(units['dynamodb_rru'])} RRU",
        "lambda": f"{_n(units['lambda_invocations'])} invocations + {_n(units['lambda_overhead_gb_s'])} GB-s",
        "sns": f"{_n(units['sns_publishes'])} publishes",
        "s3": f"{_n(units['s3_put_requests'])} PUT + {_n(units['s3_get_requests'])} GET",
        "logs": f"{units['log_gb']:,.3f} GB ingested",
    }
    lambda_ops = {name: usage["invocations"] for name, usage in result.lambda_usage.items()}
    for service in costmodel.SERVICES:
        operations = lambda_ops if service == "lambda" else by_service.get(service, {})
        if service == "logs":
            operations = {"START/END/REPORT lines": units["lambda_invocations"]}
        rows = list(operations.items()) or [("-", 0)]
        for position, (operation, count) in enumerate(rows):
            last = position == len(rows) - 1
            lines.append(
                f"{service if position == 0 else '':<9} {operation:<24} {_n(count):>14}   "
                f"{billed[service] if last else '':<40} {_usd(result.usd[service]) if last else '':>12}"
            )
    items_m = workload.items / 1e6
    task_gb_s = units["lambda_task_gb_s"]
    lines += [
        "",
        f"overhead (batchdrain)      {_usd(result.overhead_usd):>12}   {_usd(result.overhead_usd / items_m)} per 1M items",
        f"task compute (apart)       {_usd(result.task_compute_usd):>12}   {workload.items:,} x {workload.task_ms:g} ms x "
        f"{workload.memory_mb / 1024:g} GB = {task_gb_s:,.0f} GB-s",
        f"total                      {_usd(result.total_usd):>12}   {_usd(result.total_usd / items_m)} per 1M items",
    ]
    if result.task_compute_usd:
        lines.append(
            f"overhead is {100 * result.overhead_usd / result.task_compute_usd:.2f} % of the task's own compute"
        )
    floor = result.time_floor_s
    lines += [
        "",
        f"time floor at concurrency {workload.concurrency:,}: {workload.items:,} x {workload.task_ms:g} ms / "
        f"{workload.concurrency:,} = {_duration(floor)}",
        f"  estimated run {_duration(result.run_s)}, of which filling the batch (rows and messages) {_duration(result.fill_s)}",
        _planning_line(result, defaults),
        f"busiest partition: {result.busiest_partition['partition']}, ~{result.busiest_partition['writes_per_s']:,.1f} "
        f"write units/s (DynamoDB allows {costmodel.PARTITION_WRITE_LIMIT:,} per partition)",
    ]
    for warning in result.warnings:
        lines.append(f"warning: {warning}")
    lines += [
        "",
        "Exact: header, segment rows, chunk rows, checkpoints, messages, reads, deletes, seal, closes, completion, "
        "alert (tests/integration/test_cost_model.py checks them).",
        "Modelled: Lambda's receives (one per invocation of full batches, one empty 20 s long poll per poller at the end), "
        "stream batches (finalizer window over ~4 stream shards), progress stamps and sweeps over the estimated run, "
        "planners' continuations.",
        f"Assumed: request latency {', '.join(f'{s} {ms:g} ms' for s, ms in costmodel.REQUEST_MS.items())}; "
        f"{costmodel.INIT_MS:g} ms INIT per cold start; {costmodel.LOG_BYTES_PER_INVOCATION} log bytes per invocation.",
    ]
    return "\n".join(lines)


def _planning_line(result: costmodel.Estimate, defaults: costmodel.Defaults) -> str:
    """How the batch is filled: the batcher's plan, then the planners in parallel."""
    planning = result.planning
    line = (
        f"  filling: the batcher's plan {_duration(planning['plan_s'])} ({planning['segments']:,} P# rows), then "
        f"{planning['segments']:,} segment(s), {planning['planners_at_once']:,} planner(s) at once "
        f"(PLANNER_MAX_CONCURRENCY {defaults.planner_concurrency:,}), ~{_duration(planning['longest_segment_s'])} "
        "per segment"
    )
    if planning["continuations"]:
        line += (
            f"; {planning['continuations']:,} continuation(s): a planner continues its segment in a new message after "
            f"~{planning['planner_invocation_s']:,.0f} s of its {defaults.planner_timeout_s} s"
        )
    return line


def render_alternatives(result: costmodel.Estimate, alternatives: dict[str, dict[str, Any]]) -> str:
    """batchdrain next to the origin design and Step Functions, for the same items and task."""
    items_m = result.workload.items / 1e6
    rows = {
        "batchdrain": {
            "overhead_usd": result.overhead_usd,
            "busiest_partition_writes_per_s": result.busiest_partition["writes_per_s"],
        },
        **alternatives,
    }
    lines = [
        "",
        f"{'same items, same task':<62} {'overhead':>12} {'per 1M items':>13} {'% of task':>10} {'busiest partition':>18}",
    ]
    for name, figures in rows.items():
        busiest = figures.get("busiest_partition_writes_per_s")
        share = 100 * figures["overhead_usd"] / result.task_compute_usd if result.task_compute_usd else float("nan")
        lines.append(
            f"{name:<62} {_usd(figures['overhead_usd']):>12} {_usd(figures['overhead_usd'] / items_m):>13} {share:>9.2f}% "
            f"{(f'{busiest:,.0f} WRU/s' if busiest is not None else '-'):>18}"
        )
    return "\n".join(lines)


