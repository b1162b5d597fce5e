"""The planner: object sources, fanned out so any size is written in parallel.

A scheduled run of an object source is planned by the batcher in one short step: the
source is read once (HEAD, or the inventory manifest) and cut into segments (byte
ranges of an object, files of an inventory, the pages of a listing). Each segment is a
row (`sk = P#<n>`) and a message on the planning queue. A planner takes one segment
under a lease, writes its chunk rows and messages group by group from the segment's
checkpoint (the same order as the batcher: rows, checkpoint listing the group unsent,
messages, clear), and when the segment is exhausted deletes its row and adds its totals
to the header in one transaction. The finalizer seals the batch when it sees the last
segment row go (the same drain-and-detect rule as chunks, never a counter).

A source that cannot be read at all ends the batch as FAILED with one alert saying why.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Iterator, Mapping

from chalicelib import aws, batcher, log, model, results, sources
from chalicelib.config import Settings
from chalicelib.errors import BadMessageError
from chalicelib.store import BATCH_WRITE_ROWS, BatchStore

# A planner stops this long before its Lambda timeout: one more group must fit.
MARGIN_MS = 60_000
# A planner's hold on its segment: longer than any planner invocation (Lambda's 900 s).
LEASE_SECONDS = 960
# Chunks per checkpoint: 10 BatchWriteItem calls. The segment rows share the header's
# partition, so with PLANNER_MAX_CONCURRENCY 10 planners at ~60 groups of 25 a second,
# a checkpoint per 25 rows would put ~1,200 writes/s on it; per 250, ~120.
PLAN_GROUP_CHUNKS = 10 * BATCH_WRITE_ROWS
# ...and at most this many bytes of messages, held until they are sent (256 MB functions).
PLAN_GROUP_BYTES = 8 * 1024 * 1024


def start(store: BatchStore, header: dict[str, Any], source_uri: str, settings: Settings) -> dict[str, Any]:
    """Plan a new object-source batch: header, segment rows, their messages; FAILED with an alert if unreadable.

    `header` is the batcher's new header (not yet written). Returns the header as stored.
    """
    from chalicelib import finalizer  # the FAILED alert goes out the one way every alert does

    source = sources.source_from_record(header["source"])
    try:
        planned = sources.plan(source, source_uri, settings.segment_bytes, seed=header["batch_id"])
        if header.get("results"):
            results.check_writable(header["results"], header["batch_id"], header["attempt"])
    except (sources.SourceError, sources.SourceChangedError, results.ResultsUnwritable) as error:
        now = model.utc_now()
        failed = {
            **header,
            "reason": str(error),
            "total_items": 0,
            "total_chunks": 0,
            "completed_at": model.iso(now),
            "notify_lease_until": int(now.timestamp()) + settings.notify_lease_seconds,
        }
        if not store.create_header(failed, status=model.FAILED):
            return store.get_header(header["batch_id"]) or failed
        log.error("batch failed before it started", batch_id=header["batch_id"], reason=str(error))
        stored = store.get_header(header["batch_id"]) or {**failed, "status": model.FAILED}
        finalizer.notify(store, stored, settings)
        return stored
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


def _write_segments(store: BatchStore, header: dict[str, Any], segments: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    batch_id, attempt = header["batch_id"], header["attempt"]
    now = int(model.utc_now().timestamp())
    if not store.put_segments(batch_id, attempt, dict(enumerate(segments)), now) or not store.mark_planned(batch_id, attempt):
        # Planned by a rival (a batcher and a sweep, or two sweeps): it sends the messages.
        return store.get_header(batch_id) or header
    send_segments(batch_id, attempt, range(len(segments)), settings)
    log.info("batch planned", batch_id=batch_id, segments=len(segments), shards=header["shards"])
    return {**header, "status": model.CREATING, "planned": True}


def send_segments(batch_id: str, attempt: int, segments: Any, settings: Settings) -> None:
    """One planning message per segment (SendMessageBatch, failed entries retried)."""
    bodies = [json.dumps({"v": 1, "batch_id": batch_id, "segment": n, "attempt": attempt}) for n in segments]
    batcher.send_bodies(aws.client("sqs"), aws.queue_url(settings.planning_queue_name), bodies)


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
        send_segments(batch_id, attempt, lost, settings)
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
    from chalicelib import finalizer

    now = model.utc_now()
    failed = store.fail_batch(
        header["batch_id"], header["attempt"], reason, model.iso(now), int(now.timestamp()) + settings.notify_lease_seconds
    )
    if failed is None:
        return  # already failed, sealed or moved on
    log.error("batch failed: its source cannot be read", batch_id=header["batch_id"], reason=reason)
    for row in store.segment_rows(header["batch_id"]):
        store.delete_segment(header["batch_id"], row["segment"])
    finalizer.notify(store, failed, settings)


# -- expanding one segment -------------------------------------------------------------


def parse_planning_message(body: str) -> tuple[str, int, int]:
    try:
        data = json.loads(body)
    except ValueError as error:
        raise BadMessageError(f"planning message is not JSON: {error}") from None
    valid = (
        isinstance(data, dict)
        and data.get("v") == 1
        and isinstance(data.get("batch_id"), str)
        and type(data.get("segment")) is int
        and type(data.get("attempt")) is int
    )
    if not valid:
        raise BadMessageError(f"planning message must be {{v: 1, batch_id, segment, attempt}}, got {body[:200]!r}")
    return data["batch_id"], data["segment"], data["attempt"]


def expand(store: BatchStore, batch_id: str, segment: int, attempt: int, settings: Settings, deadline: Any = None) -> str:
    """Write one segment's chunk rows and messages from its checkpoint; returns what happened (for logs and tests)."""
    header = store.get_header(batch_id)
    if header is None or header["status"] != model.CREATING or header["attempt"] != attempt:
        return "not creating"
    owner = uuid.uuid4().hex
    now = int(model.utc_now().timestamp())
    row = store.claim_segment(batch_id, segment, owner, now, now + LEASE_SECONDS)
    if row is None:
        return "taken or done"
    try:
        return _write_segment(store, header, segment, row, owner, settings, deadline)
    except (sources.SourceError, sources.SourceChangedError) as error:
        fail(store, header, str(error), settings)
        return "failed"
    except Exception:
        # Throttled past every retry, say: give the segment back so a retry can take it now.
        store.release_segment(batch_id, segment, owner, now)
        raise


