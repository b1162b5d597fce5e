"""The dead-letter handler: turns messages that exhausted their retries into recorded failures.

A chunk message lands here after `maxReceiveCount` receives. Its still-pending items
move into the chunk's F row and the chunk row is deleted, in one transaction, so the
batch can end (COMPLETED_WITH_FAILURES) and the failures can be listed and redriven
(invariant 7). A message that is no batch's chunk (bad JSON, missing fields, unknown
batch) is kept as a POISON row: never retried forever, never silently dropped.
"""

from __future__ import annotations

from typing import Any, Mapping

from chalicelib import log, model
from chalicelib.config import Settings
from chalicelib.errors import BadMessageError
from chalicelib.store import BatchStore


def record_dead_letter(store: BatchStore, record: Mapping[str, Any], now: str) -> str:
    """Record one dead letter; returns what became of it: 'failed', 'already-recorded' or 'poison'."""
    body, message_id, queue = record.get("body", ""), record["messageId"], record.get("eventSourceARN", "")
    try:
        message = model.parse_message(body)
    except BadMessageError as error:
        return _poison(store, message_id, body, str(error), now, queue)
    if store.get_header(message.batch_id) is None:
        return _poison(store, message_id, body, f"unknown batch {message.batch_id!r}", now, queue)
    receives = (record.get("attributes") or {}).get("ApproximateReceiveCount", "?")
    failed = store.fail_chunk(
        message.batch_id,
        message.shard,
        message.chunk_no,
        reason=f"retries exhausted: dead-lettered after {receives} receives",
        failed_at=now,
    )
    if failed is None:
        return "already-recorded"  # drained meanwhile, or this dead letter was delivered twice
    log.warning("chunk dead-lettered", batch_id=message.batch_id, chunk=message.chunk_no, failed_items=failed)
    return "failed"


def _poison(store: BatchStore, message_id: str, body: str, error: str, now: str, queue: str) -> str:
    log.error("poison message kept", message_id=message_id, error=error)
    store.put_poison(message_id, body, error, now, queue)
    return "poison"


def handle_sqs_event(event: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """The Lambda handler's work: record each dead letter; retry only those that hit an AWS error."""
    store = BatchStore(settings.table_name)
    now = model.iso(model.utc_now())
    failures = []
    for record in event["Records"]:
        try:
            record_dead_letter(store, record, now)
        except Exception:
            log.error("dead letter not recorded; it will be retried", exc_info=True, message_id=record["messageId"])
            failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures}
