"""Item failures, from the first failed attempt to the alert that reports them.

An item that raises stays pending with its error and counts one failed attempt of its
own (`tries`, invariant 9). When its own attempts reach ITEM_MAX_ATTEMPTS (3 here) it
fails for good: it moves to the chunk's F row and the header's `failed_items` in one
transaction, and its message is acknowledged once no pending item of it is left. Running
out of time is no attempt: before Lambda's deadline the processor stops starting items,
records the finished ones and sends the rest again in a fresh message. A chunk whose
deliveries keep ending without a result fails through the dead-letter handler. Either
way the batch ends COMPLETED_WITH_FAILURES with the failed items counted and quoted in
the alert.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
import re
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from chalicelib import deadletters, finalizer, itemerrors, log, model, processor, redrive, retries
from chalicelib.config import Alert, Definition, Settings
from chalicelib.chunks import MAX_ROW_ERRORS
from chalicelib.errors import PermanentItemError
from chalicelib.store import BatchStore
from chalicelib.tasks import task

from .conftest import DEAD_LETTER_QUEUE_NAME, MockedAws, create_sealed_batch, raise_line, raised_at, sqs_event

SLOT = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
BATCH_ID = "nightly-2026-11-23T06:00Z"
TASK = "unit-failures"

CALLS: list[int] = []  # item ids the task ran on, in order
FAILING: dict[int, str] = {}  # item id -> the error text the task raises with
MISSING: set[int] = set()  # item ids the task looks up a field of that they do not have (KeyError)
BROKEN: set[int] = set()  # item ids the task rejects with PermanentItemError


@task(TASK, permanent=(KeyError,))
def flaky(item: dict, options: Mapping[str, Any]) -> None:
    """Records every run; raises ValueError(FAILING[id]) for the items in FAILING (and see MISSING, BROKEN)."""
    CALLS.append(item["id"])
    if item["id"] in FAILING:
        raise ValueError(FAILING[item["id"]])
    if item["id"] in MISSING:
        item["name"]
    if item["id"] in BROKEN:
        raise PermanentItemError(f"item {item['id']} can never work")


def fail(*ids: int) -> None:
    FAILING.update({index: f"item {index} failed on purpose" for index in ids})


@pytest.fixture(autouse=True)
def fresh_task_state():
    for state in (CALLS, FAILING, MISSING, BROKEN):
        state.clear()
    yield
    for state in (CALLS, FAILING, MISSING, BROKEN):
        state.clear()


@pytest.fixture
def definition(nightly: Definition) -> Definition:
    """1,000 items in 10 chunks of 100 (chunk n holds items 100n..100n+99), 3 sample errors per alert."""
    return dataclasses.replace(nightly, task=TASK, alert=Alert(sample_errors=3))


@pytest.fixture
def definitions(definition: Definition) -> dict[str, Definition]:
    return {definition.name: definition}


@pytest.fixture
def messages(aws: MockedAws, definition: Definition, settings: Settings) -> list[dict[str, Any]]:
    """The created batch's work messages, in chunk order."""
    create_sealed_batch(definition, SLOT, settings)
    return sorted(aws.work_messages(), key=lambda message: json.loads(message["Body"])["chunk"])


def process(settings: Settings, *delivered: dict[str, Any], context: Any = None) -> dict[str, Any]:
    return processor.handle_sqs_event(sqs_event(list(delivered)), settings, context)


def deliver_until_acknowledged(settings: Settings, messages: list[dict[str, Any]]) -> int:
    """Deliver `messages`, then again those returned in batchItemFailures, until none is; the deliveries made."""
    deliveries = 0
    while messages:
        deliveries += 1
        assert deliveries <= settings.item_max_attempts, "a message kept coming back after its items' attempts ran out"
        returned = set(failure_ids(process(settings, *messages)))
        messages = [message for message in messages if message["MessageId"] in returned]
    return deliveries


