"""Redrive: a COMPLETED_WITH_FAILURES batch whose alert is out re-runs its failed items as attempt n+1.

F rows of earlier attempts turn back into chunk rows of attempt n+1 (with fresh item
attempts) in groups, each group one transaction that also moves the header's
`redrive_cursor` and lists the group as `unsent` until its messages, rebuilt from
the source by index, are sent. The batch is then sealed on all its shards and completes
as usual with one new alert (`.../n+1`). A redrive that dies half way is finished from
its cursor without losing or doubling a chunk.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from chalicelib import finalizer, model, processor, redrive, restoring, sweeper, work
from chalicelib.config import Definition, Settings
from chalicelib.errors import BatchdrainError
from chalicelib.store import BatchStore
from chalicelib.tasks import task

from .conftest import Clock, MockedAws, create_sealed_batch, sqs_event

SLOT = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
BATCH_ID = "nightly-2026-11-23T06:00Z"
TASK = "unit-redrive"
# Items that fail on attempt 1, by chunk (chunk n holds items 100n..100n+99).
FAILED_ITEMS = {2: {205, 250}, 5: {512}, 7: {731}}

CALLS: list[int] = []
FAILING: set[int] = set()


@task(TASK)
def flaky(item: dict, options: Mapping[str, Any]) -> None:
    """Records every run; raises for the items in FAILING."""
    CALLS.append(item["id"])
    if item["id"] in FAILING:
        raise ValueError(f"item {item['id']} failed on purpose")


@pytest.fixture(autouse=True)
def fresh_task_state():
    CALLS.clear()
    FAILING.clear()
    yield
    CALLS.clear()
    FAILING.clear()


@pytest.fixture
def definition(nightly: Definition) -> Definition:
    return dataclasses.replace(nightly, task=TASK)


@pytest.fixture
def definitions(definition: Definition) -> dict[str, Definition]:
    return {definition.name: definition}


def process(settings: Settings, messages: list[dict[str, Any]]) -> dict[str, Any]:
    return processor.handle_sqs_event(sqs_event(messages), settings)


def deliver_until_acknowledged(settings: Settings, messages: list[dict[str, Any]]) -> int:
    """Deliver `messages`, then again those returned in batchItemFailures, until none is; the deliveries made."""
    deliveries = 0
    while messages:
        deliveries += 1
        assert deliveries <= settings.item_max_attempts, "a message kept coming back after its items' attempts ran out"
        returned = {failure["itemIdentifier"] for failure in process(settings, messages)["batchItemFailures"]}
        messages = [message for message in messages if message["MessageId"] in returned]
    return deliveries


def finalize_from_stream(aws: MockedAws, settings: Settings, definitions: dict[str, Definition]) -> list[str]:
    return finalizer.handle_stream_event({"Records": aws.stream_records()}, settings, definitions)


def by_chunk(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(messages, key=lambda message: json.loads(message["Body"])["chunk"])


def items_of(message: dict[str, Any]) -> dict[int, Any]:
    return {index: item for index, item in json.loads(message["Body"])["items"]}


def rows_of(aws: MockedAws, kind: str) -> dict[int, set[int]]:
    """Chunk number -> item indices, for chunk rows ("C#": pending) or failed rows ("F#": failed)."""
    field = "pending" if kind == "C#" else "failed"
    return {
        int(row["sk"][2:]): row[field]
        for row in aws.rows()
        if row["pk"].startswith(f"B#{BATCH_ID}#") and row["sk"].startswith(kind)
    }


def alert_bodies(aws: MockedAws) -> list[dict[str, Any]]:
    return [json.loads(alert["Message"]) for alert in aws.alerts()]


@pytest.fixture
def failed_batch(aws: MockedAws, clock: Clock, definition: Definition, definitions, settings: Settings):
    """A batch that ended COMPLETED_WITH_FAILURES, its alert out (4 items of chunks 2, 5, 7 ran out of attempts).

    Returns its original messages.
    """
    create_sealed_batch(definition, SLOT, settings)
    messages = by_chunk(aws.work_messages())
    FAILING.update(*FAILED_ITEMS.values())
    assert deliver_until_acknowledged(settings, messages) == settings.item_max_attempts
    assert finalize_from_stream(aws, settings, definitions) == [BATCH_ID]
    assert [alert["alert_id"] for alert in alert_bodies(aws)] == [f"{BATCH_ID}/1"]
    assert aws.header(BATCH_ID)["status"] == model.COMPLETED_WITH_FAILURES
    FAILING.clear()
    CALLS.clear()
    return messages


def assert_redriven_items_were_resent(aws: MockedAws, original: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Receive the redrive's messages; each carries its chunk's failed items with their original values."""
    messages = aws.work_messages()
    for message in messages:
        chunk = json.loads(message["Body"])["chunk"]
        assert items_of(message) == {index: items_of(original[chunk])[index] for index in FAILED_ITEMS[chunk]}
    return messages


