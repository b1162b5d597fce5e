"""The data model: batch ids, table keys, chunks and work messages. No I/O here.

Table layout (one table, see README 'Data model'):

    header   pk = B#<batch_id>          sk = META
    chunk    pk = B#<batch_id>#<shard>  sk = C#<chunk_no>   pending = {item indices}
    stats    pk = B#<batch_id>          sk = T#<slot>       counters (observations, chalicelib.itemstats)
    observed pk = D#<definition>        sk = OBSERVED       the item times its last batch saw (chalicelib.sizing)

A chunk row exists while any item of its message is still pending; the batch is done
when no shard partition holds a chunk row and the header is sealed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator, Mapping

from chalicelib.errors import BadMessageError, BadRequestError

CREATING = "CREATING"
SEALED = "SEALED"
COMPLETED = "COMPLETED"
COMPLETED_WITH_FAILURES = "COMPLETED_WITH_FAILURES"
# The batch could not start (its source is missing or unreadable): one alert says why.
FAILED = "FAILED"
# Someone cancelled the batch (POST /batches/{id}/cancel): its items not yet run failed with reason "cancelled".
CANCELLED = "CANCELLED"
CANCELLED_REASON = "cancelled"
FINAL_STATUSES = (COMPLETED, COMPLETED_WITH_FAILURES, FAILED, CANCELLED)

HEADER_SK = "META"
CHUNK_PREFIX = "C#"
FAILED_PREFIX = "F#"
# A segment of an object source still to be expanded into chunks (in the header's partition).
SEGMENT_PREFIX = "P#"
# Chunks of segment s are numbered s * SEGMENT_CHUNKS + 0, 1, ...: parallel planners never collide.
SEGMENT_CHUNKS = 10**8
# A planner writes a segment's chunks in groups, one checkpoint each: at most this many chunks
# (10 BatchWriteItem calls of 25 rows). The segment rows share the header's partition, so with
# PLANNER_MAX_CONCURRENCY 10 planners at ~60 groups of 25 a second, a checkpoint per 25 rows
# would put ~1,200 writes/s on it; per 250, ~120.
PLAN_GROUP_CHUNKS = 250
# ...and at most this many bytes of messages, held until they are sent (256 MB functions).
PLAN_GROUP_BYTES = 8 * 1024 * 1024
# Sparse index of batches not yet notified: the sweeper's work list (GSI "open-batches").
OPEN_INDEX = "open-batches"
OPEN_PK = "OPEN"
# Every batch header, newest first: the API's history (GSI "batch-history", a few attributes projected).
HISTORY_INDEX = "batch-history"
HISTORY_PK = "BATCH"
# What the history index holds of each header besides its keys (the list view).
HISTORY_FIELDS = ("batch_id", "status", "definition", "attempt", "total_items", "succeeded", "failed", "created_at", "completed_at")
# Messages that are not chunks of any batch (bad JSON, missing fields), kept for people to read.
POISON_PK = "POISON"
MESSAGE_VERSION = 1
# SendMessageBatch takes at most 10 entries and 1 MiB of payload in all.
SQS_BATCH_ENTRIES = 10
SQS_BATCH_BYTES = 1024 * 1024
# Bytes a message body needs besides its items: ids, task, options (checked per chunk).
_ENVELOPE_RESERVE = 1024
MAX_SHARDS = 100
# A Lambda function runs at most 900 s, so no item can be expected to take longer.
MAX_ITEM_SECONDS = 900


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso(moment: datetime) -> str:
    """UTC timestamp with milliseconds, the one format stored and sent."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def batch_id_for(definition: str, scheduled_at: datetime) -> str:
    """Deterministic id from the schedule slot, so a duplicate cron delivery finds its batch.

    >>> batch_id_for("nightly", datetime(2026, 11, 23, 6, 0, 7, tzinfo=timezone.utc))
    'nightly-2026-11-23T06:00Z'
    """
    return f"{definition}-{scheduled_at.astimezone(timezone.utc):%Y-%m-%dT%H:%MZ}"


