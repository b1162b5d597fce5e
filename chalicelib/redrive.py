"""Redrive: re-run a batch's failed items as a new attempt of the same batch.

The header goes COMPLETED_WITH_FAILURES (attempt n, alert published) -> CREATING
(attempt n+1). F rows of earlier attempts turn back into chunk rows in groups, in shard
and chunk order; each group is one transaction that also moves the header's
`redrive_cursor` and lists the group as `unsent` until its messages are sent.
Then the batch is sealed on every shard and completes as usual, with one new alert
whose `alert_id` ends in `/n+1`.

Every step is fenced on the attempt and the cursor (invariant 11), so the sweeper may
resume a redrive that looks stuck while the first process still runs: each group is
restored once, a resume re-sends only the one group that may be unsent, nothing is
restored after the seal, and the work per step is bounded (no pass over every row).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from chalicelib import aws, batcher, log, model, results
from chalicelib.config import Settings
from chalicelib.errors import BatchdrainError
from chalicelib.store import BatchStore

# F rows per transaction: one header update plus a Put and a Delete per row, within
# TransactWriteItems' 100 actions...
REDRIVE_GROUP = 24
# ...and within its 4 MB: each row's indices go in twice (the restored row, the delete's
# condition), so a group closes at this many bytes of them (K=10,000 and long object indices
# make an F row over 150 KB).
REDRIVE_GROUP_BYTES = 3 * 1024 * 1024


def redrive(batch_id: str, settings: Settings) -> dict[str, Any]:
    """Start a new attempt for the failed items of `batch_id`; returns the header when this call is done."""
    store = BatchStore(settings.table_name)
    header = store.get_header(batch_id)
    if header is None:
        raise BatchdrainError(f"batch {batch_id!r} not found")
    if header["status"] != model.COMPLETED_WITH_FAILURES:
        raise BatchdrainError(
            f"batch {batch_id!r} is {header['status']}; only a batch that is COMPLETED_WITH_FAILURES can be redriven"
        )
    if not header.get("notified_at"):
        raise BatchdrainError(f"batch {batch_id!r}: its alert is not published yet; redrive it once it is")
    if header.get("results"):
        try:
            results.check_writable(header["results"], batch_id, header["attempt"] + 1)
        except results.ResultsUnwritable as error:
            raise BatchdrainError(f"batch {batch_id!r} not redriven: {error}") from None
    started = store.begin_redrive(batch_id, header["attempt"], model.iso(model.utc_now()))
    if started is None:
        raise BatchdrainError(f"batch {batch_id!r} changed while starting its redrive; it is being redriven already")
    log.info("redrive started", batch_id=batch_id, attempt=started["attempt"])
    return continue_redrive(store, started, settings)


def continue_redrive(store: BatchStore, header: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """Restore the remaining F rows group by group, send their messages, and seal (resumable, concurrent-safe)."""
    batch_id, attempt = header["batch_id"], header["attempt"]
    sqs, queue_url = aws.client("sqs"), aws.queue_url(settings.work_queue_name)
    while True:
        current = store.get_header(batch_id)
        if current is None or current["status"] != model.CREATING or current["attempt"] != attempt:
            return current or dict(header)  # sealed by another process, or a newer attempt
        cursor = current.get("redrive_cursor")
        unsent = current.get("unsent")
        if unsent:
            # A group restored by a process that may have died before sending it.
            batcher.send_unsent(store, current, unsent, settings)
            continue
        group = list(_next_group(store, current, cursor))
        if not group:
            sealed_at = model.iso(model.utc_now())
            # Every shard: an object source's chunks are spread over all of them (empty ones close at once).
            if store.seal(batch_id, attempt, range(current["shards"]), sealed_at):
                log.info("redrive sealed", batch_id=batch_id, attempt=attempt)
                return {**current, "status": model.SEALED, "sealed_at": sealed_at}
            continue
        next_cursor = _cursor(group[-1]["shard"], group[-1]["chunk_no"])
        if store.restore_failed(batch_id, attempt, group, cursor, next_cursor):
            chunks = [batcher.chunk_of(current, row["shard"], row["chunk_no"], row["failed"], row.get("span")) for row in group]
            batcher.send_chunks(sqs, queue_url, chunks, settings.max_message_bytes)
            store.clear_unsent(batch_id, attempt, [[row["shard"], row["chunk_no"]] for row in group])


def _cursor(shard: int, chunk_no: int) -> str:
    """The last restored F row: its shard and chunk (compared for equality only)."""
    return f"{shard:03d}:{chunk_no:08d}"


def _next_group(store: BatchStore, header: Mapping[str, Any], cursor: str | None) -> list[dict[str, Any]]:
    """F rows of earlier attempts after `cursor`, in (shard, chunk) order: up to REDRIVE_GROUP, and REDRIVE_GROUP_BYTES."""
    shard, after = (int(part) for part in cursor.split(":")) if cursor else (0, -1)
    group: list[dict[str, Any]] = []
    size = 0
    for current_shard in range(shard, header["shards"]):
        for row in store.failed_rows_after(
            header["batch_id"], current_shard, after if current_shard == shard else -1, REDRIVE_GROUP - len(group), header["attempt"]
        ):
            size += restore_bytes(row)
            if group and size > REDRIVE_GROUP_BYTES:
                return group
            group.append(row)
        if len(group) == REDRIVE_GROUP:
            return group
    return group


def restore_bytes(row: Mapping[str, Any]) -> int:
    """An upper bound of what restoring an F row adds to its transaction (a number is stored in fewer bytes than its digits)."""
    indices = sum(len(str(index)) + 1 for index in row["failed"])
    return 2 * indices + len(json.dumps(row.get("span") or {})) + 1024


def list_failures(batch_id: str, settings: Settings) -> list[dict[str, Any]]:
    """The failed items of a batch: one entry per failed chunk, with indices, sample errors and the attempt they failed in."""
    store = BatchStore(settings.table_name)
    header = store.get_header(batch_id)
    if header is None:
        raise BatchdrainError(f"batch {batch_id!r} not found")
    return [
        {
            "chunk": row["chunk_no"],
            "shard": row["shard"],
            "items": sorted(row["failed"]),
            "errors": {int(index): text for index, text in row.get("errors", {}).items()},
            "attempt": row.get("attempt", 1),
            "reason": row.get("reason", ""),
            "failed_at": row.get("failed_at"),
        }
        for row in store.failed_rows(batch_id, header["shards"])
    ]
