"""The chaos run's own bookkeeping, checked without a stack: item kinds, ground truth, the
figures `_check` computes from fabricated alerts and listings, and the new fault points
(a concurrent duplicate SQS delivery, a lost DeleteItem after an emptying update).

A figure that can never be non-zero proves nothing, so each one is shown to count the
fault it is named after, and only that.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from batchdrain_local import chaos
from batchdrain_local.chaos import (
    FAILS_ALWAYS,
    FAILS_ONCE,
    KINDS,
    OK,
    ONCE_ONLY,
    SLOW_ALWAYS,
    SLOW_ONCE,
    BatchRun,
    Figures,
    GroundTruth,
)
from batchdrain_local.faults import FaultInjector, InjectedCrash
from batchdrain_local.pollers import SqsPoller
from chalicelib import model

M = chaos.ITEM_MAX_ATTEMPTS


def value_of(kind: str, number: int = 1) -> int:
    """A value of `kind` (a different one for each `number`), built from kind_of's digits."""
    poison, transient, slow, once = chaos.POISON_ONE_IN, chaos.TRANSIENT_ONE_IN, chaos.SLOW_ALWAYS_ONE_IN, chaos.SLOW_ONCE_ONE_IN
    only = chaos.ONCE_ONLY_ONE_IN
    if kind == FAILS_ALWAYS:
        return poison * number
    if kind == FAILS_ONCE:
        return 1 + poison * transient * number
    if kind == SLOW_ALWAYS:
        return 1 + poison * (1 + transient * slow * number)
    if kind == SLOW_ONCE:
        return 1 + poison * (1 + transient * (1 + slow * once * number))
    if kind == ONCE_ONLY:
        return 1 + poison * (1 + transient * (1 + slow * (1 + once * only * number)))
    return 1 + poison * (1 + transient * (1 + slow * (1 + once * (1 + only * number))))


@pytest.fixture(autouse=True)
def quick_overruns(monkeypatch):
    monkeypatch.setattr(chaos, "SLOW_SECONDS", 0.01)


def test_each_kind_is_a_function_of_the_value_and_fixes_the_expected_state():
    for kind in KINDS:
        assert {chaos.kind_of(value_of(kind, number)) for number in range(1, 5)} == {kind}
    assert chaos.is_poison(value_of(FAILS_ALWAYS)) and chaos.fails_first_attempt(value_of(FAILS_ONCE))
    assert [chaos.expected_failed(kind, 3) for kind in KINDS] == [False, True, False, True, False, None]
    assert [chaos.expected_failed(kind, 1) for kind in KINDS] == [False, True, None, True, None, None]
    assert [chaos.expected_failed(kind, 1, redriven=True) for kind in KINDS] == [False, True, False, True, False, None]


def start(truth: GroundTruth, value: int, times: int = 1) -> None:
    for _ in range(times):
        try:
            truth.run(value)
        except RuntimeError:
            pass


def test_the_truth_counts_every_start_and_only_starts_that_returned_in_time_as_successes():
    truth = GroundTruth()
    values = {kind: value_of(kind) for kind in KINDS if kind != ONCE_ONLY}  # its first start succeeds: see below
    with pytest.raises(RuntimeError):
        truth.run(values[FAILS_ALWAYS])
    with pytest.raises(RuntimeError):
        truth.run(values[FAILS_ONCE])
    truth.run(values[SLOW_ALWAYS])  # returns, but late: never a success
    truth.run(values[SLOW_ONCE])
    assert truth.first_success == {}
    for kind in values:
        start(truth, values[kind])
    assert truth.starts_of(list(values.values())) == {values[OK]: 1, **{values[kind]: 2 for kind in values if kind != OK}}
    assert set(truth.first_success) == {values[OK], values[FAILS_ONCE], values[SLOW_ONCE]}


def test_an_item_that_succeeds_once_returns_on_its_first_start_and_raises_on_every_later_one():
    truth, value = GroundTruth(), value_of(ONCE_ONLY)
    truth.run(value)
    succeeded = truth.first_success[value]
    for _ in range(M):
        with pytest.raises(RuntimeError, match="not idempotent"):
            truth.run(value)
    assert truth.starts_of([value]) == {value: 1 + M} and truth.first_success == {value: succeeded}


# -- the figures, from fabricated runs -------------------------------------------------------

BATCH = "chaos-0-2030-01-01T00:00Z"
ITEMS = [OK, FAILS_ALWAYS, FAILS_ONCE, SLOW_ALWAYS, SLOW_ONCE]  # item index -> kind
FAILED = [1, 3]  # what a correct run lists