def dead_letter(settings: Settings, *delivered: dict[str, Any], receives: int = 5) -> dict[str, Any]:
    """Deliver messages to the dead-letter handler, as the DLQ's event source mapping would.

    Each call is a new round: the message that reached the dead-letter queue is the one
    the last round sent again, so it has a new message id.
    """
    moved = [
        {**message, "MessageId": str(uuid.uuid4()), "Attributes": {"ApproximateReceiveCount": str(receives)}}
        for message in delivered
    ]
    return deadletters.handle_sqs_event(sqs_event(moved, DEAD_LETTER_QUEUE_NAME), settings)


def finalize_from_stream(aws: MockedAws, settings: Settings, definitions: dict[str, Definition]) -> list[str]:
    """Hand the finalizer every record the table streamed since the last call."""
    return finalizer.handle_stream_event({"Records": aws.stream_records()}, settings, definitions)


def chunk_row(aws: MockedAws, chunk_no: int) -> dict[str, Any] | None:
    return next((row for row in aws.chunk_rows(BATCH_ID) if row["sk"] == model.chunk_sk(chunk_no)), None)


def failed_rows(aws: MockedAws) -> list[dict[str, Any]]:
    return sorted(
        (row for row in aws.rows() if row["pk"].startswith(f"B#{BATCH_ID}#") and row["sk"].startswith("F#")),
        key=lambda row: row["sk"],
    )


def failure_ids(result: dict[str, Any]) -> list[str]:
    return [failure["itemIdentifier"] for failure in result["batchItemFailures"]]


def sent_again(aws: MockedAws) -> dict[int, list[int]]:
    """Chunk number -> item indices, of the messages sent to the work queue since the last call."""
    bodies = [json.loads(message["Body"]) for message in aws.work_messages()]
    assert len({body["chunk"] for body in bodies}) == len(bodies), "one fresh message per chunk"
    return {body["chunk"]: [index for index, _ in body["items"]] for body in bodies}


class DeadlineContext:
    """A Lambda context with plenty of time until `after` more items have run, then almost none."""

    def __init__(self, after: int, plenty_ms: int = 60_000, little_ms: int = 1_000) -> None:
        self.until = len(CALLS) + after
        self.plenty_ms, self.little_ms = plenty_ms, little_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.plenty_ms if len(CALLS) < self.until else self.little_ms


class SteadyContext:
    """A Lambda context whose remaining time never changes."""

    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


# -- a failing item stays pending, with its error, and counts its own attempts ------------------------------


def test_failed_items_stay_pending_with_their_error_and_each_counts_its_own_attempt(
    aws: MockedAws, messages, settings: Settings
):
    fail(3, 7)

    result = process(settings, messages[0])

    assert failure_ids(result) == [messages[0]["MessageId"]]
    row = chunk_row(aws, 0)
    assert row["pending"] == {3, 7}  # the 98 done items left the set
    assert row["errors"] == {"3": "ValueError: item 3 failed on purpose" + raised_at(flaky), "7": "ValueError: item 7 failed on purpose" + raised_at(flaky)}
    assert row["tries"] == {"3": 1, "7": 1}

    result = process(settings, messages[0])

    assert failure_ids(result) == [messages[0]["MessageId"]]
    assert CALLS.count(3) == 2 and CALLS.count(50) == 1  # only still-pending items run again
    assert chunk_row(aws, 0)["tries"] == {"3": 2, "7": 2}
    assert failed_rows(aws) == []


