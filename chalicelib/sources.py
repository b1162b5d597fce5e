"""Item sources: where a batch's items come from, read as a stream and read again exactly.

Rows hold no payloads (README 'Data model'), so every chunk must be rebuildable after
the fact (sweeper re-send, dead letters, redrive):

- `random`: item i is a pure function of (batch id, i).
- Object sources (`s3-jsonl`, `s3-csv`, `s3-inventory`): item index is
  `file * FILE_STRIDE + byte offset of its line` (in the decompressed text for gzip), so
  parallel planners number items without talking to each other and an index names its
  line. A chunk's row records its object, the ETag (and version) read, its byte range
  and a digest of its items; a rebuild reads that range with `If-Match`, and an object
  that changed or vanished fails the items with an error instead of running other data.
- `s3-prefix`: item i is the i-th object listed; a chunk records the key it starts after.

Everything is streamed: memory holds one read block and one line, never a source.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import urllib.parse
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Iterator, Mapping

from botocore.exceptions import ClientError

from chalicelib import aws
from chalicelib.config import LINE_SOURCE_TYPES, MAX_TASK_OPTIONS_BYTES, Source
from chalicelib.errors import BatchdrainError
from chalicelib.model import Entry, bounded_error, entries_digest, entry_size, item_budget

# Index = file * FILE_STRIDE + byte offset: 10^13 bytes is more than S3's 5 TB object limit.
FILE_STRIDE = 10**13
READ_BLOCK = 1024 * 1024
# The longest CSV header row read (it is held whole, and kept on the batch header).
HEAD_SAMPLE = 64 * 1024
# A gzip stream is entered only from its start: each continuation and each rebuilt chunk
# decompresses up to its place, so an object past this size could never finish in time.
MAX_GZIP_BYTES = 256 * 1024 * 1024
# S3 Inventory fields, named as an s3-prefix item names them, so one task serves both.
_INVENTORY_FIELDS = {
    "Bucket": "bucket",
    "Key": "key",
    "VersionId": "version_id",
    "Size": "size",
    "LastModifiedDate": "last_modified",
    "ETag": "etag",
}
_GZIP_SUFFIXES = (".gz", ".gzip")
# The estimate for a listing, whose size is unknown: as many items as a batch may hold.
UNKNOWN_SIZE = 100_000_000
# A generated item counts as this many bytes of SEGMENT_BYTES (64 MiB: 1,048,576 items a segment).
RANDOM_ITEM_BYTES = 64


class SourceError(BatchdrainError):
    """The source cannot be read at all (missing object, no access, bad manifest): the batch fails."""


class SourceChangedError(BatchdrainError):
    """The data a chunk was cut from is gone or different: its items fail, nothing else runs."""


# -- generated items ------------------------------------------------------------------


def item_at(source: Source, batch_id: str, index: int) -> dict[str, Any]:
    """Item `index` of a `random` batch; the same value every time it is asked for."""
    digest = hashlib.blake2b(f"{batch_id}/{index}".encode(), digest_size=8).digest()
    return {"id": index, "value": int.from_bytes(digest, "big") % (source.max_value + 1)}


def largest_item(source: Source) -> Entry:
    """An item at least as large as JSON as any of a `random` batch's: the last id with the largest value."""
    return Entry(source.count - 1, {"id": source.count - 1, "value": source.max_value})


def items_from(source: Source, batch_id: str) -> Iterator[dict[str, Any]]:
    for index in range(source.count):
        yield item_at(source, batch_id, index)


def _generated(pin: Mapping[str, Any], first: int, stop: int) -> Iterator[Entry]:
    """Items first..stop-1 of a `random` batch; `entry.end` is where to resume."""
    source = Source(type="random", count=int(pin["count"]), max_value=int(pin["max_value"]))
    for index in range(first, stop):
        yield Entry(index, item_at(source, pin["seed"], index), start=index, end=index + 1)


