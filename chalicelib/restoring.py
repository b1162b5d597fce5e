"""Restoring: a redrive's failed rows turned back into chunks of the new attempt, then the seal.

F rows of earlier attempts turn back into chunk rows of attempt n+1 in groups, in shard and
chunk order; each group is one transaction that also moves the header's `redrive_cursor`
and lists the group as `unsent` until its messages are sent. Then the batch is sealed on
every shard and completes as usual. Every step is fenced on the attempt and the cursor
(invariant 11), so a redrive (chalicelib.redrive) and the sweeper resuming one that looks
stuck may run this at once: each group is restored once, a resume re-sends only the one
group that may be unsent, nothing is restored after the seal, and each step's work is
bounded (invariant 18).
"""

from __future__ import annotations

import json
import time
from typing import Any, Mapping

from chalicelib import log, model, results, work
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


def start_redrive(store: BatchStore, batch_id: str, settings: Settings) -> dict[str, Any]:
    """COMPLETED_WITH_FAILURES (attempt n, alert out) -> CREATING (attempt n+1); the new attempt's header.

    BatchdrainError says why not: no such batch, not ended with failures, its alert not out
    yet (a publish in flight would stamp the new attempt), the results bucket unwritable,
    or another redrive began first. Nothing is written then. With `settings`, the batch's
    stats count the redrive and how long attempt n ran (its cost goes on: chalicelib.batchcost).
    """
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
    began = model.parse_iso(header.get("redrive_started_at") or header["created_at"])
    ran_ms = round(1000 * (model.parse_iso(header["completed_at"]) - began).total_seconds())
    store.note_stats(batch_id, 0, {"redrives": 1, "earlier_attempts_ms": max(0, ran_ms)}, settings.row_ttl_days)
    return started


def restore_failures(
    store: BatchStore, header: Mapping[str, Any], settings: Settings, until: float | None = None
) -> dict[str, Any]:
    """Restore the remaining F rows group by group, send their messages, and seal (resumable, concurrent-safe).

    With `until` (a time.monotonic() value) it stops between groups once that time has
    passed and returns the header as it is then (CREATING): the sweeper goes on from the
    cursor (an API call must answer within API Gateway's 29 s).
    """
    batch_id, attempt = header["batch_id"], header["attempt"]
    restored = {"restored_chunks": 0, "restore_groups": 0}  # this call's, for the batch's stats (its cost)
    try:
        return _restore(store, batch_id, attempt, header, settings, until, restored)
    finally:
        if restored["restore_groups"]:
            store.note_stats(batch_id, 0, restored, settings.row_ttl_days)


def _restore(
    store: BatchStore, batch_id: str, attempt: int, header: Mapping[str, Any], settings: Settings, until: float | None,
    restored: dict[str, int],
) -> dict[str, Any]:
    while True:
        current = store.get_header(batch_id)
        if current is None or current["status"] != model.CREATING or current["attempt"] != attempt:
            return current or dict(header)  # sealed by another process, or a newer attempt
        if until is not None and time.monotonic() > until:
            return current
        cursor = current.get("redrive_cursor")
        unsent = current.get("unsent")
        if unsent:
            # A group restored by a process that may have died before sending it.
            work.send_unsent(store, current, unsent, settings)
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
            restored["restored_chunks"] += len(group)
            restored["restore_groups"] += 1
            work.send_work([work.chunk_of(current, row["shard"], row["chunk_no"], row["failed"], row.get("span")) for row in group], settings)
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
