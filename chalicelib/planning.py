"""Planning: a batch's source cut into segments, their rows and messages, the seal once all are expanded.

Every source is planned the same way, in one short step when the batch is created: the
source is read once (HEAD, or the inventory manifest; nothing for generated items) and
cut into segments (index ranges, byte ranges of an object, files of an inventory, the
pages of a listing). Each segment is a row (`sk = P#<n>`, written only until the batch
is `planned`) and a message on the planning queue; planners (chalicelib.planner) expand
them in parallel. The batch is sealed when the last segment row of its attempt is gone
(the same drain-and-detect rule as chunks, never a counter), and a source that cannot
be read ends the batch FAILED with one alert saying why. The sweeper resumes a batch
whose planning stalled from here too; every step is safe to repeat and to race.
"""

from __future__ import annotations

from typing import Any, Mapping

from chalicelib import alerts, log, model, results, sources, work
from chalicelib.config import Settings
from chalicelib.store import BatchStore

# A planner's hold on its segment: longer than any planner invocation (Lambda's 900 s).
LEASE_SECONDS = 960


def plan_batch(store: BatchStore, header: dict[str, Any], source_uri: str, settings: Settings) -> dict[str, Any]:
    """Plan a new object-source batch: header, segment rows, their messages; FAILED with an alert if unreadable.

    `header` is the batcher's new header (not yet written). Returns the header as stored.
    """
    source = sources.source_from_record(header["source"])
    try:
        planned = sources.plan(source, source_uri, settings.segment_bytes, seed=header["batch_id"])
        if header.get("results"):
            results.check_writable(header["results"], header["batch_id"], header["attempt"])
    except (sources.SourceError, sources.SourceChangedError, results.ResultsUnwritable) as error:
        return _failed_at_start(store, header, str(error), settings)
    header = {
        **header,
        "source_pin": planned.pin,
        "segments": len(planned.segments),
        "shards": model.shards_for_items(planned.estimated_items, header["items_per_message"], settings.shard_chunk_target),
        "total_items": 0,
        "total_chunks": 0,
        "planned": False,
    }
    if not store.create_header(header):
        log.info("batch exists; duplicate schedule delivery ignored", batch_id=header["batch_id"])
        return store.get_header(header["batch_id"]) or header
    return _write_segments(store, header, planned.segments, settings)


def _failed_at_start(store: BatchStore, header: dict[str, Any], reason: str, settings: Settings) -> dict[str, Any]:
    """A new batch that cannot start: its header written FAILED, with one alert; the header as stored."""
    now = model.utc_now()
    failed = {
        **header,
        "reason": reason,
        "total_items": 0,
        "total_chunks": 0,
        "completed_at": model.iso(now),
        "notify_lease_until": int(now.timestamp()) + settings.notify_lease_seconds,
    }
    if not store.create_header(failed, status=model.FAILED):
        return store.get_header(header["batch_id"]) or failed
    log.error("batch failed before it started", batch_id=header["batch_id"], reason=reason)
    stored = store.get_header(header["batch_id"]) or {**failed, "status": model.FAILED}
    alerts.notify(store, stored, settings)
    return stored


# -- open batches: items added over several calls, then sealed ---------------------------------

# The chunk rows of an open batch spread over shards sized for this many items (its size is
# unknown when it is created): 100 calls of the API's 1,000 items.
OPEN_BATCH_ITEMS = 100_000
# An open batch nobody seals is sealed by the sweeper after this long, with the items it has (every batch ends).
OPEN_BATCH_SECONDS = 24 * 3600