def _write_segment(
    store: BatchStore,
    header: Mapping[str, Any],
    segment: int,
    row: Mapping[str, Any],
    owner: str,
    settings: Settings,
    deadline: Any,
) -> str:
    """The held segment's groups, each: rows, checkpoint (listing them unsent), messages, clear; then finish."""
    batch_id, attempt = header["batch_id"], header["attempt"]
    if row.get("unsent"):
        batcher.send_listed(store, header, row["unsent"], settings)
        store.clear_segment_unsent(batch_id, segment, owner)
    spec = dict(row["spec"])
    if "pos" in row and row.get("chunks"):
        spec.update(pos=row["pos"], next_index=row.get("next_index", 0), aligned=True)
    chunks_done, items_done = int(row.get("chunks", 0)), int(row.get("items", 0))
    for group in _groups(_chunks(header, segment, spec, chunks_done, settings)):
        if chunks_done + len(group) > model.SEGMENT_CHUNKS:  # its chunk numbers would reach the next segment's
            fail(store, header, f"segment {segment} holds over {model.SEGMENT_CHUNKS:,} chunks (a gzip object is one segment): split the object or raise items_per_message", settings)
            return "failed"
        store.put_chunks(group, attempt)
        chunks_done += len(group)
        items_done += sum(len(chunk.indices) for chunk in group)
        progress = {**_resume_at(group[-1]), "chunks": chunks_done, "items": items_done}
        unsent = [[chunk.shard, chunk.chunk_no] for chunk in group]
        if not store.checkpoint_segment(batch_id, segment, owner, progress, unsent):
            return "lease lost"
        batcher.send_chunks(aws.client("sqs"), aws.queue_url(settings.work_queue_name), group, settings.max_message_bytes)
        store.clear_segment_unsent(batch_id, segment, owner)
        if deadline is not None and deadline.expired():
            store.release_segment(batch_id, segment, owner, int(model.utc_now().timestamp()))
            send_segments(batch_id, attempt, [segment], settings)
            return "continued"
    if not store.finish_segment(batch_id, attempt, segment, owner, chunks_done, items_done, model.iso(model.utc_now())):
        return "lease lost"
    return "finished"


def _groups(chunks: Iterator[model.Chunk]) -> Iterator[list[model.Chunk]]:
    """Groups of at most PLAN_GROUP_CHUNKS chunks and about PLAN_GROUP_BYTES of message bodies."""
    group: list[model.Chunk] = []
    size = 0
    for chunk in chunks:
        group.append(chunk)
        size += chunk.size
        if len(group) == PLAN_GROUP_CHUNKS or size >= PLAN_GROUP_BYTES:
            yield group
            group, size = [], 0
    if group:
        yield group


def _resume_at(chunk: model.Chunk) -> dict[str, Any]:
    """Where the segment goes on after this chunk: its span's end, or the next generated index."""
    if chunk.span is None:
        following = max(chunk.indices) + 1
        return {"pos": following, "next_index": following}
    return {"pos": chunk.span["x"], "next_index": int(chunk.span["i"]) + int(chunk.span["n"])}


def _chunks(header: Mapping[str, Any], segment: int, spec: Mapping[str, Any], first: int, settings: Settings) -> Iterator[model.Chunk]:
    shards = header["shards"]
    # A generated chunk is rebuilt from its indices alone (sources.item_at), so its row keeps no span.
    location = None
    if spec["kind"] != "random":
        location = {key: spec[key] for key in ("kind", "bucket", "key", "etag", "version", "gzip", "file", "prefix") if key in spec}
    entries = sources.read_segment(header["source_pin"], spec, header["max_message_bytes"])
    return model.cut_entries(
        entries,
        number=lambda local: (segment * model.SEGMENT_CHUNKS + first + local, (segment + first + local) % shards),
        span=location,
        **batcher.chunk_settings(header),
    )


def handle_sqs_event(event: Mapping[str, Any], settings: Settings, context: Any = None) -> dict[str, Any]:
    """The planning queue's handler: expand each segment named; a bad message is logged and retried to the DLQ."""
    from chalicelib.processor import Deadline

    store = BatchStore(settings.table_name)
    deadline = Deadline(context, MARGIN_MS) if context is not None else None
    failures = []
    for record in event["Records"]:
        try:
            batch_id, segment, attempt = parse_planning_message(record["body"])
            outcome = expand(store, batch_id, segment, attempt, settings, deadline)
            log.info("segment planned", batch_id=batch_id, segment=segment, outcome=outcome)
        except Exception as error:
            log.error("planning message failed", exc_info=True, message_id=record["messageId"], error=str(error))
            failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures}