def test_an_item_fails_for_good_after_item_max_attempts_of_its_own_and_its_message_is_acknowledged(
    aws: MockedAws, messages, settings: Settings
):
    fail(3, 7)
    assert settings.item_max_attempts == 3  # the default

    deliveries = deliver_until_acknowledged(settings, [messages[0]])

    assert deliveries == 3  # returned twice, then acknowledged: nothing of it is pending any more
    assert CALLS.count(3) == CALLS.count(7) == 3 and CALLS.count(50) == 1
    assert chunk_row(aws, 0) is None
    (row,) = failed_rows(aws)
    assert row["sk"] == "F#00000000"
    assert row["failed"] == {3, 7}
    assert row["errors"] == {"3": "ValueError: item 3 failed on purpose" + raised_at(flaky), "7": "ValueError: item 7 failed on purpose" + raised_at(flaky)}
    assert (row["attempt"], row["reason"]) == (1, "failed 3 attempts (ITEM_MAX_ATTEMPTS)")
    assert model.parse_iso(row["failed_at"])
    header = aws.header(BATCH_ID)
    assert header["failed_items"] == 2  # counted in the same transaction, not by reading F rows
    assert header["status"] == model.SEALED  # completing is the finalizer's job


def test_each_item_counts_only_its_own_attempts(aws: MockedAws, messages, monkeypatch: pytest.MonkeyPatch):
    """Item 3 runs out of attempts while item 7, of the same message, still has one: only 3 fails."""
    monkeypatch.setenv("ITEM_MAX_ATTEMPTS", "2")
    settings = Settings.from_env()
    fail(3, 7)
    process(settings, messages[0], context=DeadlineContext(after=5))  # 3 fails once; time runs out before 7
    assert chunk_row(aws, 0)["tries"] == {"3": 1}
    (again,) = aws.work_messages()

    result = process(settings, again)  # 3's second attempt (its last), 7's first

    assert failure_ids(result) == [again["MessageId"]]  # 7 may still succeed
    assert [row["failed"] for row in failed_rows(aws)] == [{3}]
    row = chunk_row(aws, 0)
    assert (row["pending"], row["tries"], set(row["errors"])) == ({7}, {"7": 1}, {"7"})

    FAILING.clear()
    assert process(settings, again) == {"batchItemFailures": []}
    assert chunk_row(aws, 0) is None
    assert [row["failed"] for row in failed_rows(aws)] == [{3}]
    assert aws.header(BATCH_ID)["failed_items"] == 1


def test_error_text_is_type_and_message_truncated_to_keep_the_row_small(aws: MockedAws, messages, settings: Settings):
    FAILING[5] = "x" * 2_000

    process(settings, messages[0])

    error = chunk_row(aws, 0)["errors"]["5"]
    assert error.startswith("ValueError: xxx")
    assert len(error) == 500


def test_a_row_keeps_at_most_five_errors_the_lowest_item_indices(aws: MockedAws, messages, settings: Settings):
    fail(*range(10, 20))

    process(settings, messages[0])

    row = chunk_row(aws, 0)
    assert row["pending"] == set(range(10, 20))  # every failed item stays pending
    assert sorted(row["errors"], key=int) == [str(index) for index in range(10, 10 + MAX_ROW_ERRORS)]
    assert row["tries"] == {str(index): 1 for index in range(10, 20)}  # attempts are counted for every item


def test_the_latest_attempt_replaces_the_errors_of_the_one_before(aws: MockedAws, messages, settings: Settings):
    fail(3, 7)
    process(settings, messages[0])
    FAILING.pop(3)
    FAILING[7] = "still broken"

    process(settings, messages[0])

    row = chunk_row(aws, 0)
    assert row["pending"] == {7}
    assert row["errors"] == {"7": "ValueError: still broken" + raised_at(flaky)}
    assert row["tries"] == {"7": 2}  # item 3 finished: its count left with it


def test_a_later_successful_delivery_drains_the_row(aws: MockedAws, messages, settings: Settings):
    fail(3, 7)
    process(settings, messages[0])
    FAILING.clear()
    CALLS.clear()

    result = process(settings, messages[0])

    assert result == {"batchItemFailures": []}
    assert CALLS == [3, 7]
    assert chunk_row(aws, 0) is None


# -- the deadline: stop starting items, record the finished ones, send the rest again ----------------------


