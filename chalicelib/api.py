"""The HTTP API's work: every route's request checked, answered from the table, and never a 500 for bad input.

Each function takes what the route received (path parameters, query string, body) and
returns the JSON body; a bad request raises ApiError with the status, the field and a
message naming the rule it broke, never echoing what was sent. The routes in app.py
only call these. Reading is cheap by construction: a batch's status is one GetItem plus
one `Query Limit=1` per shard (progress) and, while it runs, one Query of its stats rows, the history one Query of the `batch-history`
index per page, failures one Query per shard per page.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Mapping

from chalicelib import cancelling, completion, config, inbox, model, planning, restoring, tasks
from chalicelib.config import Definition, EventSourceSettings, Settings, Source
from chalicelib.errors import BatchdrainError, ConfigError
from chalicelib.store import BatchStore

# Batch ids are made by batchdrain (`<definition>-<slot>`, `api-<hex>`): letters, digits and
# `-._:`, at most 128 characters. Anything else is refused before it reaches the table.
BATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
DEFINITION_NAME = re.compile(r"^[a-z][a-z0-9-]{0,63}$")
MAX_PAGE = 100
# API Gateway's integration timeout is 29 s: a long poll answers well before it.
MAX_WAIT_SECONDS = 25
STATUSES = (model.CREATING, model.SEALED, *model.FINAL_STATUSES)


class ApiError(Exception):
    """A request the API refuses: `status` (4xx), the `field` at fault, and a message naming the rule."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.status, self.field, self.message = status, field, message

    def body(self) -> dict[str, Any]:
        return {"error": {"field": self.field, "message": self.message}}


def batch_id_of(value: Any) -> str:
    """A path's batch id, or a 400 naming the rule (the value itself is never echoed)."""
    if not isinstance(value, str) or not BATCH_ID.match(value):
        raise ApiError(400, "batch_id", "must be 1-128 letters, digits or . _ : - (starting with a letter or digit)")
    return value


def _query_value(query: Mapping[str, str] | None, name: str) -> str | None:
    return (query or {}).get(name)


def _whole_number(query: Mapping[str, str] | None, name: str, low: int, high: int, default: int) -> int:
    text = _query_value(query, name)
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise ApiError(400, name, f"must be a whole number from {low} to {high}")
    return int(text)


def _cursor(query: Mapping[str, str] | None, check: Callable[[Any], bool]) -> Any:
    """The opaque cursor a previous page returned (base64url JSON), or None; a 400 if it is not one."""
    text = _query_value(query, "cursor")
    if text is None:
        return None
    try:
        decoded = json.loads(base64.urlsafe_b64decode(text.encode("ascii") + b"=" * (-len(text) % 4)))
    except (ValueError, binascii.Error, UnicodeError):
        decoded = None
    if decoded is None or not check(decoded):
        raise ApiError(400, "cursor", "must be the cursor a previous page returned, unchanged")
    return decoded


def _encode(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value, separators=(",", ":")).encode()).decode().rstrip("=")


def _header(store: BatchStore, batch_id: str) -> dict[str, Any]:
    header = store.get_header(batch_id)
    if header is None:
        raise ApiError(404, "batch_id", "no batch has this id")
    return header


# -- reading ------------------------------------------------------------------------------


def get_batch(store: BatchStore, batch_id: Any) -> dict[str, Any]:
    """GET /batches/{id}: the header as the API shows it, with its progress (see `progress`).

    A batch still running also shows its item times and cost so far, from its stats rows
    (one more Query); an ended one, those its completion recorded.
    """
    header = _header(store, batch_id_of(batch_id))
    view = {**model.batch_view(header), "progress": progress(store, header)}
    if header["status"] not in model.FINAL_STATUSES:
        view.update(completion.observed(store, header, model.iso(model.utc_now())))
    return view