def source_record(source: Source) -> dict[str, Any]:
    """The source as stored on the batch header."""
    if source.type == "random":
        return {"type": source.type, "count": source.count, "max_value": source.max_value}
    return {"type": source.type, "uri": source.uri, "compression": source.compression}


def source_from_record(record: Mapping[str, Any]) -> Source:
    if record["type"] == "random":
        return Source(type="random", count=int(record["count"]), max_value=int(record["max_value"]))
    return Source(type=record["type"], uri=record["uri"], compression=record.get("compression", "auto"))


# -- planning: what a scheduled run reads -------------------------------------------------


def resolve_uri(source: Source, scheduled_at: datetime) -> str:
    """The source's URI for one run: `{date}`, `{hour}`, ... filled from the scheduled time (UTC)."""
    return source.uri.format(
        date=f"{scheduled_at:%Y-%m-%d}",
        year=f"{scheduled_at:%Y}",
        month=f"{scheduled_at:%m}",
        day=f"{scheduled_at:%d}",
        hour=f"{scheduled_at:%H}",
        minute=f"{scheduled_at:%M}",
    )


def split_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


@dataclass(frozen=True)
class Plan:
    """What a run reads: `pin` goes on the header (for every chunk), `segments` become P# rows."""

    pin: dict[str, Any]
    segments: list[dict[str, Any]]
    estimated_items: int