def encode_options(options: Mapping[str, Any]) -> str:
    """Task options as the exact JSON text kept on the batch header.

    Text, not a DynamoDB map: boto3 refuses floats, and a number read back turns 1.0
    into 1, which would change the options' size and so where a resumed batcher cuts
    chunks. Text keeps every rebuilt message byte-identical to the first.
    """
    return json.dumps(dict(options), separators=(",", ":"), allow_nan=False)


def decode_options(header: Mapping[str, Any]) -> dict[str, Any]:
    """The task options a header was created with (see encode_options)."""
    return json.loads(header.get("task_options") or "{}")


# Table keys and bookkeeping that say nothing to a reader of the batch.
_INTERNAL_FIELDS = ("pk", "sk", "open_pk", "open_sk", "history_pk", "history_sk")


def batch_view(header: Mapping[str, Any]) -> dict[str, Any]:
    """The header as the API shows it: no table keys, sets as sorted lists, options as an object."""
    view = {key: sorted(value) if isinstance(value, set) else value for key, value in header.items()}
    for key in _INTERNAL_FIELDS:
        view.pop(key, None)
    view["task_options"] = decode_options(header)
    return view


def header_key(batch_id: str) -> dict[str, str]:
    return {"pk": f"B#{batch_id}", "sk": HEADER_SK}


def shard_pk(batch_id: str, shard: int) -> str:
    return f"B#{batch_id}#{shard}"


def chunk_sk(chunk_no: int) -> str:
    return f"{CHUNK_PREFIX}{chunk_no:08d}"


def chunk_key(batch_id: str, shard: int, chunk_no: int) -> dict[str, str]:
    return {"pk": shard_pk(batch_id, shard), "sk": chunk_sk(chunk_no)}


def segment_key(batch_id: str, segment: int) -> dict[str, str]:
    return {"pk": f"B#{batch_id}", "sk": f"{SEGMENT_PREFIX}{segment:08d}"}


# An open batch's items call, by the digest of its Idempotency-Key: which segment it added
# (and for which request), kept after the segment row is gone so a retry adds nothing.
# The only rows of a batch with a TTL (`expires_at`); the finalizer ignores them.
ITEMS_CALL_PREFIX = "K#"


def items_call_key(batch_id: str, key_digest: str) -> dict[str, str]:
    return {"pk": f"B#{batch_id}", "sk": f"{ITEMS_CALL_PREFIX}{key_digest}"}


# A batch's item-time statistics (chalicelib.itemstats), in the header's partition: counters
# that processors ADD to, spread over a few rows (`T#<slot>`, the shard of a message) so no one
# row takes every write. Observations only: nothing reads them to decide (parse_key: None).
STATS_PREFIX = "T#"


def stats_key(batch_id: str, slot: int) -> dict[str, str]:
    return {"pk": f"B#{batch_id}", "sk": f"{STATS_PREFIX}{slot:04d}"}


def failed_sk(chunk_no: int) -> str:
    return f"{FAILED_PREFIX}{chunk_no:08d}"


def observed_key(definition: str) -> dict[str, str]:
    """The row keeping the item times a definition's last completed batch observed (it sizes the next K)."""
    return {"pk": f"D#{definition}", "sk": "OBSERVED"}


def failed_key(batch_id: str, shard: int, chunk_no: int) -> dict[str, str]:
    """The row that keeps a chunk's items that failed for good (their attempts ran out, or a last-resort dead letter)."""
    return {"pk": shard_pk(batch_id, shard), "sk": failed_sk(chunk_no)}


@dataclass(frozen=True)
class RowRef:
    """What a table key says: which batch, and for chunk rows which shard and chunk."""

    batch_id: str
    shard: int | None = None
    chunk_no: int | None = None
    segment: int | None = None

    @property
    def is_header(self) -> bool:
        return self.shard is None and self.segment is None


def parse_key(pk: str, sk: str) -> RowRef | None:
    """Read a header, segment or chunk key; None for any other row (not ours to react to: F#, K#, T#, poison)."""
    if not pk.startswith("B#"):
        return None
    if sk == HEADER_SK:
        return RowRef(batch_id=pk[2:])
    if sk.startswith(SEGMENT_PREFIX) and sk[len(SEGMENT_PREFIX):].isdigit():
        return RowRef(batch_id=pk[2:], segment=int(sk[len(SEGMENT_PREFIX):]))
    if sk.startswith(CHUNK_PREFIX):
        batch_id, _, shard = pk[2:].rpartition("#")
        if batch_id and shard.isdigit() and sk[len(CHUNK_PREFIX):].isdigit():
            return RowRef(batch_id=batch_id, shard=int(shard), chunk_no=int(sk[len(CHUNK_PREFIX):]))
    return None