def progress(store: BatchStore, header: Mapping[str, Any]) -> dict[str, Any]:
    """How far a batch is: an estimate for display only, never for completion.

    Cheap: one eventually consistent `Query Limit=1` per shard finds the lowest chunk
    still pending there; the chunks numbered below it in that shard are done. SQS hands
    out messages roughly in order, so this is close; it is a lower bound (one slow chunk
    holds its shard's estimate back until it ends), exact once the batch is complete.
    """
    status = header["status"]
    chunks, items = int(header.get("total_chunks", 0)), int(header.get("total_items", 0))
    failed = int(header.get("failed", header.get("failed_items", 0)))
    if status in model.FINAL_STATUSES:
        done_fraction = 1.0
    elif status == model.CREATING or not chunks:
        done_fraction = 0.0
    else:
        shards = int(header["shards"])
        open_shards = set(header.get("open_shards", ()))
        done = 0.0
        for shard in range(shards):
            per_shard = chunks / shards
            if shard not in open_shards:
                done += per_shard
                continue
            lowest = store.lowest_pending_chunk(header["batch_id"], shard)
            done += per_shard if lowest is None else min(per_shard, _chunks_below(lowest, shard, shards, header))
        done_fraction = min(done / chunks, 0.99)
    percent = round(100 * done_fraction, 1)
    elapsed = (model.utc_now() - model.parse_iso(header["created_at"])).total_seconds()
    eta = None
    if 0 < done_fraction < 1 and status == model.SEALED:
        eta = round(elapsed * (1 - done_fraction) / done_fraction, 1)
    return {
        "percent": percent,
        "items_done_estimate": int(items * done_fraction),
        "failed": failed,
        "eta_seconds": eta,
        "elapsed_seconds": round(elapsed, 1),
        "accuracy": "estimate, a lower bound: chunks below the lowest pending one in each shard",
    }


def _chunks_below(chunk_no: int, shard: int, shards: int, header: Mapping[str, Any]) -> float:
    """About how many of a shard's chunks are numbered below `chunk_no` (segment s numbers from s x SEGMENT_CHUNKS)."""
    segment, local = divmod(chunk_no, model.SEGMENT_CHUNKS)
    per_segment = int(header.get("total_chunks", 0)) / max(1, int(header.get("segments", 1)))
    return (segment * per_segment + local) / shards


def list_batches(store: BatchStore, query: Mapping[str, str] | None) -> dict[str, Any]:
    """GET /batches: history, newest first, filtered by status and definition, a page at a time (opaque cursor)."""
    limit = _whole_number(query, "limit", 1, MAX_PAGE, 25)
    status = _query_value(query, "status")
    if status is not None and status not in STATUSES:
        raise ApiError(400, "status", f"must be one of {', '.join(STATUSES)}")
    definition = _query_value(query, "definition")
    if definition is not None and not DEFINITION_NAME.match(definition):
        raise ApiError(400, "definition", "must be a definition name: a-z, 0-9 and '-', at most 64, starting with a letter")
    start = _cursor(query, _is_history_key)
    rows, last = store.history(limit, start, status, definition)
    batches = [{field: row[field] for field in model.HISTORY_FIELDS if field in row} for row in rows]
    return {"batches": batches, "cursor": _encode(last) if last else None}


def _is_history_key(key: Any) -> bool:
    return (
        isinstance(key, dict)
        and set(key) == {"pk", "sk", "history_pk", "history_sk"}
        and key["history_pk"] == model.HISTORY_PK
        and all(isinstance(value, str) and len(value) <= 1024 for value in key.values())
    )


