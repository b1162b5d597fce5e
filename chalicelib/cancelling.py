"""Cancelling: a cancelled batch's chunk rows failed with reason "cancelled", a page at a time, until a deadline.

The API's cancel (chalicelib.api) stamps `cancelled_at` on the header, then calls this
for up to ~20 s; the sweeper calls it for a page per cancelled batch per sweep, so rows a
planner wrote after the API call looked (or that its deadline left) are cancelled too.

Each row goes through the same fenced record the dead-letter handler's last resort uses
(`BatchStore.record` with `fail_all`): its pending items move to the chunk's F row and
the header's `failed_items` in one transaction conditioned on the pending set read, so a
processor recording the same chunk at the same time and the cancel never both take an
item (invariants 5, 10, 12). The row is gone after, so the chunk's later work messages
find no row and run nothing (invariant 1). Items whose result line is already in the
chunk's results object count as succeeded (chalicelib.results.settler).
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Mapping

from chalicelib import model, results
from chalicelib.config import Settings
from chalicelib.store import BatchStore, ItemOutcome

# Chunk rows read per Query.
CANCEL_PAGE_ROWS = 100


def _shards(header: Mapping[str, Any]) -> Iterable[int]:
    """Where the batch's chunk rows can be: a sealed batch's open shards (a closed one never refills), else every shard."""
    if header["status"] == model.SEALED:
        return sorted(int(shard) for shard in header.get("open_shards", ()))
    return range(int(header.get("shards", 0)))


def cancel_rows(
    store: BatchStore,
    header: Mapping[str, Any],
    settings: Settings,
    *,
    until: float | None = None,
    max_rows: int | None = None,
) -> int:
    """Fail the pending items of the batch's chunk rows (reason "cancelled"), shard by shard, a page at a time.

    The last rows first: processors take a shard's chunks roughly in order, so the rows at
    its end are the ones whose items have not started, and cancelling from there stops the
    most work soonest. Stops when time.monotonic() reaches `until` or after `max_rows`
    rows; returns how many rows it cancelled. Only rows of the header's attempt are
    touched. `header` must carry `cancelled_at` (the caller stamped it, or read it stamped).
    """
    batch_id, attempt = header["batch_id"], int(header["attempt"])
    now = model.iso(model.utc_now())
    seen = 0
    cancelled = 0
    for shard in _shards(header):
        below: str | None = None  # the key of the last row handled: the next page is below it
        while True:
            if until is not None and time.monotonic() >= until:
                return cancelled
            limit = CANCEL_PAGE_ROWS if max_rows is None else min(CANCEL_PAGE_ROWS, max_rows - seen)
            if limit <= 0:
                return cancelled
            rows = store.last_chunk_rows(batch_id, shard, limit, below)
            for row in rows:
                seen += 1
                below = row["sk"]
                if int(row.get("attempt", 1)) != attempt:
                    continue
                recorded = store.record(
                    batch_id,
                    shard,
                    row["chunk_no"],
                    ItemOutcome(fail_all=True, reason=model.CANCELLED_REASON),
                    max_attempts=settings.item_max_attempts,
                    failed_at=now,
                    row=row,
                    settle=results.settler(header.get("results"), batch_id, attempt, shard, row["chunk_no"]),
                )
                if recorded is not None:
                    cancelled += 1
            if len(rows) < limit:
                break
    return cancelled
