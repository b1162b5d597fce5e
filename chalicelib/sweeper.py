"""The sweeper: finds what faults left behind and finishes it (invariant 7: every batch ends).

Runs on a schedule over the sparse `open-batches` index (headers not yet notified):

- CREATING longer than a batcher can live (it died): resume creation, or the redrive;
- SEALED: check every open shard again, in case the stream record that ended the
  batch was lost (retries exhausted); and if rows remain while the work queue is idle
  for long enough, their messages were lost: send them again;
- completed but not notified, lease expired (the finalizer died, or SNS failed):
  publish the alert again with the same `alert_id`, so subscribers can deduplicate.

Every action is one the pipeline itself takes, with the same conditions: running the
sweeper twice, or beside the finalizer, changes nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from chalicelib import aws, batcher, finalizer, log, model, redrive
from chalicelib.config import Definition, Settings
from chalicelib.store import BatchStore


@dataclass
class SweepReport:
    """What one sweep did, by batch id."""

    resumed: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    resent: dict[str, int] = field(default_factory=dict)
    republished: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _age(header: Mapping[str, Any], *fields: str) -> float:
    stamps = [model.parse_iso(header[name]) for name in fields if header.get(name)]
    return (model.utc_now() - max(stamps)).total_seconds() if stamps else 0.0


def _queue_idle(settings: Settings) -> bool:
    """No message waiting, in flight or delayed on the work queue: nothing can still drain a row."""
    attributes = aws.client("sqs").get_queue_attributes(
        QueueUrl=aws.queue_url(settings.work_queue_name),
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )["Attributes"]
    return all(int(value) == 0 for value in attributes.values())


def resend_lost_messages(store: BatchStore, header: Mapping[str, Any], settings: Settings) -> int:
    """Send the message of every chunk row still in the batch; returns how many."""
    return sum(batcher.resend_rows(store, header, shard, settings) for shard in range(header["shards"]))


def sweep(settings: Settings, definitions: Mapping[str, Definition]) -> SweepReport:
    """One pass over every open batch; see the module docstring."""
    store = BatchStore(settings.table_name)
    report = SweepReport()
    queue_idle: bool | None = None
    now = int(model.utc_now().timestamp())
    for listed in store.open_batches():
        try:
            queue_idle = _sweep_batch(store, listed, settings, definitions, report, queue_idle, now)
        except Exception:
            # One batch that cannot be repaired must not keep the others from being swept.
            report.errors.append(listed["batch_id"])
            log.error("sweep of a batch failed; the next sweep tries again", exc_info=True, batch_id=listed["batch_id"])
    return report


def _sweep_batch(
    store: BatchStore,
    listed: Mapping[str, Any],
    settings: Settings,
    definitions: Mapping[str, Definition],
    report: SweepReport,
    queue_idle: bool | None,
    now: int,
) -> bool | None:
    """Repair one open batch (see the module docstring); returns what is now known of the queue."""
    batch_id, status = listed["batch_id"], listed["status"]
    if status == model.CREATING and _age(listed, "created_at", "redrive_started_at") > settings.stuck_creating_seconds:
        header = store.get_header(batch_id)
        if header and header["status"] == model.CREATING:
            log.warning("resuming a batch whose creator died", batch_id=batch_id, attempt=header["attempt"])
            if header["attempt"] == 1:
                batcher.fill_and_seal(store, header, settings)
            else:
                redrive.continue_redrive(store, header, settings)
            report.resumed.append(batch_id)
    elif status == model.SEALED:
        drained = finalizer.check_batch(store, batch_id, finalizer.ALL_SHARDS)
        if drained is not None:
            if finalizer.finish(store, drained, settings, definitions) is not None:
                report.completed.append(batch_id)
        elif _age(listed, "sealed_at") > settings.resend_after_seconds:
            queue_idle = _queue_idle(settings) if queue_idle is None else queue_idle
            if queue_idle:
                report.resent[batch_id] = resend_lost_messages(store, listed, settings)
                log.warning("re-sent messages of a stalled batch", batch_id=batch_id, chunks=report.resent[batch_id])
    elif status in model.FINAL_STATUSES and not listed.get("notified_at"):
        claimed = store.claim_notification(batch_id, now, settings.notify_lease_seconds)
        if claimed is not None and finalizer.notify(store, claimed, settings, definitions):
            report.republished.append(batch_id)
    return queue_idle
