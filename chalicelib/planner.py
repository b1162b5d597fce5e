"""The planner: expands one segment of a batch into chunk rows and their messages.

A planner takes a segment (chalicelib.planning wrote its row) under a lease, so SQS handing
one planning message to two invocations at once writes it once. It writes the segment's
chunk rows and messages group by group from the segment's checkpoint, in the order of
invariant 1: rows, checkpoint listing the group unsent, messages, clear. When the segment
is exhausted it deletes the segment's row and adds its totals to the header in one
transaction; the finalizer seals the batch once the last segment row of its attempt is
gone. A segment of a cancelled batch is finished at once, with no more rows written.
Out of time, it releases the segment and queues it again; a source that became
unreadable ends the batch FAILED with one alert.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Iterator, Mapping

from chalicelib import log, model, planning, sources, work
from chalicelib.deadline import Deadline
from chalicelib.config import Settings
from chalicelib.errors import BadMessageError
from chalicelib.store import BatchStore

# A planner stops this long before its Lambda timeout: one more group must fit.
MARGIN_MS = 60_000
# Chunks per checkpoint, and bytes of messages held until sent: chalicelib.model says why
# (there, so a batch's cost can count a planner's groups without importing a role).
PLAN_GROUP_CHUNKS = model.PLAN_GROUP_CHUNKS
PLAN_GROUP_BYTES = model.PLAN_GROUP_BYTES


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
    row = store.claim_segment(batch_id, segment, owner, now, now + planning.LEASE_SECONDS)
    if row is None:
        return "taken or done"
    try:
        return _write_segment(store, header, segment, row, owner, settings, deadline)
    except (sources.SourceError, sources.SourceChangedError) as error:
        planning.fail(store, header, str(error), settings)
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
    if header.get("cancelled_at"):
        return _finish_cancelled(store, header, segment, row, owner)
    if row.get("unsent"):
        work.send_listed(store, header, row["unsent"], settings)
        store.clear_segment_unsent(batch_id, segment, owner)
    spec = dict(row["spec"])
    if "pos" in row and row.get("chunks"):
        spec.update(pos=row["pos"], next_index=row.get("next_index", 0), aligned=True)
    chunks_done, items_done = int(row.get("chunks", 0)), int(row.get("items", 0))
    for group in _groups(_chunks(header, segment, spec, chunks_done, settings)):
        if chunks_done + len(group) > model.SEGMENT_CHUNKS:  # its chunk numbers would reach the next segment's
            planning.fail(store, header, f"segment {segment} holds over {model.SEGMENT_CHUNKS:,} chunks (a gzip object is one segment): split the object or raise items_per_message", settings)
            return "failed"
        store.put_chunks(group, attempt)
        chunks_done += len(group)
        items_done += sum(len(chunk.indices) for chunk in group)
        progress = {**_resume_at(group[-1]), "chunks": chunks_done, "items": items_done}
        unsent = [[chunk.shard, chunk.chunk_no] for chunk in group]
        if not store.checkpoint_segment(batch_id, segment, owner, progress, unsent):
            return "lease lost"
        work.send_work(group, settings)
        store.clear_segment_unsent(batch_id, segment, owner)
        if deadline is not None and deadline.expired():
            store.release_segment(batch_id, segment, owner, int(model.utc_now().timestamp()))
            work.send_segments(batch_id, attempt, [segment], settings)
            return "continued"
    if not store.finish_segment(batch_id, attempt, segment, owner, chunks_done, items_done, model.iso(model.utc_now())):
        return "lease lost"
    return "finished"


def _finish_cancelled(store: BatchStore, header: Mapping[str, Any], segment: int, row: Mapping[str, Any], owner: str) -> str:
    """A segment of a cancelled batch: no more chunk rows, finished with what its checkpoint says was written.

    Rows a planner wrote before (counted in the checkpoint, so the totals stay exact) are
    cancelled by the API call or the sweeper (chalicelib.cancelling); an unsent group's
    messages are not needed for that. The segment's REMOVE lets the batch seal as usual
    (planning.seal_when_planned), so a cancelled CREATING batch still ends, with its alert.
    """
    batch_id = header["batch_id"]
    if row.get("unsent") and not store.clear_segment_unsent(batch_id, segment, owner):
        return "lease lost"
    chunks, items = int(row.get("chunks", 0)), int(row.get("items", 0))
    if not store.finish_segment(batch_id, header["attempt"], segment, owner, chunks, items, model.iso(model.utc_now())):
        return "lease lost"
    return "cancelled"


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
        **work.chunk_settings(header),
    )


def handle_sqs_event(event: Mapping[str, Any], settings: Settings, context: Any = None) -> dict[str, Any]:
    """The planning queue's handler: expand each segment named; a bad message is logged and retried to the DLQ."""
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