def list_failures(store: BatchStore, batch_id: Any, query: Mapping[str, str] | None) -> dict[str, Any]:
    """GET /batches/{id}/failures: failed items with their errors, a page of chunks at a time (opaque cursor)."""
    header = _header(store, batch_id_of(batch_id))
    limit = _whole_number(query, "limit", 1, MAX_PAGE, 25)
    start = _cursor(query, lambda value: isinstance(value, list) and len(value) == 2 and all(type(n) is int and n >= -1 for n in value))
    shard, after = start if start else (0, -1)
    failures: list[dict[str, Any]] = []
    for current in range(shard, int(header["shards"])):
        for row in store.failed_rows_after(header["batch_id"], current, after if current == shard else -1, limit - len(failures)):
            failures.append(
                {
                    "chunk": row["chunk_no"],
                    "shard": row["shard"],
                    "items": sorted(row["failed"]),
                    "errors": {str(index): text for index, text in (row.get("errors") or {}).items()},
                    "attempt": row.get("attempt", 1),
                    "reason": row.get("reason", ""),
                }
            )
        if len(failures) == limit:
            last = failures[-1]
            return {"failures": failures, "cursor": _encode([last["shard"], last["chunk"]])}
    return {"failures": failures, "cursor": None}


def wait_for(store: BatchStore, batch_id: Any, query: Mapping[str, str] | None, poll_seconds: float = 1.0) -> dict[str, Any]:
    """GET /batches/{id}/wait?timeout=N: as soon as the batch is complete (or after N <= 25 s), its status and `done`."""
    batch_id = batch_id_of(batch_id)
    timeout = _whole_number(query, "timeout", 0, MAX_WAIT_SECONDS, 20)
    deadline = time.monotonic() + timeout
    while True:
        header = _header(store, batch_id)
        done = header["status"] in model.FINAL_STATUSES
        if done or time.monotonic() >= deadline:
            return {"done": done, "batch": {**model.batch_view(header), "progress": progress(store, header)}}
        time.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())))


# -- submitting -----------------------------------------------------------------------------------

# A retried POST /batches carries the same key and finds the batch the first one made.
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")
MAX_SUBMISSION_BYTES = 64 * 1024
# Items sent inline (`"items": [...]`): at most this many, in a request of at most MAX_SUBMISSION_BYTES.
MAX_INLINE_ITEMS = 1_000


@dataclass(frozen=True)
class Submission:
    """A checked POST /batches: the definition as it will run, the batch's id, and the request's digest."""

    definition: Definition
    batch_id: str
    request: str
    # Inline items, written to the inbox object the definition's source names (see `store_items`).
    items: list[Any] | None = None
    # An open batch: its items come in later calls (`add_items`), until `seal`.
    open: bool = False


