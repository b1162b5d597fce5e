"""Cancelling a batch (POST /batches/{id}/cancel): its items not yet run never run, and it ends CANCELLED, once.

The cancel stamps the header, then fails the chunk rows still pending with reason
"cancelled" through the processor's own fenced record (so a processor recording at the
same time and the cancel never both take an item); late work messages then find no row
and run nothing. Planners finish a cancelled batch's segments empty, so a cancelled
CREATING batch still seals; the sweeper finishes a cancel its API call left half done.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections import Counter
from typing import Any, Mapping

import pytest
from chalice.test import Client

from chalicelib import api, batcher, finalizer, model, planner, processor, sweeper
from chalicelib.config import Definition, Settings
from chalicelib.store import BatchStore
from chalicelib.tasks import task

from .conftest import MockedAws, create_sealed_batch, plan_batches, sqs_event
from .test_api import AUTH, SLOT, app_module, client, get, post  # noqa: F401 (fixtures)

RAN: Counter = Counter()
HOOKS: dict[int, Any] = {}


@task("cancel-counted")
def counted(item: dict, options: Mapping[str, Any]) -> None:
    hook = HOOKS.get(item["id"])
    if hook is not None:
        hook()
    RAN[item["id"]] += 1


@pytest.fixture(autouse=True)
def fresh_task_state():
    RAN.clear()
    HOOKS.clear()
    yield
    RAN.clear()
    HOOKS.clear()


@pytest.fixture
def definition(nightly: Definition) -> Definition:
    return dataclasses.replace(nightly, task="cancel-counted")


def finalize(aws: MockedAws, settings: Settings) -> None:
    finalizer.handle_stream_event({"Records": aws.stream_records()}, settings, {})


def alerts(aws: MockedAws) -> list[dict[str, Any]]:
    return [json.loads(alert["Message"]) for alert in aws.alerts()]


def failed_items(aws: MockedAws, batch_id: str) -> list[int]:
    """Every item in the batch's F rows (with repeats, if any item were counted twice)."""
    return [int(index) for row in aws.rows() if row["pk"].startswith(f"B#{batch_id}#") and row["sk"].startswith(model.FAILED_PREFIX) for index in row["failed"]]


def test_a_sealed_batch_cancelled_mid_way_runs_no_more_items_and_ends_cancelled_with_one_alert_that_adds_up(
    client: Client, aws: MockedAws, definition: Definition, settings: Settings
):
    header = create_sealed_batch(definition, SLOT, settings)
    batch_id = header["batch_id"]
    messages = aws.work_messages()
    processor.handle_sqs_event(sqs_event(messages[:4]), settings)  # 4 of 10 chunks ran
    assert len(RAN) == 400

    status, body = post(client, f"/batches/{batch_id}/cancel")

    assert status == 202
    assert (body["batch_id"], body["status"], body["status_url"]) == (batch_id, "SEALED", f"/batches/{batch_id}")
    assert body["cancelled_at"]
    assert aws.chunk_rows(batch_id) == []  # every row still pending was cancelled
    processor.handle_sqs_event(sqs_event(messages[4:]), settings)  # their messages arrive late
    assert len(RAN) == 400 and set(RAN.values()) == {1}  # ...and run nothing
    finalize(aws, settings)
    finalize(aws, settings)

    (alert,) = alerts(aws)
    assert (alert["status"], alert["cancelled"], alert["alert_id"]) == ("CANCELLED", True, f"{batch_id}/1")
    assert alert["totals"] == {"items": 1000, "succeeded": 400, "failed": 600}
    assert sorted(failed_items(aws, batch_id)) == sorted(set(range(1000)) - set(RAN))  # the 400 that ran stay succeeded
    _, shown = get(client, f"/batches/{batch_id}")
    assert (shown["status"], shown["succeeded"], shown["failed"], shown["progress"]["percent"]) == ("CANCELLED", 400, 600, 100.0)
    _, failures = get(client, f"/batches/{batch_id}/failures?limit=100")
    assert {entry["reason"] for entry in failures["failures"]} == {"cancelled"}
    assert BatchStore(settings.table_name).get_header(batch_id).get("open_pk") is None  # notified: the sweeper is done with it


