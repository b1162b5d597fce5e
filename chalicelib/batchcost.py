"""What one batch cost on AWS, from its own counts: the figure its alert and `GET /batches/{id}` carry.

`batch_cost(header, stats, prices, memory_mb, arch)` prices the requests each role made
for this batch, as the cost model (batchdrain_cli.costmodel) describes them role by role,
but from what this batch observed instead of a prediction:

- from the header: items, chunks, shards, segments, attempts, failed items, results
  on or off, the source's type, and its own size (every header write is billed by it);
- from its stats rows (chalicelib.itemstats): messages handled, given back and re-sent,
  items raised, processor invocations and their busy and task time, dead letters,
  redrives and the chunks they restored.

Infrastructure is billed by service, as AWS bills it: DynamoDB by write and read units
of each row's size (header writes twice while the batch is open, for the `open-batches`
index, and once more for `batch-history` when a listed field changes; transactions at 2
units per KB), SQS per request and 64 KiB of payload (Lambda's receives and deletes
included), SNS per publish, S3 per request, Lambda per request and per GB-s of the
framework's own time: the processors' busy time less the task's, plus the batcher's,
planners', finalizer's and dead-letter handler's estimated from their requests
(chalicelib.pricing.request_ms). The task's own compute (its items' time x memory) is
kept apart: it is the job's cost, not batchdrain's.

It is an estimate, within ~10 % of the requests the local stack counts for the same
batch (tests/integration/test_batch_cost.py). What it leaves out: CloudWatch Logs, cold
starts (INIT), idle polling, API Gateway, S3 storage, GetQueueUrl lookups (cached per
process), requests an invocation made before it crashed (its stats are never written),
and a last invocation whose stats land after the completion read them.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping

from chalicelib import config, itemstats, model, pricing, sizing
from chalicelib.chunks import new_chunk_row
from chalicelib.pricing import Prices, item_bytes, read_units, write_units
from chalicelib.store.base import BATCH_WRITE_ROWS
from chalicelib.store.segments import SEGMENTS_PER_TRANSACTION

# The deployed stage's memory (.chalice/config.json's lambda_memory_size) if Lambda does not say.
DEFAULT_MEMORY_MB = 256
DEFAULT_ARCH = "x86_64"
SERVICES = ("dynamodb", "sqs", "sns", "s3", "lambda_requests", "lambda_time")
# What the completion adds to the header (for its size): its time, totals and lease (~100 bytes), up to 5
# sample errors (~120 bytes each), and these figures (~180 bytes). The alert's record swaps the
# open-batches keys for its own time and id: about as many bytes.
_COMPLETION_FIELDS = ("completed_at", "succeeded", "failed", "sample_errors", "notify_lease_until", "notified_at", "alert_id",
                      "notify_tries", "cost", "item_seconds_observed")
_COMPLETION_BYTES = 100 + 180
_SAMPLE_ERROR_BYTES = 120
_SAMPLES = 5
# A failed row holds its chunk's items and their first errors (model.MAX_ERROR_TEXT each).
_FAILED_ROW_EXTRA_BYTES = 600
_MESSAGE_BYTES_UNKNOWN = 1024
_KIB64 = 64 * 1024


@dataclass
class Ledger:
    """Billing units by service, and Lambda invocations and milliseconds, by role."""

    units: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(float)))

    def add(self, role: str, unit: str, amount: float) -> None:
        if amount:
            self.units[role][unit] += amount

    def total(self, unit: str) -> float:
        return sum(role.get(unit, 0.0) for role in self.units.values())


def batch_cost(
    header: Mapping[str, Any],
    stats: Mapping[str, Any],
    prices: Prices,
    memory_mb: int = DEFAULT_MEMORY_MB,
    arch: str = DEFAULT_ARCH,
    *,
    finalizer_batch_size: int = 100,
    finalizer_window_s: float = 1.0,
    now: str | None = None,
) -> dict[str, Any]:
    """The batch's cost so far: `{infrastructure_usd, task_compute_usd, by_service}`, in dollars.

    `header` as it ends (with `completed_at`), or as it is while it runs (then `now` is the
    time of the figure, and the completion's own writes are not yet counted).
    """
    ledger = usage(header, stats, memory_mb, finalizer_batch_size=finalizer_batch_size,
                   finalizer_window_s=finalizer_window_s, now=now)
    gb_s = prices.lambda_gb_s[arch] * memory_mb / 1024 / 1000  # $ per ms
    by_service = {
        "dynamodb": ledger.total("wru") * prices.wru + ledger.total("rru") * prices.rru,
        "sqs": ledger.total("sqs") * prices.sqs_request,
        "sns": ledger.total("sns") * prices.sns_publish,
        "s3": ledger.total("s3_put") * prices.s3_put + ledger.total("s3_get") * prices.s3_get,
        "lambda_requests": ledger.total("invocations") * prices.lambda_request,
        "lambda_time": ledger.total("ms") * gb_s,
    }
    task_ms = int(stats.get("task_ms", 0))
    return {
        "infrastructure_usd": _usd(sum(by_service.values())),
        "task_compute_usd": _usd(task_ms * gb_s),
        "by_service": {name: _usd(value) for name, value in by_service.items()},
    }


def cost_now(header: Mapping[str, Any], stats: Mapping[str, Any], now: str | None = None) -> dict[str, Any]:
    """`batch_cost` with this function's own memory (AWS_LAMBDA_FUNCTION_MEMORY_SIZE) and the stage's stream settings."""
    memory = _lambda_memory_mb()
    return batch_cost(
        header,
        stats,
        pricing.load_prices(),
        memory,
        DEFAULT_ARCH,
        finalizer_batch_size=config.env_int("FINALIZER_BATCH_SIZE", 100, 1, 10_000),
        finalizer_window_s=config.env_int("FINALIZER_BATCHING_WINDOW", 1, 0, 300),
        now=now,
    )


def usage(
    header: Mapping[str, Any],
    stats: Mapping[str, Any],
    memory_mb: int = DEFAULT_MEMORY_MB,
    *,
    finalizer_batch_size: int = 100,
    finalizer_window_s: float = 1.0,
    now: str | None = None,
) -> Ledger:
    """The units each role used for this batch (see the module docstring): what `batch_cost` prices."""
    ledger = Ledger()
    n = _count(stats)
    shape = _Shape.of(header, n)
    ended = header.get("status") in model.FINAL_STATUSES and header.get("completed_at")
    _plan(ledger, shape, memory_mb)
    _planners(ledger, shape, memory_mb)
    _processors(ledger, shape, n, memory_mb)
    _dead_letters(ledger, shape, n, memory_mb)
    _redrives(ledger, shape, n, memory_mb)
    _completions(ledger, shape, memory_mb, completions=shape.attempts if ended else shape.attempts - 1)
    _finalizer(ledger, shape, n, memory_mb, finalizer_batch_size, finalizer_window_s, now)
    return ledger


# -- the batch's shape, as its header says ------------------------------------------------------------


@dataclass(frozen=True)
class _Shape:
    header: Mapping[str, Any]
    items: int
    chunks: int  # of the first attempt
    shards: int
    segments: int
    attempts: int
    failed: int  # failed items of the last attempt
    restored: int  # chunks redrives restored
    restore_groups: int
    results: bool
    source: str
    k: float
    header_bytes: int
    final_bytes: int  # the header once this attempt completed
    earlier_final_bytes: int  # ... and once an earlier one did (its failures' samples on it)
    row_bytes: int
    segment_bytes: int
    body_bytes: float  # a work message's body, as observed

    @classmethod
    def of(cls, header: Mapping[str, Any], n: Mapping[str, int]) -> "_Shape":
        items, chunks = int(header.get("total_items", 0)), int(header.get("total_chunks", 0))
        failed = int(header.get("failed_items", header.get("failed", 0)) or 0)
        k = items / chunks if chunks else float(header.get("items_per_message") or 1)
        source = (header.get("source") or {}).get("type", "random")
        sized = {key: value for key, value in header.items() if key not in _COMPLETION_FIELDS}
        header_bytes = item_bytes(sized)
        body = n["body_bytes"] / n["deliveries"] if n["deliveries"] else _MESSAGE_BYTES_UNKNOWN
        return cls(
            header=header,
            items=items,
            chunks=chunks,
            shards=max(1, int(header.get("shards", 1))),
            segments=max(1, int(header.get("segments") or 1)),
            attempts=max(1, int(header.get("attempt", 1))),
            failed=failed,
            restored=n["restored_chunks"],
            restore_groups=n["restore_groups"],
            results=bool(header.get("results")),
            source=source,
            k=max(1.0, k),
            header_bytes=header_bytes,
            final_bytes=header_bytes + _COMPLETION_BYTES + _SAMPLE_ERROR_BYTES * min(_SAMPLES, failed),
            earlier_final_bytes=header_bytes + _COMPLETION_BYTES + _SAMPLE_ERROR_BYTES * min(_SAMPLES, n["restored_chunks"]),
            row_bytes=_row_bytes(header, items, max(1, round(k)), source),
            segment_bytes=_segment_bytes(header, source),
            body_bytes=body,
        )

    @property
    def header_write(self) -> float:
        """A header write while the batch is open: the table and the `open-batches` index (projection ALL)."""
        return 2 * write_units(self.header_bytes)

    @property
    def final_write(self) -> float:
        return 2 * write_units(self.final_bytes)

    @property
    def earlier_final_write(self) -> float:
        return 2 * write_units(self.earlier_final_bytes)

    @property
    def header_read(self) -> float:
        return read_units(self.header_bytes)

    @property
    def row_write(self) -> float:
        return write_units(self.row_bytes)

    @property
    def failed_row_write(self) -> float:
        return write_units(self.row_bytes + _FAILED_ROW_EXTRA_BYTES)

    @property
    def is_object(self) -> bool:
        return self.source != "random"


def _row_bytes(header: Mapping[str, Any], items: int, k: int, source: str) -> int:
    """A chunk row as the planners write it (chunks.new_chunk_row), with indices as large as this batch's last."""
    batch_id = str(header.get("batch_id", ""))
    if source == "random":
        last = max(k, items)
        indices = range(last - k, last)
        span = None
    else:
        # An object's item index is its line's byte offset (at most ~10^13 with the file number).
        indices = range(10**10, 10**10 + 100 * k, 100)
        pin = header.get("source_pin") or {}
        span = {"kind": "lines", "bucket": "b" * 20, "key": str((header.get("source") or {}).get("uri", ""))[5:],
                "etag": str(pin.get("etag", "0" * 34)), "file": 0, "gzip": False, "s": 10**10, "x": 10**10 + 100 * k,
                "i": 10**10, "n": k, "d": "0" * 16}
    return item_bytes(new_chunk_row(batch_id, int(header.get("shards", 1)) - 1, model.SEGMENT_CHUNKS, indices, 1, span))


def _segment_bytes(header: Mapping[str, Any], source: str) -> int:
    """A segment row as a planner leaves it between groups (claimed, checkpointed)."""
    spec: dict[str, Any] = {"kind": "random", "pos": 10**6, "end": 10**6}
    if source != "random":
        spec = {"kind": "lines", "bucket": "b" * 20, "key": str((header.get("source") or {}).get("uri", "")), "etag": "0" * 34,
                "file": 0, "gzip": False, "pos": 10**9, "end": 10**9}
    return item_bytes({**model.segment_key(str(header.get("batch_id", "")), 0), "spec": spec, "chunks": 10**4, "items": 10**6,
                       "attempt": 1, "sent_at": 1_800_000_000, "owner": "0" * 32, "lease_until": 1_800_000_000,
                       "pos": 10**9, "next_index": 10**9})


def _count(stats: Mapping[str, Any]) -> dict[str, int]:
    return {name: int(stats.get(name, 0) or 0) for name in itemstats.COUNTERS}


# -- the roles -----------------------------------------------------------------------------------------


def _sqs_billed(payload: float) -> float:
    """SQS bills each 64 KiB of a request's payload as one request."""
    return max(1, math.ceil(payload / _KIB64))


def _lambda(ledger: Ledger, role: str, invocations: float, requests: Mapping[tuple[str, str], float], memory_mb: int,
            cpu_ms: float = 0.0) -> None:
    ledger.add(role, "invocations", invocations)
    ledger.add(role, "ms", pricing.request_ms(requests, memory_mb) + cpu_ms * pricing.cpu_scale(memory_mb))


def _plan(ledger: Ledger, shape: _Shape, memory_mb: int) -> None:
    """The batcher's one step (planning.plan_batch): header, segment rows, `planned`, planning messages."""
    role = "batcher"
    transactions = math.ceil(shape.segments / SEGMENTS_PER_TRANSACTION)
    sends = math.ceil(shape.segments / model.SQS_BATCH_ENTRIES)
    ledger.add(role, "wru", shape.header_write + 1)  # the header, in both indexes
    ledger.add(role, "wru", 2 * (shape.segments * write_units(shape.segment_bytes) + transactions * write_units(shape.header_bytes)))
    ledger.add(role, "wru", shape.header_write)  # mark_planned
    ledger.add(role, "sqs", sends)
    requests = {("dynamodb", "PutItem"): 1, ("dynamodb", "TransactWriteItems"): transactions, ("dynamodb", "UpdateItem"): 1,
                ("sqs", "SendMessageBatch"): sends}
    if sizing.was_chosen(shape.header):
        ledger.add(role, "rru", 1)  # K chosen: the item times the definition's last batch observed (chalicelib.sizing)
        requests[("dynamodb", "GetItem")] = 1
    if shape.is_object:
        ledger.add(role, "s3_get", 1)  # HeadObject (an inventory: its manifest)
        requests[("s3", "HeadObject")] = 1
    if shape.results:
        ledger.add(role, "s3_put", 1)  # the results bucket's check
        requests[("s3", "PutObject")] = 1
    _lambda(ledger, role, 1, requests, memory_mb)


def _planners(ledger: Ledger, shape: _Shape, memory_mb: int) -> None:
    """Every planner: a segment each (read, claim, groups of rows, checkpoints and messages, the finishing transaction)."""
    role = "planners"
    per_segment = shape.chunks / shape.segments
    per_group = max(1, min(model.PLAN_GROUP_CHUNKS, math.ceil(model.PLAN_GROUP_BYTES / max(1.0, shape.body_bytes))))
    group_size = min(per_group, max(1, math.ceil(per_segment)))
    groups = shape.segments * math.ceil(per_segment / per_group) if shape.chunks else 0
    per_send = max(1, min(model.SQS_BATCH_ENTRIES, int(model.SQS_BATCH_BYTES // max(1.0, shape.body_bytes))))
    sends = groups * math.ceil(group_size / per_send)
    unsent = item_bytes({"unsent": [[shape.shards - 1, model.SEGMENT_CHUNKS + group_size]] * group_size})
    segment = write_units(shape.segment_bytes)
    ledger.add(role, "rru", shape.segments * shape.header_read)
    ledger.add(role, "wru", shape.segments * segment)  # claims
    ledger.add(role, "wru", 2 * groups * write_units(shape.segment_bytes + unsent))  # checkpoint and clear per group
    ledger.add(role, "wru", shape.chunks * shape.row_write)  # the chunk rows (BatchWriteItem)
    ledger.add(role, "wru", shape.segments * (2 * (segment + write_units(shape.header_bytes)) + write_units(shape.header_bytes) + 1))
    ledger.add(role, "sqs", sends * _sqs_billed(min(group_size, per_send) * shape.body_bytes))
    ledger.add(role, "sqs", 2 * shape.segments)  # Lambda's receive and delete of each planning message
    requests = {
        ("dynamodb", "GetItem"): shape.segments,
        ("dynamodb", "UpdateItem"): shape.segments + 2 * groups,
        ("dynamodb", "BatchWriteItem"): groups * math.ceil(group_size / BATCH_WRITE_ROWS),
        ("dynamodb", "TransactWriteItems"): shape.segments,
        ("sqs", "SendMessageBatch"): sends,
    }
    if shape.is_object:
        ledger.add(role, "s3_get", shape.segments)  # each segment's ranged GET (a listing: its pages, about as many)
        requests[("s3", "GetObject")] = shape.segments
    cpu = shape.items * (pricing.LINE_CPU_MS if shape.is_object else pricing.GENERATE_CPU_MS)
    _lambda(ledger, role, shape.segments, requests, memory_mb, cpu)


def _processors(ledger: Ledger, shape: _Shape, n: Mapping[str, int], memory_mb: int) -> None:
    """Every processor invocation the stats saw: a row read and a write per message, failures, stats, returns, re-sends."""
    role = "processors"
    deliveries, invocations = n["deliveries"], n["invocations"]
    # One ChangeMessageVisibilityBatch per invocation that gave messages back, one DeleteMessageBatch (Lambda's) per
    # invocation that finished some, as counted.
    changes, deletes = n["visibility_changes"], n["message_deletes"]
    chunks = shape.chunks + shape.restored
    transactions = shape.restored + min(shape.failed, chunks)  # each failed row was filled by (about) one transaction
    ledger.add(role, "rru", deliveries * read_units(shape.row_bytes))
    ledger.add(role, "wru", deliveries * shape.row_write)
    ledger.add(role, "wru", transactions * (2 * (shape.row_write + shape.failed_row_write + write_units(shape.header_bytes))
                                            + write_units(shape.header_bytes) - shape.row_write))
    ledger.add(role, "wru", invocations * write_units(itemstats.STATS_ROW_BYTES))  # add_stats
    per_receive = deliveries / invocations if invocations else 0
    ledger.add(role, "sqs", invocations * _sqs_billed(per_receive * shape.body_bytes))  # Lambda's receives
    ledger.add(role, "sqs", deletes + changes)  # Lambda's deletes; retry delays
    ledger.add(role, "sqs", n["resent"] * _sqs_billed(shape.body_bytes))
    if shape.results:
        ledger.add(role, "s3_put", deliveries)  # each delivery's lines added to its chunk's object
        ledger.add(role, "s3_get", max(0, deliveries - chunks))  # a later delivery reads the object first
    ledger.add(role, "invocations", invocations)
    others = {("dynamodb", "UpdateItem"): invocations + transactions, ("sqs", "ChangeMessageVisibilityBatch"): changes,
              ("sqs", "SendMessageBatch"): n["resent"]}
    ledger.add(role, "ms", max(0, n["busy_ms"] - n["task_ms"]) + pricing.request_ms(others, memory_mb))


def _dead_letters(ledger: Ledger, shape: _Shape, n: Mapping[str, int], memory_mb: int) -> None:
    """The dead-letter handler: per dead letter the header and the row read, a round counted and the items sent again."""
    role = "dead letters"
    letters, invocations = n["dead_letters"], n["dead_letter_invocations"]
    ledger.add(role, "rru", letters * (shape.header_read + read_units(shape.row_bytes)))
    ledger.add(role, "wru", letters * shape.row_write + invocations * write_units(itemstats.STATS_ROW_BYTES))
    ledger.add(role, "sqs", letters * _sqs_billed(shape.body_bytes) + 2 * invocations)  # re-sends; Lambda's receive, delete
    requests = {("dynamodb", "GetItem"): 2 * letters, ("dynamodb", "UpdateItem"): letters + invocations,
                ("sqs", "SendMessageBatch"): letters}
    _lambda(ledger, role, invocations, requests, memory_mb, letters * pricing.MESSAGE_CPU_MS)


def _redrives(ledger: Ledger, shape: _Shape, n: Mapping[str, int], memory_mb: int) -> None:
    """Each redrive (an API call): the new attempt begun, failed rows restored group by group, the seal."""
    redrives = shape.attempts - 1
    if not redrives:
        return
    role = "redrives"
    groups, restored = shape.restore_groups, shape.restored
    listings = groups + redrives * shape.shards  # each group's Query of F rows, and the shards' last ones
    ledger.add(role, "rru", (groups + 2 * redrives) * shape.header_read + listings)
    ledger.add(role, "wru", redrives * (shape.header_write + 1))  # begin_redrive, in both indexes
    ledger.add(role, "wru", 2 * (groups * write_units(shape.header_bytes) + restored * (shape.row_write + shape.failed_row_write)))
    ledger.add(role, "wru", groups * shape.header_write + redrives * shape.header_write)  # clear_unsent; the seal
    sends = max(groups, math.ceil(restored / model.SQS_BATCH_ENTRIES))
    ledger.add(role, "sqs", sends * _sqs_billed(min(restored, model.SQS_BATCH_ENTRIES) * shape.body_bytes / max(1, sends)))
    if shape.results:
        ledger.add(role, "s3_put", redrives)  # the results bucket's check
    requests = {("dynamodb", "GetItem"): groups + 2 * redrives, ("dynamodb", "Query"): listings,
                ("dynamodb", "UpdateItem"): 2 * redrives + groups, ("dynamodb", "TransactWriteItems"): groups,
                ("sqs", "SendMessageBatch"): sends}
    _lambda(ledger, role, redrives, requests, memory_mb)


def _completions(ledger: Ledger, shape: _Shape, memory_mb: int, completions: int) -> None:
    """Each attempt's end: shards closed, the completion, failures listed, manifest written, the alert published and recorded."""
    if completions <= 0:
        return
    role = "finalizer"
    ledger.add(role, "wru", completions * shape.shards * shape.header_write)  # close_shard each
    # complete (and the history), mark_notified: this attempt's, and the earlier ones' with their samples
    last = 1 if completions == shape.attempts else 0
    ledger.add(role, "wru", last * (2 * shape.final_write + 1) + (completions - last) * (2 * shape.earlier_final_write + 1))
    ledger.add(role, "sns", completions)
    queries = completions * shape.shards * ((1 if shape.failed or shape.restored else 0) + (1 if shape.results else 0))
    queries += completions  # the batch's stats rows, read for these figures
    ledger.add(role, "rru", queries)
    ledger.add(role, "wru", completions)  # its item times kept for the definition's next batch (a small row)
    requests = {("dynamodb", "UpdateItem"): completions * (shape.shards + 2), ("dynamodb", "Query"): queries,
                ("dynamodb", "PutItem"): completions, ("sns", "Publish"): completions}
    if shape.results:
        ledger.add(role, "s3_put", 2 * completions)  # failures.jsonl and manifest.json
        requests[("s3", "PutObject")] = 2 * completions
    ledger.add(role, "ms", pricing.request_ms(requests, memory_mb))


def _finalizer(ledger: Ledger, shape: _Shape, n: Mapping[str, int], memory_mb: int, batch_size: int, window_s: float,
               now: str | None) -> None:
    """The stream batches that woke the finalizer for this batch, as many as its run's rate makes (costmodel's rule).

    Chunk REMOVEs spread over up to STREAM_SHARDS stream shards; each stream batch holds
    what arrived in the batching window, at most `batch_size`. Each reads the header and
    queries the open shards it touched; a segment's REMOVE reads the header and queries
    the segments left; the seal is recorded once per attempt (the first attempt's by
    the finalizer, a redrive's by the redrive itself).
    """
    role = "finalizer"
    header = shape.header
    created = model.parse_iso(header["created_at"]) if header.get("created_at") else None
    end = model.parse_iso(now) if now else (model.parse_iso(header["completed_at"]) if header.get("completed_at") else model.utc_now())
    start = model.parse_iso(header["redrive_started_at"]) if header.get("redrive_started_at") else created
    run_s = max(1.0, (end - start).total_seconds() + n["earlier_attempts_ms"] / 1000) if start else 1.0
    fill_s = (model.parse_iso(header["sealed_at"]) - created).total_seconds() if header.get("sealed_at") and created else 0.0
    chunks = shape.chunks + shape.restored
    stream_shards = max(1, min(shape.shards, pricing.STREAM_SHARDS))
    window = window_s or pricing.STREAM_POLL_S
    per_batch = max(1.0, min(float(batch_size), chunks / run_s / stream_shards * window))
    batches = math.ceil(chunks / per_batch) + 1 if chunks else 1  # the REMOVEs, and the seal's record
    keys = max(1.0, shape.shards / stream_shards)
    touched = keys * (1 - (1 - 1 / keys) ** per_batch)
    stamps = math.ceil(max(0.0, run_s - fill_s) / 60)
    queries = shape.shards + (batches - 1) * min(shape.shards, touched) + shape.segments
    ledger.add(role, "rru", (batches + shape.segments) * shape.header_read + queries)
    ledger.add(role, "wru", shape.header_write * (1 + stamps))  # the seal, progress stamps
    requests = {("dynamodb", "GetItem"): batches + shape.segments, ("dynamodb", "Query"): queries,
                ("dynamodb", "UpdateItem"): 1 + stamps}
    _lambda(ledger, role, batches, requests, memory_mb, batches * pricing.MESSAGE_CPU_MS)


# -- money and numbers ---------------------------------------------------------------------------------


def _usd(value: float) -> float:
    """Dollars to 4 significant digits (the figure is good to ~10 %)."""
    return float(f"{value:.4g}")


def _lambda_memory_mb() -> int:
    """This function's memory, as Lambda tells it (not a batchdrain setting)."""
    try:
        return int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", DEFAULT_MEMORY_MB))
    except ValueError:
        return DEFAULT_MEMORY_MB
