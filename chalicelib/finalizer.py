"""The finalizer: sees chunk rows disappear and completes each batch exactly once.

For every batch a stream batch touches, it checks emptiness with a strongly consistent
`Query Limit=1` per shard (invariant 3), closes emptied shards on the header, and when
none is open tries the one conditional completion write (invariant 4). Only the winner
publishes the alert. Every step is idempotent, so a redelivered stream batch or a
concurrent finalizer on the same batch changes nothing and alerts no one twice.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from botocore.exceptions import ClientError

from chalicelib import log, model, notifier, planner, results
from chalicelib.config import Definition, Settings
from chalicelib.store import BatchStore

ALL_SHARDS = None  # a seal: check every open shard of the batch


def is_ttl_delete(record: Mapping[str, Any]) -> bool:
    """TTL expiry REMOVEs are made by the DynamoDB service principal (invariant 6)."""
    identity = record.get("userIdentity") or {}
    return identity.get("type") == "Service" and identity.get("principalId") == "dynamodb.amazonaws.com"


def _status(image: Mapping[str, Any] | None) -> str | None:
    return ((image or {}).get("status") or {}).get("S")


def segments_drained(records: Iterable[Mapping[str, Any]]) -> dict[str, set[int]]:
    """Batches whose segment rows went (a planner finished one), with the attempts those rows belonged to.

    The attempt comes from the row's own old image (rows written before rows carried it
    were attempt 1's): only that attempt may be sealed because of this record.
    """
    drained: dict[str, set[int]] = {}
    for record in records:
        change = record.get("dynamodb") or {}
        keys = change.get("Keys") or {}
        ref = model.parse_key((keys.get("pk") or {}).get("S", ""), (keys.get("sk") or {}).get("S", ""))
        if ref is not None and ref.segment is not None and record.get("eventName") == "REMOVE":
            attempt = ((change.get("OldImage") or {}).get("attempt") or {}).get("N", "1")
            drained.setdefault(ref.batch_id, set()).add(int(attempt))
    return drained


def batches_touched(records: Iterable[Mapping[str, Any]]) -> dict[str, set[int] | None]:
    """Which batches (and shards) need an emptiness check: chunk REMOVEs and seals only."""
    touched: dict[str, set[int] | None] = {}
    for record in records:
        if is_ttl_delete(record):
            continue
        change = record.get("dynamodb") or {}
        keys = change.get("Keys") or {}
        ref = model.parse_key((keys.get("pk") or {}).get("S", ""), (keys.get("sk") or {}).get("S", ""))
        if ref is None:
            continue
        if ref.is_header:
            sealed_now = (
                record.get("eventName") == "MODIFY"
                and _status(change.get("NewImage")) == model.SEALED
                and _status(change.get("OldImage")) == model.CREATING
            )
            if sealed_now:
                touched[ref.batch_id] = ALL_SHARDS
        elif record.get("eventName") == "REMOVE" and ref.shard is not None:
            shards = touched.setdefault(ref.batch_id, set())
            if shards is not ALL_SHARDS:
                shards.add(ref.shard)
    return touched


def check_batch(store: BatchStore, batch_id: str, shards: set[int] | None) -> dict[str, Any] | None:
    """Close the emptied shards of `batch_id`; the header if it is now sealed and fully drained.

    The header is read first: only a SEALED batch is checked (the seal checks again),
    only its still-open shards are queried, and every close is fenced on the attempt
    seen here, because after its seal no row is added to that attempt (invariant 11).
    """
    header = store.get_header(batch_id)
    if header is None or header["status"] != model.SEALED:
        return None
    attempt = header["attempt"]
    if shards is not ALL_SHARDS:
        _note_progress(store, header)
    open_shards = set(header.get("open_shards", set()))
    if not open_shards:
        return header
    for shard in sorted(open_shards if shards is ALL_SHARDS else open_shards & shards):
        if store.shard_has_chunks(batch_id, shard):
            continue
        closed = store.close_shard(batch_id, attempt, shard)
        if closed is None:
            return None  # completed meanwhile, or a new attempt began
        if not closed.get("open_shards"):
            return closed
    return None


# The sweeper only needs to know a batch is alive within its re-send wait (minutes):
# one progress stamp a minute per batch keeps that to a handful of writes.
PROGRESS_EVERY_SECONDS = 60


def _note_progress(store: BatchStore, header: Mapping[str, Any]) -> None:
    now = model.utc_now()
    last = header.get("progress_at")
    if last is None or (now - model.parse_iso(last)).total_seconds() >= PROGRESS_EVERY_SECONDS:
        store.note_progress(header["batch_id"], header["attempt"], model.iso(now))


def complete(
    store: BatchStore, header: Mapping[str, Any], settings: Settings, sample_errors: int = 5
) -> dict[str, Any] | None:
    """The one conditional write that ends a batch; the completed header if this call won.

    Bounded work (invariant 12): the failure total is the header's `failed_items`,
    counted in the same transactions that failed the items; only the few sample errors
    are read. The winner also takes the notification lease in the same write, so no one
    else publishes while it does.
    """
    failed = int(header.get("failed_items", 0))
    samples = store.failed_samples(header["batch_id"], header["shards"], sample_errors) if failed else []
    now = model.utc_now()
    return store.complete(
        header["batch_id"],
        header["attempt"],
        model.COMPLETED_WITH_FAILURES if failed else model.COMPLETED,
        {
            "completed_at": model.iso(now),
            "succeeded": header["total_items"] - failed,
            "failed": failed,
            "sample_errors": samples,
            "notify_lease_until": int(now.timestamp()) + settings.notify_lease_seconds,
        },
    )


# Publishing tries (the finalizer's, then one per sweeper lease) before an alert goes out without
# its manifest, saying why: a results bucket that keeps failing must never hold the alert back.
MAX_NOTIFY_TRIES = 3


def notify(
    store: BatchStore, header: Mapping[str, Any], settings: Settings, definitions: Mapping[str, Definition] | None = None
) -> bool:
    """Write the results manifest (if any), publish the alert and record it.

    A manifest that cannot be written (bucket gone or denied; or any error, on the last
    try) does not hold the alert back: it goes out with `results_error` saying why.
    False (logged) if SNS or a passing S3 error failed: the sweeper does both again after the lease.
    """
    definition = (definitions or {}).get(header.get("definition", ""))
    prefix = definition.alert.subject_prefix if definition else ""
    try:
        header = _with_manifest(store, header)
        alert = notifier.publish(settings.alert_topic_arn, header, prefix)
    except Exception:
        log.error("alert not published; the sweeper retries after the lease", exc_info=True, batch_id=header["batch_id"])
        return False
    store.mark_notified(header["batch_id"], header["attempt"], model.iso(model.utc_now()), alert["alert_id"])
    log.info("alert published", batch_id=header["batch_id"], alert_id=alert["alert_id"], status=header["status"])
    return True


def _with_manifest(store: BatchStore, header: Mapping[str, Any]) -> Mapping[str, Any]:
    """Write the manifest; the header to alert from (with `results_error` if it could not be written, and no retry is left)."""
    if not results.manifest_uri(header):
        return header
    try:
        results.write_manifest(header, store.failed_rows(header["batch_id"], header["shards"]))
    except ClientError as error:
        last_try = int(header.get("notify_tries", 0)) + 1 >= MAX_NOTIFY_TRIES
        if not (results.is_permanent(error) or last_try):
            raise
        code = error.response.get("Error", {}).get("Code")
        reason = f"results manifest not written to s3://{header['results']['bucket']}: {code}"
        log.error("alert goes out without its manifest", batch_id=header["batch_id"], reason=reason)
        return {**header, "results_error": reason}
    return header


def finish(
    store: BatchStore, drained: Mapping[str, Any], settings: Settings, definitions: Mapping[str, Definition]
) -> dict[str, Any] | None:
    """Complete a drained batch and, if this call won, publish its alert; the completed header or None."""
    definition = definitions.get(drained.get("definition", ""))
    header = complete(store, drained, settings, definition.alert.sample_errors if definition else 5)
    if header is not None:
        notify(store, header, settings, definitions)
    return header


def handle_stream_event(
    event: Mapping[str, Any], settings: Settings, definitions: Mapping[str, Definition]
) -> list[str]:
    """The Lambda handler's work for one stream batch; returns the batch ids it completed."""
    store = BatchStore(settings.table_name)
    for batch_id, attempts in segments_drained(event.get("Records", [])).items():
        for attempt in sorted(attempts):
            planner.seal_when_planned(store, batch_id, attempt)
    completed = []
    for batch_id, shards in batches_touched(event.get("Records", [])).items():
        drained = check_batch(store, batch_id, shards)
        if drained is not None and finish(store, drained, settings, definitions) is not None:
            completed.append(batch_id)  # None: another finalizer won, and it publishes
    return completed