def test_a_cancel_racing_a_processor_on_the_same_chunk_counts_each_item_once(
    aws: MockedAws, definition: Definition, settings: Settings, serialized_aws: None
):
    header = create_sealed_batch(definition, SLOT, settings)
    batch_id = header["batch_id"]
    first = aws.work_messages()[0]
    store = BatchStore(settings.table_name)
    running = threading.Barrier(2)
    HOOKS[50] = lambda: running.wait(timeout=10)  # chunk 0's processor is half way through its items

    answers: list[dict[str, Any]] = []

    def cancel_when_running() -> None:
        running.wait(timeout=10)
        answers.append(api.cancel(store, batch_id, settings))

    canceller = threading.Thread(target=cancel_when_running)
    canceller.start()
    processor.handle_sqs_event(sqs_event([first]), settings)
    canceller.join()
    finalize(aws, settings)

    assert [answer["status"] for answer in answers] == ["SEALED"]  # the cancel ran while item 50 was running
    assert RAN[50] == 1

    (alert,) = alerts(aws)
    failed = failed_items(aws, batch_id)
    assert alert["status"] == "CANCELLED"
    assert len(failed) == len(set(failed)) == alert["totals"]["failed"]  # no item failed twice
    assert alert["totals"]["succeeded"] + alert["totals"]["failed"] == 1000
    assert set(range(100, 1000)) <= set(failed)  # the other chunks never ran
    succeeded = set(range(1000)) - set(failed)
    assert succeeded <= set(RAN)  # an item counted succeeded did run
    assert aws.chunk_rows(batch_id) == []


def test_a_creating_batch_cancelled_before_its_planning_messages_are_taken_still_seals_and_alerts_cancelled_once(
    client: Client, aws: MockedAws, definition: Definition, settings: Settings
):
    created = batcher.create_batch(definition, SLOT, settings)
    batch_id = created["batch_id"]

    status, body = post(client, f"/batches/{batch_id}/cancel")
    assert (status, body["status"]) == (202, "CREATING")

    plan_batches(settings)  # the planners take the segments: no chunk row, no work message
    assert aws.chunk_rows(batch_id) == [] and aws.work_messages() == []
    finalize(aws, settings)
    finalize(aws, settings)
    sweeper.sweep(settings, {})

    (alert,) = alerts(aws)
    assert alert["status"] == "CANCELLED"
    assert alert["totals"] == {"items": 0, "succeeded": 0, "failed": 0}
    assert RAN == Counter()


def test_a_creating_batch_cancelled_after_a_planner_wrote_rows_ends_with_exact_totals(
    aws: MockedAws, definition: Definition, settings: Settings
):
    """Rows a planner wrote before it saw the flag are cancelled by the sweeper; the totals count them."""
    created = batcher.create_batch(definition, SLOT, settings)
    batch_id = created["batch_id"]
    store = BatchStore(settings.table_name)
    for message in aws.planning_messages():  # every segment expanded (10 chunk rows), not yet sealed
        planner.expand(store, *planner.parse_planning_message(message["Body"]), settings)
    assert store.get_header(batch_id)["status"] == "CREATING" and len(aws.chunk_rows(batch_id)) == 10
    cancelled = api.cancel(store, batch_id, settings, seconds=0)  # stamped, no row touched yet
    assert cancelled["status"] == "CREATING"

    report = sweeper.sweep(settings, {})
    finalize(aws, settings)  # the segments' REMOVEs seal it; the seal finds every shard empty

    assert report.cancelled == {batch_id: 10}
    (alert,) = alerts(aws)
    assert (alert["status"], alert["totals"]) == ("CANCELLED", {"items": 1000, "succeeded": 0, "failed": 1000})


def test_cancelling_twice_is_202_both_times_and_alerts_once(
    client: Client, aws: MockedAws, definition: Definition, settings: Settings
):
    header = create_sealed_batch(definition, SLOT, settings)
    batch_id = header["batch_id"]

    first_status, first = post(client, f"/batches/{batch_id}/cancel")
    again_status, again = post(client, f"/batches/{batch_id}/cancel")
    finalize(aws, settings)

    assert (first_status, again_status) == (202, 202)
    assert again["cancelled_at"] == first["cancelled_at"]  # the first stamp stays
    (alert,) = alerts(aws)
    assert alert["totals"] == {"items": 1000, "succeeded": 0, "failed": 1000}
    assert len(failed_items(aws, batch_id)) == 1000


def test_cancelling_an_ended_batch_is_a_409_that_writes_nothing_and_a_cancelled_batch_is_never_redriven(
    client: Client, aws: MockedAws, definition: Definition, settings: Settings
):
    header = create_sealed_batch(definition, SLOT, settings)
    batch_id = header["batch_id"]
    processor.handle_sqs_event(sqs_event(aws.work_messages()), settings)
    finalize(aws, settings)
    before = aws.rows()

    status, body = post(client, f"/batches/{batch_id}/cancel")

    assert status == 409
    assert body["error"]["field"] == "batch_id" and "has ended (COMPLETED)" in body["error"]["message"]
    assert aws.rows() == before
    assert post(client, "/batches/nightly-2026-01-01T00:00Z/cancel")[0] == 404
    assert post(client, "/batches/%20bad/cancel")[0] == 400

    other = create_sealed_batch(definition, SLOT.replace(hour=7), settings)
    assert post(client, f"/batches/{other['batch_id']}/cancel")[0] == 202
    finalize(aws, settings)
    assert BatchStore(settings.table_name).get_header(other["batch_id"])["status"] == "CANCELLED"
    assert post(client, f"/batches/{other['batch_id']}/cancel")[0] == 409  # ended: CANCELLED
    status, body = post(client, f"/batches/{other['batch_id']}/redrive")
    assert status == 409 and "CANCELLED" in body["error"]["message"]


