"""The dead-letter handler: a message that exhausted its receives still ends (invariant 7),
and its items are not failed for receives they never had a result from (invariant 9).

A chunk's message is dead-lettered only when its deliveries kept ending without a
recorded result (crash, timeout). The first ITEM_MAX_ATTEMPTS - 1 dead-letter rounds of
a chunk send its still-pending items again in a fresh message and count the round on
the chunk row (`dead_letters`). The round after that fails every pending item: they move
to the chunk's F row and the header's `failed_items`, and the chunk row goes, in one
transaction, so the batch can end. A message that is no batch's chunk is kept once as a
POISON row. Nothing is retried forever, nothing dropped.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError

from chalicelib import aws as aws_clients
from chalicelib import deadletters, model, processor, work
from chalicelib.config import Definition, Settings
from chalicelib.store import MAX_POISON_BODY, BatchStore, ItemOutcome
from chalicelib.tasks import task

from .conftest import DEAD_LETTER_QUEUE_NAME, REGION, MockedAws, create_sealed_batch, raised_at, sqs_event

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
    create_sealed_batch(dataclasses.replace(nightly, task=TASK), SLOT, settings)
    return sorted(aws.work_messages(), key=lambda message: json.loads(message["Body"])["chunk"])


def with_attempts(monkeypatch: pytest.MonkeyPatch, item_max_attempts: int) -> Settings:
    """The settings a stage with ITEM_MAX_ATTEMPTS=<item_max_attempts> gives every function."""
    monkeypatch.setenv("ITEM_MAX_ATTEMPTS", str(item_max_attempts))
    return Settings.from_env()


def moved(message: dict[str, Any], receives: int) -> dict[str, Any]:
    return {**message, "Attributes": {"ApproximateReceiveCount": str(receives)}}


def dead_letter(settings: Settings, *delivered: dict[str, Any], receives: int = 5) -> dict[str, Any]:
    """The dead-letter handler's response to one event of `delivered` messages."""
    event = sqs_event([moved(message, receives) for message in delivered], DEAD_LETTER_QUEUE_NAME)
    return deadletters.handle_sqs_event(event, settings)


def dead_letter_round(settings: Settings, message: dict[str, Any], receives: int = 5) -> str:
    """What became of one new dead letter of the chunk: 'resent', 'failed', 'already-recorded' or 'poison'.

    A new round is a new message (the one the last round sent again), so a new message id.
    """
    fresh = {**message, "MessageId": str(uuid.uuid4())}
    (record,) = sqs_event([moved(fresh, receives)], DEAD_LETTER_QUEUE_NAME)["Records"]
    return deadletters.record_dead_letter(BatchStore(settings.table_name), record, model.iso(model.utc_now()), settings)


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


def sent_again(aws: MockedAws) -> list[dict[str, Any]]:
    """The messages sent to the work queue since the last call (bodies parsed)."""
    return [json.loads(message["Body"]) for message in aws.work_messages()]


def is_stats(sk: str) -> bool:
    return sk.startswith(model.STATS_PREFIX)


def without_stats(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The table's rows but the batch's stats rows (counters of what was done, chalicelib.itemstats)."""
    return [row for row in rows if not is_stats(row["sk"])]


def changes(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(eventName, sk) of stream records, in order."""
    return [(record["eventName"], record["dynamodb"]["Keys"]["sk"]["S"]) for record in records]


def client_error(code: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"{code} (injected)"}}, operation)


# -- a chunk's dead letter: sent again, then failed ---------------------------------------------------------------


