"""The processor: at-least-once delivery, exactly-once completion tracking (invariants 5, 9 and 10).

Each delivery records its results on the chunk row with one write conditioned on the
pending set it read (`BatchStore.record`): finished items leave the set, an item that
raised counts one attempt of its own (`tries`) and stays pending, and the message goes
back to the queue only while an item it ran may still succeed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from chalicelib import model, processor
from chalicelib.config import Definition, Settings
from chalicelib.store import BatchStore, ItemOutcome, Recorded
from chalicelib.tasks import task

from .conftest import MockedAws, create_sealed_batch, sqs_event

SLOT = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
BATCH_ID = "nightly-2026-11-23T06:00Z"

CALLS: list[int] = []  # item ids the task ran on, in order
FAILING: set[int] = set()  # item ids the task raises on


@task("unit-recording")
def recording(item: dict, options: Mapping[str, Any]) -> None:
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
def messages(aws: MockedAws, nightly: Definition, settings: Settings) -> list[dict[str, Any]]:
    """A created batch of 1,000 items in 10 chunks using the recording task; its messages in chunk order."""

    create_sealed_batch(dataclasses.replace(nightly, task="unit-recording"), SLOT, settings)
    received = aws.work_messages()
    return sorted(received, key=lambda m: json.loads(m["Body"])["chunk"])


def pending(aws: MockedAws) -> dict[int, set[int]]:
    """Chunk number -> pending item indices, for every chunk row left."""
    return {int(row["sk"][2:]): row["pending"] for row in aws.chunk_rows(BATCH_ID)}


def tries(aws: MockedAws) -> dict[int, dict[str, int]]:
    """Chunk number -> failed attempts per still-pending item (str(index) -> count), for every chunk row left."""
    return {int(row["sk"][2:]): row["tries"] for row in aws.chunk_rows(BATCH_ID)}


def handle(settings: Settings, *delivered: dict[str, Any]) -> dict[str, Any]:
    return processor.handle_sqs_event(sqs_event(list(delivered)), settings)


# -- the normal case ----------------------------------------------------------------------------


def test_processes_every_pending_item_and_deletes_the_drained_row(aws: MockedAws, messages, settings: Settings):
    result = handle(settings, messages[0])

    assert result == {"batchItemFailures": []}
    assert CALLS == list(range(100))
    assert sorted(pending(aws)) == list(range(1, 10))


def test_processes_every_message_of_an_event(aws: MockedAws, messages, settings: Settings):
    result = handle(settings, *messages)

    assert result == {"batchItemFailures": []}
    assert sorted(CALLS) == list(range(1000))
    assert pending(aws) == {}
    assert aws.header(BATCH_ID)["status"] == model.SEALED  # completing is the finalizer's job


# -- duplicates and strays ----------------------------------------------------------------------


def test_duplicate_delivery_does_not_double_count(aws: MockedAws, messages, settings: Settings):
    handle(settings, messages[0])
    rows_after_first = aws.rows()

    result = handle(settings, messages[0])

    assert result == {"batchItemFailures": []}
    assert CALLS == list(range(100))  # the task did not run again
    assert aws.rows() == rows_after_first


def test_duplicate_in_the_same_event_runs_the_task_once_per_item(aws: MockedAws, messages, settings: Settings):
    result = handle(settings, messages[2], messages[2])

    assert result == {"batchItemFailures": []}
    assert CALLS == list(range(200, 300))
    assert 2 not in pending(aws)


def test_message_whose_row_never_existed_is_a_no_op(aws: MockedAws, messages, settings: Settings):
    """Invariant 1, the other side: a message without its row runs nothing and completes nothing."""
    stray = model.Chunk("ghost-2026-11-23T06:00Z", 0, 0, "unit-recording", {}, ((0, {"id": 0}), (1, {"id": 1})))
    rows_before = aws.rows()

    result = handle(settings, {"MessageId": "stray-1", "Body": stray.body()})

    assert result == {"batchItemFailures": []}
    assert CALLS == []
    assert aws.rows() == rows_before  # in particular, no row or header for the ghost batch


# -- partial failure ----------------------------------------------------------------------------------


def test_failed_items_stay_pending_and_the_message_is_returned_for_retry(aws: MockedAws, messages, settings: Settings):
    FAILING.update({3, 7})

    result = handle(settings, messages[0])

    assert result == {"batchItemFailures": [{"itemIdentifier": messages[0]["MessageId"]}]}
    assert pending(aws)[0] == {3, 7}  # the 98 that succeeded are no longer pending
    assert tries(aws)[0] == {"3": 1, "7": 1}  # one failed attempt each, of ITEM_MAX_ATTEMPTS (3)
    assert len(CALLS) == 100


def test_redelivery_after_partial_failure_runs_only_the_still_pending_items(
    aws: MockedAws, messages, settings: Settings
):
    FAILING.update({3, 7})
    handle(settings, messages[0])
    FAILING.clear()
    CALLS.clear()

    result = handle(settings, messages[0])

    assert result == {"batchItemFailures": []}
    assert CALLS == [3, 7]
    assert 0 not in pending(aws)
    assert not [row for row in aws.rows() if row["sk"].startswith("F#")]  # two attempts failed nothing for good


def test_message_whose_every_item_fails_keeps_every_item_pending_with_one_attempt_counted_each(
    aws: MockedAws, messages, settings: Settings
):
    FAILING.update(range(100, 200))

    result = handle(settings, messages[1])

    assert result == {"batchItemFailures": [{"itemIdentifier": messages[1]["MessageId"]}]}
    assert pending(aws)[1] == set(range(100, 200))
    assert tries(aws)[1] == {str(index): 1 for index in range(100, 200)}


def test_one_failing_message_does_not_fail_the_others_in_the_event(aws: MockedAws, messages, settings: Settings):
    FAILING.add(3)

    result = handle(settings, messages[0], messages[1])

    assert result == {"batchItemFailures": [{"itemIdentifier": messages[0]["MessageId"]}]}
    assert pending(aws)[0] == {3}
    assert 1 not in pending(aws)
    assert tries(aws) == {n: {"3": 1} if n == 0 else {} for n in range(10) if n != 1}


# -- bad messages -------------------------------------------------------------------------------------


def test_message_that_is_not_json_is_reported_as_a_failure_not_raised(aws: MockedAws, messages, settings: Settings):
    rows_before = aws.rows()

    result = handle(settings, {"MessageId": "bad-1", "Body": "{not json"})

    assert result == {"batchItemFailures": [{"itemIdentifier": "bad-1"}]}
    assert aws.rows() == rows_before
    assert CALLS == []


def test_bad_message_does_not_stop_the_good_ones_in_its_event(aws: MockedAws, messages, settings: Settings):
    result = handle(settings, {"MessageId": "bad-1", "Body": '{"v": 2}'}, messages[4])

    assert result == {"batchItemFailures": [{"itemIdentifier": "bad-1"}]}
    assert 4 not in pending(aws)
    assert CALLS == list(range(400, 500))


def test_message_naming_an_unknown_task_is_a_failure_and_runs_nothing(aws: MockedAws, messages, settings: Settings):
    body = json.loads(messages[0]["Body"])
    body["task"] = "resize"

    result = handle(settings, {"MessageId": "unknown-task", "Body": json.dumps(body)})

    assert result == {"batchItemFailures": [{"itemIdentifier": "unknown-task"}]}
    assert pending(aws)[0] == set(range(100))
    assert tries(aws)[0] == {}  # a bad message is not an attempt of any item


# -- concurrent duplicates ------------------------------------------------------------------------------


def record(store: BatchStore, settings: Settings, row: dict[str, Any], outcome: ItemOutcome) -> Recorded | None:
    """Record one delivery's results against the chunk-0 row that delivery read."""
    return store.record(
        BATCH_ID, 0, 0, outcome, max_attempts=settings.item_max_attempts, failed_at=model.iso(model.utc_now()), row=row
    )