def correct_run(truth: GroundTruth) -> BatchRun:
    """A batch of one item of each kind, run as a correct system runs it: every always-item started M times."""
    batch = BatchRun(BATCH, {index: value_of(kind, 7) for index, kind in enumerate(ITEMS)})
    for index, kind in enumerate(ITEMS):
        start(truth, batch.values[index], M if kind in chaos.ALWAYS else 2 if kind in (FAILS_ONCE, SLOW_ONCE) else 1)
    batch.failures = listing(FAILED)
    return batch


def listing(indices: list[int]) -> list[dict[str, Any]]:
    return [{"chunk": 0, "shard": 0, "items": sorted(indices), "errors": {}, "attempt": 1}]


def alert(attempt: int = 1, failed: int = 2, items: int = 5, completed: datetime | None = None) -> dict[str, Any]:
    completed = completed or datetime.now(timezone.utc) + timedelta(seconds=1)
    return {
        "message": {
            "alert_id": f"{BATCH}/{attempt}",
            "batch_id": BATCH,
            "attempt": attempt,
            "status": model.COMPLETED_WITH_FAILURES if failed else model.COMPLETED,
            "totals": {"items": items, "succeeded": items - failed, "failed": failed},
            "completed_at": model.iso(completed),
        }
    }


def figures_of(batch: BatchRun, alerts: list[dict[str, Any]], truth: GroundTruth) -> dict[str, int]:
    figures = Figures(batches=1)
    chaos._check(figures, [batch], alerts, truth, max_attempts=M)
    return {name: getattr(figures, name) for name in ("alerts_expected", *Figures.FAULTS) if getattr(figures, name)}


def test_a_correct_run_has_no_fault_figure():
    truth = GroundTruth()
    assert figures_of(correct_run(truth), [alert()], truth) == {"alerts_expected": 1}


def test_an_alert_that_reports_one_failed_item_as_succeeded_is_one_item_misreported():
    truth = GroundTruth()
    batch = correct_run(truth)

    assert figures_of(batch, [alert(failed=1)], truth) == {"alerts_expected": 1, "items_misreported": 1}


def test_an_item_that_never_succeeded_and_is_not_listed_failed_is_lost_and_misreported():
    truth = GroundTruth()
    batch = correct_run(truth)
    batch.failures = listing([1])  # the item that always runs late, reported succeeded

    assert figures_of(batch, [alert(failed=1)], truth) == {"alerts_expected": 1, "items_lost": 1, "items_misreported": 1}


def test_an_ok_item_failed_after_one_start_is_falsely_failed_double_counted_and_misreported():
    truth = GroundTruth()
    batch = correct_run(truth)
    batch.failures = listing([0, *FAILED])

    assert figures_of(batch, [alert(failed=3)], truth) == {
        "alerts_expected": 1,
        "items_double_counted": 1,
        "items_misreported": 1,
        "items_falsely_failed": 1,
    }


def test_an_always_failing_item_failed_before_its_attempts_ran_out_is_falsely_failed_only():
    truth = GroundTruth()
    batch = BatchRun(BATCH, {index: value_of(kind, 8) for index, kind in enumerate(ITEMS)})
    for index, kind in enumerate(ITEMS):
        start(truth, batch.values[index], M - 1 if kind == FAILS_ALWAYS else M if kind == SLOW_ALWAYS else 2)
    batch.failures = listing(FAILED)

    assert figures_of(batch, [alert()], truth) == {"alerts_expected": 1, "items_falsely_failed": 1}


def test_a_completion_before_an_item_first_succeeded_is_premature():
    truth = GroundTruth()
    before = datetime.now(timezone.utc) - timedelta(seconds=5)
    batch = correct_run(truth)

    assert figures_of(batch, [alert(completed=before)], truth) == {"alerts_expected": 1, "premature": 1}


def test_a_listing_with_an_item_twice_or_out_of_range_is_misreported():
    truth = GroundTruth()
    batch = correct_run(truth)
    batch.failures = listing(FAILED) + [{"items": [3, 99]}]

    assert figures_of(batch, [alert()], truth) == {"alerts_expected": 1, "items_misreported": 2}


def test_a_missing_listing_counts_every_item_misreported():
    truth = GroundTruth()
    batch = correct_run(truth)
    batch.failures = None

    assert figures_of(batch, [alert()], truth) == {"alerts_expected": 1, "items_misreported": 5}


def redriven(truth: GroundTruth, started_again: bool = True) -> BatchRun:
    batch = correct_run(truth)
    batch.redrive = "redrive+redrive_concurrent"
    batch.failures_at_redrive = listing(FAILED)
    batch.starts_at_redrive = truth.starts_of(batch.values.values())
    if started_again:
        for index in FAILED:
            start(truth, batch.values[index], M)
    return batch


def test_a_redriven_batch_is_checked_at_both_alerts_against_the_truth_of_each():
    truth = GroundTruth()
    batch = redriven(truth)

    assert figures_of(batch, [alert(1), alert(2)], truth) == {"alerts_expected": 2}