def test_the_first_dead_letters_send_the_pending_items_again_and_count_the_round(
    aws: MockedAws, messages, monkeypatch: pytest.MonkeyPatch
):
    """A dead letter says the deliveries ended without a result, not that items were tried: it is no attempt."""
    settings = with_attempts(monkeypatch, 3)
    FAILING.update({5, 6})
    process(settings, messages[0])
    items = dict(json.loads(messages[0]["Body"])["items"])
    aws.stream_records()  # skip what creating and processing streamed

    assert dead_letter_round(settings, messages[0]) == "resent"

    (again,) = sent_again(aws)
    assert (again["batch_id"], again["shard"], again["chunk"]) == (BATCH_ID, 0, 0)
    assert again["items"] == [[5, items[5]], [6, items[6]]]  # only the pending items, as first sent
    row = rows_of(aws, "C#")[0]
    assert (row["pending"], row["dead_letters"]) == ({5, 6}, 1)
    assert row["tries"] == {"5": 1, "6": 1}  # the items' own attempts are unchanged
    assert rows_of(aws, "F#") == {}
    assert "failed_items" not in aws.header(BATCH_ID)
    assert changes(aws.stream_records()) == [("MODIFY", "C#00000000")]  # no REMOVE: the finalizer is not woken

    # The fresh message dead-letters too (say the function keeps crashing on it): round 2 of 3 sends again.
    assert dead_letter_round(settings, {"MessageId": "resent-1", "Body": json.dumps(again)}) == "resent"
    assert [body["items"] for body in sent_again(aws)] == [again["items"]]
    assert rows_of(aws, "C#")[0]["dead_letters"] == 2
    assert rows_of(aws, "F#") == {}


def test_the_round_after_item_max_attempts_minus_one_fails_exactly_the_pending_items(
    aws: MockedAws, messages, monkeypatch: pytest.MonkeyPatch
):
    settings = with_attempts(monkeypatch, 3)
    FAILING.update({5, 6})
    process(settings, messages[0])
    assert [dead_letter_round(settings, messages[0]) for _ in range(2)] == ["resent", "resent"]
    sent_again(aws)
    aws.stream_records()

    result = dead_letter(settings, messages[0], receives=5)

    assert result == {"batchItemFailures": []}
    assert sent_again(aws) == []  # nothing sent a third time
    assert 0 not in rows_of(aws, "C#")
    failed = rows_of(aws, "F#")
    assert list(failed) == [0]
    row = failed[0]
    assert row["pk"] == model.shard_pk(BATCH_ID, 0)
    assert row["failed"] == {5, 6}
    assert row["errors"] == {"5": "RuntimeError: item 5 is broken" + raised_at(flaky), "6": "RuntimeError: item 6 is broken" + raised_at(flaky)}
    assert row["attempt"] == 1  # the batch attempt they failed in
    assert "attempts" not in row
    assert row["reason"] == "dead-lettered 3 times (5 receives the last time) without a recorded result"
    assert model.parse_iso(row["failed_at"])
    assert aws.header(BATCH_ID)["failed_items"] == 2
    # One transaction: the F row appears, the header counts the failures, the chunk row goes
    # (and its REMOVE wakes the finalizer). A set: moto streams the F row's INSERT twice.
    # Beside it, the batch's stats row counts the dead letter (an observation, for its cost).
    seen = set(changes(aws.stream_records()))
    assert {change for change in seen if not is_stats(change[1])} == {
        ("INSERT", "F#00000000"),
        ("MODIFY", "META"),
        ("REMOVE", "C#00000000"),
    }
    assert {sk for _, sk in seen if is_stats(sk)} == {"T#0000"}
    assert sorted(rows_of(aws, "C#")) == list(range(1, 10))  # other chunks untouched


@pytest.mark.parametrize("item_max_attempts", [1, 3])
def test_a_chunk_that_never_ran_is_sent_again_item_max_attempts_minus_one_times_then_fails_with_the_reason(
    aws: MockedAws, messages, monkeypatch: pytest.MonkeyPatch, item_max_attempts: int
):
    """E.g. every delivery timed out before an item finished: no errors on the row, the reason stands in."""
    settings = with_attempts(monkeypatch, item_max_attempts)

    outcomes = [dead_letter_round(settings, messages[2], receives=4) for _ in range(item_max_attempts)]

    assert outcomes == ["resent"] * (item_max_attempts - 1) + ["failed"]
    assert [len(body["items"]) for body in sent_again(aws)] == [100] * (item_max_attempts - 1)
    row = rows_of(aws, "F#")[2]
    assert row["failed"] == set(range(200, 300))
    reason = f"dead-lettered {item_max_attempts} times (4 receives the last time) without a recorded result"
    assert row["reason"] == reason
    assert row["errors"] == {str(index): reason for index in range(200, 205)}  # a sample, not 100 copies
    assert aws.header(BATCH_ID)["failed_items"] == 100
    assert 2 not in rows_of(aws, "C#")