# -- a redrive, start to finish ------------------------------------------------------------------------------------


def test_redrive_turns_failed_rows_back_into_chunks_and_ends_with_one_new_alert(
    aws: MockedAws, failed_batch, clock: Clock, definitions, settings: Settings
):
    clock.at(3600)

    header = redrive.redrive(BATCH_ID, settings)

    assert (header["status"], header["attempt"]) == (model.SEALED, 2)
    stored = aws.header(BATCH_ID)
    assert (stored["status"], stored["attempt"], stored["open_shards"]) == (model.SEALED, 2, {0})
    for gone in ("notified_at", "alert_id", "completed_at", "failed", "succeeded", "sample_errors", "failed_items"):
        assert gone not in stored, gone
    assert "unsent" not in stored  # every restored group's messages went out
    assert rows_of(aws, "F#") == {}
    assert rows_of(aws, "C#") == FAILED_ITEMS
    # Rows of the new attempt, whose items start with all their attempts again.
    restored = [row for row in aws.chunk_rows(BATCH_ID)]
    assert [(row["attempt"], row["tries"], row["errors"]) for row in restored] == [(2, {}, {})] * len(FAILED_ITEMS)
    messages = assert_redriven_items_were_resent(aws, failed_batch)
    assert Counter(json.loads(message["Body"])["chunk"] for message in messages) == Counter(list(FAILED_ITEMS))

    assert process(settings, messages) == {"batchItemFailures": []}
    assert finalize_from_stream(aws, settings, definitions) == [BATCH_ID]

    assert sorted(CALLS) == sorted(set().union(*FAILED_ITEMS.values()))  # only the failed items ran again
    (alert,) = alert_bodies(aws)
    assert alert["alert_id"] == f"{BATCH_ID}/2"
    assert (alert["status"], alert["attempt"]) == (model.COMPLETED, 2)
    assert alert["totals"] == {"items": 1000, "succeeded": 1000, "failed": 0}
    stored = aws.header(BATCH_ID)
    assert (stored["status"], stored["alert_id"], stored["failed"]) == (model.COMPLETED, f"{BATCH_ID}/2", 0)
    assert redrive.list_failures(BATCH_ID, settings) == []
    assert list(BatchStore(settings.table_name).open_batches()) == []


def test_items_that_fail_again_end_the_new_attempt_with_failures_and_can_be_redriven_again(
    aws: MockedAws, failed_batch, definitions, settings: Settings
):
    redrive.redrive(BATCH_ID, settings)
    FAILING.add(512)
    messages = by_chunk(aws.work_messages())

    assert deliver_until_acknowledged(settings, messages) == settings.item_max_attempts  # chunk 5's, again

    assert CALLS.count(512) == settings.item_max_attempts  # all its attempts again in the new attempt
    assert finalize_from_stream(aws, settings, definitions) == [BATCH_ID]
    (alert,) = alert_bodies(aws)
    assert (alert["alert_id"], alert["status"]) == (f"{BATCH_ID}/2", model.COMPLETED_WITH_FAILURES)
    assert alert["totals"] == {"items": 1000, "succeeded": 999, "failed": 1}
    assert [(entry["items"], entry["attempt"]) for entry in redrive.list_failures(BATCH_ID, settings)] == [([512], 2)]

    FAILING.clear()
    assert redrive.redrive(BATCH_ID, settings)["attempt"] == 3
    process(settings, aws.work_messages())
    assert finalize_from_stream(aws, settings, definitions) == [BATCH_ID]
    (alert,) = alert_bodies(aws)
    assert (alert["alert_id"], alert["status"]) == (f"{BATCH_ID}/3", model.COMPLETED)


