"""The batcher: turns a definition and a schedule slot into a planned batch, and sends chunks.

Every source is planned the same way (chalicelib.planner): the batcher writes the header
and the segment rows in one short step, and planners write the chunk rows and messages
in parallel. Order matters (README 'Invariants'): header (CREATING) -> chunk rows ->
their messages -> seal. A row always exists before its message (1); the seal comes
after the last row (2), and only the seal lets the finalizer complete the batch.

The send helpers here are shared by everything that sends work messages.
"""

from __future__ import annotations

import random
import time
from datetime import datetime
from typing import Any, Iterable, Iterator, Mapping

from chalicelib import aws, log, model, results
from chalicelib.config import Definition, Settings
from chalicelib import sources
from chalicelib.store import BatchStore, ItemOutcome
from chalicelib.tasks import get_task

_MAX_SEND_ROUNDS = 8


def create_scheduled_batch(definition: Definition, scheduled_time: str, settings: Settings) -> dict[str, Any]:
    """Create the batch for one schedule slot (`scheduled_time` is the event's `time`).

    The batch id comes from the slot, so EventBridge's at-least-once delivery creates
    one batch per slot: a duplicate finds the header and writes nothing.
    """
    return create_batch(definition, model.parse_iso(scheduled_time), settings)


def create_batch(definition: Definition, scheduled_at: datetime, settings: Settings) -> dict[str, Any]:
    """Create and plan one batch; returns its header (the existing one on a duplicate).

    Planners then write its chunks, and the finalizer seals it when the last segment is done.
    """
    batch_id = model.batch_id_for(definition.name, scheduled_at)
    get_task(definition.task)  # an unknown task is rejected before anything is written
    store = BatchStore(settings.table_name)
    header: dict[str, Any] = {
        "batch_id": batch_id,
        "definition": definition.name,
        "task": definition.task,
        "task_options": model.encode_options(definition.task_options),
        "source": sources.source_record(definition.source),
        "items_per_message": definition.items_per_message,
        "item_seconds": _decimal_safe(definition.item_seconds),
        "max_message_bytes": settings.max_message_bytes,
        "scheduled_at": model.iso(scheduled_at),
        "attempt": 1,
    }
    if definition.results is not None:
        header["results"] = {"bucket": definition.results.bucket, "prefix": definition.results.prefix}
    if not sources.is_object_source(definition.source):
        _check_generated_items_fit(header)
    header["created_at"] = model.iso(model.utc_now())
    from chalicelib import planner  # planner sends with this module's helpers

    return planner.start(store, header, sources.resolve_uri(definition.source, scheduled_at), settings)


def _check_generated_items_fit(header: Mapping[str, Any]) -> None:
    """Reject, before anything is written, a generated batch whose items cannot be sent.

    Chunks are cut by size before K, so if the largest possible item fits alone, every
    chunk fits. Raises BadRequestError naming it.
    """
    source = sources.source_from_record(header["source"])
    next(model.cut_entries([sources.largest_item(source)], number=lambda local: (0, 0), **chunk_settings(header)))


def chunk_settings(header: Mapping[str, Any]) -> dict[str, Any]:
    """What every chunk of a batch shares, as model.cut_entries takes it."""
    return {
        "batch_id": header["batch_id"],
        "task": header["task"],
        "options": model.decode_options(header),
        "items_per_message": header["items_per_message"],
        "max_message_bytes": header["max_message_bytes"],
        "item_seconds": float(header.get("item_seconds", 0)),
        "attempt": header.get("attempt", 1),
        "results": header.get("results"),
    }


def _decimal_safe(seconds: float) -> Any:
    """boto3 refuses floats: store whole seconds as int, others as Decimal text."""
    from decimal import Decimal

    return int(seconds) if float(seconds).is_integer() else Decimal(str(seconds))


def chunk_of(
    header: Mapping[str, Any], shard: int, chunk_no: int, indices: Iterable[int], span: Mapping[str, Any] | None = None
) -> model.Chunk:
    """A message for some of a chunk's items, rebuilt from the source (sweeper re-send, dead letters, redrive).

    An object source's chunk is read again from the range its row records (`span`);
    items whose data changed since come back as bad, and fail with that error.
    """
    if span:
        entries = sources.rebuild(header["source_pin"], span, indices, header["max_message_bytes"])
    else:
        source = sources.source_from_record(header["source"])
        entries = [model.Entry(index, sources.item_at(source, header["batch_id"], index)) for index in sorted(indices)]
    return model.Chunk(
        header["batch_id"],
        shard,
        chunk_no,
        header["task"],
        model.decode_options(header),
        tuple((entry.index, entry.item) for entry in entries if entry.error is None),
        float(header.get("item_seconds", 0)),
        header.get("attempt", 1),
        tuple((entry.index, entry.error) for entry in entries if entry.error is not None),
        None,
        header.get("results"),
    )