def submission(
    body: bytes | str | None,
    headers: Mapping[str, str],
    definitions: Mapping[str, Definition],
    now: datetime,
    inbox_uri: str = "",
    event_sources: EventSourceSettings | None = None,
) -> Submission:
    """POST /batches's request checked (400s name the field); the batch is created by the batcher, as a cron's is.

    With `items`, the source is the inbox object `<inbox_uri><batch_id>.jsonl`, which
    `store_items` writes before the batcher runs.
    """
    raw = _json_object(body)
    event_sources = event_sources or EventSourceSettings.from_env()
    unknown = sorted(set(raw) - set(config.SUBMISSION_FIELDS))
    if unknown:
        raise ApiError(400, "body", f"has fields a submission does not take (it takes: {', '.join(config.SUBMISSION_FIELDS)})")
    name, base = _named(raw, definitions)
    items = _inline_items(raw, inbox_uri)
    is_open = _open(raw, inbox_uri)
    if "task" in raw and items is None and not is_open and "source" not in raw:
        raise ApiError(400, "task", "a submission naming a task needs its items: items, source, or open")
    try:
        definition = config.with_overrides(base, raw, "body", config.readable_buckets(definitions))
    except ConfigError as error:
        raise _refusal(error) from None
    too_long = config.submission_budget_problem(definition, event_sources)
    if too_long:
        raise ApiError(400, "items_per_message", "too many items a message for one processor invocation: " + too_long.split("; ")[0])
    key = {name.lower(): value for name, value in (headers or {}).items()}.get("idempotency-key")
    if key is not None and not IDEMPOTENCY_KEY.match(key):
        raise ApiError(400, "Idempotency-Key", "must be 1-128 printable ASCII characters without spaces")
    request = hashlib.sha256(json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    if key is not None:
        batch_id = f"{name}-k{hashlib.sha256(key.encode()).hexdigest()[:20]}"
    else:
        batch_id = f"{name}-{now:%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"
    if items is not None:
        source = Source(type="s3-jsonl", uri=inbox.object_uri(inbox_uri, batch_id), compression="none")
        definition = dataclasses.replace(definition, source=source)
    if is_open:  # one object per items call, under the batch's own prefix
        definition = dataclasses.replace(definition, source=Source(type="s3-jsonl", uri=f"{inbox_uri}{batch_id}/", compression="none"))
    return Submission(definition, batch_id, request, items, is_open)


def _named(raw: Mapping[str, Any], definitions: Mapping[str, Definition]) -> tuple[str, Definition]:
    """What a submission runs: a definition of the deployed file, or a registered task with defaults (never both)."""
    if ("definition" in raw) == ("task" in raw):
        raise ApiError(400, "definition", "name a definition of the deployed file, or a task (not both)")
    if "definition" in raw:
        name = raw["definition"]
        if not isinstance(name, str) or name not in definitions:
            raise ApiError(400, "definition", f"must name a definition of the deployed file: {', '.join(sorted(definitions))}")
        return name, definitions[name]
    task = raw["task"]
    if not isinstance(task, str) or task not in tasks.registered_tasks() or not config.NAME_PATTERN.match(task):
        raise ApiError(400, "task", f"must name a task the app has: {', '.join(sorted(tasks.registered_tasks()))}")
    try:
        return task, config.task_definition(task, raw, "body")
    except ConfigError as error:
        raise _refusal(error) from None


def _refusal(error: ConfigError) -> ApiError:
    """A config rule broken by a request: a 400 naming the field, without the values sent."""
    where, _, rule = str(error).splitlines()[0].partition(": ")
    return ApiError(400, where.removeprefix("body."), _without_values(rule))


def _open(raw: Mapping[str, Any], inbox_uri: str) -> bool:
    """A submission's `open` checked: true (an open batch: no items nor source now) or absent/false."""
    if "open" not in raw or raw["open"] is False:
        return False
    if raw["open"] is not True:
        raise ApiError(400, "open", "must be true or false")
    if "items" in raw or "source" in raw:
        raise ApiError(400, "open", "must not be sent with items or source: an open batch takes its items in later calls")
    if not inbox_uri:
        raise ApiError(400, "open", "open batches need the INBOX_URI setting, which this stage does not set")
    return True


def _inline_items(raw: Mapping[str, Any], inbox_uri: str) -> list[Any] | None:
    """A submission's `items`, checked (or None): a list of 1 to MAX_INLINE_ITEMS JSON values, never with `source`."""
    if "items" not in raw:
        return None
    items = raw["items"]
    if "source" in raw:
        raise ApiError(400, "items", "must not be sent with source: a batch takes its items from one or the other")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_INLINE_ITEMS:
        raise ApiError(400, "items", f"must be a list of 1 to {MAX_INLINE_ITEMS:,} JSON values")
    if not inbox_uri:
        raise ApiError(400, "items", "inline items need the INBOX_URI setting, which this stage does not set")
    return items


def store_items(store: BatchStore, request: Submission) -> None:
    """Write a submission's inline items to its inbox object (before the batcher runs); a retry writes nothing.

    A batch that exists already (a retry) has its object; one written by another request
    under the same key is a 409, as the batch's digest would be.
    """
    if request.items is None or store.get_header(request.batch_id) is not None:
        return
    try:
        inbox.put_items(request.definition.source.uri, request.items, request.request)
    except inbox.InboxConflict:
        raise ApiError(409, "Idempotency-Key", "was used for another request: a key names one request, retried as it was") from None


def submitted(header: Mapping[str, Any], request: Submission) -> dict[str, Any]:
    """The 202's body for the batch the batcher made (or found: a retry); a 409 if the key was used for another request."""
    if header.get("request") != request.request:
        raise ApiError(409, "Idempotency-Key", "was used for another request: a key names one request, retried as it was")
    batch_id = header["batch_id"]
    return {"batch_id": batch_id, "status": header["status"], "status_url": f"/batches/{batch_id}"}


def _json_object(body: bytes | str | None) -> dict[str, Any]:
    if body is None or len(body) == 0:
        raise ApiError(400, "body", "must be a JSON object")
    if len(body) > MAX_SUBMISSION_BYTES:
        raise ApiError(413, "body", f"must be at most {MAX_SUBMISSION_BYTES:,} bytes")
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "body", "must be a JSON object") from None
    if not isinstance(raw, dict):
        raise ApiError(400, "body", "must be a JSON object")
    return raw