def test_a_multi_shard_redrive_restores_in_shard_and_chunk_order_and_seals_on_every_shard(
    aws: MockedAws, clock: Clock, definition: Definition, definitions, settings: Settings, monkeypatch
):
    """4 shards (chunk n on shard n % 4): the failed chunks 2, 5 and 7 sit on shards 2, 1 and 3; shard 0 has none."""
    settings = dataclasses.replace(settings, shard_chunk_target=3)
    create_sealed_batch(definition, SLOT, settings)
    original = by_chunk(aws.work_messages())
    FAILING.update(*FAILED_ITEMS.values())
    deliver_until_acknowledged(settings, original)
    assert finalize_from_stream(aws, settings, definitions) == [BATCH_ID]
    aws.alerts()
    FAILING.clear()
    monkeypatch.setattr(restoring, "REDRIVE_GROUP", 1)
    real_send = work.send_chunks
    sends: list[list[tuple[int, int]]] = []

    def recorded_send(sqs, queue_url, chunks, max_bytes):
        sends.append([(chunk.shard, chunk.chunk_no) for chunk in chunks])
        return real_send(sqs, queue_url, chunks, max_bytes)

    monkeypatch.setattr(work, "send_chunks", recorded_send)

    header = redrive.redrive(BATCH_ID, settings)

    assert sends == [[(1, 5)], [(2, 2)], [(3, 7)]]  # one group each, in (shard, chunk) order
    assert aws.header(BATCH_ID)["redrive_cursor"] == "003:00000007"
    assert (header["status"], aws.header(BATCH_ID)["open_shards"]) == (model.SEALED, {0, 1, 2, 3})
    assert finalize_from_stream(aws, settings, definitions) == []  # the seal closes shard 0, which has no rows
    assert aws.header(BATCH_ID)["open_shards"] == {1, 2, 3}

    assert process(settings, aws.work_messages()) == {"batchItemFailures": []}
    assert finalize_from_stream(aws, settings, definitions) == [BATCH_ID]
    (alert,) = alert_bodies(aws)
    assert (alert["alert_id"], alert["status"], alert["totals"]["failed"]) == (f"{BATCH_ID}/2", model.COMPLETED, 0)


# -- what cannot be redriven -----------------------------------------------------------------------------------------


@pytest.fixture
def completed_batch(aws: MockedAws, definition: Definition, definitions, settings: Settings) -> None:
    create_sealed_batch(definition, SLOT, settings)
    process(settings, aws.work_messages())
    assert finalize_from_stream(aws, settings, definitions) == [BATCH_ID]
    aws.alerts()


@pytest.fixture
def sealed_batch(aws: MockedAws, definition: Definition, settings: Settings) -> None:
    create_sealed_batch(definition, SLOT, settings)
    aws.work_messages()


@pytest.mark.parametrize(
    ("state", "batch_id", "message"),
    [
        ("completed_batch", BATCH_ID, f"batch '{BATCH_ID}' is COMPLETED; only a batch that is COMPLETED_WITH_FAILURES"),
        ("sealed_batch", BATCH_ID, f"batch '{BATCH_ID}' is SEALED; only a batch that is COMPLETED_WITH_FAILURES"),
        ("aws", "ghost-2026-11-23T06:00Z", "batch 'ghost-2026-11-23T06:00Z' not found"),
    ],
)
def test_redrive_of_a_batch_that_did_not_end_with_failures_is_refused_and_writes_nothing(
    aws: MockedAws, settings: Settings, request: pytest.FixtureRequest, state: str, batch_id: str, message: str
):
    request.getfixturevalue(state)
    rows_before = aws.rows()
    aws.stream_records()

    with pytest.raises(BatchdrainError, match=message.replace("(", r"\(")):
        redrive.redrive(batch_id, settings)

    assert aws.rows() == rows_before
    assert aws.stream_records() == []
    assert aws.work_messages() == []
    assert aws.alerts() == []


