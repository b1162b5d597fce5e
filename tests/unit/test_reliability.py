"""Issue 9's findings, each as the fault that caused it: exact totals, no false failures, no early or missing alert.

Every test makes the fault happen for real against moto (concurrent copies of one
message, an invocation that runs out of time, a lost delete, rows past their old TTL, a
redrive racing the sweeper, a stale publish) and checks the batch's final accounting.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from chalicelib import batcher, completion, deadletters, finalizer, model, planning, processor, redrive, restoring, sweeper, work
from chalicelib.config import Definition, Settings
from chalicelib.errors import BatchdrainError
from chalicelib.store import BatchStore, ItemOutcome, to_item
from chalicelib.tasks import task

from .conftest import Clock, DEAD_LETTER_QUEUE_NAME, MockedAws, create_sealed_batch, plan_batches, raised_at, sqs_event

SLOT = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
BATCH_ID = "nightly-2026-11-23T06:00Z"
TASK = "unit-reliability"
MAX_RECEIVES = 4  # the work queue's maxReceiveCount in these tests

RUNS: Counter[int] = Counter()  # item id -> times the task started on it
FAILING: set[int] = set()
HOOKS: dict[int, Any] = {}  # item id -> called before the item runs (to interleave deliveries)
COST_MS = 7  # fake milliseconds each item uses of a FakeContext's budget
class _Current:
    """The FakeContext of the invocation running now (tasks run on the processor's worker thread)."""

    current: "FakeContext | None" = None


CONTEXTS = _Current()


@task(TASK)
def counted(item: dict, options: Mapping[str, Any]) -> None:
    RUNS[item["id"]] += 1
    context = getattr(CONTEXTS, "current", None)
    if context is not None:
        context.spend(COST_MS)
    hook = HOOKS.get(item["id"])
    if hook:
        hook()
    if item["id"] in FAILING:
        raise ValueError(f"item {item['id']} failed on purpose")


@pytest.fixture(autouse=True)
def fresh_task_state():
    for state in (RUNS, FAILING, HOOKS):
        state.clear()
    yield
    for state in (RUNS, FAILING, HOOKS):
        state.clear()


class FakeContext:
    """A Lambda context whose remaining time is spent by the task, not by the wall clock."""

    def __init__(self, budget_ms: int) -> None:
        self.left = budget_ms

    def spend(self, ms: int) -> None:
        self.left -= ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self.left)


@pytest.fixture
def definition(nightly: Definition) -> Definition:
    return dataclasses.replace(nightly, task=TASK, item_seconds=COST_MS / 1000)


@pytest.fixture
def definitions(definition: Definition) -> dict[str, Definition]:
    return {definition.name: definition}


@pytest.fixture
def messages(aws: MockedAws, clock: Clock, definition: Definition, settings: Settings) -> list[dict[str, Any]]:
    """A sealed batch of 1,000 items in 10 chunks of 100 on one shard; its messages in chunk order."""
    create_sealed_batch(definition, SLOT, settings)
    return by_chunk(aws.work_messages())


def requeue(aws: MockedAws, messages: list[dict[str, Any]]) -> None:
    """Make received messages visible again, as when their visibility timeout ends."""
    for message in messages:
        aws.sqs.change_message_visibility(QueueUrl=aws.work_queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)


