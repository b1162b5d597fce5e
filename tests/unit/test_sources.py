"""The object-source readers (chalicelib/sources.py) against moto's S3: what an item is, and where.

Each test states the rule it proves and the line of sources.py that keeps it, so removing
that line fails the test. The readers are driven directly (plan -> read_segment ->
model.cut_entries -> rebuild), the way planners and rebuilds call them; the whole flow is
in test_object_sources.py and test_planner_faults.py.
"""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from chalicelib import aws as aws_clients
from chalicelib import model, sources
from chalicelib.config import Source
from chalicelib.model import Entry

from .conftest import REGION

BUCKET = "exports"
MAX_LINE = 256 * 1024  # the default MAX_MESSAGE_BYTES, which is what planners pass as max_line_bytes


@pytest.fixture
def s3(aws_env: None) -> Iterator[Any]:
    """moto's S3 alone (no table or queues: the readers need none), with the source bucket."""
    with mock_aws():
        aws_clients.reset_clients()
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket=BUCKET)
        yield client
        aws_clients.reset_clients()


def put(s3: Any, key: str, body: bytes) -> str:
    s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    return f"s3://{BUCKET}/{key}"


def planned(kind: str, uri: str, segment_bytes: int = 64 * 1024 * 1024, compression: str = "auto") -> sources.Plan:
    return sources.plan(Source(type=kind, uri=uri, compression=compression), uri, segment_bytes)


def read_all(plan: sources.Plan, max_line_bytes: int = MAX_LINE) -> list[tuple[int, Entry]]:
    """(segment number, entry) for every entry of every segment, as the planners read them."""
    return [(number, entry) for number, segment in enumerate(plan.segments) for entry in sources.read_segment(plan.pin, segment, max_line_bytes)]


def lines_of(body: bytes) -> list[tuple[int, bytes, int]]:
    """(offset, line without its line break, offset after it) for every non-blank line: the expected items."""
    found, offset = [], 0
    for raw in body.splitlines(keepends=True):
        text = raw.rstrip(b"\n").rstrip(b"\r")
        if text.strip():
            found.append((offset, text, offset + len(raw)))
        offset += len(raw)
    return found


def cut(plan: sources.Plan, segment: dict[str, Any], entries: list[Entry], k: int = 3, max_message_bytes: int = 256 * 1024) -> list[model.Chunk]:
    """Chunks of a segment's entries with their spans, as planner._chunks cuts them."""
    location = {key: segment[key] for key in ("kind", "bucket", "key", "etag", "version", "gzip", "file", "prefix") if key in segment}
    return list(
        model.cut_entries(
            iter(entries),
            batch_id="b",
            task="t",
            options={},
            items_per_message=k,
            max_message_bytes=max_message_bytes,
            number=lambda local: (local, 0),
            span=location,
        )
    )


# A body with every kind of line the readers must tell apart: lengths from 1 to ~200
# bytes, blank and whitespace-only lines, CRLF line ends (one blank CRLF line too), and
# a last line without a line break.
def _varied_body() -> bytes:
    parts = []
    for n in range(60):
        pad = "x" * ((n * 37) % 190)
        parts.append(json.dumps({"id": n, "pad": pad}).encode())
        parts.append(b"\r\n" if n % 7 == 3 else b"\n")
        if n % 11 == 5:
            parts.append(b"\n")  # a blank line
        if n % 13 == 8:
            parts.append(b"   \t\r\n")  # whitespace only, CRLF
    parts.append(json.dumps({"id": 60, "pad": "last line, no line break"}).encode())
    return b"".join(parts)


BODY = _varied_body()
LINES = lines_of(BODY)


def boundary_cases() -> dict[str, int]:
    """Segment sizes whose first boundary falls on each kind of byte (segments start at 0, size, 2*size, ...)."""
    starts = [offset for offset, _, _ in LINES]
    line_start = next(s for s in starts if s > 600)  # right after a newline
    crlf_end = next(end for _, text, end in LINES if BODY[end - 2 : end] == b"\r\n" and end > 300)
    return {
        "1024": 1024,
        "1023": 1023,
        "1025": 1025,
        "right after a newline": line_start,
        "one byte into a line": line_start + 1,
        "on the newline byte": line_start - 1,
        "between CR and LF": crlf_end - 1,
        "on the CR of a CRLF": crlf_end - 2,
        "right after a CRLF": crlf_end,
        "one byte (every boundary is one of the above)": 97,
        "a whole line and a bit": 211,
        "bigger than the object": len(BODY) + 10,
    }


