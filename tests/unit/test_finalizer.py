"""The finalizer: completes a sealed, fully drained batch exactly once and publishes one alert.

Stream records are built in the shape Lambda delivers them (eventName, typed Keys and
images, userIdentity on TTL deletes); the last tests use the records moto's stream holds.
"""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chalicelib import aws as aws_clients
from chalicelib import completion, finalizer, model, processor
from chalicelib.config import Alert, Definition, Settings
from chalicelib.store import BatchStore, to_item

from .conftest import PLACEHOLDER_STREAM_ARN, MockedAws, create_sealed_batch, cut_generated, sqs_event

SLOT = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
BATCH_ID = "nightly-2026-11-23T06:00Z"
TTL_SERVICE = {"type": "Service", "principalId": "dynamodb.amazonaws.com"}


# -- stream records in the shape Lambda delivers ---------------------------------------------------


def stream_record(
    event_name: str,
    keys: dict[str, Any],
    *,
    new: dict[str, Any] | None = None,
    old: dict[str, Any] | None = None,
    user_identity: dict[str, str] | None = None,
) -> dict[str, Any]:
    change: dict[str, Any] = {
        "ApproximateCreationDateTime": 1795500000.0,
        "Keys": to_item(keys),
        "SequenceNumber": str(uuid.uuid4().int)[:21],
        "SizeBytes": 120,
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    }
    if new is not None:
        change["NewImage"] = to_item({**keys, **new})
    if old is not None:
        change["OldImage"] = to_item({**keys, **old})
    record = {
        "eventID": uuid.uuid4().hex,
        "eventName": event_name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": change,
        "eventSourceARN": PLACEHOLDER_STREAM_ARN,
    }
    if user_identity is not None:
        record["userIdentity"] = user_identity
    return record


def chunk_removed(batch_id: str, shard: int, chunk_no: int, *, ttl: bool = False) -> dict[str, Any]:
    return stream_record(
        "REMOVE",
        model.chunk_key(batch_id, shard, chunk_no),
        old={"pending": {chunk_no * 100}, "attempt": 1, "tries": {}, "errors": {}},
        user_identity=TTL_SERVICE if ttl else None,
    )


def header_changed(batch_id: str, old_status: str, new_status: str, event_name: str = "MODIFY") -> dict[str, Any]:
    return stream_record(
        event_name,
        model.header_key(batch_id),
        old={"batch_id": batch_id, "status": old_status} if event_name != "INSERT" else None,
        new={"batch_id": batch_id, "status": new_status} if event_name != "REMOVE" else None,
    )


