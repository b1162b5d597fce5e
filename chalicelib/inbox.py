"""The inbox: items sent inline to the API, kept as a JSON Lines object that an `s3-jsonl` source reads.

A submission's items become one object, `<INBOX_URI><batch_id>.jsonl`, one item a line.
It is created with `If-None-Match: *`, so a retry never overwrites it, and carries the
digest of the request that made it: a retry of that request finds it and goes on, while
another request under the same batch id (an Idempotency-Key used twice) is told apart.
The batch then runs it like any object source: planned from its pinned ETag, rebuilt
from its lines, and its failures listed by line number. Objects are expired by the
bucket's lifecycle rule (infra/resources.yaml), long after the batch ended.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from botocore.exceptions import ClientError

from chalicelib import aws
from chalicelib.errors import BatchdrainError

# Object metadata key holding the digest of the request that wrote the object.
REQUEST_METADATA = "batchdrain-request"


class InboxConflict(BatchdrainError):
    """The inbox object exists and was written by another request."""


def object_uri(inbox_uri: str, name: str) -> str:
    """Where the items named `name` (a batch id, or a batch id and a part) are kept."""
    return f"{inbox_uri}{name}.jsonl"


def jsonl(items: Iterable[Any]) -> bytes:
    """The items as JSON Lines, one compact JSON value a line."""
    return b"".join(json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode() + b"\n" for item in items)


def put_items(uri: str, items: Iterable[Any], request: str) -> bool:
    """Write the items at `uri` unless it exists; True if this call wrote it.

    An object already there that the same `request` wrote is kept (a retry); one that
    another request wrote raises InboxConflict.
    """
    bucket, _, key = uri[len("s3://") :].partition("/")
    s3 = aws.client("s3")
    try:
        s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=jsonl(items),
            ContentType="application/x-ndjson",
            IfNoneMatch="*",
            Metadata={REQUEST_METADATA: request},
        )
        return True
    except ClientError as error:
        if str(error.response.get("Error", {}).get("Code")) not in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            raise
    found = s3.head_object(Bucket=bucket, Key=key).get("Metadata", {}).get(REQUEST_METADATA)
    if found != request:
        raise InboxConflict(f"{uri} was written by another request")
    return False


def pinned(uri: str) -> dict[str, Any]:
    """The object at `uri` as a segment names it: bucket, key, ETag (and version, on a versioned bucket)."""
    bucket, _, key = uri[len("s3://") :].partition("/")
    head = aws.client("s3").head_object(Bucket=bucket, Key=key)
    obj = {"bucket": bucket, "key": key, "etag": head["ETag"]}
    if head.get("VersionId") and head["VersionId"] != "null":
        obj["version"] = head["VersionId"]
    return obj
