"""Sending work: every message batchdrain puts on its queues is built and sent here.

Producers are the planners (a segment's chunks), the processor (items an invocation had
no time to start), the dead-letter handler (a chunk's pending items again), a redrive
(restored chunks) and the sweeper (messages that look lost); the planning messages of a
batch's segments go out here too. Every body is checked against the queue's limit before
it is sent (invariant 18); SendMessageBatch's failed entries are retried with full
jitter, bounded. A message for rows already written is built from those rows (or rebuilt
from the source at the range a row records), never from memory: a resend sends only
what is still pending.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any, Iterable, Iterator, Mapping

from chalicelib import aws, model, results, sources
from chalicelib.config import Settings
from chalicelib.store import BatchStore, ItemOutcome

_MAX_SEND_ROUNDS = 8


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


def send_work(chunks: list[model.Chunk], settings: Settings) -> None:
    """Send chunks to the work queue (the one call every producer of work messages makes)."""
    send_chunks(aws.client("sqs"), aws.queue_url(settings.work_queue_name), chunks, settings.max_message_bytes)


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
    send_work(chunks, settings)


def resend_rows(store: BatchStore, header: Mapping[str, Any], rows: Iterable[Mapping[str, Any]], settings: Settings) -> int:
    """Send again the message of each chunk row given (read with `store.chunk_rows`); returns how many.

    For rows whose message may be gone (the sweeper's lost messages). A row whose
    pending set emptied but was never deleted is deleted here instead: there is nothing
    left to send, and it must not keep its batch open.
    """
    sent = 0
    for group in grouped(_rows_to_send(store, header, rows), model.SQS_BATCH_ENTRIES):
        send_work(group, settings)
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


def send_segments(batch_id: str, attempt: int, segments: Any, settings: Settings) -> None:
    """One planning message per segment (SendMessageBatch, failed entries retried)."""
    bodies = [json.dumps({"v": 1, "batch_id": batch_id, "segment": n, "attempt": attempt}) for n in segments]
    send_bodies(aws.client("sqs"), aws.queue_url(settings.planning_queue_name), bodies)


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