def test_items_a_redrive_failed_again_without_running_them_are_falsely_failed():
    truth = GroundTruth()
    batch = redriven(truth, started_again=False)

    assert figures_of(batch, [alert(1), alert(2)], truth) == {"alerts_expected": 2, "items_falsely_failed": 2}


def test_a_redrive_that_never_alerts_is_missed_and_a_second_copy_of_an_alert_is_a_duplicate():
    truth = GroundTruth()
    batch = redriven(truth)
    batch.missed.append(f"{BATCH}/2")

    assert figures_of(batch, [alert(1), alert(1)], truth) == {"alerts_expected": 2, "missed": 1, "duplicate": 1}


def test_the_first_alert_of_a_redriven_batch_is_checked_against_the_listing_read_before_the_redrive():
    truth = GroundTruth()
    batch = redriven(truth)
    batch.failures_at_redrive = listing([1, 2, 3])  # a "fails once" item, failed in attempt 1

    figures = figures_of(batch, [alert(1, failed=3), alert(2)], truth)

    assert figures == {"alerts_expected": 2, "items_misreported": 1, "items_falsely_failed": 1}  # 2 starts < M


def test_an_expected_alert_the_runner_never_waited_for_is_missed():
    truth = GroundTruth()
    batch = correct_run(truth)  # no alert, and nothing recorded in batch.missed (the runner failed before waiting)

    assert figures_of(batch, [], truth) == {"alerts_expected": 1, "missed": 1}


# -- object-source batches: items are lines, indexed by byte offset ---------------------------------

OBJECT_BATCH = "chaos-2-2030-01-01T00:00Z"


def object_run(truth: GroundTruth, failed: list[int] | None = None) -> BatchRun:
    """A correct run of a batch reading ITEMS from a JSON Lines object: index = its line's byte offset."""
    shape = chaos.Shape("chaos-2", len(ITEMS), 2, chaos.OBJECT)
    offsets = list(chaos.object_of(shape, OBJECT_BATCH)[1])
    batch = BatchRun(OBJECT_BATCH, {offset: value_of(kind, 9) for offset, kind in zip(offsets, ITEMS)}, chaos.OBJECT)
    for offset, kind in zip(offsets, ITEMS):
        start(truth, batch.values[offset], M if kind in chaos.ALWAYS else 2 if kind in (FAILS_ONCE, SLOW_ONCE) else 1)
    batch.failures = listing([offsets[index] for index in (FAILED if failed is None else failed)])
    return batch


def object_alert(failed: int = 2) -> dict[str, Any]:
    message = alert(failed=failed)["message"]
    return {"message": {**message, "alert_id": f"{OBJECT_BATCH}/1", "batch_id": OBJECT_BATCH}}


def figures_of_runs(runs: list[BatchRun], alerts: list[dict[str, Any]], truth: GroundTruth) -> Figures:
    figures = Figures(batches=len(runs))
    chaos._check(figures, runs, alerts, truth, max_attempts=M)
    return figures


def test_an_object_source_batch_reads_the_items_a_random_batch_would_have_one_per_line_indexed_by_byte_offset():
    shape, generated = chaos.Shape("chaos-2", 30, 5, chaos.OBJECT), chaos.Shape("chaos-2", 30, 5)

    body, values = chaos.object_of(shape, OBJECT_BATCH)

    lines = body.splitlines(keepends=True)
    assert list(values) == [sum(map(len, lines[:number])) for number in range(len(lines))]
    expected = chaos.values_of(generated, OBJECT_BATCH)
    assert [json.loads(line) for line in lines] == [{"id": number, "value": value} for number, value in expected.items()]
    assert list(values.values()) == list(expected.values()) and chaos.values_of(shape, OBJECT_BATCH) == values
    assert max(map(len, lines)) <= chaos.MAX_LINE_BYTES
    slot = datetime(2030, 1, 1, 6, 5, tzinfo=timezone.utc)
    assert chaos.object_key(shape, slot) == (chaos.SOURCE_BUCKET, "chaos-2/2030-01-01/0605.jsonl")  # one object per slot


