"""Task results in S3, for definitions that ask for them (`"results": {bucket, prefix}`).

- Each chunk's results are one JSON Lines object at a deterministic key,
  `<prefix>/<batch>/<attempt>/<shard>/<chunk>.jsonl`, one line `{"index", "result"}` per
  item that succeeded. No per-item PUTs: one object per chunk is ~K times cheaper.
- The rule a reader relies on (README "Results"): once the alert is out, every item the
  alert counts as succeeded has exactly one line across the attempts' prefixes, and a
  failed item has none.
- The chunk's object decides, item by item, and the chunk row follows: every change is
  a conditional write (`If-None-Match: *` to create, `If-Match: <etag>` to change), and
  an item's first decision stays. A delivery adds lines for its finished items *before*
  its row records them; a delivery about to fail items for good first marks them failed
  in the object (a transient `{"index", "failed": true}` line). An item with a line is
  never failed (a delivery that finished it died before recording it: it succeeded), and
  an item marked failed never gets a line (a slow concurrent copy finishing it late is
  refused). Whatever crashes in between, the next delivery reads the same decision.
- The record that finishes a chunk with failures first rewrites its object without
  the failed marks, flagged `final`: later writers add nothing to it. So no object holds
  a failed mark once its chunk row is gone, and no batch completes before that.
- At completion the finalizer writes `failures.jsonl` (every failed item with its error;
  for a line source also where it is: `at`, the object and byte, and `line`, its 1-based
  line number) and `manifest.json` (totals, where the results and failures are), both
  idempotently, before the alert goes out; the alert carries the manifest's URI.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib import aws, log, model, sources
from chalicelib.chunks import Plan, with_done
from chalicelib.errors import BatchdrainError, PermanentItemError
from chalicelib.sources import FILE_STRIDE

_MERGE_ROUNDS = 8
# S3 multipart: parts of at least 5 MiB (but the last); failures are streamed in 8 MiB parts.
PART_BYTES = 8 * 1024 * 1024
# The alert waits for failures.jsonl, so it lists at most this many items (~10 MB, a few
# seconds): completion stays bounded (invariant 12) however many items failed.
MAX_FAILURE_LINES = 100_000
# A line source's failed items get their line number in failures.jsonl, counted by reading
# each object once from its start: at most this many (decompressed) bytes per completion,
# so the alert waits seconds, not minutes. Items past it are listed without `line`.
LINE_NUMBER_BYTES = 256 * 1024 * 1024
# S3 errors no retry can mend: the bucket is gone, or the function may not write to it.
PERMANENT_ERRORS = ("NoSuchBucket", "AccessDenied", "AllAccessDisabled", "InvalidBucketName", "403", "404")
# An item refused a line because the chunk's object already decided it failed.
DECIDED_FAILED = "failed for good in another delivery of its chunk (its result is not kept)"


class ResultsUnwritable(Exception):
    """The results bucket cannot be written at all (gone, or access denied): retrying will not help."""


class ResultNotJson(PermanentItemError):
    """A task returned a result that cannot be written as JSON: the item fails at once (running it again returns the same)."""


def batch_prefix(results: Mapping[str, str], batch_id: str, attempt: int) -> str:
    return "/".join(part for part in (results["prefix"], batch_id, str(attempt)) if part)


def chunk_key(results: Mapping[str, str], batch_id: str, attempt: int, shard: int, chunk_no: int) -> str:
    return f"{batch_prefix(results, batch_id, attempt)}/{shard}/{chunk_no:08d}.jsonl"


def manifest_uri(header: Mapping[str, Any]) -> str | None:
    results = header.get("results")
    if not results or header["status"] == model.FAILED or header.get("results_error"):
        return None
    return f"s3://{results['bucket']}/{batch_prefix(results, header['batch_id'], header['attempt'])}/manifest.json"


def is_permanent(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code")) in PERMANENT_ERRORS


@dataclass
class ChunkResults:
    """What a chunk's object holds: result lines by index, items marked failed, and whether it is final."""

    lines: dict[int, str] = field(default_factory=dict)
    failed: set[int] = field(default_factory=set)
    final: bool = False

    def body(self) -> bytes:
        marks = {index: json.dumps({"index": index, "failed": True}, separators=(",", ":")) for index in self.failed}
        every = {**marks, **self.lines}
        return "".join(every[index] + "\n" for index in sorted(every)).encode()

    @classmethod
    def parse(cls, body: bytes, final: bool) -> "ChunkResults":
        state = cls(final=final)
        for text in body.decode().splitlines():
            if text:
                line = json.loads(text)
                if "result" in line:
                    state.lines[line["index"]] = text
                else:
                    state.failed.add(line["index"])
        return state


