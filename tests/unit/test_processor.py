"""The processor: at-least-once delivery, exactly-once completion tracking (invariants 5, 9 and 10).

Each delivery records its results on the chunk row with one write conditioned on the
pending set it read (`BatchStore.record`): finished items leave the set, an item that
raised counts one attempt of its own (`tries`) and stays pending, and the message goes
back to the queue only while an item it ran may still succeed.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from chalicelib import aws as aws_clients
from chalicelib import itemstats, model, processor
from chalicelib.config import Definition, Settings
from chalicelib.deadline import Deadline
from chalicelib.store import BatchStore, ItemOutcome, Recorded
from chalicelib.tasks import task

from .conftest import MockedAws, create_sealed_batch, sqs_event

SLOT = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
BATCH_ID = "nightly-2026-11-23T06:00Z"

CALLS: list[int] = []  # item ids the task ran on, in order
FAILING: set[int] = set()  # item ids the task raises on
HOOKS: dict[int, Callable[[], Any]] = {}  # item id -> called while the item runs (to make it slow, or hang)
THREADS: dict[int, threading.Thread] = {}  # item id -> the thread it ran on


@task("unit-recording")
def recording(item: dict, options: Mapping[str, Any]) -> None:
    """Records every run and its thread; runs the item's hook; raises for the items in FAILING."""
    CALLS.append(item["id"])
    THREADS[item["id"]] = threading.current_thread()
    if item["id"] in HOOKS:
        HOOKS[item["id"]]()
    if item["id"] in FAILING:
        raise ValueError(f"item {item['id']} failed on purpose")


@pytest.fixture(autouse=True)
def fresh_task_state():
    for state in (CALLS, FAILING, HOOKS, THREADS):
        state.clear()
    yield
    for state in (CALLS, FAILING, HOOKS, THREADS):
        state.clear()


class FakeContext:
    """A Lambda context whose remaining time is what the test sets; the wall clock never moves it."""

    def __init__(self, left_ms: int) -> None:
        self.left_ms = left_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.left_ms


PLENTY_MS = 600_000  # ten minutes: the deadline allows every item, which still runs on a worker thread


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
    # Nothing recorded twice; the batch's stats count the second delivery (they count what was done).
    assert without_stats(aws.rows()) == without_stats(rows_after_first)
    stats = BatchStore(settings.table_name).batch_stats(BATCH_ID)
    assert (stats["deliveries"], stats["invocations"], stats["items_run"]) == (2, 2, 100)


def test_each_invocation_adds_what_it_saw_of_each_batch_to_its_stats_once(aws: MockedAws, messages, settings: Settings):
    """One ADD per batch per invocation, after the records: messages handled, items timed, busy time."""
    writes = []
    client = aws_clients.client("dynamodb")
    real = client.update_item
    client.update_item = lambda **kwargs: writes.append(kwargs["Key"]["sk"]["S"]) or real(**kwargs)
    try:
        handle(settings, messages[0], messages[3])
    finally:
        client.update_item = real

    assert [sk for sk in writes if sk.startswith(model.STATS_PREFIX)] == ["T#0000"]  # the shard of its first message
    stats = BatchStore(settings.table_name).batch_stats(BATCH_ID)
    assert (stats["deliveries"], stats["invocations"], stats["items_run"], stats.get("returned", 0)) == (2, 1, 200, 0)
    assert stats["busy_ms"] >= 0 and itemstats.summary(stats)["count"] == 200


