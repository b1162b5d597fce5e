"""Alerts: the notifier's work. The completion (or FAILED) alert, built, published to SNS and recorded.

The alert is JSON for machines, a readable subject for people (email), and message
attributes `status` and `definition` so subscriptions can filter without parsing.
`alert_id` is stable per batch attempt: subscribers deduplicate on it (README
'Exactly once'). Whoever ends a batch sends its alert here: the finalizer that won the
completion, a planner that found its source unreadable, the sweeper after a lease.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from botocore.exceptions import ClientError

from chalicelib import aws, log, model, results
from chalicelib.config import Definition, Settings
from chalicelib.store import BatchStore

# SNS subjects: at most 100 printable ASCII characters.
_SUBJECT_LIMIT = 100


def alert_id(header: Mapping[str, Any]) -> str:
    return f"{header['batch_id']}/{header.get('attempt', 1)}"


def build_alert(header: Mapping[str, Any]) -> dict[str, Any]:
    """The alert body for a completed (or FAILED, or CANCELLED) batch header."""
    created = model.parse_iso(header["created_at"])
    completed = model.parse_iso(header["completed_at"])
    alert = {
        "alert_id": alert_id(header),
        "batch_id": header["batch_id"],
        "definition": header.get("definition", ""),
        "status": header["status"],
        "attempt": header.get("attempt", 1),
        "totals": {
            "items": header["total_items"],
            "succeeded": header.get("succeeded", header["total_items"]),
            "failed": header.get("failed", 0),
        },
        "sample_errors": list(header.get("sample_errors", [])),
        "created_at": header["created_at"],
        "sealed_at": header.get("sealed_at"),
        "completed_at": header["completed_at"],
        "duration_seconds": round((completed - created).total_seconds(), 3),
    }
    if header["status"] == model.CANCELLED:
        # Its items not run when it was cancelled are among `failed`, with reason "cancelled".
        alert["cancelled"] = True
        alert["cancelled_at"] = header.get("cancelled_at")
    if header["status"] == model.FAILED:
        # Nothing is known about items of a batch that could not be read: no totals, and
        # how many were already queued (they still run) when it failed.
        alert["reason"] = header.get("reason", "")
        alert["totals"] = {"items": None, "succeeded": None, "failed": None}
        alert["items_already_queued"] = header.get("total_items", 0)
    # What its items took and what it cost, as the completion wrote them (chalicelib.batchcost: an estimate).
    for name in ("item_seconds_observed", "cost"):
        if header.get(name) is not None:
            alert[name] = header[name]
    manifest = results.manifest_uri(header)
    if manifest:
        alert["manifest"] = manifest
    if header.get("results_error"):
        alert["results_error"] = header["results_error"]
    return alert


def subject_for(alert: Mapping[str, Any], prefix: str = "") -> str:
    """'batch nightly-2026-11-23T06:00Z completed: 10,000 items in 41 s'."""
    totals = alert["totals"]
    if alert["status"] == model.FAILED:
        text = f"{prefix}batch {alert['batch_id']} FAILED: {alert.get('reason', '')}"
    elif alert["status"] == model.CANCELLED:
        failed = f", {totals['failed']:,} failed or cancelled" if totals["failed"] else ""
        text = f"{prefix}batch {alert['batch_id']} CANCELLED: {totals['succeeded']:,} of {totals['items']:,} items succeeded{failed}"
    else:
        verb = "completed" if alert["status"] == model.COMPLETED else "completed with failures"
        failed = f", {totals['failed']:,} failed" if totals["failed"] else ""
        text = f"{prefix}batch {alert['batch_id']} {verb}: {totals['items']:,} items{failed} in {_duration(alert['duration_seconds'])}"
    # SNS subjects must be printable ASCII with no line breaks.
    text = "".join(char if char.isascii() and char.isprintable() else "?" for char in text)
    return text if len(text) <= _SUBJECT_LIMIT else text[: _SUBJECT_LIMIT - 3] + "..."


def _duration(seconds: float) -> str:
    """Whole seconds below 2 min, whole minutes below 2 h, else hours; rounded before the unit is chosen."""
    if round(seconds) < 120:
        return f"{round(seconds)} s"
    if round(seconds / 60) < 120:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def publish(topic_arn: str, header: Mapping[str, Any], subject_prefix: str = "") -> dict[str, Any]:
    """Publish the alert for `header`; returns the alert body."""
    alert = build_alert(header)
    aws.client("sns").publish(
        TopicArn=topic_arn,
        Subject=subject_for(alert, subject_prefix),
        Message=json.dumps(alert),
        MessageAttributes={
            "status": {"DataType": "String", "StringValue": alert["status"]},
            "definition": {"DataType": "String", "StringValue": alert["definition"] or "-"},
        },
    )
    return alert


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
        alert = publish(settings.alert_topic_arn, header, prefix)
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
