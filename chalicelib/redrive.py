"""Redrive: re-run a batch's failed items as a new attempt of the same batch, and list them.

The header goes COMPLETED_WITH_FAILURES (attempt n, alert published) -> CREATING
(attempt n+1), fenced on both, only once the attempt's alert is out; the results bucket
is checked first. Then chalicelib.restoring turns the F rows back into chunks and seals;
the batch completes as usual, with one new alert whose `alert_id` ends in `/n+1`.
"""

from __future__ import annotations

from typing import Any

from chalicelib import restoring
from chalicelib.config import Settings
from chalicelib.errors import BatchdrainError
from chalicelib.store import BatchStore


def redrive(batch_id: str, settings: Settings) -> dict[str, Any]:
    """Start a new attempt for the failed items of `batch_id`; returns the header when this call is done."""
    store = BatchStore(settings.table_name)
    return restoring.restore_failures(store, restoring.start_redrive(store, batch_id, settings), settings)


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