def shard_count(chunks: int, chunks_per_shard: int) -> int:
    """How many partitions the chunk rows spread over.

    One partition takes ~1,000 writes/s; rows are written once and deleted once, so
    `chunks_per_shard` (default 10,000) rows per partition keeps a 100M-item batch at
    100 shards while small batches stay on one partition (one Query per emptiness check).
    """
    return max(1, min(MAX_SHARDS, math.ceil(chunks / max(1, chunks_per_shard))))


def shards_for_items(items: int, items_per_message: int, chunks_per_shard: int) -> int:
    """Shards for a batch planned at `items` (exact for generated items, estimated for objects)."""
    return shard_count(math.ceil(items / items_per_message), chunks_per_shard)


@dataclass(frozen=True)
class Chunk:
    """One work message's worth of items, and the row that tracks them."""

    batch_id: str
    shard: int
    chunk_no: int
    task: str
    options: Mapping[str, Any]
    items: tuple[tuple[int, Any], ...]  # (item index in the batch, item)
    # The most one item is expected to take: the processor starts an item only with this much time left.
    item_seconds: float = 0.0
    # The batch attempt the message belongs to: a message of an earlier attempt never touches a restored row.
    attempt: int = 1
    # Items that cannot run (a line that is not JSON, ...): (index, why); they fail on first delivery.
    bad: tuple[tuple[int, str], ...] = ()
    # Where the chunk's items are in an object source (kept on its row, never sent): see sources.
    span: Mapping[str, Any] | None = None
    # Where the task's results go (bucket, prefix), if the definition asks for them.
    results: Mapping[str, str] | None = None
    # Bytes its items take in the body, as counted when it was cut (0 if not cut here).
    size: int = 0

    @property
    def indices(self) -> list[int]:
        return [index for index, _ in self.items] + [index for index, _ in self.bad]

    def body(self) -> str:
        body = {
            "v": MESSAGE_VERSION,
            "batch_id": self.batch_id,
            "shard": self.shard,
            "chunk": self.chunk_no,
            "task": self.task,
            "options": self.options,
            "items": [[index, item] for index, item in self.items],
        }
        if self.item_seconds:
            body["item_seconds"] = self.item_seconds
        if self.attempt != 1:
            body["attempt"] = self.attempt
        if self.bad:
            body["bad"] = [[index, error] for index, error in self.bad]
        if self.results:
            body["results"] = dict(self.results)
        return json.dumps(body, separators=(",", ":"))


# An item's error text in a message or a row: enough to say what went wrong, and bounded, so
# a chunk of failed items can never outgrow what its items took (invariant 16).
MAX_ERROR_TEXT = 500


def bounded_error(text: str) -> str:
    return text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - 3] + "..."