def test_a_second_redrive_while_the_first_runs_is_refused(aws: MockedAws, failed_batch, settings: Settings):
    redrive.redrive(BATCH_ID, settings)
    aws.work_messages()
    rows_before = aws.rows()

    with pytest.raises(BatchdrainError, match="is SEALED"):
        redrive.redrive(BATCH_ID, settings)

    assert aws.rows() == rows_before
    assert aws.work_messages() == []


def test_list_failures_of_an_unknown_batch_says_so(aws: MockedAws, settings: Settings):
    with pytest.raises(BatchdrainError, match="batch 'ghost' not found"):
        redrive.list_failures("ghost", settings)


# -- a redrive that died half way -------------------------------------------------------------------------------------


@pytest.mark.parametrize("finisher", ["restore_failures", "sweep"])
def test_interrupted_redrive_is_finished_without_losing_or_doubling_a_chunk(
    aws: MockedAws, failed_batch, clock: Clock, definitions, settings: Settings, monkeypatch, finisher: str
):
    """One F row per group: the redrive dies sending chunk 5's group, so chunk 2 is restored and sent,
    5 restored and listed as unsent, 7 still an F row beyond the cursor."""
    monkeypatch.setattr(restoring, "REDRIVE_GROUP", 1)
    settings = dataclasses.replace(settings, stuck_creating_seconds=60)
    real_send = work.send_chunks
    sends: list[list[int]] = []

    def dies_on_the_second_send(sqs, queue_url, chunks, max_bytes):
        sends.append([chunk.chunk_no for chunk in chunks])
        if len(sends) == 2:
            raise RuntimeError("Lambda timed out")
        return real_send(sqs, queue_url, chunks, max_bytes)

    monkeypatch.setattr(work, "send_chunks", dies_on_the_second_send)
    clock.at(1000)

    with pytest.raises(RuntimeError, match="Lambda timed out"):
        redrive.redrive(BATCH_ID, settings)

    assert sends == [[2], [5]]
    header = aws.header(BATCH_ID)
    assert (header["status"], header["attempt"]) == (model.CREATING, 2)
    assert (header["redrive_cursor"], header["unsent"]) == ("000:00000005", [[0, 5]])
    assert rows_of(aws, "C#") == {2: FAILED_ITEMS[2], 5: FAILED_ITEMS[5]}
    assert rows_of(aws, "F#") == {7: FAILED_ITEMS[7]}

    if finisher == "sweep":
        clock.at(1059)  # the batch is old, but its redrive started 59 s ago and may still be running
        assert sweeper.sweep(settings, definitions) == sweeper.SweepReport()
        assert rows_of(aws, "F#") == {7: FAILED_ITEMS[7]}
        clock.at(1061)
        assert sweeper.sweep(settings, definitions).resumed == [BATCH_ID]
    else:
        store = BatchStore(settings.table_name)
        restoring.restore_failures(store, store.get_header(BATCH_ID), settings)

    header = aws.header(BATCH_ID)
    assert (header["status"], header["attempt"], header["open_shards"]) == (model.SEALED, 2, {0})
    assert "unsent" not in header
    assert rows_of(aws, "F#") == {}
    assert rows_of(aws, "C#") == FAILED_ITEMS  # every chunk back once, none lost
    messages = assert_redriven_items_were_resent(aws, failed_batch)
    # The resume sends only the group the header lists as unsent (5), then goes on from the cursor (7):
    # chunk 2, sent before the crash, is not sent again.
    assert Counter(json.loads(message["Body"])["chunk"] for message in messages) == Counter(list(FAILED_ITEMS))

    assert process(settings, messages) == {"batchItemFailures": []}
    assert finalize_from_stream(aws, settings, definitions) == [BATCH_ID]
    assert Counter(CALLS) == Counter(set().union(*FAILED_ITEMS.values()))  # each failed item ran once
    (alert,) = alert_bodies(aws)
    assert (alert["alert_id"], alert["status"]) == (f"{BATCH_ID}/2", model.COMPLETED)
    assert alert["totals"] == {"items": 1000, "succeeded": 1000, "failed": 0}


# -- stream records seen again (invariant 13) ------------------------------------------------------------------


