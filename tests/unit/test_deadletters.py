"""The dead-letter handler: a message that exhausted its retries becomes recorded failures (invariant 7).

A chunk's dead letter moves exactly its still-pending items into the chunk's F row and
deletes the chunk row in one transaction, so the batch can end; a message that is no
batch's chunk is kept once as a POISON row. Nothing is retried forever, nothing dropped.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError

from chalicelib import aws as aws_clients
from chalicelib import batcher, deadletters, model, processor
from chalicelib.config import Definition, Settings
from chalicelib.store import MAX_POISON_BODY, BatchStore
from chalicelib.tasks import task

from .conftest import DEAD_LETTER_QUEUE_NAME, REGION, MockedAws, sqs_event

SLOT = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
BATCH_ID = "nightly-2026-11-23T06:00Z"
TASK = "unit-deadletters"
DEAD_LETTER_QUEUE_ARN = f"arn:aws:sqs:{REGION}:123456789012:{DEAD_LETTER_QUEUE_NAME}"

FAILING: set[int] = set()  # item ids the task raises on


@task(TASK)
def flaky(item: dict, options: Mapping[str, Any]) -> None:
    """Raises for the items in FAILING."""
    if item["id"] in FAILING:
        raise RuntimeError(f"item {item['id']} is broken")


@pytest.fixture(autouse=True)
def fresh_task_state():
    FAILING.clear()
    yield
    FAILING.clear()


@pytest.fixture
def messages(aws: MockedAws, nightly: Definition, settings: Settings) -> list[dict[str, Any]]:
    """A sealed batch of 1,000 items in 10 chunks of 100; its work messages in chunk order."""
    batcher.create_batch(dataclasses.replace(nightly, task=TASK), SLOT, settings)
    return sorted(aws.work_messages(), key=lambda message: json.loads(message["Body"])["chunk"])


def dead_letter(settings: Settings, *delivered: dict[str, Any], receives: int = 5) -> dict[str, Any]:
    moved = [{**message, "Attributes": {"ApproximateReceiveCount": str(receives)}} for message in delivered]
    return deadletters.handle_sqs_event(sqs_event(moved, DEAD_LETTER_QUEUE_NAME), settings)


def process(settings: Settings, *delivered: dict[str, Any]) -> dict[str, Any]:
    return processor.handle_sqs_event(sqs_event(list(delivered)), settings)


def rows_of(aws: MockedAws, kind: str) -> dict[int, dict[str, Any]]:
    """Chunk number -> row, for the batch's chunk rows ("C#") or failed rows ("F#")."""
    return {
        int(row["sk"][2:]): row
        for row in aws.rows()
        if row["pk"].startswith(f"B#{BATCH_ID}#") and row["sk"].startswith(kind)
    }


def poison_rows(aws: MockedAws) -> dict[str, dict[str, Any]]:
    return {row["sk"]: row for row in aws.rows() if row["pk"] == model.POISON_PK}