def test_the_sweeper_finishes_a_cancel_its_api_call_left_half_done_a_page_per_sweep(
    aws: MockedAws, definition: Definition, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    header = create_sealed_batch(definition, SLOT, settings)
    batch_id = header["batch_id"]
    messages = aws.work_messages()
    store = BatchStore(settings.table_name)
    api.cancel(store, batch_id, settings, seconds=0)  # the API call's time ran out before any row
    assert len(aws.chunk_rows(batch_id)) == 10
    monkeypatch.setattr(sweeper, "CANCEL_PAGE_ROWS", 4)

    pages = [sweeper.sweep(settings, {}).cancelled.get(batch_id, 0) for _ in range(4)]
    processor.handle_sqs_event(sqs_event(messages), settings)  # late messages run nothing
    finalize(aws, settings)

    assert pages == [4, 4, 2, 0]
    assert RAN == Counter()
    (alert,) = alerts(aws)
    assert (alert["status"], alert["totals"]) == ("CANCELLED", {"items": 1000, "succeeded": 0, "failed": 1000})


def test_a_cancel_takes_the_rows_sqs_reaches_last_first_so_the_work_not_yet_started_stops_soonest(
    aws: MockedAws, definition: Definition, settings: Settings
):
    """Processors take a shard's chunks roughly in order; a cancel short of time has removed the last ones,
    not the first ones the processors are already on."""
    from chalicelib import cancelling

    header = create_sealed_batch(definition, SLOT, settings)
    batch_id = header["batch_id"]
    store = BatchStore(settings.table_name)
    stamped = store.mark_cancelled(batch_id, header["attempt"], model.iso(model.utc_now()))

    assert cancelling.cancel_rows(store, stamped, settings, max_rows=3) == 3
    assert [int(row["sk"][len("C#") :]) for row in aws.chunk_rows(batch_id)] == list(range(7))
    assert cancelling.cancel_rows(store, stamped, settings) == 7
    assert aws.chunk_rows(batch_id) == []


def test_a_cancel_that_lands_after_completion_read_the_header_still_ends_the_batch_cancelled(
    aws: MockedAws, definition: Definition, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """All rows drained, the finalizer read the header uncancelled, then the cancel stamped it: CANCELLED, not COMPLETED."""
    from chalicelib import completion

    header = create_sealed_batch(definition, SLOT, settings)
    batch_id = header["batch_id"]
    processor.handle_sqs_event(sqs_event(aws.work_messages()), settings)
    store = BatchStore(settings.table_name)
    real = completion._complete_once
    calls: list[bool] = []

    def cancel_first(store_: BatchStore, read: Mapping[str, Any], *args: Any) -> Any:
        if not calls:
            store_.mark_cancelled(batch_id, read["attempt"], model.iso(model.utc_now()))
        calls.append(bool(read.get("cancelled_at")))
        return real(store_, read, *args)

    monkeypatch.setattr(completion, "_complete_once", cancel_first)
    finalize(aws, settings)

    assert calls == [False, True]
    (alert,) = alerts(aws)
    assert (alert["status"], alert["totals"]) == ("CANCELLED", {"items": 1000, "succeeded": 1000, "failed": 0})
    assert store.get_header(batch_id)["status"] == "CANCELLED"


def test_a_cancelled_batchs_alert_lost_to_sns_is_published_once_by_the_sweeper_after_the_lease(
    aws: MockedAws, clock, definition: Definition, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    from botocore.exceptions import ClientError

    from chalicelib import aws as aws_clients

    settings = dataclasses.replace(settings, notify_lease_seconds=30)
    header = create_sealed_batch(definition, SLOT, settings)
    batch_id = header["batch_id"]
    sns = aws_clients.client("sns")
    real_publish = sns.publish
    publishes: list[int] = []

    def publish_fails_once(**kwargs: Any) -> Any:
        publishes.append(1)
        if len(publishes) == 1:
            raise ClientError({"Error": {"Code": "InternalError"}}, "Publish")
        return real_publish(**kwargs)

    monkeypatch.setattr(sns, "publish", publish_fails_once)
    api.cancel(BatchStore(settings.table_name), batch_id, settings)
    finalize(aws, settings)
    assert aws.header(batch_id)["status"] == "CANCELLED" and alerts(aws) == []

    clock.at(31)
    report = sweeper.sweep(settings, {})
    clock.at(3600)
    again = sweeper.sweep(settings, {})

    assert report.republished == [batch_id] and again.republished == []
    (alert,) = alerts(aws)
    assert (alert["status"], alert["alert_id"]) == ("CANCELLED", f"{batch_id}/1")
    assert list(BatchStore(settings.table_name).open_batches()) == []