def test_near_the_deadline_the_processor_stops_and_sends_what_it_did_not_start_in_fresh_messages(
    aws: MockedAws, messages, settings: Settings
):
    result = process(settings, messages[0], messages[1], messages[2], context=DeadlineContext(after=30))

    # No item is started once time runs short. Returning the messages would spend a receive
    # on items that never ran; instead the rest go out again in fresh messages and these are
    # acknowledged.
    assert CALLS == list(range(30))
    assert result == {"batchItemFailures": []}
    assert chunk_row(aws, 0)["pending"] == set(range(30, 100))  # the 30 finished items were recorded
    assert chunk_row(aws, 1)["pending"] == set(range(100, 200))
    assert chunk_row(aws, 2)["pending"] == set(range(200, 300))
    assert [chunk_row(aws, n)["tries"] for n in range(3)] == [{}, {}, {}]  # running out of time is not an attempt
    again = aws.work_messages()
    assert {json.loads(message["Body"])["chunk"]: len(json.loads(message["Body"])["items"]) for message in again} == {
        0: 70,
        1: 100,
        2: 100,
    }

    result = process(settings, *again, context=SteadyContext(60_000))

    assert result == {"batchItemFailures": []}
    assert Counter(CALLS) == Counter(range(300))  # every item ran exactly once over both deliveries
    assert [chunk_row(aws, n) for n in range(3)] == [None, None, None]


def test_time_running_out_between_messages_sends_the_next_one_again_untouched(
    aws: MockedAws, messages, settings: Settings
):
    result = process(settings, messages[0], messages[1], context=DeadlineContext(after=100))

    assert CALLS == list(range(100))
    assert result == {"batchItemFailures": []}
    assert chunk_row(aws, 0) is None
    row = chunk_row(aws, 1)
    assert (row["pending"], row["tries"]) == (set(range(100, 200)), {})
    (again,) = aws.work_messages()
    assert json.loads(again["Body"])["items"] == json.loads(messages[1]["Body"])["items"]


def test_the_first_item_of_an_invocation_starts_whenever_any_time_is_left(
    aws: MockedAws, messages, settings: Settings
):
    """0.75 s left after the margin, items expected to take up to 1 s (item_seconds): a later invocation
    would have no more time, so the first item starts anyway; a message that never starts never ends."""
    assert json.loads(messages[0]["Body"])["item_seconds"] == 1.0

    result = process(settings, messages[0], context=SteadyContext(1_000))

    assert CALLS == [0]
    assert result == {"batchItemFailures": []}
    assert chunk_row(aws, 0)["pending"] == set(range(1, 100))
    assert sent_again(aws) == {0: list(range(1, 100))}  # the rest, in a fresh message


def test_a_short_function_timeout_still_makes_progress(aws: MockedAws, messages, settings: Settings):
    """The margin is at most a quarter of the time the invocation started with, not a flat 5 s."""
    result = process(settings, messages[0], context=SteadyContext(4_000))

    assert result == {"batchItemFailures": []}
    assert CALLS == list(range(100))


# -- items that failed for good end the batch COMPLETED_WITH_FAILURES ---------------------------------------------


def ended_with_chunk_3s_eight_failures(aws: MockedAws) -> dict[str, Any]:
    """The header of a batch that ended with items 305..312 failed; its samples are the first 3 errors they raised."""
    header = aws.header(BATCH_ID)
    assert header["status"] == model.COMPLETED_WITH_FAILURES
    assert (header["succeeded"], header["failed"]) == (992, 8)
    assert header["sample_errors"] == [
        {"item": index, "error": f"ValueError: item {index} failed on purpose{raised_at(flaky)}"} for index in (305, 306, 307)
    ]
    return header