def open_batch(store: BatchStore, header: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Create an open batch: CREATING, no segment yet, `is_open`; items calls add segments, a seal plans it.

    `header` is the batcher's new header, its source the batch's inbox prefix (one object
    per items call). Returns the header as stored (the existing one on a retry).
    """
    if header.get("results"):
        try:
            results.check_writable(header["results"], header["batch_id"], header["attempt"])
        except results.ResultsUnwritable as error:
            return _failed_at_start(store, header, str(error), settings)
    header = {
        **header,
        "is_open": True,
        "source_pin": {"format": "jsonl", "uri": header["source"]["uri"]},
        "segments": 0,
        "shards": model.shards_for_items(OPEN_BATCH_ITEMS, header["items_per_message"], settings.shard_chunk_target),
        "total_items": 0,
        "total_chunks": 0,
        "planned": False,
    }
    if not store.create_header(header):
        return store.get_header(header["batch_id"]) or header
    log.info("open batch created", batch_id=header["batch_id"])
    return {**header, "status": model.CREATING}


def add_object_segment(
    store: BatchStore, header: Mapping[str, Any], obj: Mapping[str, Any], marker: dict[str, Any], settings: Settings
) -> int | None:
    """Add one inbox object to an open batch as a segment row, with the call's `marker`, and send its planning message.

    The row is written through `put_segments`, whose transaction checks the header is
    still CREATING at its attempt and not `planned`: after the seal nothing is added
    (invariant 2). Returns the segment's number, or None if the batch no longer takes
    items or the marker exists (a concurrent copy of the call: the caller reads it).
    """
    batch_id, attempt = header["batch_id"], header["attempt"]
    number = store.next_segment(batch_id, attempt)
    if number is None:
        return None
    spec = {**obj, "kind": "lines", "file": number, "gzip": False, "pos": 0, "end": None}
    now = int(model.utc_now().timestamp())
    if not store.put_segments(batch_id, attempt, {number: spec}, now, marker={**marker, "segment": number}):
        return None
    work.send_segments(batch_id, attempt, [number], settings)
    log.info("segment added to an open batch", batch_id=batch_id, segment=number)
    return number


def send_if_waiting(store: BatchStore, header: Mapping[str, Any], segment: int, settings: Settings) -> None:
    """Send a segment's planning message again while its row waits (a repeat is harmless: a planner leases it)."""
    if store.has_segment(header["batch_id"], segment):
        work.send_segments(header["batch_id"], header["attempt"], [segment], settings)


def seal_open(store: BatchStore, header: Mapping[str, Any]) -> None:
    """No more items for an open batch: `planned`, as a batcher sets it after its last segment; sealed once they drain."""
    batch_id, attempt = header["batch_id"], header["attempt"]
    if header["status"] == model.CREATING and not header.get("planned"):
        store.mark_planned(batch_id, attempt)
    # The segments may all be done already: then no REMOVE is left to make the finalizer seal it.
    seal_when_planned(store, batch_id, attempt)


def _write_segments(store: BatchStore, header: dict[str, Any], segments: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    batch_id, attempt = header["batch_id"], header["attempt"]
    now = int(model.utc_now().timestamp())
    if not store.put_segments(batch_id, attempt, dict(enumerate(segments)), now) or not store.mark_planned(batch_id, attempt):
        # Planned by a rival (a batcher and a sweep, or two sweeps): it sends the messages.
        return store.get_header(batch_id) or header
    work.send_segments(batch_id, attempt, range(len(segments)), settings)
    log.info("batch planned", batch_id=batch_id, segments=len(segments), shards=header["shards"])
    return {**header, "status": model.CREATING, "planned": True}


# Planning messages one sweep may send again for one batch: a stalled batch with thousands of
# segments is repaired over several sweeps, and never keeps the others from being swept.
RESEND_SEGMENTS_PER_SWEEP = 100


def resume(store: BatchStore, header: dict[str, Any], settings: Settings) -> None:
    """The sweeper's repair of a stalled CREATING batch: finish planning, re-send lost segments, seal.

    Safe to repeat and to race with planners and other sweeps: segment rows are written
    only until the batch is planned, a segment under a live lease is left alone, and a
    re-send is claimed on the segment's row (see `_lost_segments`).
    """
    batch_id, attempt = header["batch_id"], header["attempt"]
    if header.get("is_open") and not header.get("planned"):
        opened = (model.utc_now() - model.parse_iso(header["created_at"])).total_seconds()
        if opened > OPEN_BATCH_SECONDS:
            # Every batch ends (invariant 7): one nobody sealed is sealed with the items it was given.
            log.warning("open batch sealed by the sweeper: no seal within OPEN_BATCH_SECONDS", batch_id=batch_id, seconds=int(opened))
            seal_open(store, header)
            return
        # Still taking items: there is nothing to plan again; only lost planning messages are sent.
        lost, _ = _lost_segments(store, batch_id, settings)
        if lost:
            work.send_segments(batch_id, attempt, lost, settings)
            log.warning("re-sent planning messages of an open batch", batch_id=batch_id, segments=len(lost))
        return
    if not header.get("planned"):
        pin = header["source_pin"]
        try:
            source = sources.source_from_record(header["source"])
            planned = sources.plan(source, pin.get("uri", ""), settings.segment_bytes, seed=batch_id)
        except (sources.SourceError, sources.SourceChangedError) as error:
            fail(store, header, str(error), settings)
            return
        if planned.pin != pin:
            fail(store, header, f"{pin['uri']} changed while the batch was being planned", settings)
            return
        _write_segments(store, header, planned.segments, settings)
        return
    lost, left = _lost_segments(store, batch_id, settings)
    if lost:
        work.send_segments(batch_id, attempt, lost, settings)
        log.warning("re-sent planning messages of a stalled batch", batch_id=batch_id, segments=len(lost))
    elif not left:
        seal_when_planned(store, batch_id, attempt)


def _lost_segments(store: BatchStore, batch_id: str, settings: Settings) -> tuple[list[int], bool]:
    """Segments whose planning message looks lost, each claimed for one re-send; and whether any row is left.

    A segment is idle when no planner holds it; it is re-sent only once nothing happened
    to it (a message sent, a planner taking it) for STUCK_CREATING_SECONDS, doubling after
    each re-send: a message that is only waiting in a deep queue gets a few duplicates at
    most, so a busy planning queue never feeds itself.
    """
    now = int(model.utc_now().timestamp())
    lost: list[int] = []
    left = False
    for row in store.segment_rows(batch_id):
        left = True
        resends = int(row.get("resends", 0))
        leased_until = int(row.get("lease_until", 0))
        last_seen = max(int(row.get("sent_at", 0)), leased_until - LEASE_SECONDS)
        if leased_until >= now or now - last_seen <= settings.stuck_creating_seconds * 2**resends:
            continue
        if store.claim_resend(batch_id, row["segment"], resends, now):
            lost.append(row["segment"])
            if len(lost) == RESEND_SEGMENTS_PER_SWEEP:
                break
    return lost, left


def seal_when_planned(store: BatchStore, batch_id: str, attempt: int) -> bool:
    """Seal attempt `attempt` of a CREATING batch once its last segment row is gone; True if this call sealed it.

    `attempt` is what the caller knows for sure (the attempt of the segment row whose
    REMOVE it saw): a record replayed after a redrive began names an earlier attempt and
    seals nothing (invariant 13).
    """
    header = store.get_header(batch_id)
    if header is None or header["status"] != model.CREATING or header["attempt"] != attempt or not header.get("planned"):
        return False
    if store.has_segments(batch_id):
        return False
    # Every shard, always: chunks spread over all of them, and an empty one is closed by the
    # seal's own check. (Deciding from `total_chunks` would trust a header read before the
    # Query, which a segment finishing in between makes stale.)
    sealed = store.seal(batch_id, attempt, range(header["shards"]), model.iso(model.utc_now()))
    if sealed:
        log.info("batch sealed", batch_id=batch_id, items=header["total_items"], chunks=header["total_chunks"], segments=header["segments"])
    return sealed


def fail(store: BatchStore, header: Mapping[str, Any], reason: str, settings: Settings) -> None:
    """End a CREATING batch as FAILED (its source vanished or changed), alert once, drop its segment rows."""
    now = model.utc_now()
    failed = store.fail_batch(
        header["batch_id"], header["attempt"], reason, model.iso(now), int(now.timestamp()) + settings.notify_lease_seconds
    )
    if failed is None:
        return  # already failed, sealed or moved on
    log.error("batch failed: its source cannot be read", batch_id=header["batch_id"], reason=reason)
    for row in store.segment_rows(header["batch_id"]):
        store.delete_segment(header["batch_id"], row["segment"])
    alerts.notify(store, failed, settings)