@pytest.mark.parametrize("round_kind", ["failing", "sending again"])
def test_same_dead_letter_delivered_twice_records_nothing_new(
    aws: MockedAws, messages, monkeypatch: pytest.MonkeyPatch, round_kind: str
):
    """SQS delivers at least once: a second delivery of one dead letter (same message id) is not another round."""
    settings = with_attempts(monkeypatch, 1 if round_kind == "failing" else 3)
    FAILING.update({5, 6})
    process(settings, messages[0])
    dead_letter(settings, messages[0])
    sent_after_first = sent_again(aws)
    rows_after_first = aws.rows()
    aws.stream_records()

    result = dead_letter(settings, messages[0])

    # In particular, no second round counted and nothing failed. The batch's stats may count the
    # duplicate's work (observations for its cost, never decisions).
    assert result == {"batchItemFailures": []}
    assert without_stats(aws.rows()) == without_stats(rows_after_first)
    assert [change for change in changes(aws.stream_records()) if not is_stats(change[1])] == []
    assert len(sent_after_first) == (0 if round_kind == "failing" else 1)
    # The duplicate may send the items once more (harmless: a delivery runs only what is still
    # pending), but it is not another round.
    assert len(sent_again(aws)) <= (0 if round_kind == "failing" else 1)


def test_concurrent_copies_of_one_dead_letter_count_one_round_and_send_once(
    aws: MockedAws, messages, monkeypatch: pytest.MonkeyPatch
):
    """Both copies read the row; the round is counted conditionally on what they read, so one wins."""
    settings = with_attempts(monkeypatch, 3)
    real_count = BatchStore.count_dead_letter
    outcomes: list[str] = []
    rival_ran = []

    def rival_counts_first(self, *args):
        if not rival_ran:
            rival_ran.append(True)
            outcomes.append("rival: " + dead_letter_round(settings, messages[4]))
        return real_count(self, *args)

    monkeypatch.setattr(BatchStore, "count_dead_letter", rival_counts_first)

    outcomes.append(dead_letter_round(settings, messages[4]))

    assert outcomes == ["rival: resent", "already-recorded"]
    assert rows_of(aws, "C#")[4]["dead_letters"] == 1
    assert len(sent_again(aws)) == 1


def test_dead_letter_whose_chunk_already_drained_records_nothing(aws: MockedAws, messages, settings: Settings):
    """A late delivery finished the chunk before its dead letter arrived: those items did not fail."""
    process(settings, messages[1])
    rows_before = aws.rows()

    result = dead_letter(settings, messages[1])

    assert result == {"batchItemFailures": []}
    assert aws.rows() == rows_before
    assert rows_of(aws, "F#") == {}
    assert sent_again(aws) == []


def test_items_a_late_processor_finishes_meanwhile_do_not_become_failures(
    aws: MockedAws, messages, monkeypatch: pytest.MonkeyPatch
):
    """The failing write is conditional on the pending set read; if it changed, the handler reads it again."""
    settings = with_attempts(monkeypatch, 3)
    FAILING.update({5, 6, 7})
    process(settings, messages[0])
    assert [dead_letter_round(settings, messages[0]) for _ in range(2)] == ["resent", "resent"]
    client = aws_clients.client("dynamodb")
    real_transact = client.transact_write_items
    interleaved = []

    def late_processor_first(**kwargs):
        if not interleaved:
            interleaved.append(True)
            FAILING.discard(6)
            # Between the handler's read and its write: 6 succeeds; 5 and 7 fail their second attempt of 3.
            process(settings, messages[0])
        return real_transact(**kwargs)

    monkeypatch.setattr(client, "transact_write_items", late_processor_first)

    assert dead_letter_round(settings, messages[0]) == "failed"

    assert interleaved
    row = rows_of(aws, "F#")[0]
    assert row["failed"] == {5, 7}
    assert set(row["errors"]) == {"5", "7"}
    assert aws.header(BATCH_ID)["failed_items"] == 2
    assert 0 not in rows_of(aws, "C#")