def plan(source: Source, uri: str, segment_bytes: int, seed: str = "") -> Plan:
    """Look at the source once (HEAD, manifest) and cut it into segments; SourceError if it cannot be read.

    A `random` source reads nothing: its segments are index ranges, and `seed` (the
    batch id) makes its items the same every time they are generated.
    """
    if source.type == "random":
        per_segment = max(1, segment_bytes // RANDOM_ITEM_BYTES)
        pin = {"format": "random", "count": source.count, "max_value": source.max_value, "seed": seed}
        ranges = range(0, source.count, per_segment)
        segments = [{"kind": "random", "pos": first, "end": min(first + per_segment, source.count)} for first in ranges]
        return Plan(pin, segments, source.count)
    bucket, key = split_uri(uri)
    if source.type == "s3-prefix":
        # A listing's size is unknown until it is read: plan for the largest, so its rows spread over every shard.
        return Plan({"format": "prefix", "uri": uri}, [{"kind": "prefix", "bucket": bucket, "prefix": key, "pos": ""}], UNKNOWN_SIZE)
    if source.type == "s3-inventory":
        return _plan_inventory(bucket, key, uri)
    head = _head(bucket, key)
    gzip = source.compression == "gzip" or (source.compression == "auto" and key.lower().endswith(_GZIP_SUFFIXES))
    pin: dict[str, Any] = {"format": "jsonl" if source.type == "s3-jsonl" else "csv", "uri": uri, "etag": head["ETag"]}
    obj = {"bucket": bucket, "key": key, "etag": head["ETag"], "file": 0, "gzip": gzip}
    if head.get("VersionId") and head["VersionId"] != "null":
        obj["version"] = head["VersionId"]
    first = 0
    if pin["format"] == "csv":
        header_line = next(iter(_lines(_open(obj, 0), 0, HEAD_SAMPLE)), None)
        if header_line is None:
            raise SourceError(f"{uri}: empty; a CSV source needs a header row")
        if header_line[1] is None:
            raise SourceError(f"{uri}: no header row in its first {HEAD_SAMPLE:,} bytes (lines must end in \\n)")
        fields = next(csv.reader([header_line[1].decode("utf-8-sig", "replace")]))  # -sig: a BOM is not a field name
        if not fields or len(set(fields)) != len(fields):
            raise SourceError(f"{uri}: the header row must name each field once, got {fields!r}")
        pin["fields"] = fields
        first = header_line[2]
    size = int(head["ContentLength"])
    if gzip and size > MAX_GZIP_BYTES:
        raise SourceError(
            f"{uri}: a gzip object of {size:,} bytes is over {MAX_GZIP_BYTES:,} (it cannot be entered mid-stream); "
            "split it into smaller objects or store it uncompressed"
        )
    if gzip:  # a gzip stream cannot be entered mid-way: one segment, checkpointed as it goes
        segments = [{**obj, "kind": "lines", "pos": first, "end": None}]
    else:
        segments = [
            {**obj, "kind": "lines", "pos": start, "end": min(start + segment_bytes, size)}
            for start in range(first, max(size, first + 1), segment_bytes)
        ]
    return Plan(pin, segments, max(1, size // 100))


def _plan_inventory(bucket: str, key: str, uri: str) -> Plan:
    """An S3 Inventory manifest.json: one segment per CSV data file it lists, each pinned to its ETag."""
    etag = _head(bucket, key)["ETag"]
    try:
        manifest = json.loads(_get(bucket, key, {"etag": etag}).read())
    except ValueError as error:
        raise SourceError(f"{uri}: not an S3 Inventory manifest.json ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("fileFormat") != "CSV":
        found = manifest.get("fileFormat") if isinstance(manifest, dict) else type(manifest).__name__
        raise SourceError(f"{uri}: inventory fileFormat must be CSV (ORC and Parquet are not read), got {found!r}")
    fields = [name.strip() for name in str(manifest.get("fileSchema", "")).split(",") if name.strip()]
    files = manifest.get("files")
    if not fields or not isinstance(files, list):
        raise SourceError(f"{uri}: the manifest needs 'fileSchema' and a 'files' list")
    destination = str(manifest.get("destinationBucket", "")).rpartition(":")[2] or bucket
    for number, entry in enumerate(files):
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise SourceError(f"{uri}: files[{number}] must be an object with a 'key'")
    # Every data file is looked at now: a missing one fails the batch before anything runs.
    with ThreadPoolExecutor(max_workers=16) as pool:
        heads = list(pool.map(lambda entry: _head(destination, entry["key"]), files))
    for entry, head in zip(files, heads):
        if int(head["ContentLength"]) > MAX_GZIP_BYTES:
            raise SourceError(f"{uri}: data file {entry['key']} is over {MAX_GZIP_BYTES:,} bytes of gzip (it cannot be entered mid-stream)")
    segments = [
        {"kind": "lines", "bucket": destination, "key": entry["key"], "etag": head["ETag"], "file": number, "gzip": True, "pos": 0, "end": None}
        for number, (entry, head) in enumerate(zip(files, heads))
    ]
    estimated = sum(int(head["ContentLength"]) for head in heads) * 10 // 100
    pin = {"format": "csv", "uri": uri, "etag": etag, "fields": fields, "inventory": True}
    return Plan(pin, segments, max(1, estimated))


# -- reading ------------------------------------------------------------------------------


def read_segment(pin: Mapping[str, Any], segment: Mapping[str, Any], max_line_bytes: int) -> Iterator[Entry]:
    """The entries of a segment from its position `pos` on, in order; `entry.end` is where to resume."""
    if segment["kind"] == "prefix":
        return _listed(segment["bucket"], segment["prefix"], segment["pos"], int(segment.get("next_index", 0)))
    if segment["kind"] == "random":
        return _generated(pin, int(segment["pos"]), int(segment["end"]))
    return _line_entries(pin, segment, segment["pos"], segment.get("end"), max_line_bytes, aligned=bool(segment.get("aligned")))


def rebuild(pin: Mapping[str, Any], span: Mapping[str, Any], indices: Iterable[int], max_line_bytes: int) -> list[Entry]:
    """The entries of a chunk with these indices, read again from where its row says it lies.

    If the data differs from what the chunk was cut from (object changed or gone,
    listing changed), each asked-for entry comes back failed with an error saying so.
    """
    wanted = set(indices)
    try:
        if span["kind"] == "prefix":
            entries = list(_listed(span["bucket"], span["prefix"], span["s"], int(span["i"]), limit=int(span["n"])))
        else:
            entries = list(_line_entries(pin, span, span["s"], span["x"], max_line_bytes, aligned=True))
        if len(entries) != int(span["n"]) or entries_digest(entries) != span["d"]:
            raise SourceChangedError(f"{_where(span)} changed since the batch was created")
    except (SourceChangedError, SourceError) as error:
        reason = bounded_error(f"{error}; not run on different data")
        return [Entry(index, None, reason) for index in sorted(wanted)]
    return [entry for entry in entries if entry.index in wanted]


def rebuild_bytes(span: Mapping[str, Any] | None) -> int:
    """About how many bytes `rebuild` reads for a chunk: its range, or for gzip everything up to its end."""
    if not span or span.get("kind") != "lines":
        return 0
    return int(span["x"]) if span.get("gzip") else int(span["x"]) - int(span["s"])


def _where(span: Mapping[str, Any]) -> str:
    if span["kind"] == "prefix":
        return f"listing of s3://{span['bucket']}/{span['prefix']}"
    return f"s3://{span['bucket']}/{span['key']}"


def _listed(bucket: str, prefix: str, after: str, first_index: int, limit: int | None = None) -> Iterator[Entry]:
    """Objects under `prefix` after key `after`, page by page; entry.start is the key before it."""
    s3 = aws.client("s3")
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    if after:
        kwargs["StartAfter"] = after
    index, previous = first_index, after
    while True:
        try:
            page = s3.list_objects_v2(**kwargs)
        except ClientError as error:
            raise _unreadable(error, f"s3://{bucket}/{prefix}") from None
        for obj in page.get("Contents", []):
            if limit is not None and index - first_index >= limit:
                return
            item = {
                "bucket": bucket,
                "key": obj["Key"],
                "size": obj["Size"],
                "etag": obj["ETag"].strip('"'),
                "last_modified": obj["LastModified"].isoformat(),
            }
            yield Entry(index, item, None, previous, obj["Key"])
            index, previous = index + 1, obj["Key"]
        if not page.get("IsTruncated"):
            return
        kwargs["ContinuationToken"] = page["NextContinuationToken"]
        kwargs.pop("StartAfter", None)


def _line_entries(
    pin: Mapping[str, Any], obj: Mapping[str, Any], start: int, end: int | None, max_line_bytes: int, aligned: bool
) -> Iterator[Entry]:
    """Entries for the lines that begin in [start, end) of one object (the whole rest if end is None)."""
    base = int(obj["file"]) * FILE_STRIDE
    where = f"s3://{obj['bucket']}/{obj['key']}"
    fields = pin.get("fields")
    # Whatever the task options (at most MAX_TASK_OPTIONS_BYTES), an item this size fits a
    # message: decided here, so a rebuild reads the same entries the planner cut.
    budget = item_budget(max_line_bytes, MAX_TASK_OPTIONS_BYTES)
    skip_partial = start > 0 and not aligned and not obj.get("gzip")
    read_from = start - 1 if skip_partial else start
    for offset, line, next_offset in _lines(_open(obj, read_from), read_from, max_line_bytes):
        if skip_partial:
            skip_partial = False
            if offset < start:  # the line that ends at or after `start` began in the previous segment
                continue
        if end is not None and offset >= end:
            return
        if offset < start:
            continue
        if line is None:
            error = f"line at byte {offset:,} of {where} is over {max_line_bytes:,} bytes, more than a message holds"
            yield Entry(base + offset, None, error, offset, next_offset)
            continue
        text = line.rstrip(b"\r")
        if not text.strip():
            continue  # blank lines are not items
        item, error = _parse_line(text, fields, pin["format"])
        if item is not None and pin.get("inventory"):
            item = inventory_item(item)
        if error is None and entry_size(Entry(base + offset, item)) > budget:
            size = entry_size(Entry(base + offset, item))
            item, error = None, f"{size:,} bytes as JSON; a message holds at most {budget:,} bytes of items"
        if error:
            error = bounded_error(f"line at byte {offset:,} of {where}: {error}")
        yield Entry(base + offset, item, error, offset, next_offset)


def _parse_line(text: bytes, fields: list[str] | None, kind: str) -> tuple[Any, str | None]:
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as error:
        return None, f"not UTF-8 (byte {error.start})"
    if kind == "jsonl":
        try:
            value = json.loads(decoded)
        except ValueError as error:
            return None, f"not JSON ({error})"
        if not isinstance(value, dict):
            return None, f"a JSON {type(value).__name__}, not an object"
        return value, None
    row = next(csv.reader(io.StringIO(decoded)), [])
    if len(row) != len(fields or ()):
        return None, f"{len(row)} fields, the header has {len(fields or ())}"
    return dict(zip(fields or (), row)), None


def inventory_item(row: dict[str, str]) -> dict[str, Any]:
    """An S3 Inventory CSV row as an s3-prefix item: its key URL-decoded (CSV inventories encode it), size a number."""
    item: dict[str, Any] = {_INVENTORY_FIELDS.get(name, name): value for name, value in row.items()}
    if "key" in item:
        item["key"] = urllib.parse.unquote_plus(item["key"])
    if str(item.get("size", "")).isdigit():
        item["size"] = int(item["size"])
    return item


def _lines(chunks: Iterator[bytes], offset: int, max_line_bytes: int) -> Iterator[tuple[int, bytes | None, int]]:
    """(offset, line without its newline, offset after it) for each line; line is None if it was too long.

    A line over `max_line_bytes` is skipped to its newline without being held.
    """
    buffer = bytearray()
    line_start = offset
    too_long = False
    for block in chunks:
        position = 0
        while position < len(block):
            newline = block.find(b"\n", position)
            piece_end = len(block) if newline < 0 else newline
            if not too_long:
                buffer += block[position:piece_end]
                if len(buffer) > max_line_bytes:
                    too_long, buffer = True, bytearray()
            if newline < 0:
                position = len(block)
                break
            line_end = offset + newline + 1
            yield line_start, None if too_long else bytes(buffer), line_end
            buffer, too_long, line_start = bytearray(), False, line_end
            position = newline + 1
        offset += len(block)
    if buffer or too_long:
        yield line_start, None if too_long else bytes(buffer), offset


def line_numbers(obj: Mapping[str, Any], offsets: Iterable[int], budget: int) -> tuple[dict[int, int], int]:
    """The 1-based line number of each line starting at one of `offsets`, and the bytes read to count them.

    `offsets` are bytes into the object's (decompressed) text, as its items' indices hold
    them. The object is read once from its start, pinned to the ETag planned
    (SourceChangedError if it changed), counting newlines up to the largest offset, and
    at most `budget` bytes of it: an offset past that gets no number.
    """
    wanted = sorted(set(offsets))
    numbers: dict[int, int] = {}
    position = newlines = 0
    if not wanted or budget <= 0:
        return numbers, 0
    blocks = _open(obj, 0)
    try:
        for block in blocks:
            block = block[: budget - position]
            end = position + len(block)
            while len(numbers) < len(wanted) and wanted[len(numbers)] < end:
                offset = wanted[len(numbers)]
                numbers[offset] = newlines + block.count(b"\n", 0, offset - position) + 1
            newlines += block.count(b"\n")
            position = end
            if len(numbers) == len(wanted) or position >= budget:
                break
    finally:
        blocks.close()
    return numbers, position


def _open(obj: Mapping[str, Any], start: int) -> Iterator[bytes]:
    """The object's bytes from `start` (decompressed for gzip), block by block, pinned to the ETag read at planning."""
    if obj.get("gzip"):
        where = f"s3://{obj['bucket']}/{obj['key']}"
        return _skip(_gunzip(_blocks(_get(obj["bucket"], obj["key"], obj, 0)), where), start)
    return _blocks(_get(obj["bucket"], obj["key"], obj, start))


def _get(bucket: str, key: str, pin: Mapping[str, Any] | None, start: int = 0) -> Any:
    """GetObject's body; with `pin`, only if the object is still the one planned (If-Match / VersionId)."""
    kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if start:
        kwargs["Range"] = f"bytes={start}-"
    if pin and pin.get("etag"):
        kwargs["IfMatch"] = pin["etag"]
    if pin and pin.get("version"):
        kwargs["VersionId"] = pin["version"]
    try:
        return aws.client("s3").get_object(**kwargs)["Body"]
    except ClientError as error:
        code = _code(error)
        if code in ("PreconditionFailed", "412"):
            raise SourceChangedError(f"s3://{bucket}/{key} changed since the batch was created (ETag {pin and pin.get('etag')})") from None
        if code == "InvalidRange":  # reading from the very end: nothing left
            return io.BytesIO(b"")
        raise _unreadable(error, f"s3://{bucket}/{key}") from None


def _head(bucket: str, key: str) -> dict[str, Any]:
    try:
        return aws.client("s3").head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        raise _unreadable(error, f"s3://{bucket}/{key}") from None


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", "error"))


# What no retry will change: the object, its version or its bucket is gone, or access is
# denied (without s3:ListBucket S3 answers 403 for a missing key). Anything else (500,
# 503 SlowDown past botocore's retries) is raised as is: the invocation fails and is retried.
_PERMANENT = {"404", "NoSuchKey", "NotFound", "NoSuchBucket", "NoSuchVersion", "403", "AccessDenied", "InvalidObjectState"}


def _unreadable(error: ClientError, where: str) -> SourceError:
    code = _code(error)
    if code not in _PERMANENT:
        raise error
    reason = "not found" if code in ("404", "NoSuchKey", "NotFound") else f"cannot be read ({code})"
    return SourceError(f"{where}: {reason}")


def _blocks(body: Any) -> Iterator[bytes]:
    try:
        while True:
            block = body.read(READ_BLOCK)
            if not block:
                return
            yield block
    finally:
        body.close()


def _gunzip(blocks: Iterator[bytes], where: str) -> Iterator[bytes]:
    """Decompress a gzip stream (several members, as `cat a.gz b.gz` makes, included).

    A damaged stream or one cut short before its end-of-stream marker lost data: that
    is a SourceError (the batch fails with one alert), never a shorter batch.
    """
    decompressor = zlib.decompressobj(wbits=31)
    fed = False  # the current member has had input
    try:
        for block in blocks:
            data = block
            while data:
                fed = True
                out = decompressor.decompress(data, READ_BLOCK)  # capped: memory stays one block
                if out:
                    yield out
                if decompressor.eof:
                    # The next member starts in what is left (`unconsumed_tail` may still hold it too).
                    data, fed = decompressor.unused_data, False
                    decompressor = zlib.decompressobj(wbits=31)
                else:
                    data = decompressor.unconsumed_tail
    except zlib.error as error:
        raise SourceError(f"{where}: not a valid gzip stream ({error})") from None
    if fed:
        raise SourceError(f"{where}: the gzip stream ends before its end-of-stream marker (cut short?)")


def _skip(blocks: Iterator[bytes], count: int) -> Iterator[bytes]:
    """The blocks without their first `count` bytes (entering a decompressed stream at a checkpoint)."""
    for block in blocks:
        if count >= len(block):
            count -= len(block)
            continue
        yield block[count:]
        count = 0


def is_object_source(source: Source | Mapping[str, Any]) -> bool:
    kind = source.type if isinstance(source, Source) else source["type"]
    return kind != "random"


__all__ = [
    "FILE_STRIDE",
    "LINE_SOURCE_TYPES",
    "Plan",
    "SourceChangedError",
    "SourceError",
    "is_object_source",
    "item_at",
    "items_from",
    "largest_item",
    "line_numbers",
    "plan",
    "read_segment",
    "rebuild",
    "resolve_uri",
    "source_from_record",
    "source_record",
]
