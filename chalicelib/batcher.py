"""The batcher: turns a definition and a schedule slot into a batch, planned.

It checks what it can before anything is written (the task exists, a generated item fits
a message), then hands the header to chalicelib.planning, which writes it and the
segment rows in one short step; planners write the chunk rows and messages in parallel.
Order matters (README 'Invariants'): header (CREATING) -> chunk rows -> their messages ->
seal. A row always exists before its message (1); the seal comes after the last row (2),
and only the seal lets the finalizer complete the batch.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping

from chalicelib import model, planning, sizing, sources, work
from chalicelib.config import Definition, EventSourceSettings, Settings
from chalicelib.store import BatchStore
from chalicelib.tasks import get_task


def create_scheduled_batch(
    definition: Definition, scheduled_time: str, settings: Settings, event_sources: EventSourceSettings | None = None
) -> dict[str, Any]:
    """Create the batch for one schedule slot (`scheduled_time` is the event's `time`).

    The batch id comes from the slot, so EventBridge's at-least-once delivery creates
    one batch per slot: a duplicate finds the header and writes nothing.
    """
    return create_batch(definition, model.parse_iso(scheduled_time), settings, event_sources=event_sources)


def create_batch(
    definition: Definition,
    scheduled_at: datetime,
    settings: Settings,
    batch_id: str | None = None,
    request: str | None = None,
    open_batch: bool = False,
    event_sources: EventSourceSettings | None = None,
) -> dict[str, Any]:
    """Create and plan one batch; returns its header (the existing one on a duplicate).

    Planners then write its chunks, and the finalizer seals it when the last segment is done.
    A scheduled batch's id is its definition and slot; a submitted one (POST /batches)
    brings its own `batch_id` and the digest of its `request`, kept on the header so a
    retried request is recognised and a different one under the same key is not. An
    `open_batch` (POST /batches with "open") is created with no segment: its items come
    in later calls, and it is planned when they are sealed (chalicelib.planning).
    K is the definition's, or chosen for this batch (chalicelib.sizing) from the
    processor's settings (`event_sources`, read from the environment if not given).
    """
    batch_id = batch_id or model.batch_id_for(definition.name, scheduled_at)
    get_task(definition.task)  # an unknown task is rejected before anything is written
    store = BatchStore(settings.table_name)
    header: dict[str, Any] = {
        "batch_id": batch_id,
        "definition": definition.name,
        "task": definition.task,
        "task_options": model.encode_options(definition.task_options),
        "source": sources.source_record(definition.source),
        **sizing.header_fields(_choose_k(store, definition, settings, event_sources)),
        "item_seconds": definition.item_seconds,
        "max_message_bytes": settings.max_message_bytes,
        "scheduled_at": model.iso(scheduled_at),
        "attempt": 1,
    }
    if request is not None:
        header["request"] = request
    if definition.results is not None:
        header["results"] = {"bucket": definition.results.bucket, "prefix": definition.results.prefix}
    if not sources.is_object_source(definition.source):
        _check_generated_items_fit(header)
    header["created_at"] = model.iso(model.utc_now())
    if open_batch:
        return planning.open_batch(store, header, settings)
    return planning.plan_batch(store, header, sources.resolve_uri(definition.source, scheduled_at), settings)


# A previous batch's observed p99 sizes K only once it saw this many items.
MIN_OBSERVED_ITEMS = 100


def _choose_k(
    store: BatchStore, definition: Definition, settings: Settings, event_sources: EventSourceSettings | None
) -> sizing.KChoice:
    """The definition's pinned K, or the largest the limits allow at the item time last observed (or declared)."""
    if definition.items_per_message is not None:
        return sizing.choose_k(definition, None, settings.max_message_bytes)
    observed = store.last_observed(definition.name)
    if observed is None or int(observed.get("count", 0)) < MIN_OBSERVED_ITEMS:
        observed = None
    return sizing.choose_k(
        definition,
        event_sources or EventSourceSettings.from_env(),
        settings.max_message_bytes,
        observed_seconds=sizing.seconds_of(observed["p99"]) if observed else None,
        observed_from=observed["batch_id"] if observed else None,
    )


def _check_generated_items_fit(header: Mapping[str, Any]) -> None:
    """Reject, before anything is written, a generated batch whose items cannot be sent.

    Chunks are cut by size before K, so if the largest possible item fits alone, every
    chunk fits. Raises BadRequestError naming it.
    """
    source = sources.source_from_record(header["source"])
    next(model.cut_entries([sources.largest_item(source)], number=lambda local: (0, 0), **work.chunk_settings(header)))