def without_stats(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The table's rows but the batches' stats rows (counters of what was done, chalicelib.itemstats)."""
    return [row for row in rows if not row["sk"].startswith(model.STATS_PREFIX)]


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


# -- the task runner: one handoff per message (invariant 9) ------------------------------------------------


def chunk_no(message: dict[str, Any]) -> int:
    return json.loads(message["Body"])["chunk"]


def created(aws: MockedAws, definition: Definition, settings: Settings) -> list[dict[str, Any]]:
    """The messages of a created batch of `definition` using the recording task, in chunk order."""
    create_sealed_batch(dataclasses.replace(definition, task="unit-recording"), SLOT, settings)
    return sorted(aws.work_messages(), key=chunk_no)


@pytest.fixture
def messages_of_50(aws: MockedAws, nightly: Definition, settings: Settings) -> list[dict[str, Any]]:
    """1,000 items in 20 chunks of 50."""
    return created(aws, dataclasses.replace(nightly, items_per_message=50), settings)


@pytest.fixture
def quick_messages(aws: MockedAws, nightly: Definition, settings: Settings) -> list[dict[str, Any]]:
    """1,000 items in 10 chunks of 100, each item expected to take 10 ms (item_seconds)."""
    return created(aws, dataclasses.replace(nightly, item_seconds=0.01), settings)


def process(
    settings: Settings, message: dict[str, Any], deadline: Deadline, runner: processor.TaskRunner | None = None
) -> processor.ChunkOutcome:
    store = BatchStore(settings.table_name)
    return processor.process_message(message["Body"], store, settings, deadline, runner=runner)


def test_a_message_of_50_items_is_handed_to_the_worker_once_and_each_message_once(
    aws: MockedAws, messages_of_50, settings: Settings
):
    runner = processor.TaskRunner()

    outcome = process(settings, messages_of_50[0], Deadline(FakeContext(PLENTY_MS)), runner)

    assert runner.handoffs == 1
    assert outcome.done == set(range(50))
    assert CALLS == list(range(50))  # in order
    (worker,) = {THREADS[index] for index in range(50)}
    assert worker is not threading.current_thread()

    outcome = process(settings, messages_of_50[1], Deadline(FakeContext(PLENTY_MS)), runner)

    assert runner.handoffs == 2
    assert outcome.done == set(range(50, 100))
    assert {THREADS[index] for index in range(50, 100)} == {worker}  # the same worker, kept between messages
    assert sorted(pending(aws)) == list(range(2, 20))


def test_without_a_deadline_items_run_inline_on_the_calling_thread(aws: MockedAws, messages, settings: Settings):
    runner = processor.TaskRunner()
    threads_before = set(threading.enumerate())

    outcome = process(settings, messages[0], Deadline(None), runner)

    assert outcome.done == set(range(100))
    assert runner.handoffs == 0
    assert {THREADS[index] for index in range(100)} == {threading.current_thread()}
    assert set(threading.enumerate()) - threads_before == set()  # no thread started


def test_a_redelivery_hands_over_only_the_items_still_pending(aws: MockedAws, messages, settings: Settings):
    FAILING.update({3, 7})
    runner = processor.TaskRunner()
    process(settings, messages[0], Deadline(FakeContext(PLENTY_MS)), runner)
    FAILING.clear()
    CALLS.clear()

    outcome = process(settings, messages[0], Deadline(FakeContext(PLENTY_MS)), runner)

    assert runner.handoffs == 2
    assert CALLS == [3, 7]
    assert outcome.done == {3, 7}
    assert set(outcome.seconds) == {3, 7}
    assert 0 not in pending(aws)


def test_an_item_still_running_when_the_time_is_up_times_out_its_late_result_is_ignored_and_the_rest_is_untouched(
    aws: MockedAws, quick_messages, settings: Settings
):
    release = threading.Event()
    hung_at: list[float] = []
    HOOKS[3] = lambda: (hung_at.append(time.monotonic()), release.wait(30))  # hangs until the test lets it return
    runner = processor.TaskRunner()
    context = FakeContext(400)  # 300 ms to use: a quarter of what is left is kept as the margin

    started = time.monotonic()
    outcome = process(settings, quick_messages[0], Deadline(context), runner)
    returned = time.monotonic()

    assert runner.handoffs == 1  # waited once, not once per item
    assert outcome.done == {0, 1, 2}
    assert list(outcome.errors) == [3] and outcome.errors[3].startswith("ItemTimeout: still running after")
    assert outcome.failed == set()  # one attempt used of ITEM_MAX_ATTEMPTS, not failed at once
    assert outcome.untouched == set(range(4, 100))
    assert outcome.resent  # the untouched items went out again, in a fresh message
    assert set(outcome.seconds) == {0, 1, 2, 3}
    # From its start until the caller gave up on it: after waiting 300 ms, before process_message returned.
    assert started + 0.3 - hung_at[0] - 0.01 <= outcome.seconds[3] <= returned - hung_at[0] + 0.01
    assert pending(aws)[0] == set(range(3, 100))
    assert tries(aws)[0] == {"3": 1}
    [fresh] = aws.work_messages()
    assert [index for index, _ in json.loads(fresh["Body"])["items"]] == list(range(3, 100))
    seen = (dict(outcome.seconds), set(outcome.done), dict(outcome.errors))

    abandoned = THREADS[3]
    release.set()  # the hung call returns after the caller gave up
    abandoned.join(10)

    assert not abandoned.is_alive()  # the abandoned worker retired instead of waiting for more work
    assert CALLS == [0, 1, 2, 3]  # and started nothing after the caller gave up
    assert (dict(outcome.seconds), set(outcome.done), dict(outcome.errors)) == seen  # its late result was not taken
    assert pending(aws)[0] == set(range(3, 100)) and tries(aws)[0] == {"3": 1}

    outcome = process(settings, quick_messages[1], Deadline(FakeContext(PLENTY_MS)), runner)

    assert outcome.done == set(range(100, 200))
    assert {THREADS[index] for index in range(100, 200)} - {abandoned, threading.current_thread()}  # a fresh worker
    assert runner.handoffs == 2


@pytest.mark.parametrize("deadline", [None, PLENTY_MS], ids=["inline", "on-a-worker"])
def test_outcome_seconds_holds_how_long_each_item_it_ran_took(
    aws: MockedAws, messages, settings: Settings, deadline: int | None
):
    HOOKS[5] = lambda: time.sleep(0.05)
    FAILING.add(7)

    outcome = process(settings, messages[0], Deadline(None if deadline is None else FakeContext(deadline)))

    assert set(outcome.seconds) == set(range(100))  # finished or raised, each item run has its duration
    assert all(isinstance(seconds, float) and seconds >= 0 for seconds in outcome.seconds.values())
    assert 0.05 <= outcome.seconds[5] < 5
    assert outcome.errors.keys() == {7} and 7 in outcome.seconds


def test_the_bench_runner_hands_off_once_per_message_and_the_baseline_once_per_item():
    """bench/processor_cpu.py's measurement at a small size: handoffs counted, not CPU timed."""
    from bench import processor_cpu

    figures = processor_cpu.measure(items=500, per_message=100)

    for measured in ("process_message", "runner_alone"):
        assert figures[measured]["done_per_message_handoff"] == figures[measured]["done_per_item_handoff"] == 500
        assert figures[measured]["handoffs_per_message_handoff"] == 5
        assert figures[measured]["handoffs_per_item_handoff"] == 500