@pytest.mark.parametrize("first_half_first", [True, False])
def test_concurrent_duplicates_that_each_finish_half_leave_no_empty_row(
    aws: MockedAws, messages, settings: Settings, first_half_first: bool
):
    """Two deliveries of chunk 0 both read all 100 pending, then each finish a different half.

    The second write finds the set changed since its read (the condition is `pending = <what
    was read>`), reads the row again and deletes it: "now empty" is decided from that read
    (invariant 10), so no row is left behind with an empty set or the other half.
    """
    store = BatchStore(settings.table_name)
    read_by_both = store.get_chunk(BATCH_ID, 0, 0)
    halves = [frozenset(range(50)), frozenset(range(50, 100))]
    if not first_half_first:
        halves.reverse()

    assert record(store, settings, read_by_both, ItemOutcome(done=halves[0])) == Recorded(
        done=halves[0], failed=frozenset(), pending=halves[1]
    )
    assert pending(aws)[0] == halves[1]
    assert record(store, settings, read_by_both, ItemOutcome(done=halves[1])) == Recorded(
        done=halves[1], failed=frozenset(), pending=frozenset()
    )

    assert 0 not in pending(aws)
    assert store.get_chunk(BATCH_ID, 0, 0) is None


def test_recording_after_a_duplicate_deleted_the_row_does_not_recreate_it(aws: MockedAws, messages, settings: Settings):
    store = BatchStore(settings.table_name)
    read_by_both = store.get_chunk(BATCH_ID, 0, 0)
    assert record(store, settings, read_by_both, ItemOutcome(done=frozenset(range(100)))).pending == frozenset()

    assert record(store, settings, read_by_both, ItemOutcome(done=frozenset(range(50)))) is None
    assert record(store, settings, read_by_both, ItemOutcome(done=frozenset(range(100)))) is None
    assert record(store, settings, read_by_both, ItemOutcome(errors={7: "ValueError: late"})) is None

    assert 0 not in pending(aws)
    chunk_0 = {(f"B#{BATCH_ID}#0", "C#00000000"), (f"B#{BATCH_ID}#0", "F#00000000")}  # its row, or a failed row
    assert [row for row in aws.rows() if (row["pk"], row["sk"]) in chunk_0] == []


def test_a_duplicate_that_raised_on_an_item_the_other_copy_finished_records_no_attempt_for_it(
    aws: MockedAws, messages, settings: Settings
):
    """Only items still pending count: the copy that finished item 7 first has recorded it."""
    store = BatchStore(settings.table_name)
    read_by_both = store.get_chunk(BATCH_ID, 0, 0)
    record(store, settings, read_by_both, ItemOutcome(done=frozenset(range(50))))

    late = ItemOutcome(done=frozenset(range(50, 99)), errors={7: "ValueError: x", 99: "ValueError: y"})
    recorded = record(store, settings, read_by_both, late)

    assert recorded == Recorded(done=frozenset(range(50, 99)), failed=frozenset(), pending=frozenset({99}))
    row = aws.chunk_rows(BATCH_ID)[0]
    assert row["sk"] == "C#00000000"
    assert (row["pending"], row["tries"], row["errors"]) == ({99}, {"99": 1}, {"99": "ValueError: y"})
