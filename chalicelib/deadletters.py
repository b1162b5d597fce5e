"""The dead-letter handler: every message that exhausted its receives still ends (invariant 7).

Items count their own attempts (invariant 9), so a message reaches the dead-letter
queue only when its deliveries kept ending without a result: the function crashed,
timed out, or failed before it could record anything. Receives are not attempts, so
the first `ITEM_MAX_ATTEMPTS - 1` times the handler sends the chunk's still-pending
items again in a fresh message and counts a dead-letter round on the chunk row. After
that it fails them for good: they move to the chunk's F row and the batch's failure
count, in one transaction, so the batch can end (COMPLETED_WITH_FAILURES) and the
failures can be listed and redriven. A message that is no batch's chunk (bad JSON,
missing fields, keys over DynamoDB's limits, unknown batch) is kept as a POISON row:
never retried forever, never silently dropped.
"""

from __future__ import annotations

from typing import Any, Mapping

from chalicelib import log, model, results, work
from chalicelib.config import Settings
from chalicelib.errors import BadMessageError
from chalicelib.store import BatchStore, ItemOutcome


def record_dead_letter(store: BatchStore, record: Mapping[str, Any], now: str, settings: Settings) -> str:
    """Handle one dead letter; returns what became of it: 'resent', 'failed', 'already-recorded' or 'poison'."""
    body, message_id, queue = record.get("body", ""), record["messageId"], record.get("eventSourceARN", "")
    try:
        message = model.parse_message(body)
    except BadMessageError as error:
        return _poison(store, message_id, body, str(error), now, queue, settings)
    if store.get_header(message.batch_id) is None:
        return _poison(store, message_id, body, f"unknown batch {message.batch_id!r}", now, queue, settings)
    row = store.get_chunk(message.batch_id, message.shard, message.chunk_no)
    if row is None or row.get("attempt", 1) != message.attempt:
        # Drained meanwhile, this dead letter delivered twice, or one of an earlier attempt
        # (a redrive restored the row): its rounds must not count against the new attempt.
        return "already-recorded"
    receives = (record.get("attributes") or {}).get("ApproximateReceiveCount", "?")
    counted = row.get("dead_letter_id") == message_id  # a redelivery of the dead letter that counted its round
    rounds = int(row.get("dead_letters", 0)) + (0 if counted else 1)
    if row["pending"] and rounds < settings.item_max_attempts:
        if not counted and not store.count_dead_letter(message.batch_id, message.shard, message.chunk_no, row, message_id):
            return "already-recorded"  # a concurrent copy of this dead letter counted the round
        work.send_work([message.rest(row["pending"])], settings)
        log.warning("dead letter sent again", batch_id=message.batch_id, chunk=message.chunk_no, round=rounds)
        return "resent"
    recorded = store.record(
        message.batch_id,
        message.shard,
        message.chunk_no,
        ItemOutcome(
            fail_all=True,
            reason=f"dead-lettered {rounds} times ({receives} receives the last time) without a recorded result",
        ),
        max_attempts=settings.item_max_attempts,
        failed_at=now,
        row=row,
        settle=results.settler(message.results, message.batch_id, message.attempt, message.shard, message.chunk_no),
    )
    if recorded is None:
        return "already-recorded"
    log.warning("chunk dead-lettered", batch_id=message.batch_id, chunk=message.chunk_no, failed_items=len(recorded.failed))
    return "failed"


def _poison(store: BatchStore, message_id: str, body: str, error: str, now: str, queue: str, settings: Settings) -> str:
    log.error("poison message kept", message_id=message_id, error=error)
    # Kept for people to read, then expired by TTL (ROW_TTL_DAYS); the only rows with a TTL.
    expires_at = int(model.parse_iso(now).timestamp()) + settings.row_ttl_days * 86_400
    store.put_poison(message_id, body, error, now, queue, expires_at)
    return "poison"


def handle_sqs_event(event: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """The Lambda handler's work: record each dead letter; retry only those that hit an AWS error.

    Then each batch's stats count its dead letters (`dead_letters`) and this invocation
    (`dead_letter_invocations`), one ADD per batch, after the records: observations for
    its cost (chalicelib.batchcost), never a reason to fail a message.
    """
    store = BatchStore(settings.table_name)
    now = model.iso(model.utc_now())
    failures = []
    letters: dict[str, tuple[int, int]] = {}  # batch -> (slot: the shard of its first dead letter here, count)
    for record in event["Records"]:
        try:
            outcome = record_dead_letter(store, record, now, settings)
        except Exception:
            log.error("dead letter not recorded; it will be retried", exc_info=True, message_id=record["messageId"])
            failures.append({"itemIdentifier": record["messageId"]})
            continue
        if outcome in ("resent", "failed"):  # work done for a batch that exists (a duplicate or a drained chunk: none)
            message = model.parse_message(record.get("body", ""))
            slot, count = letters.get(message.batch_id, (message.shard, 0))
            letters[message.batch_id] = (slot, count + 1)
    for batch_id, (slot, count) in letters.items():
        store.note_stats(batch_id, slot, {"dead_letters": count, "dead_letter_invocations": 1}, settings.row_ttl_days)
    return {"batchItemFailures": failures}
