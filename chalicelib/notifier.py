"""The notifier: the completion alert, published to SNS by the finalizer that won.

The alert is JSON for machines, a readable subject for people (email), and message
attributes `status` and `definition` so subscriptions can filter without parsing.
`alert_id` is stable per batch attempt: subscribers deduplicate on it (README
'Exactly once').
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from chalicelib import aws, model, results

# SNS subjects: at most 100 printable ASCII characters.
_SUBJECT_LIMIT = 100


def alert_id(header: Mapping[str, Any]) -> str:
    return f"{header['batch_id']}/{header.get('attempt', 1)}"


def build_alert(header: Mapping[str, Any]) -> dict[str, Any]:
    """The alert body for a completed (or FAILED) batch header."""
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
    if header["status"] == model.FAILED:
        # Nothing is known about items of a batch that could not be read: no totals, and
        # how many were already queued (they still run) when it failed.
        alert["reason"] = header.get("reason", "")
        alert["totals"] = {"items": None, "succeeded": None, "failed": None}
        alert["items_already_queued"] = header.get("total_items", 0)
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