def fit_to_message(chunk: Chunk, max_message_bytes: int) -> list[Chunk]:
    """The chunk as one message, or as several (halves, recursively) if its body is over `max_message_bytes`.

    A chunk cut by `cut_entries` always fits; one rebuilt later may not (every item of a
    changed object carries an error instead of its line). Several messages for one row
    are fine: each records only its own items. BadRequestError if one entry alone is too big.
    """
    if len(chunk.body().encode()) <= max_message_bytes:
        return [chunk]
    entries = [(index, item, False) for index, item in chunk.items] + [(index, error, True) for index, error in chunk.bad]
    if len(entries) == 1:
        raise BadRequestError(f"item {entries[0][0]} of chunk {chunk.chunk_no} does not fit a message of {max_message_bytes:,} bytes")
    halves = []
    for half in (entries[: len(entries) // 2], entries[len(entries) // 2 :]):
        part = dataclasses.replace(
            chunk,
            items=tuple((index, value) for index, value, bad in half if not bad),
            bad=tuple((index, value) for index, value, bad in half if bad),
        )
        halves += fit_to_message(part, max_message_bytes)
    return halves


@dataclass(frozen=True)
class Entry:
    """One item as read from a source: its index, and the item or why it cannot be one.

    For object sources `start`/`end` say where it lies (a byte offset, or a listing key),
    so a chunk's row can record the range to read again (see chalicelib.sources).
    """

    index: int
    item: Any = None
    error: str | None = None
    start: Any = None
    end: Any = None


def item_budget(max_message_bytes: int, options_bytes: int) -> int:
    """Bytes of items one message may carry, after the envelope and the task options."""
    return max_message_bytes - _ENVELOPE_RESERVE - options_bytes


def entry_size(entry: Entry) -> int:
    """Bytes an entry adds to a message body: `[index, item]` (or `[index, error]`) and a comma."""
    return len(json.dumps([entry.index, entry.item if entry.error is None else entry.error], separators=(",", ":"))) + 1


def entries_digest(entries: Iterable[Entry]) -> str:
    """A short digest of a chunk's items: a rebuild that reads different data is caught."""
    digest = hashlib.blake2b(digest_size=8)
    for entry in entries:
        digest.update(json.dumps([entry.index, entry.item, entry.error], separators=(",", ":"), sort_keys=True).encode())
    return digest.hexdigest()


def cut_entries(
    entries: Iterable[Entry],
    *,
    batch_id: str,
    task: str,
    options: Mapping[str, Any],
    items_per_message: int,
    max_message_bytes: int,
    number: Callable[[int], tuple[int, int]],
    item_seconds: float = 0.0,
    attempt: int = 1,
    results: Mapping[str, str] | None = None,
    span: Mapping[str, Any] | None = None,
) -> Iterator[Chunk]:
    """Cut entries into chunks of at most K items and at most `max_message_bytes` of body.

    `number(n)` gives the n-th chunk's (chunk_no, shard). With `span` (an object
    source's location), each chunk records where its entries lie and their digest. An
    item too large for a message raises BadRequestError naming it: object sources'
    readers have already failed such lines alone (see `item_budget`).
    """
    budget = item_budget(max_message_bytes, len(json.dumps(options, separators=(",", ":"))))
    current: list[Entry] = []
    size = 0
    local = 0

    def emit() -> Chunk:
        chunk_no, shard = number(local)
        items = tuple((entry.index, entry.item) for entry in current if entry.error is None)
        bad = tuple((entry.index, entry.error) for entry in current if entry.error is not None)
        where = None
        if span is not None:
            where = {**span, "s": current[0].start, "x": current[-1].end, "i": current[0].index, "n": len(current), "d": entries_digest(current)}
        return Chunk(batch_id, shard, chunk_no, task, options, items, item_seconds, attempt, bad, where, results, size)

    for entry in entries:
        size_of = entry_size(entry)
        if size_of > budget:
            raise BadRequestError(
                f"item {entry.index} is {size_of:,} bytes as JSON; a message holds at most {budget:,} bytes of items "
                "(store large payloads in S3 and send their keys)"
            )
        if current and (len(current) == items_per_message or size + size_of > budget):
            yield emit()
            local += 1
            current, size = [], 0
        current.append(entry)
        size += size_of
    if current:
        yield emit()


@dataclass(frozen=True)
class WorkMessage:
    """A parsed work-queue message body."""

    batch_id: str
    shard: int
    chunk_no: int
    task: str
    options: Mapping[str, Any]
    items: tuple[tuple[int, Any], ...]
    item_seconds: float = 0.0
    attempt: int = 1
    bad: tuple[tuple[int, str], ...] = ()
    results: Mapping[str, str] | None = None

    def rest(self, indices: Iterable[int]) -> Chunk:
        """A fresh message for some of this message's items (those not finished yet)."""
        keep = set(indices)
        items = tuple((index, item) for index, item in self.items if index in keep)
        bad = tuple((index, error) for index, error in self.bad if index in keep)
        return Chunk(
            self.batch_id, self.shard, self.chunk_no, self.task, self.options, items, self.item_seconds, self.attempt,
            bad, None, self.results,
        )


def parse_message(body: str) -> WorkMessage:
    """Parse a work message; BadMessageError says exactly what is wrong with it."""
    try:
        data = json.loads(body)
    except (TypeError, ValueError) as error:  # ValueError: also numbers over Python's 4,300-digit limit
        raise BadMessageError(f"message body is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise BadMessageError("message body must be a JSON object")
    if type(data.get("v")) is not int or data["v"] != MESSAGE_VERSION:
        raise BadMessageError(f"message version {data.get('v')!r} is not {MESSAGE_VERSION}")
    for name, kind in (("batch_id", str), ("shard", int), ("chunk", int), ("task", str), ("items", list)):
        if not isinstance(data.get(name), kind) or isinstance(data.get(name), bool):
            raise BadMessageError(f"message field {name!r} must be {kind.__name__}, got {data.get(name)!r}")
    check_chunk_key(data["batch_id"], data["shard"], data["chunk"])
    options = data.get("options", {})
    if not isinstance(options, dict):
        raise BadMessageError(f"message field 'options' must be an object, got {options!r}")
    items = []
    for position, pair in enumerate(data["items"]):
        valid_index = isinstance(pair, list) and len(pair) == 2 and type(pair[0]) is int and pair[0] >= 0
        if not valid_index:
            raise BadMessageError(f"message items[{position}] must be [index, item] with a whole-number index >= 0, got {pair!r}")
        items.append((pair[0], pair[1]))
    item_seconds = data.get("item_seconds", 0)
    if isinstance(item_seconds, bool) or not isinstance(item_seconds, (int, float)) or not 0 <= item_seconds <= MAX_ITEM_SECONDS:
        raise BadMessageError(
            f"message field 'item_seconds' must be a number of seconds from 0 to {MAX_ITEM_SECONDS}, got {item_seconds!r}"
        )
    attempt = data.get("attempt", 1)
    if type(attempt) is not int or attempt < 1:
        raise BadMessageError(f"message field 'attempt' must be a whole number >= 1, got {attempt!r}")
    bad = []
    for position, pair in enumerate(data.get("bad", [])):
        if not (isinstance(pair, list) and len(pair) == 2 and type(pair[0]) is int and pair[0] >= 0 and isinstance(pair[1], str)):
            raise BadMessageError(f"message bad[{position}] must be [index, error text], got {pair!r}")
        bad.append((pair[0], pair[1]))
    results = data.get("results")
    if results is not None and not (
        isinstance(results, dict) and isinstance(results.get("bucket"), str) and isinstance(results.get("prefix"), str)
    ):
        raise BadMessageError(f"message field 'results' must be {{bucket, prefix}}, got {results!r}")
    return WorkMessage(
        data["batch_id"], data["shard"], data["chunk"], data["task"], options, tuple(items), float(item_seconds), attempt,
        tuple(bad), results,
    )


# DynamoDB rejects a partition key over 2,048 bytes and a sort key over 1,024 (UTF-8)
# with a ValidationException; moto accepts both.
MAX_PARTITION_KEY_BYTES = 2048
MAX_SORT_KEY_BYTES = 1024


def check_chunk_key(batch_id: str, shard: int, chunk_no: int) -> None:
    """BadMessageError unless the chunk's table keys are ones DynamoDB accepts.

    A message whose row DynamoDB cannot address could never be processed nor recorded
    as failed, so the dead-letter handler would retry it forever; rejected here, it is
    kept as a POISON row (whose key is always small) instead.
    """
    for name, value in (("shard", shard), ("chunk", chunk_no)):
        if value < 0:
            raise BadMessageError(f"message field {name!r} must be >= 0, got {value}")
    partition_key = len(shard_pk(batch_id, shard).encode("utf-8"))
    if partition_key > MAX_PARTITION_KEY_BYTES:
        raise BadMessageError(
            f"message field 'batch_id': the partition key B#<batch_id>#<shard> is {partition_key:,} bytes (UTF-8); "
            f"DynamoDB allows at most {MAX_PARTITION_KEY_BYTES:,}"
        )
    sort_key = len(chunk_sk(chunk_no).encode("utf-8"))
    if sort_key > MAX_SORT_KEY_BYTES:
        raise BadMessageError(
            f"message field 'chunk': the sort key C#<chunk> is {sort_key:,} bytes; "
            f"DynamoDB allows at most {MAX_SORT_KEY_BYTES:,}"
        )