def _without_values(rule: str) -> str:
    """A config rule without the values it quotes (what was sent is never echoed back)."""
    rule = re.sub(r",? got .*$", "", rule)
    return re.sub(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", "the value sent", rule)


# -- authorizing (the local stage) ------------------------------------------------------------


def authorize_token(headers: Mapping[str, str], token: str) -> None:
    """`Authorization: Bearer <token>` or a 401 (compared in constant time); deployed stages use IAM instead."""
    given = (headers or {}).get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not token or not hmac.compare_digest(value.encode(), token.encode()):
        raise ApiError(401, "authorization", "must be 'Bearer <API_TOKEN>' with the local stack's token")


# -- repairing ----------------------------------------------------------------------------------

# A redrive restores failed rows until this many seconds have passed, then answers (API
# Gateway allows 29 s); the sweeper finishes a larger one from its cursor.
REDRIVE_SECONDS = 20


def redrive(store: BatchStore, batch_id: Any, settings: Settings) -> dict[str, Any]:
    """POST /batches/{id}/redrive: a new attempt for the batch's failed items (202); 404/409 say why not."""
    batch_id = batch_id_of(batch_id)
    _header(store, batch_id)
    try:
        started = restoring.start_redrive(store, batch_id, settings)
    except BatchdrainError as error:
        raise ApiError(409, "batch_id", str(error)) from None
    header = restoring.restore_failures(store, started, settings, until=time.monotonic() + REDRIVE_SECONDS)
    return {"batch_id": batch_id, "attempt": header["attempt"], "status": header["status"], "status_url": f"/batches/{batch_id}"}


# A cancel fails remaining rows for up to this many seconds, then answers; the sweeper
# finishes a larger one (a page per sweep), as it does a redrive.
CANCEL_SECONDS = 20


def cancel(store: BatchStore, batch_id: Any, settings: Settings, seconds: float = CANCEL_SECONDS) -> dict[str, Any]:
    """POST /batches/{id}/cancel: stop the items not yet run; the batch ends CANCELLED with its alert (202).

    The header is stamped `cancelled_at` (fenced on its phase and attempt; a second cancel
    keeps the first stamp and answers 202 again), then the chunk rows still pending are
    failed with reason "cancelled" for up to `seconds`. A batch that has ended is a 409.
    """
    batch_id = batch_id_of(batch_id)
    header = _header(store, batch_id)
    if header["status"] in (model.CREATING, model.SEALED):
        header = store.mark_cancelled(batch_id, header["attempt"], model.iso(model.utc_now())) or _header(store, batch_id)
        if header.get("is_open") and header.get("cancelled_at"):
            planning.seal_open(store, header)  # an open batch takes no more items once cancelled, and must seal to end
            header = _header(store, batch_id)
    if header["status"] not in (model.CREATING, model.SEALED) or not header.get("cancelled_at"):
        raise ApiError(409, "batch_id", f"the batch has ended ({header['status']}): only a batch still CREATING or SEALED can be cancelled")
    cancelling.cancel_rows(store, header, settings, until=time.monotonic() + seconds)
    return {
        "batch_id": batch_id,
        "attempt": header["attempt"],
        "status": header["status"],
        "cancelled_at": header["cancelled_at"],
        "status_url": f"/batches/{batch_id}",
    }


# -- open batches: items over several calls, then the seal ------------------------------------


def items_call(body: bytes | str | None, headers: Mapping[str, str]) -> tuple[list[Any], str, str]:
    """POST /batches/{id}/items checked: its items, the digest of its Idempotency-Key (required) and of the request."""
    raw = _json_object(body)
    if set(raw) != {"items"}:
        raise ApiError(400, "body", "must be {\"items\": [...]} and nothing else")
    items = raw["items"]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_INLINE_ITEMS:
        raise ApiError(400, "items", f"must be a list of 1 to {MAX_INLINE_ITEMS:,} JSON values")
    key = {name.lower(): value for name, value in (headers or {}).items()}.get("idempotency-key")
    if key is None or not IDEMPOTENCY_KEY.match(key):
        raise ApiError(400, "Idempotency-Key", "is required, 1-128 printable ASCII characters without spaces: one per items call")
    request = hashlib.sha256(json.dumps(items, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return items, hashlib.sha256(key.encode()).hexdigest()[:32], request


def _still_open(header: Mapping[str, Any]) -> None:
    if not header.get("is_open"):
        raise ApiError(409, "batch_id", "is not an open batch (POST /batches with \"open\": true makes one)")
    if header["status"] != model.CREATING or header.get("planned") or header.get("cancelled_at"):
        raise ApiError(409, "batch_id", f"the batch is sealed ({header['status']}): it takes no more items")


def add_items(store: BatchStore, batch_id: Any, body: bytes | str | None, headers: Mapping[str, str], settings: Settings) -> dict[str, Any]:
    """POST /batches/{id}/items: one inbox object and one segment for an open batch's items (202).

    Idempotent by the call's Idempotency-Key: a marker row records the segment the key
    added (kept `ROW_TTL_DAYS`, after the segment row is gone), so a retry adds nothing and
    the key with other items is a 409; so is a call after the seal.
    """
    batch_id = batch_id_of(batch_id)
    items, key_digest, request = items_call(body, headers)
    header = _header(store, batch_id)
    done = store.items_call(batch_id, key_digest)
    if done is None:
        _still_open(header)
        uri = inbox.object_uri(header["source"]["uri"], key_digest)
        try:
            inbox.put_items(uri, items, request)
        except inbox.InboxConflict:
            raise ApiError(409, "Idempotency-Key", "was used for other items: a key names one items call, retried as it was") from None
        obj = inbox.pinned(uri)
        now = int(model.utc_now().timestamp())
        marker = {**model.items_call_key(batch_id, key_digest), "request": request, "items": len(items), "expires_at": now + settings.row_ttl_days * 86_400}
        if planning.add_object_segment(store, header, obj, marker, settings) is None:
            done = store.items_call(batch_id, key_digest)  # a concurrent copy of this call added it
            if done is None:
                _still_open(_header(store, batch_id))
                raise ApiError(409, "batch_id", "the batch is sealed: it takes no more items")
        else:
            done = store.items_call(batch_id, key_digest)
    if done is None or done.get("request") != request:
        raise ApiError(409, "Idempotency-Key", "was used for other items: a key names one items call, retried as it was")
    segment = int(done["segment"])
    planning.send_if_waiting(store, header, segment, settings)  # a retry after a call that died before sending it
    return {"batch_id": batch_id, "segment": segment, "items": int(done["items"]), "status_url": f"/batches/{batch_id}"}


def seal(store: BatchStore, batch_id: Any) -> dict[str, Any]:
    """POST /batches/{id}/seal: an open batch takes no more items; it completes once they have run (202, again: 202)."""
    batch_id = batch_id_of(batch_id)
    header = _header(store, batch_id)
    if not header.get("is_open"):
        raise ApiError(409, "batch_id", "is not an open batch (POST /batches with \"open\": true makes one)")
    planning.seal_open(store, header)
    header = _header(store, batch_id)
    return {"batch_id": batch_id, "status": header["status"], "sealed": bool(header.get("planned")), "status_url": f"/batches/{batch_id}"}