def test_a_batch_whose_items_ran_out_of_attempts_completes_with_failures_and_says_so(
    aws: MockedAws, messages, settings: Settings, definitions
):
    fail(*range(305, 313))  # 8 items of chunk 3
    assert failure_ids(process(settings, *messages)) == [messages[3]["MessageId"]]
    assert finalize_from_stream(aws, settings, definitions) == []  # chunk 3 is still pending

    assert deliver_until_acknowledged(settings, [messages[3]]) == 2  # its second and third attempts
    completed = finalize_from_stream(aws, settings, definitions)

    assert completed == [BATCH_ID]
    header = ended_with_chunk_3s_eight_failures(aws)
    assert header["alert_id"] == f"{BATCH_ID}/1" and header["notified_at"] >= header["completed_at"]

    (alert,) = aws.alerts()
    assert re.fullmatch(
        rf"batch {BATCH_ID} completed with failures: 1,000 items, 8 failed in \d+ s", alert["Subject"]
    )
    assert alert["MessageAttributes"]["status"] == {"Type": "String", "Value": "COMPLETED_WITH_FAILURES"}
    body = json.loads(alert["Message"])
    assert body["status"] == model.COMPLETED_WITH_FAILURES
    assert body["totals"] == {"items": 1000, "succeeded": 992, "failed": 8}
    assert body["sample_errors"] == header["sample_errors"]


def test_a_batch_with_a_dead_lettered_chunk_completes_with_failures_and_says_so(
    aws: MockedAws, messages, settings: Settings, definitions
):
    """Chunk 3's items failed once; then its deliveries kept crashing before they recorded anything."""
    fail(*range(305, 313))
    assert failure_ids(process(settings, *messages)) == [messages[3]["MessageId"]]

    sent = []
    for _ in range(settings.item_max_attempts):  # sent again twice, failed the third time
        assert dead_letter(settings, messages[3]) == {"batchItemFailures": []}
        sent.append(sent_again(aws))
    assert sent == [{3: list(range(305, 313))}, {3: list(range(305, 313))}, {}]
    completed = finalize_from_stream(aws, settings, definitions)

    assert completed == [BATCH_ID]
    header = ended_with_chunk_3s_eight_failures(aws)  # the errors the items last raised, kept through the dead letters
    (failure,) = redrive.list_failures(BATCH_ID, settings)
    assert failure["reason"] == "dead-lettered 3 times (5 receives the last time) without a recorded result"
    assert len(aws.alerts()) == 1


def test_list_failures_returns_each_failed_chunk_with_its_items_errors_and_attempt(
    aws: MockedAws, messages, settings: Settings, definitions
):
    fail(305, 306, 731)
    deliver_until_acknowledged(settings, messages)
    finalize_from_stream(aws, settings, definitions)

    failures = redrive.list_failures(BATCH_ID, settings)

    assert [(entry["chunk"], entry["shard"], entry["items"], entry["attempt"]) for entry in failures] == [
        (3, 0, [305, 306], 1),
        (7, 0, [731], 1),
    ]  # `attempt`: the batch attempt they failed in (a redrive starts attempt 2)
    assert failures[0]["errors"] == {
        305: "ValueError: item 305 failed on purpose" + raised_at(flaky),
        306: "ValueError: item 306 failed on purpose" + raised_at(flaky),
    }
    assert all(entry["reason"] == "failed 3 attempts (ITEM_MAX_ATTEMPTS)" for entry in failures)
    assert all(model.parse_iso(entry["failed_at"]) for entry in failures)
    assert aws.header(BATCH_ID)["failed"] == 3


def test_failures_are_counted_on_every_shard(aws: MockedAws, definition: Definition, settings: Settings, definitions):
    settings = dataclasses.replace(settings, shard_chunk_target=3)  # 10 chunks over 4 shards: chunk n on n % 4
    create_sealed_batch(definition, SLOT, settings)
    messages = sorted(aws.work_messages(), key=lambda message: json.loads(message["Body"])["chunk"])
    fail(301, 302, 601)  # chunk 3 (shard 3) and chunk 6 (shard 2)
    process(settings, *messages)

    deliver_until_acknowledged(settings, [messages[3]])  # chunk 3's items run out of attempts
    for _ in range(settings.item_max_attempts):  # chunk 6 is dead-lettered until it fails
        dead_letter(settings, messages[6])

    assert [(row["pk"], row["sk"], row["failed"]) for row in failed_rows(aws)] == [
        (model.shard_pk(BATCH_ID, 3), "F#00000003", {301, 302}),
        (model.shard_pk(BATCH_ID, 2), "F#00000006", {601}),
    ]
    assert aws.header(BATCH_ID)["failed_items"] == 3
    assert finalize_from_stream(aws, settings, definitions) == [BATCH_ID]
    header = aws.header(BATCH_ID)
    assert header["status"] == model.COMPLETED_WITH_FAILURES
    assert (header["succeeded"], header["failed"]) == (997, 3)


