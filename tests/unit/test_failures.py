"""Item failures, from the first failed attempt to the alert that reports them.

The processor keeps a failed item pending with its error and counts the attempt; before
Lambda's deadline it stops starting items and checkpoints the finished ones; a chunk that
exhausts its retries becomes an F row, and the batch then ends COMPLETED_WITH_FAILURES
with the failed items counted and quoted in the alert.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from chalicelib import batcher, deadletters, finalizer, model, processor, redrive
from chalicelib.config import Alert, Definition, Settings
from chalicelib.store import MAX_ROW_ERRORS
from chalicelib.tasks import task

from .conftest import DEAD_LETTER_QUEUE_NAME, MockedAws, sqs_event

SLOT = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
BATCH_ID = "nightly-2026-11-23T06:00Z"
TASK = "unit-failures"

CALLS: list[int] = []  # item ids the task ran on, in order
FAILING: dict[int, str] = {}  # item id -> the error text the task raises with


@task(TASK)
def flaky(item: dict, options: Mapping[str, Any]) -> None:
    """Records every run; raises ValueError(FAILING[id]) for the items in FAILING."""
    CALLS.append(item["id"])
    if item["id"] in FAILING:
        raise ValueError(FAILING[item["id"]])


def fail(*ids: int) -> None:
    FAILING.update({index: f"item {index} failed on purpose" for index in ids})


@pytest.fixture(autouse=True)
def fresh_task_state():
    CALLS.clear()
    FAILING.clear()
    yield
    CALLS.clear()
    FAILING.clear()


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
    batcher.create_batch(definition, SLOT, settings)
    return sorted(aws.work_messages(), key=lambda message: json.loads(message["Body"])["chunk"])


def process(settings: Settings, *delivered: dict[str, Any], context: Any = None) -> dict[str, Any]:
    return processor.handle_sqs_event(sqs_event(list(delivered)), settings, context)


def dead_letter(settings: Settings, *delivered: dict[str, Any], receives: int = 5) -> dict[str, Any]:
    """Deliver messages to the dead-letter handler, as the DLQ's event source mapping would."""
    moved = [{**message, "Attributes": {"ApproximateReceiveCount": str(receives)}} for message in delivered]
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


# -- a failing item stays pending, with its error ------------------------------------------------------


def test_failed_items_stay_pending_with_their_error_and_the_attempt_is_counted(
    aws: MockedAws, messages, settings: Settings
):
    fail(3, 7)

    result = process(settings, messages[0])

    assert failure_ids(result) == [messages[0]["MessageId"]]
    row = chunk_row(aws, 0)
    assert row["pending"] == {3, 7}  # the 98 done items left the set
    assert row["errors"] == {"3": "ValueError: item 3 failed on purpose", "7": "ValueError: item 7 failed on purpose"}
    assert row["attempts"] == 1

    result = process(settings, messages[0])

    assert failure_ids(result) == [messages[0]["MessageId"]]
    assert CALLS.count(3) == 2 and CALLS.count(50) == 1  # only still-pending items run again
    assert chunk_row(aws, 0)["attempts"] == 2


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


def test_the_latest_attempt_replaces_the_errors_of_the_one_before(aws: MockedAws, messages, settings: Settings):
    fail(3, 7)
    process(settings, messages[0])
    FAILING.pop(3)
    FAILING[7] = "still broken"

    process(settings, messages[0])

    row = chunk_row(aws, 0)
    assert row["pending"] == {7}
    assert row["errors"] == {"7": "ValueError: still broken"}


def test_a_later_successful_delivery_drains_the_row(aws: MockedAws, messages, settings: Settings):
    fail(3, 7)
    process(settings, messages[0])
    FAILING.clear()
    CALLS.clear()

    result = process(settings, messages[0])

    assert result == {"batchItemFailures": []}
    assert CALLS == [3, 7]
    assert chunk_row(aws, 0) is None


# -- the deadline: stop starting items, checkpoint the finished ones ----------------------------------------