def by_chunk(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(messages, key=lambda message: json.loads(message["Body"])["chunk"])


def chunk_rows(aws: MockedAws) -> dict[int, dict[str, Any]]:
    return {int(row["sk"][2:]): row for row in aws.chunk_rows(BATCH_ID)}


def failed_items(aws: MockedAws) -> set[int]:
    return {
        index
        for row in aws.rows()
        if row["pk"].startswith(f"B#{BATCH_ID}#") and row["sk"].startswith("F#")
        for index in row["failed"]
    }


def finalize(aws: MockedAws, settings: Settings, definitions) -> list[str]:
    return finalizer.handle_stream_event({"Records": aws.stream_records()}, settings, definitions)


def alerts(aws: MockedAws) -> list[dict[str, Any]]:
    return [json.loads(envelope["Message"]) for envelope in aws.alerts()]


def drive(aws: MockedAws, settings: Settings, definitions, budget_ms: int | None = None, rounds: int = 60) -> None:
    """Run the queue dry the way Lambda and SQS would: each receive counts, MAX_RECEIVES sends a message to the DLQ.

    `budget_ms`: each invocation gets that much fake time (items spend COST_MS each).
    """
    receives: Counter[str] = Counter()
    for _ in range(rounds):
        waiting = aws.work_messages()
        if not waiting:
            finalize(aws, settings, definitions)
            return
        for message in waiting:
            receives[message["MessageId"]] += 1
            if receives[message["MessageId"]] > MAX_RECEIVES:
                moved = {**message, "Attributes": {"ApproximateReceiveCount": str(MAX_RECEIVES)}}
                deadletters.handle_sqs_event(sqs_event([moved], DEAD_LETTER_QUEUE_NAME), settings)
                aws.sqs.delete_message(QueueUrl=aws.work_queue_url, ReceiptHandle=message["ReceiptHandle"])
                continue
            CONTEXTS.current = FakeContext(budget_ms) if budget_ms else None
            try:
                result = processor.handle_sqs_event(sqs_event([message]), settings, CONTEXTS.current)
            finally:
                CONTEXTS.current = None
            if not result["batchItemFailures"]:
                aws.sqs.delete_message(QueueUrl=aws.work_queue_url, ReceiptHandle=message["ReceiptHandle"])
            else:  # back to the queue, as after the visibility timeout
                aws.sqs.change_message_visibility(
                    QueueUrl=aws.work_queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
                )
        finalize(aws, settings, definitions)
    raise AssertionError(f"the queue did not run dry in {rounds} rounds")


def deliver_concurrently(settings: Settings, message: dict[str, Any], first_item: int, last_item: int) -> list[dict]:
    """Two invocations of one message at once: both read the row, then the second writes after the first."""
    both_read = threading.Barrier(2)
    first_done = threading.Event()
    names = {}

    def at_first_item() -> None:
        both_read.wait(timeout=10)

    def at_last_item() -> None:
        if names.get(threading.get_ident()) == "late":
            first_done.wait(timeout=10)

    HOOKS[first_item], HOOKS[last_item] = at_first_item, at_last_item
    results: list[dict] = []

    def run(name: str) -> None:
        names[threading.get_ident()] = name
        results.append(processor.handle_sqs_event(sqs_event([message]), settings))
        if name == "early":
            first_done.set()

    threads = [threading.Thread(target=run, args=(name,)) for name in ("early", "late")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    HOOKS.clear()
    return results


# -- 1. concurrent duplicates -----------------------------------------------------------------------


def test_an_item_failing_in_two_concurrent_copies_of_its_message_stays_pending(
    aws: MockedAws, messages, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """The second copy's write changes nothing it can see; that must never read as "the set emptied"."""
    monkeypatch.setenv("ITEM_MAX_ATTEMPTS", "5")
    FAILING.add(37)

    deliver_concurrently(Settings.from_env(), messages[0], first_item=0, last_item=99)

    assert chunk_rows(aws)[0]["pending"] == {37}
    assert RUNS[37] == 2


def test_an_item_failing_everywhere_under_concurrent_copies_ends_counted_failed_once(
    aws: MockedAws, messages, settings: Settings, definitions
):
    FAILING.add(37)
    deliver_concurrently(settings, messages[0], first_item=0, last_item=99)
    requeue(aws, messages)
    drive(aws, settings, definitions)

    [alert] = alerts(aws)
    assert alert["totals"] == {"items": 1000, "succeeded": 999, "failed": 1}
    assert failed_items(aws) == {37}
    assert RUNS[37] >= settings.item_max_attempts


# -- 2. receives are not attempts ---------------------------------------------------------------------


def test_items_a_short_invocation_never_started_are_not_failed(aws: MockedAws, messages, settings: Settings, definitions):
    """Each invocation has time for about one message of ten: the untouched ones must not burn their items' retries."""
    requeue(aws, messages)
    waiting = aws.work_messages()  # all ten, in one event
    CONTEXTS.current = FakeContext(1_000)  # 1 s, ~107 items at 7 ms: one message and a bit
    try:
        result = processor.handle_sqs_event(sqs_event(by_chunk(waiting)), settings, CONTEXTS.current)
    finally:
        CONTEXTS.current = None

    assert result == {"batchItemFailures": []}  # nothing returned untouched: fresh messages instead
    resent = by_chunk(aws.work_messages())
    assert [json.loads(message["Body"])["chunk"] for message in resent] == list(range(1, 10))
    assert sum(RUNS.values()) < 200

    requeue(aws, resent)
    drive(aws, settings, definitions, budget_ms=1_000)

    [alert] = alerts(aws)
    assert alert["totals"] == {"items": 1000, "succeeded": 1000, "failed": 0}
    assert failed_items(aws) == set()


def test_an_item_is_failed_only_after_its_own_attempts_ran_out(aws: MockedAws, messages, settings: Settings, definitions):
    FAILING.update({5, 205})
    requeue(aws, messages)
    drive(aws, settings, definitions, budget_ms=1_000)

    [alert] = alerts(aws)
    assert alert["totals"]["failed"] == 2
    assert failed_items(aws) == {5, 205}
    assert RUNS[5] == RUNS[205] == settings.item_max_attempts


def test_an_item_that_runs_past_the_deadline_is_one_attempt_and_the_rest_of_its_message_is_sent_again(
    aws: MockedAws, messages, settings: Settings
):
    # Item 3 outlives the invocation: real time here, as a hung task would.
    HOOKS[3] = lambda: threading.Event().wait(2)
    context = FakeContext(1_000)  # 750 ms to use after the margin: item 3 is left behind

    result = processor.handle_sqs_event(sqs_event([messages[0]]), settings, context)

    assert result == {"batchItemFailures": []}
    row = chunk_rows(aws)[0]
    assert row["pending"] == set(range(3, 100))
    assert row["tries"] == {"3": 1}
    assert "ItemTimeout" in row["errors"]["3"]
    [fresh] = aws.work_messages()
    assert [index for index, _ in json.loads(fresh["Body"])["items"]] == list(range(3, 100))


# -- 3. a row whose set emptied but was not deleted ---------------------------------------------------------


def _empty_without_delete(aws: MockedAws, chunk_no: int) -> None:
    """What a lost DeleteItem after an emptying `DELETE pending` left behind: a row with no set."""
    aws.dynamodb.update_item(
        TableName=aws.table_name,
        Key=to_item(model.chunk_key(BATCH_ID, 0, chunk_no)),
        UpdateExpression="REMOVE pending",
    )


def test_a_row_left_without_its_set_is_removed_by_the_next_delivery_and_the_batch_ends(
    aws: MockedAws, messages, settings: Settings, definitions
):
    processor.handle_sqs_event(sqs_event(messages[1:]), settings)
    _empty_without_delete(aws, 0)

    processor.handle_sqs_event(sqs_event([messages[0]]), settings)
    finalize(aws, settings, definitions)

    assert chunk_rows(aws) == {}
    [alert] = alerts(aws)
    assert alert["status"] == model.COMPLETED


def test_a_row_left_without_its_set_is_removed_by_the_sweeper_and_the_dead_letter_handler(
    aws: MockedAws, messages, settings: Settings, definitions, clock: Clock
):
    processor.handle_sqs_event(sqs_event(messages[2:]), settings)
    _empty_without_delete(aws, 0)
    _empty_without_delete(aws, 1)

    moved = {**messages[1], "Attributes": {"ApproximateReceiveCount": "5"}}
    assert deadletters.handle_sqs_event(sqs_event([moved], DEAD_LETTER_QUEUE_NAME), settings) == {"batchItemFailures": []}
    clock.advance(settings.resend_after_seconds + 1)
    report = sweeper.sweep(settings, definitions)

    assert report.errors == []
    assert chunk_rows(aws) == {}
    finalize(aws, settings, definitions)
    sweeper.sweep(settings, definitions)
    [alert] = alerts(aws)
    assert alert["totals"] == {"items": 1000, "succeeded": 1000, "failed": 0}


# -- 4. rows outliving the old TTL; lost messages under traffic --------------------------------------------


def test_a_batch_open_past_the_old_row_ttl_never_counts_unrun_items_as_succeeded(
    aws: MockedAws, messages, settings: Settings, definitions, clock: Clock
):
    processor.handle_sqs_event(sqs_event(messages[5:]), settings)
    clock.advance(settings.row_ttl_days * 86_400 + 3_600)
    # DynamoDB's TTL deletes every row whose expires_at has passed.
    for row in aws.rows():
        if "expires_at" in row and row["expires_at"] < clock.now.timestamp():
            aws.dynamodb.delete_item(TableName=aws.table_name, Key=to_item({"pk": row["pk"], "sk": row["sk"]}))

    sweeper.sweep(settings, definitions)
    finalize(aws, settings, definitions)

    assert aws.header(BATCH_ID)["status"] == model.SEALED
    assert sorted(chunk_rows(aws)) == [0, 1, 2, 3, 4]
    assert alerts(aws) == []


def test_a_lost_message_is_sent_again_while_other_batches_keep_the_queue_busy(
    aws: MockedAws, messages, settings: Settings, definitions, clock: Clock
):
    processor.handle_sqs_event(sqs_event(messages[1:]), settings)  # chunk 0's message is lost
    finalize(aws, settings, definitions)
    clock.advance(settings.resend_after_seconds + 1)
    other = dataclasses.replace(definitions["nightly"], name="other")
    create_sealed_batch(other, SLOT, settings)  # its 10 fresh messages keep the queue busy

    report = sweeper.sweep(settings, definitions)

    assert report.resent == {BATCH_ID: 1}
    waiting = [json.loads(message["Body"]) for message in aws.work_messages()]
    assert [(body["batch_id"], body["chunk"]) for body in waiting if body["batch_id"] == BATCH_ID] == [(BATCH_ID, 0)]
    # Not again at the next sweep: the wait doubles after each re-send.
    clock.advance(settings.resend_after_seconds + 1)
    assert BATCH_ID not in sweeper.sweep(settings, definitions).resent


# -- 5. redrive racing the sweeper ----------------------------------------------------------------------------


@pytest.fixture
def failed_batch(aws: MockedAws, messages, settings: Settings, definitions, monkeypatch: pytest.MonkeyPatch):
    """The batch completed with failures: items 0..5 of each of its 10 chunks failed (ITEM_MAX_ATTEMPTS=1)."""
    monkeypatch.setenv("ITEM_MAX_ATTEMPTS", "1")
    FAILING.update(index for chunk in range(10) for index in range(chunk * 100, chunk * 100 + 6))
    quick = Settings.from_env()
    requeue(aws, messages)
    drive(aws, quick, definitions)
    [alert] = alerts(aws)
    assert alert["totals"]["failed"] == 60
    FAILING.clear()
    return quick


def test_a_redrive_raced_by_the_sweeper_restores_every_row_once_and_completes_only_when_drained(
    aws: MockedAws, failed_batch: Settings, definitions, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(restoring, "REDRIVE_GROUP", 3)
    store = BatchStore(failed_batch.table_name)
    real_restore = store.__class__.restore_failed
    raced = []

    def restore_then_race(self, *args, **kwargs):
        restored = real_restore(self, *args, **kwargs)
        if restored and not raced:
            raced.append(True)  # the sweeper resumes the redrive now and runs it to its seal
            restoring.restore_failures(self, self.get_header(BATCH_ID), failed_batch)
        return restored

    monkeypatch.setattr(store.__class__, "restore_failed", restore_then_race)
    redrive.redrive(BATCH_ID, failed_batch)
    monkeypatch.setattr(store.__class__, "restore_failed", real_restore)

    header = aws.header(BATCH_ID)
    assert header["status"] == model.SEALED and header["attempt"] == 2
    assert failed_items(aws) == set()
    assert sum(len(row["pending"]) for row in chunk_rows(aws).values()) == 60
    sent = [json.loads(message["Body"]) for message in aws.work_messages()]
    # Every restored row's message; the group both processes saw unsent may go out twice (at-least-once).
    assert set(body["chunk"] for body in sent) == set(range(10))
    assert len(sent) <= 10 + restoring.REDRIVE_GROUP
    for body in sent:
        aws.sqs.send_message(QueueUrl=aws.work_queue_url, MessageBody=json.dumps(body))
    drive(aws, failed_batch, definitions)

    [alert] = alerts(aws)
    assert alert["alert_id"] == f"{BATCH_ID}/2"
    assert alert["totals"] == {"items": 1000, "succeeded": 1000, "failed": 0}


def test_a_resumed_redrive_sends_only_the_group_that_may_be_unsent(
    aws: MockedAws, failed_batch: Settings, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(restoring, "REDRIVE_GROUP", 4)
    real_send = work.send_chunks
    sends = []

    def send_then_die(sqs, queue_url, chunks, max_bytes):
        sends.append(len(chunks))
        if len(sends) == 2:
            raise RuntimeError("the redrive died after restoring its second group")
        return real_send(sqs, queue_url, chunks, max_bytes)

    monkeypatch.setattr(work, "send_chunks", send_then_die)
    with pytest.raises(RuntimeError):
        redrive.redrive(BATCH_ID, failed_batch)
    monkeypatch.setattr(work, "send_chunks", real_send)
    store = BatchStore(failed_batch.table_name)
    restoring.restore_failures(store, store.get_header(BATCH_ID), failed_batch)

    chunks = Counter(json.loads(message["Body"])["chunk"] for message in aws.work_messages())
    assert chunks == Counter(range(10))  # 4 + (4, re-sent once by the resume) + 2: every chunk once


# -- 6. attempt fencing -------------------------------------------------------------------------------------------


def test_a_redrive_waits_for_the_alert_of_the_attempt_before(aws: MockedAws, failed_batch: Settings):
    store = BatchStore(failed_batch.table_name)
    aws.dynamodb.update_item(
        TableName=aws.table_name, Key=to_item(model.header_key(BATCH_ID)), UpdateExpression="REMOVE notified_at"
    )
    before = aws.header(BATCH_ID)

    with pytest.raises(BatchdrainError, match="alert is not published yet"):
        redrive.redrive(BATCH_ID, failed_batch)
    assert store.begin_redrive(BATCH_ID, 1, model.iso(model.utc_now())) is None
    assert aws.header(BATCH_ID) == before


def test_a_late_publish_of_attempt_one_cannot_mark_attempt_two_notified(
    aws: MockedAws, failed_batch: Settings, definitions, monkeypatch: pytest.MonkeyPatch
):
    store = BatchStore(failed_batch.table_name)
    FAILING.add(0)  # attempt 2 fails again, so it completes and must alert
    redrive.redrive(BATCH_ID, failed_batch)

    assert store.mark_notified(BATCH_ID, 1, model.iso(model.utc_now()), f"{BATCH_ID}/1") is False
    drive(aws, failed_batch, definitions)
    [alert] = alerts(aws)
    assert alert["alert_id"] == f"{BATCH_ID}/2"
    assert aws.header(BATCH_ID)["notified_at"]


def test_a_stale_finalizer_cannot_close_a_shard_of_the_next_attempt(aws: MockedAws, failed_batch: Settings):
    store = BatchStore(failed_batch.table_name)
    redrive.redrive(BATCH_ID, failed_batch)
    assert aws.header(BATCH_ID)["open_shards"] == {0}

    assert store.close_shard(BATCH_ID, 1, 0) is None
    assert store.complete(BATCH_ID, 1, model.COMPLETED, {}) is None
    assert aws.header(BATCH_ID)["open_shards"] == {0}


def test_the_finalizer_does_not_close_a_shard_it_found_empty_before_the_seal(
    aws: MockedAws, definition: Definition, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """A shard that is empty while the planner still writes is not empty for good: only a check after the seal counts."""
    batcher.create_batch(definition, SLOT, settings)  # CREATING, planned, no chunk rows yet
    store = BatchStore(settings.table_name)
    real_query = store.shard_has_chunks
    finished: list[bool] = []

    def query_before_the_rows_then_the_planner_finishes(batch_id: str, shard: int) -> bool:
        found = real_query(batch_id, shard)
        if not finished:
            finished.append(True)
            plan_batches(settings)  # the rows and the seal land right after the query
        return found

    monkeypatch.setattr(store, "shard_has_chunks", query_before_the_rows_then_the_planner_finishes)

    assert completion.check_batch(store, BATCH_ID, {0}) is None
    if not finished:
        plan_batches(settings)
    header = aws.header(BATCH_ID)
    assert header["status"] == model.SEALED and header["open_shards"] == {0}
    assert len(chunk_rows(aws)) == 10


# -- 7. bounded work at completion -------------------------------------------------------------------------------


def test_completion_reads_a_few_sample_rows_not_every_failure(aws: MockedAws, failed_batch: Settings):
    """The total comes from the header's counter; the samples from at most `sample_errors` F rows per shard."""
    header = aws.header(BATCH_ID)
    assert header["failed"] == 60 and header["failed_items"] == 60
    assert header["sample_errors"][0] == {"item": 0, "error": "ValueError: item 0 failed on purpose" + raised_at(counted)}
    store = BatchStore(failed_batch.table_name)
    read: list[int] = []

    def count_items(parsed: dict, **_: Any) -> None:
        read.append(len(parsed.get("Items", [])))

    store.client.meta.events.register("after-call.dynamodb.Query", count_items)
    try:
        samples = store.failed_samples(BATCH_ID, header["shards"], 3)
    finally:
        store.client.meta.events.unregister("after-call.dynamodb.Query", count_items)

    assert sum(read) <= 3
    assert [sample["item"] for sample in samples] == [0, 1, 2]


def test_completion_never_lists_the_failed_rows(aws: MockedAws, messages, settings: Settings, definitions, monkeypatch):
    FAILING.update(range(0, 1000, 7))
    monkeypatch.setattr(BatchStore, "failed_rows", lambda *args: pytest.fail("completion read every F row"))
    requeue(aws, messages)
    drive(aws, settings, definitions)

    [alert] = alerts(aws)
    assert alert["totals"]["failed"] == len(range(0, 1000, 7))


# -- 8. nothing dropped silently ----------------------------------------------------------------------------


def test_a_message_for_an_unknown_batch_is_deleted_with_an_error_line(
    aws: MockedAws, settings: Settings, caplog: pytest.LogCaptureFixture
):
    caplog.set_level("INFO", logger="chalicelib")  # whatever level an earlier test left
    body = model.Chunk("gone-2026-11-23T06:00Z", 0, 3, TASK, {}, ((0, {"id": 0, "value": 1}),)).body()

    result = processor.handle_sqs_event(sqs_event([{"MessageId": "m-1", "Body": body}]), settings)

    assert result == {"batchItemFailures": []}
    errors = [(record.getMessage(), record.fields) for record in caplog.records if record.levelname == "ERROR"]
    assert errors == [("message for an unknown batch deleted", {"batch_id": "gone-2026-11-23T06:00Z", "chunk": 3})]
    assert aws.rows() == []


def test_a_delivery_from_before_a_redrive_records_nothing_on_the_restored_row(
    aws: MockedAws, messages, definitions, monkeypatch: pytest.MonkeyPatch
):
    """The restored row holds the very set a stale delivery read: the attempt, not the set, tells them apart."""
    monkeypatch.setenv("ITEM_MAX_ATTEMPTS", "2")
    two = Settings.from_env()
    store = BatchStore(two.table_name)
    FAILING.update(range(6))
    processor.handle_sqs_event(sqs_event([messages[0]]), two)  # items 0..5 fail once
    stale = store.get_chunk(BATCH_ID, 0, 0)  # a delivery of attempt 1 reads the row here, then stalls
    assert stale["pending"] == set(range(6)) and stale["attempt"] == 1
    requeue(aws, messages)
    drive(aws, two, definitions)  # 0..5 fail again: the batch ends with 6 failures, alert /1
    redrive.redrive(BATCH_ID, two)
    assert store.get_chunk(BATCH_ID, 0, 0)["pending"] == set(range(6))

    late = store.record(
        BATCH_ID, 0, 0, ItemOutcome(errors={0: "ValueError: late"}), max_attempts=2, failed_at="", row=stale
    )

    assert late is None
    row = store.get_chunk(BATCH_ID, 0, 0)
    assert row["attempt"] == 2 and row["tries"] == {} and row["pending"] == set(range(6))


def test_a_planner_resumed_after_it_sent_a_group_never_writes_back_rows_whose_items_failed(
    aws: MockedAws, clock: Clock, definition: Definition, definitions, monkeypatch: pytest.MonkeyPatch
):
    """The planner dies after sending its group, before recording it; the group's items run, one fails for good.

    A resume that wrote the group's rows again would run that item again and count it failed twice.
    """
    monkeypatch.setenv("ITEM_MAX_ATTEMPTS", "1")
    one = Settings.from_env()
    FAILING.add(5)
    real_send = work.send_chunks

    def send_then_die(sqs: Any, queue_url: str, chunks: list, max_bytes: int) -> None:
        real_send(sqs, queue_url, chunks, max_bytes)
        raise RuntimeError("Lambda timed out right after sending")

    monkeypatch.setattr(work, "send_chunks", send_then_die)
    with pytest.raises(RuntimeError, match="timed out"):
        create_sealed_batch(definition, SLOT, one)
    monkeypatch.setattr(work, "send_chunks", real_send)
    drive(aws, one, definitions)  # every item runs; item 5 fails for good; the batch is still CREATING
    store = BatchStore(one.table_name)

    clock.advance(planning.LEASE_SECONDS + 1)  # the dead planner's hold on its segment runs out
    planning.resume(store, store.get_header(BATCH_ID), one)  # what the sweeper's resume does
    plan_batches(one)  # the next planner sends the listed group from the rows still there
    drive(aws, one, definitions)

    [alert] = alerts(aws)
    assert alert["totals"] == {"items": 1000, "succeeded": 999, "failed": 1}
    assert aws.header(BATCH_ID)["failed_items"] == 1
    assert RUNS[5] == 1


def test_a_dead_letter_of_the_attempt_before_a_redrive_uses_no_round_of_the_new_attempt(
    aws: MockedAws, messages, failed_batch: Settings
):
    redrive.redrive(BATCH_ID, failed_batch)
    store = BatchStore(failed_batch.table_name)
    stale = {**messages[0], "Attributes": {"ApproximateReceiveCount": "4"}}
    (record,) = sqs_event([stale], DEAD_LETTER_QUEUE_NAME)["Records"]

    outcome = deadletters.record_dead_letter(store, record, model.iso(model.utc_now()), failed_batch)

    assert outcome == "already-recorded"
    row = store.get_chunk(BATCH_ID, 0, 0)
    assert row["attempt"] == 2 and "dead_letters" not in row and row["pending"] == set(range(6))


def test_a_late_message_of_the_attempt_before_a_redrive_runs_nothing(aws: MockedAws, messages, failed_batch: Settings):
    redrive.redrive(BATCH_ID, failed_batch)
    RUNS.clear()

    assert processor.handle_sqs_event(sqs_event([messages[0]]), failed_batch) == {"batchItemFailures": []}

    assert RUNS == Counter()
    assert BatchStore(failed_batch.table_name).get_chunk(BATCH_ID, 0, 0)["tries"] == {}