def send_unsent(store: BatchStore, header: Mapping[str, Any], unsent: list, settings: Settings) -> None:
    """Send the messages of a group whose rows were written (or restored) by a process that may have died first.

    Then the header's `unsent` list is cleared (fenced: only if it is still this list).
    """
    send_listed(store, header, unsent, settings)
    store.clear_unsent(header["batch_id"], header["attempt"], unsent)


def send_listed(store: BatchStore, header: Mapping[str, Any], unsent: list, settings: Settings) -> None:
    """Send the messages of listed chunks ([shard, chunk]) from the rows still there.

    Built from the rows, so items finished meanwhile are not sent again.
    """
    chunks = []
    for shard, chunk_no in unsent:
        row = store.get_chunk(header["batch_id"], int(shard), int(chunk_no))
        if row is not None and row["pending"]:
            chunks.append(chunk_of(header, int(shard), int(chunk_no), row["pending"], row.get("span")))
    send_chunks(aws.client("sqs"), aws.queue_url(settings.work_queue_name), chunks, settings.max_message_bytes)


def resend_rows(store: BatchStore, header: Mapping[str, Any], rows: Iterable[Mapping[str, Any]], settings: Settings) -> int:
    """Send again the message of each chunk row given (read with `store.chunk_rows`); returns how many.

    For rows whose message may be gone (the sweeper's lost messages). A row whose
    pending set emptied but was never deleted is deleted here instead: there is nothing
    left to send, and it must not keep its batch open.
    """
    sqs, queue_url = aws.client("sqs"), aws.queue_url(settings.work_queue_name)
    sent = 0
    for group in grouped(_rows_to_send(store, header, rows), model.SQS_BATCH_ENTRIES):
        send_chunks(sqs, queue_url, group, settings.max_message_bytes)
        sent += len(group)
    return sent


def _rows_to_send(store: BatchStore, header: Mapping[str, Any], rows: Iterable[Mapping[str, Any]]) -> Iterator[model.Chunk]:
    for row in rows:
        if row["pending"]:
            yield chunk_of(header, row["shard"], row["chunk_no"], row["pending"], row.get("span"))
        else:
            settle = results.settler(header.get("results"), header["batch_id"], header["attempt"], row["shard"], row["chunk_no"])
            store.record(
                header["batch_id"], row["shard"], row["chunk_no"], ItemOutcome(), max_attempts=1, failed_at="", row=row, settle=settle
            )


def grouped(chunks: Iterable[model.Chunk], size: int) -> Iterator[list[model.Chunk]]:
    group: list[model.Chunk] = []
    for chunk in chunks:
        group.append(chunk)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def send_chunks(sqs: Any, queue_url: str, chunks: list[model.Chunk], max_message_bytes: int) -> None:
    """Send each chunk with SendMessageBatch (<= 10 entries, <= 1 MiB), retrying failed entries.

    Every body is checked against the queue's limit first: a chunk over it (one rebuilt
    with an error per item) goes as several messages, never as a request SQS refuses for
    ever (invariant 16).
    """
    send_bodies(sqs, queue_url, [part.body() for chunk in chunks for part in model.fit_to_message(chunk, max_message_bytes)])


def send_bodies(sqs: Any, queue_url: str, bodies: list[str]) -> None:
    """Send messages with SendMessageBatch (<= 10 entries, <= 1 MiB), retrying failed entries."""
    # Ids by position: one call may carry two messages of one chunk (re-sent duplicates).
    entries = [{"Id": str(position), "MessageBody": body} for position, body in enumerate(bodies)]
    for request in _send_requests(entries):
        _send_with_retries(sqs, queue_url, request)


def _send_requests(entries: list[dict[str, str]]) -> Iterator[list[dict[str, str]]]:
    request: list[dict[str, str]] = []
    size = 0
    for entry in entries:
        entry_size = len(entry["MessageBody"].encode())
        if request and (len(request) == model.SQS_BATCH_ENTRIES or size + entry_size > model.SQS_BATCH_BYTES):
            yield request
            request, size = [], 0
        request.append(entry)
        size += entry_size
    if request:
        yield request


def _send_with_retries(sqs: Any, queue_url: str, entries: list[dict[str, str]]) -> None:
    for attempt in range(_MAX_SEND_ROUNDS):
        response = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        failed = response.get("Failed") or []
        if not failed:
            return
        sender_faults = [entry for entry in failed if entry.get("SenderFault")]
        if sender_faults:
            raise RuntimeError(f"SQS rejected messages as malformed: {sender_faults}")
        failed_ids = {entry["Id"] for entry in failed}
        entries = [entry for entry in entries if entry["Id"] in failed_ids]
        time.sleep(random.uniform(0, min(2.0, 0.05 * 2**attempt)))  # full jitter: throttled senders spread out
    raise RuntimeError(f"SendMessageBatch still failing for {len(entries)} messages after {_MAX_SEND_ROUNDS} rounds")
