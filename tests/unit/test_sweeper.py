"""The sweeper: finishes what faults left behind, and never does anything twice (invariant 7).

Each fault is made for real: a batcher dies between groups or before its seal, the
stream record that ended a batch is lost, a work message vanishes (found because the
batch itself stops draining, not because the shared queue is idle), SNS fails while the
finalizer publishes. The sweep then finishes the batch with exactly one alert. Time is
a fake clock (`model.utc_now`), so ages and leases are exact and nothing sleeps.
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
from botocore.client import BaseClient
from botocore.exceptions import ClientError

from chalicelib import aws as aws_clients
from chalicelib import completion, finalizer, model, planner, processor, sweeper, work
from chalicelib.config import Definition, Settings
from chalicelib.store import BatchStore
from chalicelib.tasks import task

from .conftest import Clock, MockedAws, create_sealed_batch, plan_batches, sqs_event

SLOT = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
BATCH_ID = "nightly-2026-11-23T06:00Z"
TASK = "unit-sweeper"

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
    """1,000 items in 10 chunks of 100."""
    return dataclasses.replace(nightly, task=TASK)


@pytest.fixture
def definitions(definition: Definition) -> dict[str, Definition]:
    return {definition.name: definition}


def by_chunk(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(messages, key=lambda message: json.loads(message["Body"])["chunk"])


def chunk_numbers(messages: list[dict[str, Any]]) -> Counter:
    return Counter(json.loads(message["Body"])["chunk"] for message in messages)


def process(settings: Settings, messages: list[dict[str, Any]]) -> dict[str, Any]:
    return processor.handle_sqs_event(sqs_event(messages), settings)


def finalize_from_stream(aws: MockedAws, settings: Settings, definitions: dict[str, Definition]) -> list[str]:
    return finalizer.handle_stream_event({"Records": aws.stream_records()}, settings, definitions)


def nothing_done(report: sweeper.SweepReport) -> bool:
    return report == sweeper.SweepReport()


def alert_bodies(aws: MockedAws) -> list[dict[str, Any]]:
    return [json.loads(alert["Message"]) for alert in aws.alerts()]


def fail_calls(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, on_calls: set[int], error: Exception) -> list[int]:
    """Make `owner.name` raise `error` on the given call numbers (1-based); returns the call log."""
    real = getattr(owner, name)
    log: list[int] = []

    def wrapper(*args, **kwargs):
        log.append(len(log) + 1)
        if len(log) in on_calls:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return log


# -- completed but not notified: the lease, then exactly one alert ------------------------------------------


def test_alert_lost_to_an_sns_failure_is_published_once_by_the_sweeper_after_the_lease(
    aws: MockedAws, clock: Clock, definition: Definition, definitions, settings: Settings, monkeypatch
):
    settings = dataclasses.replace(settings, notify_lease_seconds=30)
    sns = aws_clients.client("sns")
    fail_calls(monkeypatch, sns, "publish", {1}, ClientError({"Error": {"Code": "InternalError"}}, "Publish"))
    create_sealed_batch(definition, SLOT, settings)
    process(settings, aws.work_messages())

    # The finalizer completes the batch; its publish fails, and that does not fail the stream batch.
    assert finalize_from_stream(aws, settings, definitions) == [BATCH_ID]
    header = aws.header(BATCH_ID)
    assert header["status"] == model.COMPLETED
    assert "notified_at" not in header
    assert header["notify_lease_until"] == int(clock.start.timestamp()) + 30
    assert aws.alerts() == []

    clock.at(29)  # the finalizer may still be publishing: its lease holds
    assert nothing_done(sweeper.sweep(settings, definitions))
    assert aws.alerts() == []

    clock.at(31)
    report = sweeper.sweep(settings, definitions)

    assert report.republished == [BATCH_ID]
    (alert,) = alert_bodies(aws)
    assert alert["alert_id"] == f"{BATCH_ID}/1"  # the same id the finalizer would have sent
    assert alert["status"] == model.COMPLETED
    assert alert["totals"] == {"items": 1000, "succeeded": 1000, "failed": 0}
    header = aws.header(BATCH_ID)
    assert header["notified_at"] == model.iso(clock.now)
    assert header["alert_id"] == f"{BATCH_ID}/1"

    clock.at(3600)
    assert nothing_done(sweeper.sweep(settings, definitions))
    assert aws.alerts() == []
    assert list(BatchStore(settings.table_name).open_batches()) == []


def test_a_sweep_whose_publish_fails_takes_a_new_lease_and_the_next_sweep_publishes(
    aws: MockedAws, clock: Clock, definition: Definition, definitions, settings: Settings, monkeypatch
):
    settings = dataclasses.replace(settings, notify_lease_seconds=30)
    sns = aws_clients.client("sns")
    fail_calls(monkeypatch, sns, "publish", {1, 2}, ClientError({"Error": {"Code": "InternalError"}}, "Publish"))
    create_sealed_batch(definition, SLOT, settings)
    process(settings, aws.work_messages())
    finalize_from_stream(aws, settings, definitions)

    clock.at(31)
    assert sweeper.sweep(settings, definitions).republished == []  # SNS failed again
    assert aws.header(BATCH_ID)["notify_lease_until"] == int(clock.now.timestamp()) + 30

    clock.at(45)
    assert sweeper.sweep(settings, definitions).republished == []  # within the sweep's own lease

    clock.at(62)
    assert sweeper.sweep(settings, definitions).republished == [BATCH_ID]
    assert [alert["alert_id"] for alert in alert_bodies(aws)] == [f"{BATCH_ID}/1"]


def test_a_notified_batch_is_never_published_again(
    aws: MockedAws, clock: Clock, definition: Definition, definitions, settings: Settings
):
    create_sealed_batch(definition, SLOT, settings)
    process(settings, aws.work_messages())
    assert finalize_from_stream(aws, settings, definitions) == [BATCH_ID]
    assert len(aws.alerts()) == 1

    clock.at(86_400)
    assert nothing_done(sweeper.sweep(settings, definitions))
    assert aws.alerts() == []


# -- a planner or sealer that died: CREATING is resumed from its checkpoint -------------------------------------


@pytest.mark.parametrize("crash", ["sending the second group", "sealing"])
def test_batch_whose_planner_died_is_resumed_from_its_checkpoint_and_alerts_once(
    aws: MockedAws, clock: Clock, definition: Definition, definitions, settings: Settings, monkeypatch, crash: str
):
    """104 items, K=2: 52 chunks, written and sent in groups of 25, 25 and 2 (one segment)."""
    definition = dataclasses.replace(
        definition, source=dataclasses.replace(definition.source, count=104), items_per_message=2
    )
    definitions = {definition.name: definition}
    settings = dataclasses.replace(settings, stuck_creating_seconds=60)
    monkeypatch.setattr(planner, "PLAN_GROUP_CHUNKS", 25)
    died = RuntimeError("Lambda timed out")
    if crash == "sealing":
        fail_calls(monkeypatch, BatchStore, "seal", {1}, died)
    else:
        fail_calls(monkeypatch, work, "send_chunks", {2}, died)  # the second group's rows are written

    with pytest.raises(RuntimeError, match="Lambda timed out"):
        create_sealed_batch(definition, SLOT, settings)

    header = aws.header(BATCH_ID)
    assert header["status"] == model.CREATING
    segments = [row for row in aws.rows() if row["pk"] == f"B#{BATCH_ID}" and row["sk"].startswith("P#")]
    if crash == "sealing":  # every segment finished: its totals are on the header, its row is gone
        assert segments == [] and header["total_chunks"] == 52
    else:  # the second group's checkpoint moved before its send, listing it as unsent
        (segment,) = segments
        assert segment["chunks"] == 50 and segment["unsent"] == [[0, chunk] for chunk in range(25, 50)]
    assert len(aws.chunk_rows(BATCH_ID)) == (52 if crash == "sealing" else 50)
    rows_before = aws.rows()

    clock.at(59)  # the planner might still be alive
    assert nothing_done(sweeper.sweep(settings, definitions))
    assert aws.rows() == rows_before

    clock.at(61)
    report = sweeper.sweep(settings, definitions)
    plan_batches(settings)  # the planning message the sweep sent again, if any

    assert report.resumed == [BATCH_ID]
    header = aws.header(BATCH_ID)
    assert header["status"] == model.SEALED
    assert header["open_shards"] == {0}
    assert len(aws.chunk_rows(BATCH_ID)) == 52
    messages = aws.work_messages()
    assert chunk_numbers(messages) == Counter(range(52))  # every chunk's message once: none lost, none re-sent

    assert process(settings, messages) == {"batchItemFailures": []}
    assert finalize_from_stream(aws, settings, definitions) == [BATCH_ID]
    assert Counter(CALLS) == Counter(range(104))
    (alert,) = alert_bodies(aws)
    assert alert["totals"] == {"items": 104, "succeeded": 104, "failed": 0}

    assert nothing_done(sweeper.sweep(settings, definitions))
    assert aws.alerts() == []


# -- a sealed batch whose last stream record was lost --------------------------------------------------------


def test_sealed_batch_whose_final_stream_record_was_lost_is_completed_by_the_sweep(
    aws: MockedAws, clock: Clock, definition: Definition, definitions, settings: Settings
):
    create_sealed_batch(definition, SLOT, settings)
    process(settings, aws.work_messages())
    assert aws.chunk_rows(BATCH_ID) == []
    assert aws.header(BATCH_ID)["status"] == model.SEALED  # no finalizer ever saw the REMOVEs

    report = sweeper.sweep(settings, definitions)

    assert report.completed == [BATCH_ID]
    header = aws.header(BATCH_ID)
    assert header["status"] == model.COMPLETED
    assert (header["succeeded"], header["failed"]) == (1000, 0)
    assert [alert["alert_id"] for alert in alert_bodies(aws)] == [f"{BATCH_ID}/1"]

    clock.at(86_400)
    assert nothing_done(sweeper.sweep(settings, definitions))
    assert aws.alerts() == []


def test_sealed_batch_with_rows_left_is_not_completed_by_the_sweep(
    aws: MockedAws, clock: Clock, definition: Definition, definitions, settings: Settings
):
    create_sealed_batch(definition, SLOT, settings)
    messages = by_chunk(aws.work_messages())
    process(settings, messages[:9])

    report = sweeper.sweep(settings, definitions)

    assert report.completed == []
    assert aws.header(BATCH_ID)["status"] == model.SEALED
    assert aws.alerts() == []


# -- a sealed batch that stopped draining: its messages are sent again, with a doubling wait --------------------


def test_a_lost_message_is_sent_again_once_the_batch_stops_draining_and_the_wait_then_doubles(
    aws: MockedAws, clock: Clock, definition: Definition, definitions, settings: Settings
):
    settings = dataclasses.replace(settings, resend_after_seconds=60)
    create_sealed_batch(definition, SLOT, settings)
    assert finalize_from_stream(aws, settings, definitions) == []  # the seal's record
    messages = by_chunk(aws.work_messages())
    FAILING.update({405, 406})
    process(settings, messages)  # chunk 4 keeps items 405 and 406 pending; the rest drain
    assert finalize_from_stream(aws, settings, definitions) == []
    assert aws.header(BATCH_ID)["progress_at"] == model.iso(clock.start)  # the finalizer saw rows drain
    original_items = {index: item for index, item in json.loads(messages[4]["Body"])["items"]}
    # Chunk 4's message is never delivered again (deleted by mistake, purged, expired...). The work
    # queue's own state says nothing: it is shared, and never idle under traffic.

    clock.at(59)  # no row drained for 59 s: not yet
    assert nothing_done(sweeper.sweep(settings, definitions))
    assert aws.work_messages() == []

    clock.at(61)
    report = sweeper.sweep(settings, definitions)

    assert report.resent == {BATCH_ID: 1}
    (resent,) = aws.work_messages()
    body = json.loads(resent["Body"])
    assert (body["batch_id"], body["shard"], body["chunk"], body["task"]) == (BATCH_ID, 0, 4, TASK)
    assert body["items"] == [[405, original_items[405]], [406, original_items[406]]]  # rebuilt by index
    header = aws.header(BATCH_ID)
    assert (header["resends"], header["resent_at"]) == (1, model.iso(clock.now))

    # A batch that is only slow (a deep backlog) must not get a copy of its messages every sweep:
    # after each re-send the wait doubles (120 s now, then 240 s).
    clock.at(61 + 119)
    assert nothing_done(sweeper.sweep(settings, definitions))
    assert aws.work_messages() == []
    clock.at(61 + 121)
    assert sweeper.sweep(settings, definitions).resent == {BATCH_ID: 1}
    (resent_again,) = aws.work_messages()
    assert aws.header(BATCH_ID)["resends"] == 2

    FAILING.clear()
    CALLS.clear()
    assert process(settings, [resent, resent_again]) == {"batchItemFailures": []}
    assert CALLS == [405, 406]  # the second copy found nothing pending
    assert finalize_from_stream(aws, settings, definitions) == [BATCH_ID]
    (alert,) = alert_bodies(aws)
    assert alert["status"] == model.COMPLETED
    assert alert["totals"] == {"items": 1000, "succeeded": 1000, "failed": 0}


def test_a_round_of_re_sends_goes_a_page_per_sweep_and_two_sweeps_at_once_send_each_page_once(
    aws: MockedAws, clock: Clock, definition: Definition, definitions, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """Every one of the 10 messages is lost. A round re-sends at most RESEND_PAGE_CHUNKS rows per
    sweep (3 here), claimed by moving the header's `resend_cursor` before sending, so the work
    per sweep is bounded, the next sweep goes on where it stopped without waiting, and two
    sweeps at once (EventBridge delivers at least once; both read the same cursor) never send
    one page twice."""
    monkeypatch.setattr(sweeper, "RESEND_PAGE_CHUNKS", 3)
    settings = dataclasses.replace(settings, resend_after_seconds=60)
    create_sealed_batch(definition, SLOT, settings)
    finalize_from_stream(aws, settings, definitions)
    aws.work_messages()  # all lost
    lock = threading.RLock()
    real_call = BaseClient._make_api_call

    def one_at_a_time(self: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        with lock:  # as DynamoDB applies each conditional write alone (moto in-process does not)
            return real_call(self, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", one_at_a_time)
    both_claim = [threading.Barrier(2)]
    real_move = BatchStore.move_resend_cursor

    def claim_together(self: BatchStore, *args: Any) -> bool:
        try:
            both_claim[0].wait(timeout=2)
        except threading.BrokenBarrierError:
            pass  # the other sweep lost the round's claim (note_resend) and never got here
        return real_move(self, *args)

    monkeypatch.setattr(BatchStore, "move_resend_cursor", claim_together)
    clock.at(61)
    sent: Counter = Counter()
    pages = []
    for _ in range(5):
        clock.advance(1)
        both_claim[0] = threading.Barrier(2)
        reports: list[sweeper.SweepReport] = []
        sweeps = [threading.Thread(target=lambda: reports.append(sweeper.sweep(settings, definitions))) for _ in range(2)]
        for sweep in sweeps:
            sweep.start()
        for sweep in sweeps:
            sweep.join(timeout=30)
        pages.append(sorted(report.resent.get(BATCH_ID, 0) for report in reports))
        sent += chunk_numbers(aws.work_messages())
        if "resend_cursor" not in aws.header(BATCH_ID):
            break

    assert pages == [[0, 3], [0, 3], [0, 3], [0, 1]]  # one sweep of each pair finds its page taken
    assert sent == Counter(range(10))  # each chunk once


def test_a_batch_that_keeps_draining_is_not_sent_again_however_long_ago_it_was_sealed(
    aws: MockedAws, clock: Clock, definition: Definition, definitions, settings: Settings
):
    settings = dataclasses.replace(settings, resend_after_seconds=60)
    create_sealed_batch(definition, SLOT, settings)
    messages = by_chunk(aws.work_messages())
    process(settings, messages[:5])
    finalize_from_stream(aws, settings, definitions)

    clock.at(70)
    process(settings, messages[5:9])  # still draining, 70 s after the seal
    finalize_from_stream(aws, settings, definitions)
    assert aws.header(BATCH_ID)["progress_at"] == model.iso(clock.now)

    clock.at(100)  # sealed 100 s ago, but the last row drained 30 s ago
    assert nothing_done(sweeper.sweep(settings, definitions))
    assert aws.work_messages() == []

    clock.at(131)  # nothing drained for 61 s: chunk 9's message is sent again, and only it
    assert sweeper.sweep(settings, definitions).resent == {BATCH_ID: 1}
    assert chunk_numbers(aws.work_messages()) == Counter([9])


def test_a_batch_the_sweep_cannot_repair_does_not_keep_the_others_from_being_swept(
    aws: MockedAws, clock: Clock, definition: Definition, definitions, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """Two sealed batches whose final stream records were lost; checking the first one fails."""
    later = SLOT.replace(hour=12)
    later_id = model.batch_id_for(definition.name, later)
    for slot in (SLOT, later):
        create_sealed_batch(definition, slot, settings)
    process(settings, aws.work_messages())
    check_batch = completion.check_batch

    def broken_for_the_first(store, batch_id, shards):
        if batch_id == BATCH_ID:
            raise RuntimeError("this batch cannot be checked")
        return check_batch(store, batch_id, shards)

    monkeypatch.setattr(completion, "check_batch", broken_for_the_first)

    report = sweeper.sweep(settings, definitions)

    assert report.errors == [BATCH_ID]
    assert report.completed == [later_id]
    assert aws.header(later_id)["status"] == model.COMPLETED