def save(message: model.WorkMessage, values: Mapping[int, Any]) -> tuple[dict[int, str], dict[int, Exception]]:
    """Add finished items' lines to their chunk's object (before the row records them).

    Returns the items refused a line because the object decided they failed (index ->
    why: they are to be recorded failed, not done), and the items whose result cannot be
    stored (not JSON; or the bucket is unwritable): errors of those items.
    """
    lines: dict[int, str] = {}
    unwritable: dict[int, Exception] = {}
    for index, value in values.items():
        try:
            lines[index] = json.dumps({"index": index, "result": value}, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as error:
            unwritable[index] = ResultNotJson(f"the task's result is not JSON: {error}")
    if not lines:
        return {}, unwritable
    key = chunk_key(message.results, message.batch_id, message.attempt, message.shard, message.chunk_no)

    def add(state: ChunkResults) -> None:
        for index, line in lines.items():
            if index not in state.lines and index not in state.failed and not state.final:
                state.lines[index] = line

    try:
        state = _change(message.results["bucket"], key, add, absent=True)
    except ResultsUnwritable as error:
        return {}, {**unwritable, **{index: error for index in lines}}
    refused = {index: DECIDED_FAILED for index in lines if index not in state.lines}
    return refused, unwritable


def settler(results: Mapping[str, str] | None, batch_id: str, attempt: int, shard: int, chunk_no: int) -> Callable[[Plan, Mapping[str, Any]], Plan] | None:
    """What `BatchStore.record` calls on each plan before writing it, for a chunk with results (None without).

    Items the plan fails are marked failed in the object first, unless they have a line
    (those are done instead); a plan that finishes a chunk with failures also makes its
    object final (see the module docstring). If the bucket is unwritable there are no
    lines to keep consistent, and the plan goes as it is.
    """
    if not results:
        return None
    key = chunk_key(results, batch_id, attempt, shard, chunk_no)

    def settle(plan: Plan, row: Mapping[str, Any]) -> Plan:
        failing = set(plan.recorded.failed)
        finishing = not plan.recorded.pending and (failing or row.get("has_failures"))
        if not failing and not finishing:
            return plan

        def decide(state: ChunkResults) -> None:
            state.failed |= {index for index in failing if index not in state.lines}
            if finishing:
                state.failed, state.final = set(), True

        try:
            state = _change(results["bucket"], key, decide, create=bool(failing))
        except ResultsUnwritable:
            return plan
        return with_done(plan, failing & set(state.lines))

    return settle


def _change(
    bucket: str, key: str, change: Callable[[ChunkResults], None], create: bool = True, absent: bool = False
) -> ChunkResults:
    """Apply `change` to the chunk's object with conditional writes, retrying when another writer got there first.

    Returns the object's state after. No write if nothing changes (a duplicate delivery),
    nor to create an object when `create` is False. With `absent` the object is assumed
    not to exist yet (a chunk's first delivery): one conditional PUT, no GET. Raises
    ResultsUnwritable for a bucket that cannot be written.
    """
    s3 = aws.client("s3")
    try:
        current: Any = None if absent else _get(s3, bucket, key)
        for _ in range(_MERGE_ROUNDS):
            if current is None:
                state, condition = ChunkResults(), {"IfNoneMatch": "*"}
            else:
                state = ChunkResults.parse(current["Body"].read(), current.get("Metadata", {}).get("final") == "1")
                condition = {"IfMatch": current["ETag"]}
            before = (dict(state.lines), set(state.failed), state.final)
            change(state)
            if (state.lines, state.failed, state.final) == before and ("IfMatch" in condition or not create):
                return state
            try:
                s3.put_object(
                    Bucket=bucket, Key=key, Body=state.body(), ContentType="application/x-ndjson",
                    Metadata={"final": "1"} if state.final else {}, **condition,
                )
                return state
            except ClientError as error:
                # 412: the object exists / changed; 409: a concurrent conditional write (retry).
                if error.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                    raise
            current = _get(s3, bucket, key)
    except ClientError as error:
        if is_permanent(error):
            code = error.response.get("Error", {}).get("Code")
            raise ResultsUnwritable(f"results bucket {bucket!r} cannot be written: {code}") from None
        raise
    raise RuntimeError(f"s3://{bucket}/{key}: {_MERGE_ROUNDS} conditional writes lost to concurrent writers")


def _get(s3: Any, bucket: str, key: str) -> Any:
    """The object's GetObject response, or None if there is none."""
    try:
        return s3.get_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "NoSuchKey":
            raise
        return None


def check_writable(results: Mapping[str, str], batch_id: str, attempt: int) -> None:
    """Write the attempt's manifest as 'running' (replaced at completion); ResultsUnwritable if the bucket cannot be written.

    Checked before a batch (or a redrive) starts, so a missing bucket ends it at once
    with one alert naming the bucket, instead of failing every item.
    """
    manifest = {"batch_id": batch_id, "attempt": attempt, "status": model.CREATING}
    try:
        # Only if absent: a duplicate schedule delivery must never overwrite a finished batch's manifest.
        aws.client("s3").put_object(
            Bucket=results["bucket"], Key=f"{batch_prefix(results, batch_id, attempt)}/manifest.json",
            Body=json.dumps(manifest).encode(), ContentType="application/json", IfNoneMatch="*",
        )
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
            return  # written already: the bucket is writable
        if is_permanent(error):
            code = error.response.get("Error", {}).get("Code")
            raise ResultsUnwritable(f"results bucket {results['bucket']!r} cannot be written: {code}") from None
        raise


# -- at completion -------------------------------------------------------------------------


def write_manifest(header: Mapping[str, Any], failed_rows: Iterable[Mapping[str, Any]]) -> str | None:
    """Write failures.jsonl and manifest.json for a completed batch with results; the manifest's URI.

    The F rows of the first MAX_FAILURE_LINES failed items are held while their line
    numbers are counted (`line_numbers`), so each source object is read once.
    """
    uri = manifest_uri(header)
    if uri is None:
        return None
    results, batch_id, attempt = header["results"], header["batch_id"], header["attempt"]
    prefix = batch_prefix(results, batch_id, attempt)
    failures_key = f"{prefix}/failures.jsonl"
    listed: list[tuple[Mapping[str, Any], list[int]]] = []  # (F row, its items listed): MAX_FAILURE_LINES in all
    count = 0
    for row in failed_rows:
        if count == MAX_FAILURE_LINES:
            break
        indices = sorted(row.get("failed", ()))[: MAX_FAILURE_LINES - count]
        listed.append((row, indices))
        count += len(indices)
    numbers = line_numbers(header["batch_id"], listed)
    with LineWriter(results["bucket"], failures_key) as failures:
        for row, indices in listed:
            for line in failure_lines(row, indices, numbers):
                failures.write(line)
    manifest = {
        "batch_id": batch_id,
        "attempt": attempt,
        "definition": header.get("definition", ""),
        "status": header["status"],
        "source": (header.get("source_pin") or {}).get("uri") or header["source"]["type"],
        "totals": {"items": header["total_items"], "succeeded": header.get("succeeded"), "failed": header.get("failed", 0)},
        "results": {
            "prefix": f"s3://{results['bucket']}/{prefix}/",
            "keys": "<shard>/<chunk number, zero-padded to at least 8 digits>.jsonl, one per chunk with a finished item",
            "chunks": header.get("total_chunks"),
            "line": {"index": "the item's index", "result": "what the task returned"},
            # A redrive re-runs only failed items: the others' results stay under their attempt.
            "earlier_attempts": [f"s3://{results['bucket']}/{batch_prefix(results, batch_id, n)}/" for n in range(1, attempt)],
        },
        "failures": {
            "uri": f"s3://{results['bucket']}/{failures_key}",
            "items": header.get("failed", 0),
            "listed": count,  # below `items`: the first MAX_FAILURE_LINES only (the table's F# rows hold all)
        },
        "created_at": header.get("created_at"),
        "completed_at": header.get("completed_at"),
    }
    aws.client("s3").put_object(
        Bucket=results["bucket"], Key=f"{prefix}/manifest.json", Body=json.dumps(manifest, indent=2).encode(), ContentType="application/json"
    )
    return uri


def failure_lines(
    row: Mapping[str, Any], indices: Iterable[int] | None = None, numbers: Mapping[tuple[Any, ...], Mapping[int, int]] | None = None
) -> Iterable[str]:
    """One line per failed item of an F# row (or of `indices` of it): its index, its chunk, the error and,
    for object lines, where it is: `at` (object and byte) and `line` (1-based) if `numbers` has it."""
    errors = row.get("errors") or {}
    span = row.get("span") or {}
    lines_of = (numbers or {}).get(_object_of(span), {}) if span.get("kind") == "lines" else {}
    for index in sorted(row.get("failed", ())) if indices is None else indices:
        line: dict[str, Any] = {"index": index, "chunk": row["chunk_no"], "error": errors.get(str(index)) or row.get("reason", "")}
        if span.get("kind") == "lines":
            offset = index - int(span["file"]) * FILE_STRIDE
            line["at"] = f"s3://{span['bucket']}/{span['key']} byte {offset}"
            if offset in lines_of:
                line["line"] = lines_of[offset]
        yield json.dumps(line, separators=(",", ":"))


def line_numbers(batch_id: str, listed: Iterable[tuple[Mapping[str, Any], Iterable[int]]]) -> dict[tuple[Any, ...], dict[int, int]]:
    """Line numbers of the listed failed items of line sources: {object: {byte offset: line}}.

    Each object is read once, from its start, pinned to the ETag its batch was planned
    from, within LINE_NUMBER_BYTES for them all. An object that changed or cannot be read
    gets no numbers (one warning names it): the failures are listed all the same.
    """
    wanted: dict[tuple[Any, ...], tuple[Mapping[str, Any], set[int]]] = {}
    for row, indices in listed:
        span = row.get("span") or {}
        if span.get("kind") == "lines":
            offsets = wanted.setdefault(_object_of(span), (span, set()))[1]
            offsets.update(index - int(span["file"]) * FILE_STRIDE for index in indices)
    numbers: dict[tuple[Any, ...], dict[int, int]] = {}
    budget, unread = LINE_NUMBER_BYTES, []
    for key, (span, offsets) in sorted(wanted.items(), key=lambda entry: int(entry[1][0]["file"])):
        try:
            numbers[key], read = sources.line_numbers(span, offsets, budget)
        except (BatchdrainError, ClientError, BotoCoreError) as error:
            unread.append(f"s3://{span['bucket']}/{span['key']}: {error}")
            continue
        budget -= read
    if unread:
        log.warning("failures listed without line numbers: objects not read", batch_id=batch_id, objects=unread[:10], count=len(unread))
    return numbers


def _object_of(span: Mapping[str, Any]) -> tuple[Any, ...]:
    """The object (and the version of it) a line span lies in."""
    return (span["bucket"], span["key"], span.get("etag"), span.get("version"), int(span["file"]))


class LineWriter:
    """Streams lines to one S3 object in bounded memory (multipart above PART_BYTES)."""

    def __init__(self, bucket: str, key: str) -> None:
        self.bucket, self.key = bucket, key
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    def __enter__(self) -> "LineWriter":
        return self

    def write(self, line: str) -> None:
        self._buffer += line.encode() + b"\n"
        if len(self._buffer) >= PART_BYTES:
            self._flush_part()

    def _flush_part(self) -> None:
        s3 = aws.client("s3")
        if self._upload_id is None:
            self._upload_id = s3.create_multipart_upload(Bucket=self.bucket, Key=self.key)["UploadId"]
        number = len(self._parts) + 1
        etag = s3.upload_part(
            Bucket=self.bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=bytes(self._buffer)
        )["ETag"]
        self._parts.append({"PartNumber": number, "ETag": etag})
        self._buffer = bytearray()

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        s3 = aws.client("s3")
        if kind is not None:
            if self._upload_id:
                s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self._upload_id)
            return
        if self._upload_id is None:
            s3.put_object(Bucket=self.bucket, Key=self.key, Body=bytes(self._buffer), ContentType="application/x-ndjson")
            return
        if self._buffer:
            self._flush_part()
        s3.complete_multipart_upload(
            Bucket=self.bucket, Key=self.key, UploadId=self._upload_id, MultipartUpload={"Parts": self._parts}
        )