@pytest.mark.parametrize("seed", [20261123, 20261201, 1, 2, 3])
def test_one_shape_in_three_reads_an_object_and_its_chunks_stay_within_max_chunks_however_segments_cut_it(seed: int):
    shapes = chaos.shapes_for(seed)

    assert [shape.source for shape in shapes] == [chaos.RANDOM, chaos.RANDOM, chaos.OBJECT] * 4
    for shape in shapes:
        if shape.source != chaos.OBJECT:
            continue
        for minute in range(3):
            offsets = list(chaos.object_of(shape, f"{shape.name}-2030-01-01T00:0{minute}Z")[1])
            # The planner's cut: a segment holds the lines that begin in its SEGMENT_BYTES, chunks of K end with it.
            per_segment = Counter(offset // chaos.SEGMENT_BYTES for offset in offsets)
            assert sum(-(-lines // shape.k) for lines in per_segment.values()) <= chaos.MAX_CHUNKS, shape


def test_a_correct_object_source_run_has_no_fault_figure():
    truth = GroundTruth()
    figures = figures_of_runs([object_run(truth)], [object_alert()], truth)

    assert not figures.faulty(), figures.problems
    assert figures.faults_by_source == {chaos.OBJECT: dict.fromkeys(Figures.FAULTS, 0)}


def test_an_object_source_listing_naming_items_by_position_instead_of_byte_offset_is_lost_and_misreported():
    """Positions 1 and 3 were in range under a 0..n-1 check; they are not this batch's indices."""
    truth = GroundTruth()
    batch = object_run(truth)
    batch.failures = listing(FAILED)

    figures = figures_of_runs([batch], [object_alert()], truth)

    assert (figures.items_lost, figures.items_double_counted, figures.items_falsely_failed) == (2, 0, 0)
    # The two failed items not listed, the alert's 2 failed against 0 listed, and the 2 entries not the batch's.
    assert figures.items_misreported == 2 + 2 + 2


def test_a_fault_on_an_object_source_batch_is_counted_for_it_and_not_for_a_random_batch_beside_it():
    truth = GroundTruth()
    generated = correct_run(truth)
    batch = object_run(truth, failed=[0, *FAILED])  # its "ok" item, at byte 0, listed failed after one start

    figures = figures_of_runs([generated, batch], [alert(), object_alert(failed=3)], truth)

    faults = {"items_double_counted": 1, "items_misreported": 1, "items_falsely_failed": 1}
    assert {name: getattr(figures, name) for name in Figures.FAULTS if getattr(figures, name)} == faults
    assert figures.faults_by_source[chaos.RANDOM] == dict.fromkeys(Figures.FAULTS, 0)
    assert figures.faults_by_source[chaos.OBJECT] == {**dict.fromkeys(Figures.FAULTS, 0), **faults}


def test_a_second_alert_of_an_object_source_batch_is_a_duplicate_of_that_batch():
    truth = GroundTruth()

    figures = figures_of_runs([correct_run(truth), object_run(truth)], [alert(), object_alert(), object_alert()], truth)

    assert figures.duplicate == 1 and figures.faults_by_source[chaos.OBJECT]["duplicate"] == 1
    assert figures.faults_by_source[chaos.RANDOM]["duplicate"] == 0


# -- the fault points ------------------------------------------------------------------------------


class FakeSqs:
    def __init__(self, count: int) -> None:
        self.messages = [
            {"MessageId": f"m{number}", "ReceiptHandle": f"r{number}", "Body": "{}", "Attributes": {}} for number in range(count)
        ]
        self.deleted: list[str] = []

    def receive_message(self, **_: Any) -> dict[str, Any]:
        messages, self.messages = self.messages, []
        return {"Messages": messages}

    def delete_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> None:  # noqa: N803 - boto3's names
        self.deleted += [entry["ReceiptHandle"] for entry in Entries]


def test_a_concurrent_duplicate_delivery_runs_two_invocations_of_the_same_messages_at_once():
    running, overlapped, events = [0], [False], []
    lock = threading.Lock()

    def invoke(name: str, handler: Any, event: dict) -> dict:
        with lock:
            running[0] += 1
            overlapped[0] |= running[0] == 2
            events.append(event)
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return {"batchItemFailures": []}

    sqs = FakeSqs(3)
    poller = SqsPoller(
        sqs,
        function_name="process_work",
        handler=lambda event, context: None,
        invoke=invoke,
        queue_url="queue",
        queue_arn="arn:aws:sqs:us-east-1:000000000000:queue",
        region="us-east-1",
        batch_size=10,
        batching_window=0,
        faults=FaultInjector(seed=0, rates={"sqs_concurrent_duplicate": 1.0}),
    )

    poller.poll_once()

    assert overlapped[0] and len(events) == 2 and events[0] == events[1]
    assert sorted(sqs.deleted) == ["r0", "r1", "r2"]  # deleted once, after both copies succeeded
    assert poller.faults.injected == {"sqs_concurrent_duplicate": 1}


class FakeDynamoDB:
    def __init__(self, old: dict[str, Any] | None = None, error: Exception | None = None) -> None:
        self.old, self.error, self.updates = old or {}, error, []

    def update_item(self, **params: Any) -> dict[str, Any]:
        self.updates.append(params)
        if self.error:
            raise self.error
        return {"Attributes": self.old}


def delete_params(sk: str = "C#00000003") -> dict[str, Any]:
    return {
        "TableName": "table",
        "Key": {"pk": {"S": "B#batch#0"}, "sk": {"S": sk}},
        "ConditionExpression": "pending = :read",
        "ExpressionAttributeValues": {":read": {"NS": ["4", "5"]}},
    }


def test_a_lost_delete_leaves_the_chunk_row_behind_with_its_pending_set_emptied_and_the_invocation_dead():
    faults = FaultInjector(seed=0, rates={"lost_delete_after_emptying": 1.0})
    faults._dynamodb = FakeDynamoDB(old={"pending": {"NS": ["4", "5"]}})

    with pytest.raises(InjectedCrash):
        faults._lost_delete_after_emptying(params=delete_params())

    (update,) = faults._dynamodb.updates
    assert update["UpdateExpression"] == "REMOVE pending"
    assert update["ConditionExpression"] == "attribute_exists(pk) AND (pending = :read)"  # the delete's own condition
    assert update["ExpressionAttributeValues"] == {":read": {"NS": ["4", "5"]}}
    assert faults.injected == {"lost_delete_after_emptying": 1}
    assert faults.details == {"lost_delete_after_emptying: row emptied by the fault": 1}


def test_a_lost_delete_strikes_only_chunk_rows_and_only_where_the_delete_itself_would_have_succeeded():
    faults = FaultInjector(seed=0, rates={"lost_delete_after_emptying": 1.0})
    faults._dynamodb = FakeDynamoDB(error=RuntimeError("ConditionalCheckFailedException"))

    faults._lost_delete_after_emptying(params=delete_params(sk="F#00000003"))
    assert faults._dynamodb.updates == []
    faults._lost_delete_after_emptying(params=delete_params())  # the row changed: the real delete fails on its own

    assert len(faults._dynamodb.updates) == 1
    assert faults.injected == {}


def test_concurrent_invocations_in_one_process_never_queue_their_items_behind_each_other():
    """As on AWS, where each execution environment runs one invocation at a time: each thread has its own runner."""
    from chalicelib import processor

    def item_taking(seconds: float):
        return lambda item, options: time.sleep(seconds)

    errors: list[BaseException] = []

    def invocation() -> None:
        try:
            processor.task_runner().run(item_taking(0.3), {}, {}, 0.5)  # alone, it fits; behind another, it would not
        except BaseException as error:  # noqa: BLE001 - collected for the assertion
            errors.append(error)

    threads = [threading.Thread(target=invocation) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []


# -- issue 16: results, overwritten objects, items that succeed once -----------------------------------


def results_run(truth: GroundTruth, lines: dict[Any, int] | None = None) -> BatchRun:
    """correct_run with results: one result line per item not listed failed (or `lines`)."""
    batch = correct_run(truth)
    batch.results = True
    batch.result_lines = Counter({index: 1 for index in batch.values if index not in FAILED} if lines is None else lines)
    return batch


def test_a_batch_whose_result_lines_are_one_per_succeeded_item_has_no_fault_figure():
    truth = GroundTruth()
    assert figures_of(results_run(truth), [alert()], truth) == {"alerts_expected": 1}


@pytest.mark.parametrize(
    ("lines", "fault"),
    [
        ({0: 1, 1: 1, 2: 1, 4: 1}, chaos.FOR_FAILED),  # item 1 is listed failed
        ({0: 1, 4: 1}, chaos.MISSING),  # item 2 succeeded
        ({0: 1, 2: 2, 4: 1}, chaos.EXTRA),  # item 2: one line in each attempt's objects
        ({0: 1, 2: 1, 4: 1, 99: 1}, chaos.STRAY),  # 99 is no index of the batch
        ({0: 1, 2: 1, 4: 1, "'2'": 1}, chaos.STRAY),  # an index written as text
    ],
)
def test_each_wrong_result_line_is_one_result_line_wrong(lines: dict[Any, int], fault: str):
    truth = GroundTruth()
    batch = results_run(truth, lines)

    assert figures_of(batch, [alert()], truth) == {"alerts_expected": 1, "result_lines_wrong": 1}
    assert list(chaos.result_lines_wrong(Counter(lines), batch.values, set(FAILED)).values()) == [fault]


def test_results_no_reader_can_find_count_every_succeeded_item_missing():
    truth = GroundTruth()
    batch = results_run(truth)
    batch.result_lines = None  # no manifest, or an unreadable one

    assert figures_of(batch, [alert()], truth) == {"alerts_expected": 1, "result_lines_wrong": 3}


def test_an_alert_counting_more_items_succeeded_than_have_a_line_is_that_many_lines_wrong():
    """A redrive sealed early (issue 16, defect 1): the alert says all succeeded, the listing still lists 2."""
    truth = GroundTruth()
    batch = results_run(truth)

    figures = figures_of(batch, [alert(failed=0)], truth)

    assert figures == {"alerts_expected": 1, "items_misreported": 2, "result_lines_wrong": 2}


def test_a_succeeds_once_item_failed_after_its_good_start_was_lost_is_right_but_not_with_a_result_line():
    truth = GroundTruth()
    batch = results_run(truth)
    once = value_of(ONCE_ONLY, 3)
    batch.values[5] = once
    start(truth, once, 1 + M)  # its good start, then M re-runs after a crash before the row update
    batch.failures = listing([*FAILED, 5])

    assert figures_of(batch, [alert(failed=3, items=6)], truth) == {"alerts_expected": 1}
    batch.result_lines[5] = 1  # the line its good start wrote
    assert figures_of(batch, [alert(failed=3, items=6)], truth) == {"alerts_expected": 1, "result_lines_wrong": 1}


def overwritten_run(truth: GroundTruth, errors: dict[int, str] | None = None) -> BatchRun:
    """object_run redriven after its object was overwritten: the two failed items fail again, as changed."""
    batch = object_run(truth)
    offsets = sorted(batch.values)
    failed = [offsets[index] for index in FAILED]
    batch.redrive = "redrive"
    batch.failures_at_redrive = listing(failed)
    batch.starts_at_redrive = truth.starts_of(batch.values.values())
    batch.overwritten = {value_of(OK, 20 + number) for number in range(len(ITEMS))}
    changed = "s3://batchdrain-chaos/chaos-2/2030-01-01/0000.jsonl changed since the batch was created; not run on different data"
    batch.failures = [{**listing(failed)[0], "attempt": 2, "errors": {offset: changed for offset in failed} if errors is None else errors}]
    return batch


def object_alerts() -> list[dict[str, Any]]:
    return [object_alert(), {"message": {**object_alert()["message"], "alert_id": f"{OBJECT_BATCH}/2", "attempt": 2}}]


def test_items_of_an_overwritten_object_failing_again_as_changed_without_running_is_right():
    truth = GroundTruth()
    figures = figures_of_runs([overwritten_run(truth)], object_alerts(), truth)

    assert not figures.faulty(), figures.problems


def test_an_item_of_an_overwritten_object_failed_for_another_reason_or_run_on_its_new_lines_is_misreported():
    truth = GroundTruth()
    batch = overwritten_run(truth)
    offsets = sorted(batch.values)
    batch.failures[0]["errors"] = {offsets[1]: "RuntimeError: poison item 7"}  # run again, on some data
    start(truth, sorted(batch.overwritten)[0])  # a line of the new object ran

    figures = figures_of_runs([batch], object_alerts(), truth)

    assert {name: getattr(figures, name) for name in Figures.FAULTS if getattr(figures, name)} == {"items_misreported": 2}


def test_an_item_of_an_overwritten_object_reported_succeeded_is_misreported():
    truth = GroundTruth()
    batch = overwritten_run(truth)
    offsets = sorted(batch.values)
    batch.failures = listing([offsets[1]])
    second = object_alerts()[1]
    second["message"]["totals"] = {"items": 5, "succeeded": 4, "failed": 1}

    figures = figures_of_runs([batch], [object_alerts()[0], second], truth)

    # The item that always runs late: reported succeeded though it never ran again (and never succeeded).
    assert {name: getattr(figures, name) for name in Figures.FAULTS if getattr(figures, name)} == {"items_lost": 1, "items_misreported": 1}


def test_an_overwritten_object_holds_other_lines_at_the_same_key():
    shape = chaos.Shape("chaos-2", 30, 5, chaos.OBJECT)
    body, values = chaos.object_of(shape, OBJECT_BATCH)

    other, new_values = chaos.overwritten_object(shape, OBJECT_BATCH)

    assert other != body and len(other.splitlines()) == len(body.splitlines())
    assert not new_values & set(values.values()) and len(new_values) == 30


# -- reading results as a user does ---------------------------------------------------------------------


@pytest.fixture
def s3() -> Any:
    from moto import mock_aws

    import boto3

    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="results")
        yield client


def put_lines(s3: Any, key: str, lines: list[Any]) -> None:
    body = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    s3.put_object(Bucket="results", Key=key, Body=body.encode())


def manifest(s3: Any, attempt: int, earlier: list[str]) -> str:
    prefix = f"r/{BATCH}/{attempt}"
    s3.put_object(
        Bucket="results",
        Key=f"{prefix}/manifest.json",
        Body=json.dumps({"results": {"prefix": f"s3://results/{prefix}/", "earlier_attempts": earlier}}).encode(),
    )
    return f"s3://results/{prefix}/manifest.json"


def test_result_lines_are_read_from_every_chunk_object_of_the_attempts_the_manifest_names(s3):
    put_lines(s3, f"r/{BATCH}/1/0/00000000.jsonl", [{"index": 0, "result": 1}, {"index": 1, "result": None}])
    put_lines(s3, f"r/{BATCH}/1/1/100000000.jsonl", [{"index": 4, "result": "x"}, {"index": 99, "result": 2}])
    put_lines(s3, f"r/{BATCH}/1/failures.jsonl", [{"index": 1, "error": "boom"}])  # not a result object
    put_lines(s3, f"r/{BATCH}/2/0/00000000.jsonl", [{"index": 1, "result": 3}, {"index": 2, "done": True}, "not json"])
    put_lines(s3, f"r/{BATCH}/3/0/00000000.jsonl", [{"index": 2, "result": 5}])  # an attempt no manifest names
    uri = manifest(s3, 2, [f"s3://results/r/{BATCH}/1/"])

    lines, notes = chaos.read_result_lines(s3, uri)

    assert lines == Counter({0: 1, 1: 2, 4: 1, 99: 1, "<not JSON>": 1})  # {"index": 2, "done": true} is no result line
    assert len(notes) == 1 and "not JSON" in notes[0]
    wrong = chaos.result_lines_wrong(lines, range(5), failed={3})
    # 1: two lines; 2: succeeded without a line; 99 and the line that is not JSON: no item's.
    assert wrong == {1: chaos.EXTRA, 2: chaos.MISSING, (99, 0): chaos.STRAY, ("<not JSON>", 0): chaos.STRAY}


def test_a_correct_results_prefix_reads_as_one_line_per_succeeded_item(s3):
    put_lines(s3, f"r/{BATCH}/1/0/00000000.jsonl", [{"index": 0, "result": 1}, {"index": 2, "result": 1}])
    put_lines(s3, f"r/{BATCH}/2/0/00000000.jsonl", [{"index": 4, "result": 1}])
    lines, notes = chaos.read_result_lines(s3, manifest(s3, 2, [f"s3://results/r/{BATCH}/1/"]))

    assert notes == [] and chaos.result_lines_wrong(lines, range(5), failed={1, 3}) == {}


def test_results_behind_no_manifest_or_an_unreadable_one_cannot_be_read(s3):
    assert chaos.read_result_lines(s3, None)[0] is None
    lines, notes = chaos.read_result_lines(s3, f"s3://results/r/{BATCH}/1/manifest.json")
    assert lines is None and "unreadable" in notes[0]


# -- stream replays: records re-read from the stream, shaped and filtered as the mapping delivers them ------


STREAM = "arn:aws:dynamodb:us-east-1:000000000000:table/t/stream/2030-01-01T00:00:00.000"


def raw_record(sequence: int, name: str, pk: str, sk: str, old: dict | None = None, new: dict | None = None) -> dict[str, Any]:
    """A record as GetRecords returns it (boto3: the creation time a datetime)."""
    change: dict[str, Any] = {
        "ApproximateCreationDateTime": datetime(2030, 1, 1, tzinfo=timezone.utc),
        "Keys": {"pk": {"S": pk}, "sk": {"S": sk}},
        "SequenceNumber": str(sequence),
        "SizeBytes": 50,
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    }
    if old is not None:
        change["OldImage"] = {"pk": {"S": pk}, "sk": {"S": sk}, **old}
    if new is not None:
        change["NewImage"] = {"pk": {"S": pk}, "sk": {"S": sk}, **new}
    return {"eventID": f"e{sequence}", "eventName": name, "eventVersion": "1.1", "eventSource": "aws:dynamodb",
            "awsRegion": "us-east-1", "dynamodb": change}


class FakeStreams:
    """One shard of records from sequence number 100 on; iterators are positions."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records, self.reads = records, []

    def describe_stream(self, StreamArn: str) -> dict[str, Any]:  # noqa: N803 - boto3's names
        return {"StreamDescription": {"Shards": [{"ShardId": "shard-1", "SequenceNumberRange": {"StartingSequenceNumber": "100"}}]}}

    def get_shard_iterator(self, StreamArn: str, ShardId: str, ShardIteratorType: str, SequenceNumber: str = "100") -> dict:  # noqa: N803
        assert ShardId == "shard-1" and ShardIteratorType in ("TRIM_HORIZON", "AT_SEQUENCE_NUMBER")
        return {"ShardIterator": str(int(SequenceNumber) - 100 if ShardIteratorType == "AT_SEQUENCE_NUMBER" else 0)}

    def get_records(self, ShardIterator: str, Limit: int) -> dict[str, Any]:  # noqa: N803
        self.reads.append((int(ShardIterator), Limit))
        records = self.records[int(ShardIterator) : int(ShardIterator) + Limit]
        return {"Records": records, "NextShardIterator": str(int(ShardIterator) + len(records))}


CREATING, SEALED = {"status": {"S": "CREATING"}}, {"status": {"S": "SEALED"}}
A, B = "B#chaos-1-2030-01-01T00:00Z", "B#chaos-2-2030-01-01T00:00Z"
RECORDS = [
    raw_record(100, "INSERT", f"{A}#0", "C#00000000", new={"attempt": {"N": "1"}}),  # no REMOVE: filtered out
    raw_record(101, "REMOVE", A, "P#00000000", old={}),
    raw_record(102, "REMOVE", f"{B}#0", "C#00000000", old={}),
    raw_record(103, "REMOVE", f"{A}#0", "C#00000000", old={"attempt": {"N": "1"}}),
    raw_record(104, "MODIFY", A, "META", old=CREATING, new=SEALED),
]


def stream_replay(rates: dict[str, float], deliver: Any = None, records: list[dict[str, Any]] = RECORDS) -> tuple[Any, list, FakeStreams]:
    from batchdrain_local import events
    from batchdrain_local.eventsources import load_mapping_settings
    from batchdrain_local.faults import StreamReplay

    delivered: list[dict[str, Any]] = []
    streams = FakeStreams(records)
    replay = StreamReplay(
        FaultInjector(seed=0, rates=rates), streams, STREAM, deliver or delivered.append, region="us-east-1",
        event_filter=load_mapping_settings("finalize", "dynamodb").event_filter, batch_size=100,
    )
    # What the mapping delivered: every record but the INSERT, which its filter drops.
    replay.note(events.stream_event([events.stream_record(record, STREAM, "us-east-1") for record in records[1:]]))
    return replay, delivered, streams


def test_a_redrive_replay_hands_the_finalizer_the_batchs_earlier_records_read_back_from_the_stream_as_the_mapping_shapes_them():
    from batchdrain_local import events

    replay, delivered, streams = stream_replay({"stream_replay_redrive": 1.0})

    assert replay.replay_batch(A[2:]) == 3

    # Its segment REMOVE, chunk REMOVE and seal, in stream order, in one event; the other batch's record is not its.
    assert delivered == [events.stream_event([events.stream_record(RECORDS[n], STREAM, "us-east-1") for n in (1, 3, 4)])]
    assert streams.reads == [(1, 1), (3, 1), (4, 1)]
    assert replay.injector.details == Counter(
        {f"stream_replay_redrive: {kind}s replayed": 1 for kind in ("segment REMOVE", "chunk REMOVE", "seal MODIFY")}
    )


def test_a_window_replay_reads_one_batch_of_records_from_an_earlier_position_and_keeps_what_the_filter_keeps():
    replay, delivered, streams = stream_replay({"stream_replay": 1.0})
    starts = set()

    for _ in range(20):
        streams.reads.clear()
        replay.replay_window()
        start = streams.reads[0][0]
        starts.add(start)
        # From TRIM_HORIZON (0) or a delivered record on, what the filter keeps (never the INSERT),
        # read on while the batch is not full, until the shard has no more.
        assert [record["eventID"] for record in delivered[-1]["Records"]] == [f"e{n}" for n in range(max(start, 1) + 100, 105)]
        assert streams.reads == [(start, 100), (len(RECORDS), 100)]

    assert replay.injector.injected["stream_replay"] == 20 and len(delivered) == 20
    assert 0 in starts and starts & {1, 2, 3, 4}


def test_a_replay_whose_invocation_fails_is_delivered_again_then_given_up():
    calls = []

    def failing(event: dict[str, Any]) -> None:
        calls.append(event)
        raise RuntimeError("the finalizer failed")

    replay, _, _ = stream_replay({"stream_replay_redrive": 1.0}, deliver=failing)

    replay.replay_batch(A[2:])

    assert len(calls) == 1 + replay.retries and all(call == calls[0] for call in calls)
    assert replay.injector.details["stream_replay_redrive: given up after 4 invocations"] == 1


def test_nothing_is_replayed_before_the_mapping_delivered_anything():
    from batchdrain_local.faults import StreamReplay

    replay = StreamReplay(FaultInjector(seed=0, rates={"stream_replay": 1.0}), FakeStreams(RECORDS), STREAM, list.append,
                          region="us-east-1")

    assert replay.replay_window() == 0 and replay.injector.injected == Counter()  # no opportunity yet: not asked


def test_a_window_replay_reads_on_past_records_the_filter_drops_but_only_so_far():
    inserts = [raw_record(100 + n, "INSERT", f"{A}#0", f"C#{n:08d}", new={}) for n in range(30)]
    replay, delivered, streams = stream_replay({"stream_replay": 1.0}, records=inserts + [raw_record(130, "REMOVE", A, "P#00000000", old={})])
    replay.batch_size, replay.reads = 10, 3

    streams.reads.clear()
    replay._read(None, replay.batch_size)
    assert streams.reads == [(0, 10), (10, 10), (20, 10)]  # three reads of inserts only: given up there

    replay.reads = 4
    assert [record["eventID"] for record in replay._read(None, replay.batch_size)] == ["e130"]
