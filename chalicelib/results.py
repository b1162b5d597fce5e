"""Task results in S3, for definitions that ask for them (`"results": {bucket, prefix}`).

- Each chunk's results are one JSON Lines object at a deterministic key,
  `<prefix>/<batch>/<attempt>/<shard>/<chunk>.jsonl`, one line `{"index", "result"}` per
  finished item. No per-item PUTs: one object per chunk is ~K times cheaper.
- The processor writes a delivery's results *before* its row records the items, so a
  finished item always has its line. A chunk finished over several deliveries (a retry,
  two concurrent copies) merges into the same object with S3 conditional writes
  (`If-None-Match: *` to create, `If-Match: <etag>` to add), so no line is lost to a race
  and an item has one line however often it ran.
- At completion the finalizer writes `failures.jsonl` (every failed item with its error)
  and `manifest.json` (totals, where the results and failures are), both idempotently,
  before the alert goes out; the alert carries the manifest's URI.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

from botocore.exceptions import ClientError

from chalicelib import aws, model
from chalicelib.sources import FILE_STRIDE

_MERGE_ROUNDS = 8
# S3 multipart: parts of at least 5 MiB (but the last); failures are streamed in 8 MiB parts.
PART_BYTES = 8 * 1024 * 1024
# The alert waits for failures.jsonl, so it lists at most this many items (~10 MB, a few
# seconds): completion stays bounded (invariant 12) however many items failed.
MAX_FAILURE_LINES = 100_000


def batch_prefix(results: Mapping[str, str], batch_id: str, attempt: int) -> str:
    return "/".join(part for part in (results["prefix"], batch_id, str(attempt)) if part)


def chunk_key(results: Mapping[str, str], batch_id: str, attempt: int, shard: int, chunk_no: int) -> str:
    return f"{batch_prefix(results, batch_id, attempt)}/{shard}/{chunk_no:08d}.jsonl"


def manifest_uri(header: Mapping[str, Any]) -> str | None:
    results = header.get("results")
    if not results or header["status"] == model.FAILED:
        return None
    return f"s3://{results['bucket']}/{batch_prefix(results, header['batch_id'], header['attempt'])}/manifest.json"


def save(message: model.WorkMessage, values: Mapping[int, Any]) -> dict[int, Exception]:
    """Merge finished items' results into their chunk's object; returns the items whose result is not JSON."""
    lines: dict[int, str] = {}
    unwritable: dict[int, Exception] = {}
    for index, value in values.items():
        try:
            lines[index] = json.dumps({"index": index, "result": value}, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as error:
            unwritable[index] = TypeError(f"the task's result is not JSON: {error}")
    if lines:
        key = chunk_key(message.results, message.batch_id, message.attempt, message.shard, message.chunk_no)
        _merge(message.results["bucket"], key, lines)
    return unwritable


def _merge(bucket: str, key: str, lines: dict[int, str]) -> None:
    """Add `lines` to the object at `key` (created if absent), retrying when another writer got there first."""
    s3 = aws.client("s3")
    condition: dict[str, str] = {"IfNoneMatch": "*"}
    merged = dict(lines)
    for _ in range(_MERGE_ROUNDS):
        body = "".join(merged[index] + "\n" for index in sorted(merged)).encode()
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/x-ndjson", **condition)
            return
        except ClientError as error:
            # 412: the object exists / changed; 409: a concurrent conditional write (retry).
            if error.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                raise
        try:
            current = s3.get_object(Bucket=bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                raise
            condition = {"IfNoneMatch": "*"}  # a 409: the other write had not landed; create again
            continue
        existing = {json.loads(line)["index"]: line.decode() for line in current["Body"].read().splitlines() if line}
        merged = {**lines, **existing}  # an item's first recorded line stays
        if merged == existing:
            return  # every line is there already (a duplicate delivery)
        condition = {"IfMatch": current["ETag"]}
    raise RuntimeError(f"s3://{bucket}/{key}: {_MERGE_ROUNDS} conditional writes lost to concurrent writers")


# -- at completion -------------------------------------------------------------------------


def write_manifest(header: Mapping[str, Any], failed_rows: Iterable[Mapping[str, Any]]) -> str | None:
    """Write failures.jsonl and manifest.json for a completed batch with results; the manifest's URI."""
    uri = manifest_uri(header)
    if uri is None:
        return None
    results, batch_id, attempt = header["results"], header["batch_id"], header["attempt"]
    prefix = batch_prefix(results, batch_id, attempt)
    failures_key = f"{prefix}/failures.jsonl"
    listed = 0
    with LineWriter(results["bucket"], failures_key) as failures:
        for row in failed_rows:
            for line in failure_lines(row):
                if listed == MAX_FAILURE_LINES:
                    break
                failures.write(line)
                listed += 1
            if listed == MAX_FAILURE_LINES:
                break
    manifest = {
        "batch_id": batch_id,
        "attempt": attempt,
        "definition": header.get("definition", ""),
        "status": header["status"],
        "source": (header.get("source_pin") or {}).get("uri") or header["source"]["type"],
        "totals": {"items": header["total_items"], "succeeded": header.get("succeeded"), "failed": header.get("failed", 0)},
        "results": {
            "prefix": f"s3://{results['bucket']}/{prefix}/",
            "keys": "<shard>/<chunk, 8 digits>.jsonl, one per chunk with a finished item",
            "chunks": header.get("total_chunks"),
            "line": {"index": "the item's index", "result": "what the task returned"},
            # A redrive re-runs only failed items: the others' results stay under their attempt.
            "earlier_attempts": [f"s3://{results['bucket']}/{batch_prefix(results, batch_id, n)}/" for n in range(1, attempt)],
        },
        "failures": {
            "uri": f"s3://{results['bucket']}/{failures_key}",
            "items": header.get("failed", 0),
            "listed": listed,  # below `items`: the first MAX_FAILURE_LINES only (the table's F# rows hold all)
        },
        "created_at": header.get("created_at"),
        "completed_at": header.get("completed_at"),
    }
    aws.client("s3").put_object(
        Bucket=results["bucket"], Key=f"{prefix}/manifest.json", Body=json.dumps(manifest, indent=2).encode(), ContentType="application/json"
    )
    return uri


def failure_lines(row: Mapping[str, Any]) -> Iterable[str]:
    """One line per failed item of an F# row: its index, its chunk, the error and, for object lines, where it is."""
    errors = row.get("errors") or {}
    span = row.get("span") or {}
    for index in sorted(row.get("failed", ())):
        line: dict[str, Any] = {"index": index, "chunk": row["chunk_no"], "error": errors.get(str(index)) or row.get("reason", "")}
        if span.get("kind") == "lines":
            line["at"] = f"s3://{span['bucket']}/{span['key']} byte {index - int(span['file']) * FILE_STRIDE}"
        yield json.dumps(line, separators=(",", ":"))


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
