"""Redrive: re-run a batch's failed items as a new attempt of the same batch.

The header goes COMPLETED_WITH_FAILURES (attempt n) -> CREATING (attempt n+1); each F row
turns back into a chunk row (one transaction) and its message is sent again, rebuilt
from the source by index; then the batch is sealed and completes as usual, with one new
alert whose `alert_id` ends in `/n+1`. Every step can be repeated, so a redrive that
dies half way is finished by the sweeper.
"""

from __future__ import annotations

from typing import Any, Mapping

from chalicelib import aws, batcher, log, model
from chalicelib.config import Settings
from chalicelib.errors import BatchdrainError
from chalicelib.store import BatchStore


def redrive(batch_id: str, settings: Settings) -> dict[str, Any]:
    """Start a new attempt for the failed items of `batch_id`; returns the sealed header."""
    store = BatchStore(settings.table_name)
    header = store.get_header(batch_id)
    if header is None:
        raise BatchdrainError(f"batch {batch_id!r} not found")
    if header["status"] != model.COMPLETED_WITH_FAILURES:
        raise BatchdrainError(
            f"batch {batch_id!r} is {header['status']}; only a batch that is COMPLETED_WITH_FAILURES can be redriven"
        )
    started = store.begin_redrive(batch_id, header["attempt"], model.iso(model.utc_now()))
    if started is None:
        raise BatchdrainError(f"batch {batch_id!r} changed while starting its redrive; it is being redriven already")
    log.info("redrive started", batch_id=batch_id, attempt=started["attempt"])
    return continue_redrive(store, started, settings)


def continue_redrive(store: BatchStore, header: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """Restore every F row, send its chunk's message, and seal (resumable)."""
    batch_id, shards = header["batch_id"], header["shards"]
    expires_at = int(model.utc_now().timestamp()) + settings.row_ttl_days * 86_400
    sqs, queue_url = aws.client("sqs"), aws.queue_url(settings.work_queue_name)
    open_shards: set[int] = set()
    # Rows restored by an earlier, interrupted run may never have had their message sent.
    for shard in range(shards):
        if batcher.resend_rows(store, header, shard, settings):
            open_shards.add(shard)
    for row in store.failed_rows(batch_id, shards):
        if store.restore_failed(batch_id, row["shard"], row["chunk_no"], row["failed"], expires_at):
            batcher.send_chunks(sqs, queue_url, [batcher.chunk_of(header, row["shard"], row["chunk_no"], row["failed"])])
            open_shards.add(row["shard"])
    sealed_at = model.iso(model.utc_now())
    store.seal(batch_id, open_shards, sealed_at)
    return {**header, "status": model.SEALED, "sealed_at": sealed_at}


def list_failures(batch_id: str, settings: Settings) -> list[dict[str, Any]]:
    """The failed items of a batch: one entry per failed chunk, with indices, sample errors and attempts."""
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
            "attempts": row.get("attempts", 0),
            "reason": row.get("reason", ""),
            "failed_at": row.get("failed_at"),
        }
        for row in store.failed_rows(batch_id, header["shards"])
    ]