def test_a_segment_remove_replayed_after_a_redrive_began_seals_nothing_and_every_failed_item_runs_again(
    aws: MockedAws, failed_batch, definitions, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """Attempt 1's records arrive again while attempt 2 restores its first group (a retried stream
    batch, or a mapping recreated at TRIM_HORIZON). The segment REMOVE among them proves only that
    attempt 1's segment is done: `planning.seal_when_planned(..., attempt)` seals only that attempt.
    Seal from the header's current attempt instead and attempt 2 (CREATING, planned, no segment
    rows) seals before any F row is restored: its alert says 1,000 succeeded, none ran again."""
    history = aws.stream_history()
    assert any(r["eventName"] == "REMOVE" and r["dynamodb"]["Keys"]["sk"]["S"].startswith("P#") for r in history)
    real_restore = BatchStore.restore_failed
    replayed: list[list[str]] = []

    def replay_then_restore(self: BatchStore, *args: Any, **kwargs: Any) -> bool:
        if not replayed:
            replayed.append(finalizer.handle_stream_event({"Records": history}, settings, definitions))
        return real_restore(self, *args, **kwargs)

    monkeypatch.setattr(BatchStore, "restore_failed", replay_then_restore)
    header = redrive.redrive(BATCH_ID, settings)

    assert replayed == [[]]
    assert (header["status"], header["attempt"]) == (model.SEALED, 2)
    assert rows_of(aws, "C#") == FAILED_ITEMS  # every failed chunk restored
    deliver_until_acknowledged(settings, assert_redriven_items_were_resent(aws, failed_batch))
    assert finalize_from_stream(aws, settings, definitions) == [BATCH_ID]
    assert sorted(CALLS) == sorted(set().union(*FAILED_ITEMS.values()))
    (alert,) = alert_bodies(aws)
    assert (alert["alert_id"], alert["status"]) == (f"{BATCH_ID}/2", model.COMPLETED)


def test_the_whole_stream_replayed_after_a_redrive_completed_changes_nothing(
    aws: MockedAws, failed_batch, definitions, settings: Settings
):
    """Every decision the finalizer takes from a record is fenced by what the record proves, so
    replaying every record from TRIM_HORIZON (both attempts') after the end alerts no one and
    writes nothing."""
    redrive.redrive(BATCH_ID, settings)
    deliver_until_acknowledged(settings, aws.work_messages())
    assert finalize_from_stream(aws, settings, definitions) == [BATCH_ID]
    assert [alert["alert_id"] for alert in alert_bodies(aws)] == [f"{BATCH_ID}/2"]
    before = aws.rows()

    assert finalizer.handle_stream_event({"Records": aws.stream_history()}, settings, definitions) == []

    assert alert_bodies(aws) == []
    assert aws.rows() == before


def test_a_redrive_of_large_failed_chunks_keeps_every_transaction_within_dynamodbs_4_mb(
    aws: MockedAws, failed_batch, settings: Settings
):
    """TransactWriteItems takes at most 4 MB (moto does not check). Restoring an F row puts its
    indices in twice (the new chunk row, the delete's condition), so 24 rows of 20,000 long
    object-source indices would be ~10 MB: `_next_group` also closes a group at
    REDRIVE_GROUP_BYTES. Measured on the wire, which is larger than DynamoDB's own item size;
    in one transaction these 12 rows would be 5.2 MB."""
    from chalicelib import aws as aws_clients
    from chalicelib.store import to_item

    big = 12_000
    for chunk in range(20, 32):
        indices = {10**14 + chunk * big + n for n in range(big)}
        row = {**model.failed_key(BATCH_ID, 0, chunk), "failed": indices, "attempt": 1, "reason": "failed", "errors": {}}
        aws.dynamodb.put_item(TableName=aws.table_name, Item=to_item(row))
    sizes: list[int] = []

    def measure(request: Any, **kwargs: Any) -> None:
        sizes.append(len(request.body))

    aws_clients.client("dynamodb").meta.events.register("before-send.dynamodb.TransactWriteItems", measure)

    redrive.redrive(BATCH_ID, settings)

    assert len(rows_of(aws, "C#")) == len(FAILED_ITEMS) + 12 and rows_of(aws, "F#") == {}
    assert max(sizes) <= 4 * 1024 * 1024
    assert len(sizes) >= 2  # the large rows went over several transactions
