"""Completion: a sealed batch's emptied shards closed, and the one conditional write that ends it.

For a batch, the emptiness of each open shard is checked with a strongly consistent
`Query Limit=1` (invariant 3), each emptied shard is closed on the header, and when none
is open the one conditional completion write is tried (invariant 4); only its winner
publishes the alert. Every step is idempotent and fenced on the attempt it saw sealed, so
the finalizer (on a stream record) and the sweeper (on a lost one) may both run it, any
number of times, at once.

The completion write also puts the batch's observed item times and its own cost on the
header (`item_seconds_observed`, `cost`: chalicelib.itemstats, chalicelib.batchcost), read
from its stats rows just before, so the alert carries them and a replayed completion,
which never wins the write, changes nothing.
"""

from __future__ import annotations

from typing import Any, Mapping

from chalicelib import alerts, batchcost, itemstats, log, model
from chalicelib.config import Definition, Settings
from chalicelib.store import BatchStore

ALL_SHARDS = None  # a seal: check every open shard of the batch


def check_batch(store: BatchStore, batch_id: str, shards: set[int] | None) -> dict[str, Any] | None:
    """Close the emptied shards of `batch_id`; the header if it is now sealed and fully drained.

    The header is read first: only a SEALED batch is checked (the seal checks again),
    only its still-open shards are queried, and every close is fenced on the attempt
    seen here, because after its seal no row is added to that attempt (invariant 11).
    """
    header = store.get_header(batch_id)
    if header is None or header["status"] != model.SEALED:
        return None
    attempt = header["attempt"]
    if shards is not ALL_SHARDS:
        _note_progress(store, header)
    open_shards = set(header.get("open_shards", set()))
    if not open_shards:
        return header
    for shard in sorted(open_shards if shards is ALL_SHARDS else open_shards & shards):
        if store.shard_has_chunks(batch_id, shard):
            continue
        closed = store.close_shard(batch_id, attempt, shard)
        if closed is None:
            return None  # completed meanwhile, or a new attempt began
        if not closed.get("open_shards"):
            return closed
    return None


# The sweeper only needs to know a batch is alive within its re-send wait (minutes):
# one progress stamp a minute per batch keeps that to a handful of writes.
PROGRESS_EVERY_SECONDS = 60


def _note_progress(store: BatchStore, header: Mapping[str, Any]) -> None:
    now = model.utc_now()
    last = header.get("progress_at")
    if last is None or (now - model.parse_iso(last)).total_seconds() >= PROGRESS_EVERY_SECONDS:
        store.note_progress(header["batch_id"], header["attempt"], model.iso(now))


def complete(
    store: BatchStore, header: Mapping[str, Any], settings: Settings, sample_errors: int = 5
) -> dict[str, Any] | None:
    """The one conditional write that ends a batch; the completed header if this call won.

    Bounded work (invariant 12): the failure total is the header's `failed_items`,
    counted in the same transactions that failed the items; only the few sample errors
    are read. The winner also takes the notification lease in the same write, so no one
    else publishes while it does. A batch with `cancelled_at` ends CANCELLED; the write
    is fenced on that stamp as read, and a cancel that lands after the read (but before
    the write) is seen on a second read, so the batch still ends CANCELLED, once.
    """
    won = _complete_once(store, header, settings, sample_errors)
    if won is not None or header.get("cancelled_at"):
        return won
    again = store.get_header(header["batch_id"])
    cancelled_meanwhile = (
        again is not None
        and again.get("cancelled_at")
        and again["status"] == model.SEALED
        and again["attempt"] == header["attempt"]
        and not again.get("open_shards")
    )
    return _complete_once(store, again, settings, sample_errors) if cancelled_meanwhile else None


def _complete_once(store: BatchStore, header: Mapping[str, Any], settings: Settings, sample_errors: int) -> dict[str, Any] | None:
    failed = int(header.get("failed_items", 0))
    cancelled = bool(header.get("cancelled_at"))
    samples = store.failed_samples(header["batch_id"], header["shards"], sample_errors) if failed else []
    now = model.utc_now()
    if cancelled:
        status = model.CANCELLED
    else:
        status = model.COMPLETED_WITH_FAILURES if failed else model.COMPLETED
    fields = {
        "completed_at": model.iso(now),
        "succeeded": header["total_items"] - failed,
        "failed": failed,
        "sample_errors": samples,
        "notify_lease_until": int(now.timestamp()) + settings.notify_lease_seconds,
    }
    fields.update(observed(store, {**header, **fields, "status": status}))
    return store.complete(header["batch_id"], header["attempt"], status, fields, cancelled=cancelled)


def observed(store: BatchStore, header: Mapping[str, Any], now: str | None = None) -> dict[str, Any]:
    """The batch's item times and cost so far (from its stats rows), ready for the header: `{}` if unreadable.

    Observations, never decisions: a stats Query that fails leaves them out, and the batch
    completes all the same.
    """
    try:
        stats = store.batch_stats(header["batch_id"])
        figures = {"item_seconds_observed": itemstats.summary(stats), "cost": batchcost.cost_now(header, stats, now)}
    except Exception:
        log.warning("item times and cost left out: the batch's stats could not be read", exc_info=True, batch_id=header["batch_id"])
        return {}
    return figures


def finish(
    store: BatchStore, drained: Mapping[str, Any], settings: Settings, definitions: Mapping[str, Definition]
) -> dict[str, Any] | None:
    """Complete a drained batch and, if this call won, publish its alert; the completed header or None."""
    definition = definitions.get(drained.get("definition", ""))
    header = complete(store, drained, settings, definition.alert.sample_errors if definition else 5)
    if header is not None:
        alerts.notify(store, header, settings, definitions)
        _keep_item_times(store, header)
    return header


def _keep_item_times(store: BatchStore, header: Mapping[str, Any]) -> None:
    """The completed batch's item times, kept for its definition's next batch (chalicelib.sizing sizes K by them).

    After the alert, and never in its way: a lost write leaves the next batch sized by an older run, or by
    the declared `item_seconds`.
    """
    times = header.get("item_seconds_observed") or {}
    if not times.get("count") or times.get("p99") is None or not header.get("definition"):
        return
    try:
        store.note_observed(header["definition"], {"batch_id": header["batch_id"], **times})
    except Exception:
        log.warning("item times not kept for the next batch", exc_info=True, batch_id=header["batch_id"])