def test_every_line_is_read_once_by_the_segment_where_it_starts_for_any_segment_size(s3: Any):
    """Proves `_line_entries`' two boundary rules: a segment skips the line that began before
    its start (`skip_partial`: remove it and straddling lines are read twice) and stops at the
    first line that begins at or after its end (`offset >= end`: with `>` a line starting exactly
    on a boundary is read by both segments)."""
    uri = put(s3, "varied.jsonl", BODY)
    expected = [(offset, json.loads(text)) for offset, text, _ in LINES]
    assert len(expected) == 61 and len(BODY) > 3 * 1024

    for name, size in boundary_cases().items():
        plan = planned("s3-jsonl", uri, size)
        read = read_all(plan)
        assert [(entry.index, entry.item) for _, entry in read] == expected, f"segment size {size} ({name})"
        for number, entry in read:  # each line was read by the segment its first byte lies in
            segment = plan.segments[number]
            assert segment["pos"] <= entry.start < segment["end"], f"segment size {size} ({name}): line at {entry.start}"
        assert all(entry.error is None for _, entry in read)


def test_chunk_byte_ranges_cover_every_line_exactly_once_and_rebuild_to_the_same_items(s3: Any):
    """A chunk's span [s, x) is what a rebuild reads again: spans must not overlap and must hold
    every line start once (`cut_entries` takes s from the first entry and x from the last one's end)."""
    uri = put(s3, "varied.jsonl", BODY)
    starts = [offset for offset, _, _ in LINES]
    for name, size in boundary_cases().items():
        plan = planned("s3-jsonl", uri, size)
        spans = []
        for segment in plan.segments:
            for chunk in cut(plan, segment, list(sources.read_segment(plan.pin, segment, MAX_LINE))):
                spans.append((chunk.span["s"], chunk.span["x"], chunk))
        spans.sort(key=lambda span: span[0])
        for (_, end, _), (start, _, _) in zip(spans, spans[1:]):
            assert end <= start, f"segment size {size} ({name}): overlapping spans"
        holders = {offset: [s for s, x, _ in spans if s <= offset < x] for offset in starts}
        assert all(len(found) == 1 for found in holders.values()), f"segment size {size} ({name})"
        assert sum(len(chunk.indices) for _, _, chunk in spans) == len(starts)

    # Rebuilding reads exactly those ranges again (two sizes: each rebuild is a GetObject).
    for size in (1024, boundary_cases()["one byte into a line"]):
        plan = planned("s3-jsonl", uri, size)
        for segment in plan.segments:
            entries = list(sources.read_segment(plan.pin, segment, MAX_LINE))
            for chunk in cut(plan, segment, entries):
                rebuilt = sources.rebuild(plan.pin, chunk.span, chunk.indices, MAX_LINE)
                assert [(e.index, e.item, e.error) for e in rebuilt] == [
                    (e.index, e.item, e.error) for e in entries if e.index in set(chunk.indices)
                ]


def test_blank_lines_are_skipped_and_crlf_is_one_line_break(s3: Any):
    """`if not text.strip(): continue` in `_line_entries`: without it blank, whitespace-only and
    CRLF-only lines become failed items ("not JSON", "1 fields, the header has 2"). A CRLF line
    reads as the same item as an LF one, in JSON Lines and in CSV (header included)."""
    body = b'{"id": 1}\r\n\r\n   \n{"id": 2}\n\n\t\r\n{"id": 3}\r\n'
    plan = planned("s3-jsonl", put(s3, "crlf.jsonl", body))
    assert [(e.index, e.item, e.error) for _, e in read_all(plan)] == [
        (0, {"id": 1}, None),
        (body.index(b'{"id": 2}'), {"id": 2}, None),
        (body.index(b'{"id": 3}'), {"id": 3}, None),
    ]

    csv_body = b"id,name\r\n1,a\r\n\r\n2,b\r\n"
    plan = planned("s3-csv", put(s3, "crlf.csv", csv_body))
    assert plan.pin["fields"] == ["id", "name"]
    assert [e.item for _, e in read_all(plan)] == [{"id": "1", "name": "a"}, {"id": "2", "name": "b"}]