def test_sample_errors_quote_only_items_that_failed(aws: MockedAws, messages, settings: Settings, definitions):
    """Items 3 and 7 fail; on the next delivery 3 succeeds, then time runs out before 7 is tried again."""
    fail(3, 7)
    process(settings, messages[0], *messages[1:])
    FAILING.pop(3)
    process(settings, messages[0], context=DeadlineContext(after=1))
    row = chunk_row(aws, 0)
    assert (row["pending"], row["tries"]) == ({7}, {"7": 1})  # not started: no attempt used
    (again,) = aws.work_messages()
    assert [index for index, _ in json.loads(again["Body"])["items"]] == [7]

    assert deliver_until_acknowledged(settings, [again]) == 2  # 7's second and third attempts
    finalize_from_stream(aws, settings, definitions)

    assert CALLS.count(7) == 3
    header = aws.header(BATCH_ID)
    assert header["failed"] == 1
    assert [sample["item"] for sample in header["sample_errors"]] == [7]
    assert list(redrive.list_failures(BATCH_ID, settings)[0]["errors"]) == [7]


# -- the failure loop: a stated retry delay, permanent errors at once, the place and the traceback ---------------


class LogLines(logging.Handler):
    """The structured lines chalicelib logs during a test: (message, fields)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.getMessage(), dict(getattr(record, "fields", {}))))

    def named(self, message: str) -> list[dict[str, Any]]:
        return [fields for text, fields in self.lines if text == message]


@pytest.fixture
def logged() -> Any:
    logger = logging.getLogger(log.LOGGER_NAME)
    handler, level = LogLines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_a_returned_message_comes_back_after_the_retry_delay_not_the_queues_visibility_timeout(
    aws: MockedAws, messages, monkeypatch: pytest.MonkeyPatch
):
    """Rule: a message returned for a retry is visible again after RETRY_DELAY_SECONDS. Without the
    visibility change it waits the queue's timeout (30 s here, 12 min deployed) before any retry."""
    monkeypatch.setenv("RETRY_DELAY_SECONDS", "1")
    fail(3)

    result = process(Settings.from_env(), messages[0])

    assert failure_ids(result) == [messages[0]["MessageId"]]
    assert aws.work_messages() == []  # not before its delay
    time.sleep(1.3)
    (again,) = aws.work_messages()
    assert again["MessageId"] == messages[0]["MessageId"]


def test_the_retry_delay_doubles_with_the_items_own_attempts_never_with_receives(
    aws: MockedAws, messages, monkeypatch: pytest.MonkeyPatch
):
    """Rule (invariant 9): the wait grows with the attempts the items used, RETRY_DELAY x 2^(n-1) plus at
    most 20% jitter. A receive count is no attempt: a message received many times whose item used one
    attempt waits the first delay, not a longer one."""
    monkeypatch.setenv("RETRY_DELAY_SECONDS", "10")
    settings = Settings.from_env()
    fail(3)
    store = BatchStore(settings.table_name)
    waits = [processor.process_message(messages[0]["Body"], store, settings).retry_in for _ in range(2)]
    assert 10 <= waits[0] <= 12 and 20 <= waits[1] <= 24

    moved = {**messages[1], "Attributes": {"ApproximateReceiveCount": "9"}}
    fail(105)
    outcome = processor.process_message(moved["Body"], store, settings)
    assert 10 <= outcome.retry_in <= 12
    assert {retries.delay_for(attempt, 30) for attempt in (20, 40)} == {retries.MAX_RETRY_DELAY}


