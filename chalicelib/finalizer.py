"""The finalizer: reads the table's stream and ends each batch exactly once.

From a stream batch it takes what the records prove: a segment row of attempt n gone
(seal attempt n once the last is gone: chalicelib.planning), chunk rows gone and a
header sealed (check those shards and complete: chalicelib.completion). TTL deletes and
other rows are ignored (invariant 6). Every step is idempotent and conditioned on what
its record proves (invariant 15), so a redelivered or replayed stream batch, or a
concurrent finalizer on the same batch, changes nothing and alerts no one twice.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from chalicelib import completion, model, planning
from chalicelib.config import Definition, Settings
from chalicelib.store import BatchStore


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
                touched[ref.batch_id] = completion.ALL_SHARDS
        elif record.get("eventName") == "REMOVE" and ref.shard is not None:
            shards = touched.setdefault(ref.batch_id, set())
            if shards is not completion.ALL_SHARDS:
                shards.add(ref.shard)
    return touched


def handle_stream_event(
    event: Mapping[str, Any], settings: Settings, definitions: Mapping[str, Definition]
) -> list[str]:
    """The Lambda handler's work for one stream batch; returns the batch ids it completed."""
    store = BatchStore(settings.table_name)
    for batch_id, attempts in segments_drained(event.get("Records", [])).items():
        for attempt in sorted(attempts):
            planning.seal_when_planned(store, batch_id, attempt)
    completed = []
    for batch_id, shards in batches_touched(event.get("Records", [])).items():
        drained = completion.check_batch(store, batch_id, shards)
        if drained is not None and completion.finish(store, drained, settings, definitions) is not None:
            completed.append(batch_id)  # None: another finalizer won, and it publishes
    return completed