def test_invalid_utf8_fails_that_line_alone_with_its_byte(s3: Any):
    """`_parse_line` decodes strictly: a line that is not UTF-8 is one bad item naming where it broke;
    its neighbours still read (with errors="replace" it would run on mangled data)."""
    body = b'{"id": 1}\n{"id": "caf\xe9"}\n{"id": 3}\n'
    plan = planned("s3-jsonl", put(s3, "latin1.jsonl", body))
    read = [entry for _, entry in read_all(plan)]

    assert [entry.index for entry in read] == [0, 10, 25]
    assert read[0].item == {"id": 1} and read[2].item == {"id": 3}
    assert read[1].item is None
    assert read[1].error == f"line at byte 10 of s3://{BUCKET}/latin1.jsonl: not UTF-8 (byte 11)"


def test_a_10_mb_line_fails_alone_and_names_its_byte(s3: Any):
    """`_lines` marks a line over max_line_bytes as too long (line None) and `_line_entries` fails it
    alone; the line after it keeps its own offset."""
    big = json.dumps({"id": 1, "blob": "x" * (10 * 1024 * 1024)}).encode()
    body = b'{"id": 0}\n' + big + b'\n{"id": 2}\n'
    plan = planned("s3-jsonl", put(s3, "big.jsonl", body))
    read = [entry for _, entry in read_all(plan)]

    assert [entry.index for entry in read] == [0, 10, 10 + len(big) + 1]
    assert read[0].item == {"id": 0} and read[2].item == {"id": 2}
    assert read[1].item is None
    assert read[1].error == f"line at byte 10 of s3://{BUCKET}/big.jsonl is over {MAX_LINE:,} bytes, more than a message holds"
    assert read[1].end == 10 + len(big) + 1