def test_a_visibility_change_that_fails_leaves_the_message_to_its_queues_timeout(
    aws: MockedAws, messages, settings: Settings, logged: LogLines
):
    """Rule: a message whose retry delay cannot be set is still returned, and waits its queue's timeout.
    Here the receipt handle is not the queue's (a stale one): the handler must neither raise (the whole
    event would be retried) nor drop the message."""
    fail(3)
    stale = {**messages[0], "ReceiptHandle": "not-a-receipt-handle"}

    result = process(settings, stale)

    assert failure_ids(result) == [messages[0]["MessageId"]]
    (warning,) = logged.named("retry delay not set; those messages wait the queue's visibility timeout")
    assert warning["changed"] == 0 and "ReceiptHandleIsInvalid" in warning["failed"][0]
    assert chunk_row(aws, 0)["pending"] == {3}


def test_errors_no_retry_can_mend_fail_their_items_at_the_first_attempt(aws: MockedAws, messages, settings: Settings):
    """Rule: a type the task declares permanent (KeyError here) and PermanentItemError fail the item at
    once: one run, the F row, the header's count. Other errors are retried as before. Without it, items
    that can never succeed run ITEM_MAX_ATTEMPTS times and hold their batch open for every retry delay."""
    MISSING.add(3)
    BROKEN.add(4)
    fail(7)

    result = process(settings, messages[0])

    assert failure_ids(result) == [messages[0]["MessageId"]]  # item 7 may still succeed
    (row,) = failed_rows(aws)
    assert row["failed"] == {3, 4}
    assert row["errors"]["3"].startswith("KeyError: 'name' (at tests/unit/test_failures.py:")
    assert row["errors"]["4"] == "PermanentItemError: item 4 can never work" + raised_at(flaky, "Perm")
    assert aws.header(BATCH_ID)["failed_items"] == 2
    assert chunk_row(aws, 0)["pending"] == {7} and chunk_row(aws, 0)["tries"] == {"7": 1}
    assert CALLS.count(3) == CALLS.count(4) == 1


def test_an_error_names_the_line_that_raised_it_and_keeps_it_when_its_message_is_cut(
    aws: MockedAws, messages, settings: Settings
):
    """Rule: a failed item's error says where it was raised (file:line in function), within the row's
    500 characters; a long message is cut, never the place."""
    FAILING[5] = "x" * 2_000

    process(settings, messages[0])

    error = chunk_row(aws, 0)["errors"]["5"]
    assert error.startswith("ValueError: xxx") and error.endswith("..." + raised_at(flaky))
    assert len(error) == model.MAX_ERROR_TEXT


def test_a_failed_items_traceback_is_logged_once_by_the_attempt_that_fails_it_and_retries_log_one_line(
    aws: MockedAws, messages, settings: Settings, logged: LogLines
):
    """Rule: the traceback of an item that failed for good is logged once, with batch, chunk and item,
    by the delivery that failed it; each retry logs one short line for its message, with no traceback."""
    fail(3, 7)

    deliver_until_acknowledged(settings, [messages[0]])

    retried = logged.named("items will be retried")
    assert [(line["chunk"], line["items"], line["attempts"]) for line in retried] == [(0, [3, 7], 1), (0, [3, 7], 2)]
    assert all("traceback" not in line for line in retried)
    failed = logged.named("item failed for good")
    assert [(line["batch_id"], line["chunk"], line["item"], line["attempts"]) for line in failed] == [
        (BATCH_ID, 0, 3, 3),
        (BATCH_ID, 0, 7, 3),
    ]
    trace = failed[0]["traceback"]
    assert trace.startswith("Traceback (most recent call last):") and "chalicelib/processor.py" not in trace
    assert f'test_failures.py", line {raise_line(flaky)}, in flaky' in trace
    assert trace.endswith("ValueError: item 3 failed on purpose\n") and len(trace) <= itemerrors.TRACEBACK_BYTES