def test_a_processor_that_finishes_after_the_dead_letter_leaves_its_items_failed_and_says_so(
    aws: MockedAws, messages, monkeypatch: pytest.MonkeyPatch
):
    """Its items were counted failed when the chunk was dead-lettered; a success recorded against
    a row that is gone must neither count them twice nor bring the row back (a redrive re-runs them)."""
    settings = with_attempts(monkeypatch, 1)  # the first dead letter fails the chunk
    store = BatchStore(settings.table_name)
    read_before_the_dead_letter = store.get_chunk(BATCH_ID, 0, 0)
    dead_letter(settings, messages[0])

    recorded = store.record(
        BATCH_ID,
        0,
        0,
        ItemOutcome(done=frozenset(read_before_the_dead_letter["pending"])),
        max_attempts=settings.item_max_attempts,
        failed_at=model.iso(model.utc_now()),
        row=read_before_the_dead_letter,
    )

    assert recorded is None  # nothing of that delivery is recorded
    assert rows_of(aws, "F#")[0]["failed"] == set(range(100))
    assert aws.header(BATCH_ID)["failed_items"] == 100
    assert 0 not in rows_of(aws, "C#")


def test_an_aws_error_while_recording_returns_that_message_for_retry(
    aws: MockedAws, messages, monkeypatch: pytest.MonkeyPatch
):
    settings = with_attempts(monkeypatch, 2)
    FAILING.update({5})
    process(settings, messages[0])
    assert dead_letter_round(settings, messages[0]) == "resent"  # round 1 of 2
    sent_again(aws)
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
    row = rows_of(aws, "C#")[0]
    assert (row["pending"], row["dead_letters"]) == ({5}, 1)  # nothing half done
    assert rows_of(aws, "F#") == {}
    assert "failed_items" not in aws.header(BATCH_ID)
    assert list(poison_rows(aws)) == ["poison-1"]  # the other record of the event was still handled

    assert dead_letter(settings, messages[0]) == {"batchItemFailures": []}  # the retry records it
    assert rows_of(aws, "F#")[0]["failed"] == {5}
    assert aws.header(BATCH_ID)["failed_items"] == 1
    assert sent_again(aws) == []


def test_an_aws_error_while_sending_again_returns_that_message_for_retry_without_using_up_a_round(
    aws: MockedAws, messages, monkeypatch: pytest.MonkeyPatch
):
    """The retry of a dead letter whose re-send failed is the same round: it sends, and counts nothing more."""
    settings = with_attempts(monkeypatch, 3)
    real_send = work.send_chunks
    sends = []

    def unavailable_once(sqs, queue_url, chunks, max_bytes):
        sends.append([chunk.chunk_no for chunk in chunks])
        if len(sends) == 1:
            raise client_error("ServiceUnavailable", "SendMessageBatch")
        return real_send(sqs, queue_url, chunks, max_bytes)

    monkeypatch.setattr(work, "send_chunks", unavailable_once)

    assert dead_letter(settings, messages[3]) == {"batchItemFailures": [{"itemIdentifier": messages[3]["MessageId"]}]}
    assert sent_again(aws) == []

    assert dead_letter(settings, messages[3]) == {"batchItemFailures": []}

    assert sends == [[3], [3]]
    assert [len(body["items"]) for body in sent_again(aws)] == [100]  # the items did go out again
    assert rows_of(aws, "C#")[3]["dead_letters"] == 1  # one dead letter, one round
    assert rows_of(aws, "F#") == {}


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
    received = model.parse_iso(row["received_at"])
    # Kept for people to read, then expired by TTL: the only rows that carry one.
    assert row["expires_at"] == int(received.timestamp()) + settings.row_ttl_days * 86_400

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
    assert list(BatchStore(settings.table_name).failed_rows(BATCH_ID, 1)) == []