class _LazyBody:
    """A GetObject body that makes its bytes as they are read (nothing of it exists before)."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self.pieces = pieces
        self.pending = bytearray()

    def read(self, amount: int) -> bytes:
        while len(self.pending) < amount:
            piece = next(self.pieces, None)
            if piece is None:
                break
            self.pending += piece
        block = bytes(self.pending[:amount])
        del self.pending[:amount]
        return block

    def close(self) -> None:
        pass


def _one_long_line(size: int) -> Iterator[bytes]:
    yield b'{"id": 0}\n'
    for _ in range(size // 65536):
        yield b"y" * 65536
    yield b'\n{"id": 2}\n'


def test_a_10_mb_line_is_skipped_without_ever_being_held_whole(monkeypatch: pytest.MonkeyPatch):
    """`_lines` drops a line's buffer as soon as it passes max_line_bytes (`too_long, buffer = True,
    bytearray()`): reading a 10 MB line costs a few 1 MiB read blocks (the body's, the block, the
    piece being appended) and max_line_bytes, not 10 MB. The body is made as it is read, so
    nothing but these blocks exists."""
    size = 10 * 1024 * 1024
    monkeypatch.setattr(sources, "_get", lambda bucket, key, pin, start=0: _LazyBody(_one_long_line(size)))
    segment = {"kind": "lines", "bucket": BUCKET, "key": "big.jsonl", "file": 0, "gzip": False, "pos": 0, "end": None}

    tracemalloc.start()
    try:
        read = list(sources.read_segment({"format": "jsonl", "uri": "s3://exports/big.jsonl"}, segment, MAX_LINE))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert [(entry.index, entry.item) for entry in read] == [(0, {"id": 0}), (10, None), (10 + size + 1, {"id": 2})]
    assert "is over 262,144 bytes" in read[1].error
    assert peak < 6 * 1024 * 1024, f"peak {peak:,} bytes while reading a {size:,}-byte line"


def _members(*texts: bytes) -> bytes:
    return b"".join(gzip.compress(text) for text in texts)


@pytest.mark.parametrize("read_block", [5, 64, sources.READ_BLOCK])
def test_a_multi_member_gzip_reads_as_one_text_even_with_a_line_split_across_members(
    s3: Any, monkeypatch: pytest.MonkeyPatch, read_block: int
):
    """`_gunzip` starts a new decompressor on a member's `unused_data` (`cat a.gz b.gz`): without it
    everything after the first member is silently lost. Small read blocks put member ends and
    gzip headers across block boundaries."""
    monkeypatch.setattr(sources, "READ_BLOCK", read_block)
    text = b"".join(json.dumps({"id": n}).encode() + b"\n" for n in range(30))
    cut_at = [0, 40, text.index(b'{"id": 7}') + 3, 200, len(text)]  # one member ends inside a line
    body = _members(*(text[a:b] for a, b in zip(cut_at, cut_at[1:])))
    plan = planned("s3-jsonl", put(s3, "parts.jsonl.gz", body))

    assert plan.segments[0]["gzip"] is True and len(plan.segments) == 1  # a gzip stream cannot be entered mid-way
    read = [entry for _, entry in read_all(plan)]
    assert [(e.index, e.item) for e in read] == [(offset, json.loads(line)) for offset, line, _ in lines_of(text)]

    # A rebuild reads the decompressed range again (skipping into the stream, If-Match pinned).
    for chunk in cut(plan, plan.segments[0], read, k=4):
        rebuilt = sources.rebuild(plan.pin, chunk.span, chunk.indices, MAX_LINE)
        assert [e.index for e in rebuilt] == chunk.indices and all(e.error is None for e in rebuilt)


class _SpinGuard:
    """zlib's decompressor, counting decompress calls over the test: a loop that stops making
    progress fails the test instead of hanging it (and growing `unused_data` for ever)."""

    real = zlib.decompressobj
    calls = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._real = _SpinGuard.real(*args, **kwargs)

    def decompress(self, data: bytes, max_length: int = 0) -> bytes:
        _SpinGuard.calls += 1
        if _SpinGuard.calls > 10_000:
            raise AssertionError("10,000 decompress calls for a few MB: _gunzip is spinning")
        return self._real.decompress(data, max_length)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_a_gzip_member_bigger_than_a_read_block_followed_by_another_member_reads_through(
    s3: Any, monkeypatch: pytest.MonkeyPatch
):
    """`_gunzip` drains `unconsumed_tail` after a decompress call capped at READ_BLOCK. When a
    member ends inside that drain and the next member's bytes follow in the same block, CPython
    keeps the leftover in `unconsumed_tail` as well as in `unused_data` (3.11: the tail is not
    cleared at the end of a stream), so `while decompressor.unconsumed_tail` never ends: the
    planner spins, copying the leftover into `unused_data` again and again, and the segment
    never finishes (seen with a 10 MB line in a multi-member file on the local stack). The loop
    must stop at `eof` and carry `unused_data` into the next member."""
    monkeypatch.setattr(_SpinGuard, "calls", 0)
    monkeypatch.setattr(zlib, "decompressobj", _SpinGuard)
    big = b"".join(json.dumps({"id": n, "pad": "p" * 1000}).encode() + b"\n" for n in range(2200))  # 2.2 MB: 3 capped calls
    small = b"".join(json.dumps({"id": n}).encode() + b"\n" for n in range(2200, 2210))
    assert len(big) > 2 * sources.READ_BLOCK
    plan = planned("s3-jsonl", put(s3, "members.jsonl.gz", gzip.compress(big) + gzip.compress(small)))

    read = [entry for _, entry in read_all(plan)]

    assert [entry.item["id"] for entry in read] == list(range(2210))
    assert read[-1].index == len(big) + len(small) - len(b'{"id": 2209}\n')


def test_a_gzip_csv_reads_its_header_once_and_indexes_rows_by_decompressed_byte(s3: Any):
    """plan() reads the header through the decompressor and the segment starts after it (`first`);
    rows are indexed by their offset in the decompressed text. compression "gzip" needs no suffix."""
    text = b'id,name,note\n1,a,"x, y"\n2,b,\n3,c,"say ""hi"""\n'
    plan = planned("s3-csv", put(s3, "rows.bin", gzip.compress(text)), compression="gzip")

    assert plan.pin["fields"] == ["id", "name", "note"]
    assert plan.segments[0]["pos"] == len(b"id,name,note\n")
    read = [entry for _, entry in read_all(plan)]
    assert [(e.index, e.item) for e in read] == [
        (13, {"id": "1", "name": "a", "note": "x, y"}),
        (24, {"id": "2", "name": "b", "note": ""}),
        (29, {"id": "3", "name": "c", "note": 'say "hi"'}),
    ]


def test_a_gzip_object_with_a_corrupt_member_is_a_source_error_naming_it(s3: Any):
    """A damaged gzip (its CRC does not match) cannot be read: a SourceError naming the object,
    which the planner turns into a FAILED batch with one alert. A raw zlib.error would escape the
    planner's `except (SourceError, SourceChangedError)` and the segment would be retried for ever."""
    damaged = bytearray(gzip.compress(b'{"id": 1}\n' * 1000))
    damaged[-6] ^= 0xFF  # the CRC32 trailer
    plan = planned("s3-jsonl", put(s3, "damaged.jsonl.gz", bytes(damaged)))

    with pytest.raises(sources.SourceError, match=f"s3://{BUCKET}/damaged.jsonl.gz"):
        read_all(plan)


def test_a_truncated_gzip_object_is_a_source_error_not_a_shorter_batch(s3: Any):
    """A gzip stream that ends before its end-of-stream marker (an upload cut short) lost data:
    `_gunzip` says so (as Python's gzip raises EOFError), instead of flushing what it has and
    running the first part, its last line cut mid-way counted as a bad line."""
    text = b"".join(json.dumps({"id": n}).encode() + b"\n" for n in range(2000))
    plan = planned("s3-jsonl", put(s3, "cut.jsonl.gz", gzip.compress(text)[:-200]))

    with pytest.raises(sources.SourceError, match=f"s3://{BUCKET}/cut.jsonl.gz"):
        read_all(plan)


def test_an_s3_prefix_is_listed_across_pages_each_object_once_in_order(s3: Any):
    """`_listed` follows NextContinuationToken while IsTruncated: stop after the first page and
    objects go missing. Pages of 2 keys here (ListObjectsV2's MaxKeys), so 7 objects take 4 pages;
    a chunk that spans pages is rebuilt from its StartAfter key, and a listing that changed inside
    a chunk's range fails its items."""
    keys = [f"photos/{n:02d}.jpg" for n in range(7)]
    for number, key in enumerate(keys):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x" * number)
    s3.put_object(Bucket=BUCKET, Key="other/skip.jpg", Body=b"")
    s3.put_object(Bucket=BUCKET, Key="photosynthesis.txt", Body=b"")  # shares the prefix text, not the folder
    pages: list[dict[str, Any]] = []

    def small_pages(params: dict[str, Any], **_: Any) -> None:
        params["MaxKeys"] = 2
        pages.append(dict(params))

    aws_clients.client("s3").meta.events.register("before-parameter-build.s3.ListObjectsV2", small_pages)
    plan = planned("s3-prefix", f"s3://{BUCKET}/photos/")
    read = [entry for _, entry in read_all(plan)]

    assert [(e.index, e.item["key"], e.item["size"]) for e in read] == [(n, key, n) for n, key in enumerate(keys)]
    assert [(e.start, e.end) for e in read] == list(zip(["", *keys[:-1]], keys))
    assert len(pages) == 4 and sum("ContinuationToken" in page for page in pages) == 3

    # A checkpoint inside the listing resumes after its key, numbering on.
    segment = {**plan.segments[0], "pos": keys[2], "next_index": 3}
    assert [(e.index, e.item["key"]) for e in sources.read_segment(plan.pin, segment, MAX_LINE)] == list(enumerate(keys))[3:]

    (first, second, third) = cut(plan, plan.segments[0], read, k=3)
    assert second.span["s"] == keys[2] and second.span["i"] == 3  # items 3..5 span pages 2 and 3
    rebuilt = sources.rebuild(plan.pin, second.span, second.indices, MAX_LINE)
    assert [(e.index, e.item["key"], e.error) for e in rebuilt] == [(n, keys[n], None) for n in (3, 4, 5)]

    s3.put_object(Bucket=BUCKET, Key="photos/04b.jpg", Body=b"new")  # inside chunk 2's range
    changed = sources.rebuild(plan.pin, second.span, second.indices, MAX_LINE)
    assert [e.index for e in changed] == [3, 4, 5] and all(e.item is None for e in changed)
    assert all(e.error.startswith(f"listing of s3://{BUCKET}/photos/ changed since the batch was created") for e in changed)
    assert [e.error for e in sources.rebuild(plan.pin, first.span, first.indices, MAX_LINE)] == [None] * 3  # before it: unchanged


@pytest.mark.parametrize("file_format", ["ORC", "Parquet"])
def test_an_inventory_manifest_that_is_not_csv_is_a_clear_source_error(s3: Any, file_format: str):
    """`_plan_inventory` reads CSV inventories only; ORC and Parquet must be refused by name at
    planning (the batch then ends FAILED with this reason), never read as lines of garbage."""
    manifest = {"sourceBucket": BUCKET, "fileFormat": file_format, "fileSchema": "Bucket, Key", "files": [{"key": "inv/data/a"}]}
    uri = put(s3, "inv/manifest.json", json.dumps(manifest).encode())

    with pytest.raises(sources.SourceError) as raised:
        planned("s3-inventory", uri)

    assert str(raised.value) == f"{uri}: inventory fileFormat must be CSV (ORC and Parquet are not read), got {file_format!r}"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{not json", "not an S3 Inventory manifest.json"),
        (json.dumps({"fileFormat": "CSV", "files": []}).encode(), "needs 'fileSchema' and a 'files' list"),
        (json.dumps({"fileFormat": "CSV", "fileSchema": "Bucket, Key", "files": [{"size": 3}]}).encode(), "files[0] must be an object with a 'key'"),
        (json.dumps(["CSV"]).encode(), "inventory fileFormat must be CSV"),
    ],
)
def test_a_malformed_inventory_manifest_is_a_source_error_saying_what_is_wrong(s3: Any, body: bytes, says: str):
    """`_plan_inventory` checks the manifest before cutting segments: without `except ValueError`
    or the shape checks, a bad manifest raises a bare ValueError/KeyError/AttributeError, which the
    planner does not turn into a FAILED batch (no alert would say why)."""
    uri = put(s3, "inv/manifest.json", body)

    with pytest.raises(sources.SourceError) as raised:
        planned("s3-inventory", uri)

    assert str(raised.value).startswith(f"{uri}: ") and says in str(raised.value)


def test_a_rebuild_after_the_object_changed_or_vanished_fails_each_item_with_why(s3: Any):
    """`_get` sends If-Match with the planned ETag: an object changed anywhere (here only after
    the chunk, so its digest alone would not notice) answers 412 and the asked-for items fail
    naming the ETag; a vanished one (NoSuchKey) fails them too. Never other data."""
    body = b"".join(json.dumps({"id": n}).encode() + b"\n" for n in range(9))
    uri = put(s3, "o.jsonl", body)
    plan = planned("s3-jsonl", uri)
    chunk = cut(plan, plan.segments[0], [e for _, e in read_all(plan)])[1]

    # Changed after this chunk's range only: its own bytes and digest are the same, the object is not.
    s3.put_object(Bucket=BUCKET, Key="o.jsonl", Body=body + b'{"id": 9}\n')
    changed = sources.rebuild(plan.pin, chunk.span, chunk.indices, MAX_LINE)
    assert [(e.index, e.item) for e in changed] == [(index, None) for index in chunk.indices]
    etag = plan.segments[0]["etag"]
    assert all(e.error == f"{uri} changed since the batch was created (ETag {etag}); not run on different data" for e in changed)

    s3.delete_object(Bucket=BUCKET, Key="o.jsonl")
    vanished = sources.rebuild(plan.pin, chunk.span, chunk.indices[:1], MAX_LINE)
    assert [(e.index, e.item) for e in vanished] == [(chunk.indices[0], None)]
    assert vanished[0].error == f"{uri}: not found; not run on different data"


def test_a_chunk_holding_a_line_too_large_for_a_message_is_rebuilt_as_it_was_cut(s3: Any):
    """A line under max_line_bytes but over a message's item budget fails alone ("N bytes as
    JSON"), decided by the reader, so the chunk's digest and a rebuild's (sweeper re-send, a
    planner's unsent group, redrive) see the same entries. Were it decided when cutting, every
    such chunk would read as "changed since the batch was created" when rebuilt, and its good
    items would fail although the object never changed."""
    small = 4096  # MAX_MESSAGE_BYTES' minimum: the item budget is 4,096 - 1,024 - len("{}")
    big = json.dumps({"id": 1, "pad": "y" * 3300}).encode()
    body = b'{"id": 0}\n' + big + b'\n{"id": 2}\n'
    assert len(big) < small  # a line, not too long to read...
    plan = planned("s3-jsonl", put(s3, "tight.jsonl", body))
    entries = [e for _, e in read_all(plan, max_line_bytes=small)]
    (chunk,) = cut(plan, plan.segments[0], entries, k=10, max_message_bytes=small)
    assert chunk.items == ((0, {"id": 0}), (10 + len(big) + 1, {"id": 2}))  # ...but too big for a message
    assert "bytes as JSON; a message holds at most" in dict(chunk.bad)[10]

    rebuilt = sources.rebuild(plan.pin, chunk.span, chunk.indices, small)

    assert [(e.index, e.item) for e in rebuilt if e.error is None] == list(chunk.items)
    assert [e.index for e in rebuilt if e.error is not None] == [10]
    assert "changed since" not in json.dumps([e.error for e in rebuilt])
