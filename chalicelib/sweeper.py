"""The sweeper: finds what faults left behind and finishes it (invariant 7: every batch ends).

Runs on a schedule over the sparse `open-batches` index (headers not yet notified):

- CREATING longer than a batcher can live (it died): resume creation, or the redrive;
- SEALED: check every open shard again, in case the stream record that ended the
  batch was lost (retries exhausted); and if rows remain but none of the batch's rows
  drained for RESEND_AFTER_SECONDS (doubling after each re-send), their messages were
  lost or are stuck: send them again. Progress is the batch's own (`progress_at`, kept
  by the finalizer), not the shared queue's depth, which is never zero under traffic;
- cancelled but still CREATING or SEALED: fail a page of its chunk rows left pending
  (the API call ran out of time, or a planner wrote rows after it looked), then go on
  as for any batch in that phase;
- completed but not notified, lease expired (the finalizer died, or SNS failed):
  publish the alert again with the same `alert_id`, so subscribers can deduplicate.

Every action is one the pipeline itself takes, with the same conditions: running the
sweeper twice, or beside the finalizer, changes nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from chalicelib import alerts, cancelling, completion, log, model, planning, restoring, sources, work
from chalicelib.config import Definition, Settings
from chalicelib.store import BatchStore


@dataclass
class SweepReport:
    """What one sweep did, by batch id."""

    resumed: list[str] = field(default_factory=list)
    cancelled: dict[str, int] = field(default_factory=dict)
    completed: list[str] = field(default_factory=list)
    resent: dict[str, int] = field(default_factory=dict)
    republished: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _age(header: Mapping[str, Any], *fields: str) -> float:
    stamps = [model.parse_iso(header[name]) for name in fields if header.get(name)]
    return (model.utc_now() - max(stamps)).total_seconds() if stamps else 0.0


def _stalled(header: Mapping[str, Any], settings: Settings) -> bool:
    """No row of the batch drained since the seal, the last progress or the last re-send, for long enough.

    The wait doubles with every re-send, so a batch that is only slow (a deep backlog)
    gets a few duplicate messages at most, never one set per sweep.
    """
    quiet = _age(header, "sealed_at", "progress_at", "resent_at")
    return quiet > settings.resend_after_seconds * 2 ** int(header.get("resends", 0))


# Chunk rows one sweep sends again for one batch, and bytes of source it may read to rebuild
# them (a gzip object is read from its start for each chunk): a round over a large batch goes
# a page per sweep, so one stalled batch never keeps the others from being swept (invariant 16).
RESEND_PAGE_CHUNKS = 200
RESEND_PAGE_READ_BYTES = 256 * 1024 * 1024


def resend_page(store: BatchStore, header: Mapping[str, Any], cursor: str, settings: Settings) -> int:
    """Send again the messages of the next page of chunk rows after `cursor`; how many (0 if a rival took the page).

    The page is claimed (the header's cursor moved past it) before it is sent, so two
    overlapping sweeps never send one page twice; a sweep that dies after the claim leaves
    its page to the next round.
    """
    rows, more = _page_after(store, header, cursor)
    last = _cursor(rows[-1]["shard"], rows[-1]["chunk_no"]) if more else None
    if not store.move_resend_cursor(header["batch_id"], header["attempt"], cursor, last):
        return 0
    return work.resend_rows(store, header, rows, settings)


def _cursor(shard: int, chunk_no: int) -> str:
    return f"{shard}:{chunk_no}"


def _page_after(store: BatchStore, header: Mapping[str, Any], cursor: str) -> tuple[list[dict[str, Any]], bool]:
    """The chunk rows of the open shards after `cursor` ("": from the start), in (shard, chunk) order, up to
    RESEND_PAGE_CHUNKS and RESEND_PAGE_READ_BYTES of rebuilding; and whether the page stopped short of the end."""
    shard, after = (int(part) for part in cursor.split(":")) if cursor else (-1, -1)
    rows: list[dict[str, Any]] = []
    read = 0
    for current in sorted(number for number in header.get("open_shards", ()) if number >= shard):
        for row in store.chunk_rows(header["batch_id"], current, after if current == shard else -1, RESEND_PAGE_CHUNKS - len(rows)):
            read += sources.rebuild_bytes(row.get("span"))
            if rows and read > RESEND_PAGE_READ_BYTES:
                return rows, True
            rows.append(row)
        if len(rows) == RESEND_PAGE_CHUNKS:
            return rows, True
    return rows, False


def sweep(settings: Settings, definitions: Mapping[str, Definition]) -> SweepReport:
    """One pass over every open batch; see the module docstring."""
    store = BatchStore(settings.table_name)
    report = SweepReport()
    now = int(model.utc_now().timestamp())
    for listed in store.open_batches():
        try:
            _sweep_batch(store, listed, settings, definitions, report, now)
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
    now: int,
) -> None:
    """Repair one open batch (see the module docstring)."""
    batch_id, status = listed["batch_id"], listed["status"]
    if listed.get("cancelled_at") and status in (model.CREATING, model.SEALED):
        _cancel_page(store, batch_id, settings, report)
    stuck = _age(listed, "created_at", "redrive_started_at", "progress_at") > settings.stuck_creating_seconds
    if status == model.CREATING and stuck:
        header = store.get_header(batch_id)
        if header and header["status"] == model.CREATING:
            log.warning("resuming a batch whose creator died", batch_id=batch_id, attempt=header["attempt"])
            if header["attempt"] == 1:
                planning.resume(store, header, settings)
            else:
                restoring.restore_failures(store, header, settings)
            report.resumed.append(batch_id)
    elif status == model.SEALED:
        drained = completion.check_batch(store, batch_id, completion.ALL_SHARDS)
        if drained is not None:
            if completion.finish(store, drained, settings, definitions) is not None:
                report.completed.append(batch_id)
        else:
            _resend_if_stalled(store, batch_id, settings, report)
    elif status in model.FINAL_STATUSES and not listed.get("notified_at"):
        claimed = store.claim_notification(batch_id, now, settings.notify_lease_seconds)
        if claimed is not None and alerts.notify(store, claimed, settings, definitions):
            report.republished.append(batch_id)


# Chunk rows of a cancelled batch one sweep fails (each one transaction): bounded work per batch.
CANCEL_PAGE_ROWS = 200


def _cancel_page(store: BatchStore, batch_id: str, settings: Settings, report: SweepReport) -> None:
    """A page of a cancelled batch's chunk rows failed with reason "cancelled" (see chalicelib.cancelling)."""
    header = store.get_header(batch_id)
    if header is None or header["status"] not in (model.CREATING, model.SEALED) or not header.get("cancelled_at"):
        return
    cancelled = cancelling.cancel_rows(store, header, settings, max_rows=CANCEL_PAGE_ROWS)
    if cancelled:
        report.cancelled[batch_id] = cancelled
        log.warning("cancelled rows of a cancelled batch", batch_id=batch_id, chunks=cancelled)


def _resend_if_stalled(store: BatchStore, batch_id: str, settings: Settings, report: SweepReport) -> None:
    """A page of a stalled sealed batch's messages: the next page of a round under way, or the first of a new round."""
    header = store.get_header(batch_id)
    if header is None or header["status"] != model.SEALED:
        return
    cursor = header.get("resend_cursor")
    if cursor is None:
        if not _stalled(header, settings):
            return
        if not store.note_resend(batch_id, header["attempt"], int(header.get("resends", 0)), model.iso(model.utc_now())):
            return
        cursor = ""
    report.resent[batch_id] = resend_page(store, header, cursor, settings)
    log.warning("re-sent messages of a stalled batch", batch_id=batch_id, chunks=report.resent[batch_id])