def test_near_the_deadline_the_processor_stops_and_checkpoints_what_it_finished(
    aws: MockedAws, messages, settings: Settings
):
    result = process(settings, messages[0], messages[1], messages[2], context=DeadlineContext(after=30))

    # No item is started once time runs short; the unfinished message and every later one go back.
    assert CALLS == list(range(30))
    assert failure_ids(result) == [messages[n]["MessageId"] for n in range(3)]
    assert chunk_row(aws, 0)["pending"] == set(range(30, 100))  # the 30 finished items were recorded
    assert chunk_row(aws, 1)["pending"] == set(range(100, 200))
    assert chunk_row(aws, 2)["pending"] == set(range(200, 300))
    assert "attempts" not in chunk_row(aws, 0)  # running out of time is not an item failure

    result = process(settings, messages[0], messages[1], messages[2], context=SteadyContext(60_000))

    assert result == {"batchItemFailures": []}
    assert Counter(CALLS) == Counter(range(300))  # every item ran exactly once over both deliveries
    assert [chunk_row(aws, n) for n in range(3)] == [None, None, None]


def test_time_running_out_between_messages_returns_the_rest_untouched(aws: MockedAws, messages, settings: Settings):
    result = process(settings, messages[0], messages[1], context=DeadlineContext(after=100))

    assert CALLS == list(range(100))
    assert failure_ids(result) == [messages[1]["MessageId"]]
    assert chunk_row(aws, 0) is None
    assert chunk_row(aws, 1)["pending"] == set(range(100, 200))


def test_a_short_function_timeout_still_makes_progress(aws: MockedAws, messages, settings: Settings):
    """The margin is at most a quarter of the time the invocation started with, not a flat 5 s."""
    result = process(settings, messages[0], context=SteadyContext(4_000))

    assert result == {"batchItemFailures": []}
    assert CALLS == list(range(100))


# -- a dead-lettered chunk ends the batch COMPLETED_WITH_FAILURES ----------------------------------------------


def test_batch_with_a_dead_lettered_chunk_completes_with_failures_and_says_so(
    aws: MockedAws, messages, settings: Settings, definitions
):
    fail(*range(305, 313))  # 8 items of chunk 3
    assert failure_ids(process(settings, *messages)) == [messages[3]["MessageId"]]
    assert finalize_from_stream(aws, settings, definitions) == []  # chunk 3 is still pending

    assert dead_letter(settings, messages[3]) == {"batchItemFailures": []}
    completed = finalize_from_stream(aws, settings, definitions)

    assert completed == [BATCH_ID]
    header = aws.header(BATCH_ID)
    assert header["status"] == model.COMPLETED_WITH_FAILURES
    assert (header["succeeded"], header["failed"]) == (992, 8)
    assert header["sample_errors"] == [
        {"item": index, "error": f"ValueError: item {index} failed on purpose"} for index in (305, 306, 307)
    ]  # the definition's alert.sample_errors (3), though the row kept 5
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


def test_list_failures_returns_each_failed_chunk_with_its_items_and_errors(
    aws: MockedAws, messages, settings: Settings, definitions
):
    fail(305, 306, 731)
    process(settings, *messages)
    dead_letter(settings, messages[3], messages[7], receives=5)
    finalize_from_stream(aws, settings, definitions)

    failures = redrive.list_failures(BATCH_ID, settings)

    assert [(entry["chunk"], entry["shard"], entry["items"], entry["attempts"]) for entry in failures] == [
        (3, 0, [305, 306], 1),
        (7, 0, [731], 1),
    ]
    assert failures[0]["errors"] == {
        305: "ValueError: item 305 failed on purpose",
        306: "ValueError: item 306 failed on purpose",
    }
    assert all(entry["reason"] == "retries exhausted: dead-lettered after 5 receives" for entry in failures)
    assert all(model.parse_iso(entry["failed_at"]) for entry in failures)
    assert aws.header(BATCH_ID)["failed"] == 3


def test_failures_are_counted_on_every_shard(aws: MockedAws, definition: Definition, settings: Settings, definitions):
    settings = dataclasses.replace(settings, shard_chunk_target=3)  # 10 chunks over 4 shards: chunk n on n % 4
    batcher.create_batch(definition, SLOT, settings)
    messages = sorted(aws.work_messages(), key=lambda message: json.loads(message["Body"])["chunk"])
    fail(301, 302, 601)  # chunk 3 (shard 3) and chunk 6 (shard 2)
    process(settings, *messages)

    dead_letter(settings, messages[3], messages[6])

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
    assert chunk_row(aws, 0)["pending"] == {7}

    dead_letter(settings, messages[0])
    finalize_from_stream(aws, settings, definitions)

    header = aws.header(BATCH_ID)
    assert header["failed"] == 1
    assert [sample["item"] for sample in header["sample_errors"]] == [7]
    assert list(redrive.list_failures(BATCH_ID, settings)[0]["errors"]) == [7]