def changes(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(eventName, sk) of stream records, in order."""
    return [(record["eventName"], record["dynamodb"]["Keys"]["sk"]["S"]) for record in records]


def client_error(code: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"{code} (injected)"}}, operation)


# -- a chunk's dead letter ------------------------------------------------------------------------------------


def test_dead_letter_moves_exactly_the_pending_items_into_the_failed_row(
    aws: MockedAws, messages, settings: Settings
):
    FAILING.update({5, 6})
    process(settings, messages[0])
    aws.stream_records()  # skip what creating and processing streamed

    result = dead_letter(settings, messages[0], receives=5)

    assert result == {"batchItemFailures": []}
    assert 0 not in rows_of(aws, "C#")
    failed = rows_of(aws, "F#")
    assert list(failed) == [0]
    row = failed[0]
    assert row["pk"] == model.shard_pk(BATCH_ID, 0)
    assert row["failed"] == {5, 6}
    assert row["errors"] == {"5": "RuntimeError: item 5 is broken", "6": "RuntimeError: item 6 is broken"}
    assert row["attempts"] == 1
    assert row["reason"] == "retries exhausted: dead-lettered after 5 receives"
    assert model.parse_iso(row["failed_at"])
    # One transaction: the F row appears and the chunk row goes, and the REMOVE wakes the finalizer.
    assert sorted(changes(aws.stream_records())) == [("INSERT", "F#00000000"), ("REMOVE", "C#00000000")]
    assert sorted(rows_of(aws, "C#")) == list(range(1, 10))  # other chunks untouched


def test_dead_letter_of_a_chunk_that_never_ran_fails_every_item_with_the_reason(
    aws: MockedAws, messages, settings: Settings
):
    """E.g. every delivery timed out before an item finished: no errors on the row, the reason stands in."""
    dead_letter(settings, messages[2], receives=4)

    row = rows_of(aws, "F#")[2]
    assert row["failed"] == set(range(200, 300))
    assert row["attempts"] == 0
    reason = "retries exhausted: dead-lettered after 4 receives"
    assert row["errors"] == {str(index): reason for index in range(200, 205)}  # a sample, not 100 copies


def test_same_dead_letter_delivered_twice_records_nothing_new(aws: MockedAws, messages, settings: Settings):
    FAILING.update({5, 6})
    process(settings, messages[0])
    dead_letter(settings, messages[0])
    rows_after_first = aws.rows()
    aws.stream_records()

    result = dead_letter(settings, messages[0])

    assert result == {"batchItemFailures": []}
    assert aws.rows() == rows_after_first
    assert aws.stream_records() == []


def test_dead_letter_whose_chunk_already_drained_records_nothing(aws: MockedAws, messages, settings: Settings):
    """A late delivery finished the chunk before its dead letter arrived: those items did not fail."""
    process(settings, messages[1])
    rows_before = aws.rows()

    result = dead_letter(settings, messages[1])

    assert result == {"batchItemFailures": []}
    assert aws.rows() == rows_before
    assert rows_of(aws, "F#") == {}


def test_items_a_late_processor_finishes_meanwhile_do_not_become_failures(
    aws: MockedAws, messages, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """The move is conditional on the pending set read; if it changed, the handler reads it again."""
    FAILING.update({5, 6, 7})
    process(settings, messages[0])
    client = aws_clients.client("dynamodb")
    real_transact = client.transact_write_items
    interleaved = []

    def late_processor_first(**kwargs):
        if not interleaved:
            interleaved.append(True)
            FAILING.discard(6)
            process(settings, messages[0])  # item 6 succeeds between the handler's read and its write
        return real_transact(**kwargs)

    monkeypatch.setattr(client, "transact_write_items", late_processor_first)

    dead_letter(settings, messages[0])

    assert interleaved
    row = rows_of(aws, "F#")[0]
    assert row["failed"] == {5, 7}
    assert 0 not in rows_of(aws, "C#")


def test_a_processor_that_finishes_after_the_dead_letter_leaves_its_items_failed_and_says_so(
    aws: MockedAws, messages, settings: Settings
):
    """Its items were counted failed when the chunk was dead-lettered; a success recorded against
    a row that is gone must neither count them twice nor bring the row back (a redrive re-runs them)."""
    store = BatchStore(settings.table_name)
    read_before_the_dead_letter = store.get_pending(BATCH_ID, 0, 0)
    dead_letter(settings, messages[0])

    recorded = store.drain(BATCH_ID, 0, 0, set(read_before_the_dead_letter), read_before_the_dead_letter)

    assert recorded is False
    assert rows_of(aws, "F#")[0]["failed"] == set(range(100))
    assert 0 not in rows_of(aws, "C#")


def test_an_aws_error_while_recording_returns_that_message_for_retry(
    aws: MockedAws, messages, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    FAILING.update({5})
    process(settings, messages[0])
    client = aws_clients.client("dynamodb")
    real_transact = client.transact_write_items
    calls = []

    def throttled_once(**kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise client_error("InternalServerError", "TransactWriteItems")
        return real_transact(**kwargs)

    monkeypatch.setattr(client, "transact_write_items", throttled_once)
    poison = {"MessageId": "poison-1", "Body": "{not json"}

    result = dead_letter(settings, messages[0], poison)

    assert result == {"batchItemFailures": [{"itemIdentifier": messages[0]["MessageId"]}]}
    assert rows_of(aws, "C#")[0]["pending"] == {5}  # nothing half done
    assert rows_of(aws, "F#") == {}
    assert list(poison_rows(aws)) == ["poison-1"]  # the other record of the event was still handled

    assert dead_letter(settings, messages[0]) == {"batchItemFailures": []}  # the retry records it
    assert rows_of(aws, "F#")[0]["failed"] == {5}


def test_an_aws_error_while_keeping_a_poison_message_returns_it_for_retry(
    aws: MockedAws, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    client = aws_clients.client("dynamodb")
    real_put = client.put_item
    calls = []

    def unavailable_once(**kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise client_error("ServiceUnavailable", "PutItem")
        return real_put(**kwargs)

    monkeypatch.setattr(client, "put_item", unavailable_once)
    poison = {"MessageId": "poison-1", "Body": "{not json"}

    assert dead_letter(settings, poison) == {"batchItemFailures": [{"itemIdentifier": "poison-1"}]}
    assert poison_rows(aws) == {}
    assert dead_letter(settings, poison) == {"batchItemFailures": []}
    assert list(poison_rows(aws)) == ["poison-1"]


# -- messages that are no batch's chunk: POISON rows ---------------------------------------------------------


def _ghost_chunk() -> str:
    return model.Chunk("ghost-2026-11-23T06:00Z", 0, 0, TASK, {}, ((0, {"id": 0}),)).body()


POISON_CASES = {
    "bad-json": ("{not json", "message body is not JSON"),
    "not-an-object": ("[1, 2, 3]", "message body must be a JSON object"),
    "wrong-version": ('{"v": 2}', "message version 2 is not 1"),
    "missing-shard": ('{"v": 1, "batch_id": "nightly-2026-11-23T06:00Z"}', "message field 'shard' must be int"),
    "bad-item": (
        '{"v":1,"batch_id":"b","shard":0,"chunk":0,"task":"t","items":[["0",{}]]}',
        "message items[0] must be [index, item]",
    ),
    "unknown-batch": (_ghost_chunk(), "unknown batch 'ghost-2026-11-23T06:00Z'"),
}


@pytest.mark.parametrize("case", sorted(POISON_CASES))
def test_a_message_that_is_no_batchs_chunk_is_kept_once_as_a_poison_row(aws: MockedAws, settings: Settings, case: str):
    body, problem = POISON_CASES[case]
    rows_before = aws.rows()

    result = dead_letter(settings, {"MessageId": f"msg-{case}", "Body": body})

    assert result == {"batchItemFailures": []}  # never retried forever
    (row,) = [row for row in aws.rows() if row not in rows_before]
    assert (row["pk"], row["sk"]) == (model.POISON_PK, f"msg-{case}")
    assert row["body"] == body
    assert problem in row["error"]
    assert row["queue"] == DEAD_LETTER_QUEUE_ARN
    assert model.parse_iso(row["received_at"])

    rows_after_first = aws.rows()
    assert dead_letter(settings, {"MessageId": f"msg-{case}", "Body": body}) == {"batchItemFailures": []}
    assert aws.rows() == rows_after_first  # one row per message id, the first kept as it was


def test_each_poison_message_gets_its_own_row(aws: MockedAws, settings: Settings):
    result = dead_letter(
        settings,
        {"MessageId": "a", "Body": "{not json"},
        {"MessageId": "b", "Body": "{not json"},
        {"MessageId": "c", "Body": _ghost_chunk()},
    )

    assert result == {"batchItemFailures": []}
    assert sorted(poison_rows(aws)) == ["a", "b", "c"]


def test_a_huge_poison_body_is_kept_truncated(aws: MockedAws, settings: Settings):
    body = "<" + "x" * (MAX_POISON_BODY * 3)

    dead_letter(settings, {"MessageId": "huge", "Body": body})

    row = poison_rows(aws)["huge"]
    assert row["body"] == body[:MAX_POISON_BODY]
    assert "not JSON" in row["error"]


def test_poison_rows_never_touch_a_batch(aws: MockedAws, messages, settings: Settings):
    """A poison row is not a chunk or failed row: the batch neither gains failures nor loses rows."""
    header_before = aws.header(BATCH_ID)
    bad = json.loads(messages[0]["Body"])
    del bad["chunk"]

    dead_letter(settings, {"MessageId": "no-chunk", "Body": json.dumps(bad)})

    assert "message field 'chunk' must be int" in poison_rows(aws)["no-chunk"]["error"]
    assert aws.header(BATCH_ID) == header_before
    assert sorted(rows_of(aws, "C#")) == list(range(10))
    assert rows_of(aws, "F#") == {}
    assert BatchStore(settings.table_name).failed_rows(BATCH_ID, 1) == []