def event(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {"Records": list(records)}


# -- fixtures and helpers ----------------------------------------------------------------------------


@pytest.fixture
def definitions(nightly: Definition) -> dict[str, Definition]:
    return {"nightly": nightly}


@pytest.fixture
def sealed_batch(aws: MockedAws, nightly: Definition, settings: Settings) -> dict[str, Any]:
    """A sealed batch: 1,000 items, 10 chunk rows on shard 0, messages discarded."""
    header = create_sealed_batch(nightly, SLOT, settings)
    aws.work_messages()
    return header


def drain(aws: MockedAws, chunk_nos: Iterable[int], shards: int = 1, batch_id: str = BATCH_ID) -> list[dict[str, Any]]:
    """Delete chunk rows as the processor would; the REMOVE records their deletion streams."""
    records = []
    for chunk_no in chunk_nos:
        aws.delete_chunk_row(batch_id, chunk_no % shards, chunk_no)
        records.append(chunk_removed(batch_id, chunk_no % shards, chunk_no))
    return records


def finalize(settings: Settings, definitions: dict[str, Definition], records: Iterable[dict[str, Any]]) -> list[str]:
    return finalizer.handle_stream_event(event(records), settings, definitions)


def watch_queries(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every Query the code makes from now on, as called."""
    queries: list[dict[str, Any]] = []
    client = aws_clients.client("dynamodb")
    real_query = client.query
    monkeypatch.setattr(client, "query", lambda **kwargs: queries.append(kwargs) or real_query(**kwargs))
    return queries


def shards_queried(queries: list[dict[str, Any]]) -> list[int]:
    """The shards whose chunk rows were queried, in order."""
    values = [q["ExpressionAttributeValues"] for q in queries]
    return [int(value[":pk"]["S"].rpartition("#")[2]) for value in values if ":chunk" in value]


# -- completion --------------------------------------------------------------------------------------


def test_completes_a_sealed_batch_once_every_chunk_row_is_gone_and_alerts_once(
    aws: MockedAws, sealed_batch, settings: Settings, definitions
):
    completed = finalize(settings, definitions, drain(aws, range(10)))

    assert completed == [BATCH_ID]
    header = aws.header(BATCH_ID)
    assert header["status"] == model.COMPLETED
    assert (header["succeeded"], header["failed"]) == (1000, 0)
    assert "open_shards" not in header
    assert header["completed_at"] >= header["sealed_at"]
    assert header["notified_at"] >= header["completed_at"]
    assert header["alert_id"] == f"{BATCH_ID}/1"

    (alert,) = aws.alerts()
    assert re.fullmatch(rf"batch {BATCH_ID} completed: 1,000 items in \d+ s", alert["Subject"])
    assert alert["MessageAttributes"] == {
        "status": {"Type": "String", "Value": "COMPLETED"},
        "definition": {"Type": "String", "Value": "nightly"},
    }
    body = json.loads(alert["Message"])
    assert body["alert_id"] == f"{BATCH_ID}/1"
    assert body["batch_id"] == BATCH_ID
    assert body["definition"] == "nightly"
    assert body["status"] == "COMPLETED"
    assert body["totals"] == {"items": 1000, "succeeded": 1000, "failed": 0}
    assert (body["created_at"], body["sealed_at"], body["completed_at"]) == (
        header["created_at"],
        header["sealed_at"],
        header["completed_at"],
    )
    assert body["duration_seconds"] >= 0


def test_completes_on_the_stream_batch_that_removes_the_last_row(aws: MockedAws, sealed_batch, settings, definitions):
    assert finalize(settings, definitions, drain(aws, range(4))) == []
    assert finalize(settings, definitions, drain(aws, range(4, 9))) == []
    assert aws.alerts() == []

    assert finalize(settings, definitions, drain(aws, [9])) == [BATCH_ID]
    assert len(aws.alerts()) == 1


def test_alert_subject_carries_the_definition_prefix(aws: MockedAws, sealed_batch, settings, nightly: Definition):
    definitions = {"nightly": dataclasses.replace(nightly, alert=Alert(subject_prefix="[prod] "))}

    finalize(settings, definitions, drain(aws, range(10)))

    (alert,) = aws.alerts()
    assert alert["Subject"].startswith(f"[prod] batch {BATCH_ID} completed: 1,000 items")


# -- never premature ---------------------------------------------------------------------------------


def test_does_not_complete_while_a_chunk_row_remains(aws: MockedAws, sealed_batch, settings, definitions):
    """Invariant 3: the table decides, not the records; even a REMOVE for the last row that is still there."""
    records = drain(aws, range(9)) + [chunk_removed(BATCH_ID, 0, 9)]  # chunk 9's row still exists

    assert finalize(settings, definitions, records) == []

    header = aws.header(BATCH_ID)
    assert header["status"] == model.SEALED
    assert header["open_shards"] == {0}
    assert aws.alerts() == []


def test_does_not_complete_an_unsealed_batch_and_the_seal_completes_it(
    aws: MockedAws, nightly: Definition, settings: Settings, definitions, monkeypatch: pytest.MonkeyPatch
):
    """Invariant 2: every row was drained before the seal; the seal's own stream record ends the batch."""
    store = BatchStore(settings.table_name)
    chunks = cut_generated(
        range(1000), batch_id=BATCH_ID, task="sleep", options={}, items_per_message=100, max_message_bytes=settings.max_message_bytes
    )
    store.create_header(
        {
            "batch_id": BATCH_ID,
            "definition": "nightly",
            "task": "sleep",
            "created_at": model.iso(model.utc_now()),
            "total_items": 1000,
            "total_chunks": 10,
            "shards": 1,
            "attempt": 1,
        }
    )
    store.put_chunks(chunks, attempt=1)
    queries = watch_queries(monkeypatch)

    assert finalize(settings, definitions, drain(aws, range(10))) == []
    assert aws.header(BATCH_ID)["status"] == model.CREATING
    assert queries == []  # the header is read first: an unsealed batch's shards are not even queried
    assert aws.alerts() == []

    assert store.seal(BATCH_ID, 1, {0}, model.iso(model.utc_now())) is True
    completed = finalize(settings, definitions, [header_changed(BATCH_ID, model.CREATING, model.SEALED)])

    assert completed == [BATCH_ID]
    assert aws.header(BATCH_ID)["status"] == model.COMPLETED
    assert len(aws.alerts()) == 1


def test_seal_record_does_not_complete_a_batch_with_rows_left(aws: MockedAws, sealed_batch, settings, definitions):
    drain(aws, range(9))

    assert finalize(settings, definitions, [header_changed(BATCH_ID, model.CREATING, model.SEALED)]) == []
    assert aws.header(BATCH_ID)["status"] == model.SEALED
    assert aws.alerts() == []


# -- records to ignore (invariant 6) ------------------------------------------------------------------------


def test_ttl_expiry_of_chunk_rows_does_not_complete_the_batch(aws: MockedAws, sealed_batch, settings, definitions):
    """Chunk rows carry no TTL any more (a row leaves only when its items are done or failed), but a
    REMOVE made by the TTL service is still never taken for a drained row: such rows were never processed."""
    assert not [row for row in aws.chunk_rows(BATCH_ID) if "expires_at" in row]
    for chunk_no in range(10):
        aws.delete_chunk_row(BATCH_ID, 0, chunk_no)  # as TTL would
    ttl_records = [chunk_removed(BATCH_ID, 0, chunk_no, ttl=True) for chunk_no in range(10)]

    assert finalize(settings, definitions, ttl_records) == []

    header = aws.header(BATCH_ID)
    assert header["status"] == model.SEALED
    assert header["open_shards"] == {0}
    assert aws.alerts() == []


def test_is_ttl_delete_needs_both_the_service_type_and_the_dynamodb_principal():
    assert finalizer.is_ttl_delete(chunk_removed(BATCH_ID, 0, 0, ttl=True))
    assert not finalizer.is_ttl_delete(chunk_removed(BATCH_ID, 0, 0))
    assert not finalizer.is_ttl_delete({"userIdentity": {"type": "Service", "principalId": "lambda.amazonaws.com"}})
    assert not finalizer.is_ttl_delete({"userIdentity": {"type": "User", "principalId": "dynamodb.amazonaws.com"}})


def test_records_for_unrelated_rows_are_ignored(aws: MockedAws, sealed_batch, settings, definitions):
    """Every row is gone, so any of these records, wrongly acted on, would complete the batch."""
    for chunk_no in range(10):
        aws.delete_chunk_row(BATCH_ID, 0, chunk_no)
    chunk_0 = model.chunk_key(BATCH_ID, 0, 0)
    unrelated = [
        stream_record("INSERT", chunk_0, new={"pending": {0, 1}}),  # a chunk row written
        stream_record("MODIFY", chunk_0, old={"pending": {0, 1}}, new={"pending": {1}}),  # an item drained
        stream_record("REMOVE", {"pk": f"B#{BATCH_ID}#0", "sk": "F#00000000"}, old={"failed": {3}}),  # failed row
        stream_record("REMOVE", {"pk": "ORDER#42", "sk": "C#00000001"}, old={"x": "y"}),  # another app's row
        stream_record("REMOVE", {"pk": f"B#{BATCH_ID}#0", "sk": "X#1"}, old={"x": "y"}),
        header_changed(BATCH_ID, model.CREATING, model.CREATING, event_name="INSERT"),  # header created
        header_changed(BATCH_ID, model.SEALED, model.SEALED),  # a shard closed
        header_changed(BATCH_ID, model.SEALED, model.COMPLETED),  # another batch's completion
        header_changed(BATCH_ID, model.SEALED, model.SEALED, event_name="REMOVE"),  # header deleted
    ]

    assert finalizer.batches_touched(unrelated) == {}
    assert finalize(settings, definitions, unrelated) == []
    assert aws.header(BATCH_ID)["status"] == model.SEALED
    assert aws.alerts() == []

    assert finalize(settings, definitions, [chunk_removed(BATCH_ID, 0, 9)]) == [BATCH_ID]  # it was completable


def test_records_of_a_batch_without_a_header_change_nothing(aws: MockedAws, settings, definitions):
    assert finalize(settings, definitions, [chunk_removed("ghost-2026-11-23T06:00Z", 0, 0)]) == []
    assert (
        finalize(settings, definitions, [header_changed("ghost-2026-11-23T06:00Z", model.CREATING, model.SEALED)]) == []
    )
    assert aws.rows() == []
    assert aws.alerts() == []


# -- exactly once ----------------------------------------------------------------------------------------------


def test_same_stream_batch_delivered_twice_alerts_once(aws: MockedAws, sealed_batch, settings, definitions):
    records = drain(aws, range(10))
    assert finalize(settings, definitions, records) == [BATCH_ID]
    header_after_first = aws.header(BATCH_ID)

    assert finalize(settings, definitions, records) == []

    assert aws.header(BATCH_ID) == header_after_first
    assert len(aws.alerts()) == 1


def test_racing_finalizers_check_and_complete_interleaved_only_one_wins(aws: MockedAws, sealed_batch, settings):
    """Invariant 4: both see the batch drained; the conditional write lets exactly one complete it."""
    drain(aws, range(10))
    store = BatchStore(settings.table_name)

    seen_by_first = completion.check_batch(store, BATCH_ID, {0})
    seen_by_second = completion.check_batch(store, BATCH_ID, {0})
    assert seen_by_first is not None and seen_by_second is not None

    wins = [completion.complete(store, seen_by_first, settings), completion.complete(store, seen_by_second, settings)]

    assert [won is not None for won in wins] == [True, False]
    assert aws.header(BATCH_ID)["status"] == model.COMPLETED


@pytest.mark.parametrize("second_starts", ["before_first_completes", "after_first_completes"])
def test_racing_finalizers_publish_exactly_one_alert(
    aws: MockedAws, sealed_batch, settings, definitions, monkeypatch: pytest.MonkeyPatch, second_starts: str
):
    """Two finalizers get the last REMOVE (a retried stream batch overlapping a new one).

    The second runs, start to finish, inside the first: right before the first's completion
    write, or right after it and before its publish. Threads would race the same way, but
    moto's conditional writes are not atomic across threads, so the interleaving is forced.
    """
    records = drain(aws, range(10))
    real_complete = completion.complete
    second: list[list[str]] = []
    rival_started = False

    def run_rival() -> None:
        nonlocal rival_started
        if not rival_started:
            rival_started = True
            second.append(finalize(settings, definitions, records))

    def complete_with_a_rival(store, header, *args):
        if second_starts == "before_first_completes":
            run_rival()
        won = real_complete(store, header, *args)
        if second_starts == "after_first_completes":
            run_rival()
        return won

    monkeypatch.setattr(completion, "complete", complete_with_a_rival)

    first = finalize(settings, definitions, records)

    assert sorted(first + second[0]) == [BATCH_ID]
    assert len(aws.alerts()) == 1
    assert aws.header(BATCH_ID)["status"] == model.COMPLETED


# -- shards --------------------------------------------------------------------------------------------------


def test_multi_shard_batch_completes_only_after_every_shard_is_empty(
    aws: MockedAws, nightly: Definition, settings: Settings, definitions, monkeypatch: pytest.MonkeyPatch
):
    settings = dataclasses.replace(settings, shard_chunk_target=3)
    create_sealed_batch(nightly, SLOT, settings)
    assert aws.header(BATCH_ID)["open_shards"] == {0, 1, 2, 3}

    # Shards 0, 1 and 2 empty (chunk n is on shard n % 4); shard 3 still holds chunks 3 and 7.
    assert finalize(settings, definitions, drain(aws, [0, 1, 2, 4, 5, 6, 8, 9], shards=4)) == []
    assert aws.header(BATCH_ID)["open_shards"] == {3}
    queries = watch_queries(monkeypatch)
    # A redelivered REMOVE of a closed shard queries nothing; the seal's record only what is still open.
    assert finalize(settings, definitions, [chunk_removed(BATCH_ID, 0, 0)]) == []
    assert shards_queried(queries) == []
    assert finalize(settings, definitions, [header_changed(BATCH_ID, model.CREATING, model.SEALED)]) == []
    assert shards_queried(queries) == [3]
    assert finalize(settings, definitions, drain(aws, [3], shards=4)) == []
    assert aws.header(BATCH_ID)["status"] == model.SEALED
    assert aws.alerts() == []

    assert finalize(settings, definitions, drain(aws, [7], shards=4)) == [BATCH_ID]
    assert aws.header(BATCH_ID)["status"] == model.COMPLETED
    assert len(aws.alerts()) == 1


def test_multi_shard_batch_drained_before_its_seal_completes_on_the_seal(
    aws: MockedAws, nightly: Definition, settings: Settings, definitions
):
    settings = dataclasses.replace(settings, shard_chunk_target=3)
    create_sealed_batch(nightly, SLOT, settings)
    drain(aws, range(10), shards=4)  # their REMOVE records were processed while the batch was CREATING

    assert finalize(settings, definitions, [header_changed(BATCH_ID, model.CREATING, model.SEALED)]) == [BATCH_ID]
    assert len(aws.alerts()) == 1


def test_emptiness_is_a_strongly_consistent_query_of_one_row(
    aws: MockedAws, sealed_batch, settings, definitions, monkeypatch: pytest.MonkeyPatch
):
    """Invariant 3: an eventually consistent read could see a deleted row as present, or worse, the reverse."""
    queries = watch_queries(monkeypatch)

    finalize(settings, definitions, drain(aws, range(10)))

    emptiness_checks = [q for q in queries if ":chunk" in q["ExpressionAttributeValues"]]
    assert emptiness_checks, "the finalizer must query the shard"
    assert all(q["ConsistentRead"] is True and q["Limit"] == 1 for q in emptiness_checks)


# -- attempt fencing (invariant 11) and progress ---------------------------------------------------------------


def test_writes_made_for_another_attempt_change_nothing(aws: MockedAws, sealed_batch, settings):
    """A finalizer or sweeper that read attempt 2 (or a stale one that read attempt 0) cannot touch attempt 1."""
    drain(aws, range(10))
    store = BatchStore(settings.table_name)
    header_before = aws.header(BATCH_ID)
    fields = {"completed_at": model.iso(model.utc_now()), "succeeded": 1000, "failed": 0}

    for attempt in (0, 2):
        assert store.close_shard(BATCH_ID, attempt, 0) is None
    assert aws.header(BATCH_ID) == header_before
    closed = store.close_shard(BATCH_ID, 1, 0)
    assert closed is not None and "open_shards" not in closed  # the attempt it read: closed
    for attempt in (0, 2):
        assert store.complete(BATCH_ID, attempt, model.COMPLETED, fields) is None
    assert aws.header(BATCH_ID)["status"] == model.SEALED
    assert store.complete(BATCH_ID, 1, model.COMPLETED, fields)["status"] == model.COMPLETED
    for attempt in (0, 2):
        assert store.mark_notified(BATCH_ID, attempt, model.iso(model.utc_now()), f"{BATCH_ID}/{attempt}") is False
    assert "notified_at" not in aws.header(BATCH_ID)
    assert store.mark_notified(BATCH_ID, 1, model.iso(model.utc_now()), f"{BATCH_ID}/1") is True
    assert store.mark_notified(BATCH_ID, 1, model.iso(model.utc_now()), f"{BATCH_ID}/1") is False  # once


def test_a_chunk_remove_stamps_the_batchs_progress_at_most_once_a_minute(
    aws: MockedAws, sealed_batch, settings, definitions, monkeypatch: pytest.MonkeyPatch
):
    """`progress_at` is the sweeper's sign that the batch is still draining (a seal is no progress)."""
    planned_at = aws.header(BATCH_ID)["progress_at"]  # the planner's last segment
    start = model.parse_iso(planned_at).replace(second=0, microsecond=0) + timedelta(minutes=5)
    now = start
    monkeypatch.setattr(model, "utc_now", lambda: now)

    finalize(settings, definitions, [header_changed(BATCH_ID, model.CREATING, model.SEALED)])
    assert aws.header(BATCH_ID)["progress_at"] == planned_at

    finalize(settings, definitions, drain(aws, [0]))
    assert aws.header(BATCH_ID)["progress_at"] == model.iso(start)

    now = start + timedelta(seconds=59)
    finalize(settings, definitions, drain(aws, [1]))
    assert aws.header(BATCH_ID)["progress_at"] == model.iso(start)  # one write a minute at most

    now = start + timedelta(seconds=60)
    finalize(settings, definitions, drain(aws, [2]))
    assert aws.header(BATCH_ID)["progress_at"] == model.iso(start + timedelta(seconds=60))


# -- real stream records, end to end ------------------------------------------------------------------------


def test_whole_pipeline_on_moto_stream_records_alerts_exactly_once(
    aws: MockedAws, nightly: Definition, settings: Settings, definitions
):
    """Batcher -> processor -> the records the table really streamed -> finalizer, delivered twice."""
    create_sealed_batch(nightly, SLOT, settings)
    result = processor.handle_sqs_event(sqs_event(aws.work_messages()), settings)
    assert result == {"batchItemFailures": []}

    records = aws.stream_records()
    assert {r["eventName"] for r in records} == {"INSERT", "MODIFY", "REMOVE"}
    completed = [
        batch
        for start in range(0, len(records), 7)
        for batch in finalize(settings, definitions, records[start : start + 7])
    ]

    assert completed == [BATCH_ID]
    # The finalizer's own writes stream too; they, and a replay of everything, change nothing.
    assert finalize(settings, definitions, aws.stream_records()) == []
    assert finalize(settings, definitions, records) == []
    assert len(aws.alerts()) == 1
    assert aws.header(BATCH_ID)["status"] == model.COMPLETED
