"""Open batches: POST /batches {"open": true}, items over several calls, then POST /batches/{id}/seal.

Each items call is one inbox object and one segment row (written through put_segments,
whose transaction checks the batch is CREATING and not yet planned), idempotent by its
Idempotency-Key; the seal sets `planned`, and the batch seals when its segments drain and
completes only after that (invariant 2), with one alert whose totals are the sum.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from typing import Any

import pytest
from chalice.test import Client

from chalicelib import api, model, sweeper
from chalicelib.config import Settings
from chalicelib.store import BatchStore

from . import test_api as api_tests
from .conftest import MockedAws, plan_batches
from .test_api_inbox import INBOX_BUCKET, INBOX_URI, client, definitions_file, inbox_objects, inbox_settings  # noqa: F401

AUTH = api_tests.AUTH


def open_batch(client: Client, key: str | None = None) -> str:
    headers = {**AUTH, **({"Idempotency-Key": key} if key else {})}
    status, made = api_tests.post(client, "/batches", {"definition": "inline", "open": True}, headers)
    assert (status, made["status"]) == (202, model.CREATING), made
    return made["batch_id"]


def add(client: Client, batch_id: str, items: list[Any], key: str) -> tuple[int, Any]:
    return api_tests.post(client, f"/batches/{batch_id}/items", {"items": items}, {**AUTH, "Idempotency-Key": key})


def items(first: int, count: int) -> list[dict[str, int]]:
    return [{"id": n} for n in range(first, first + count)]


def test_three_items_calls_then_the_seal_end_in_one_alert_with_the_sum(client: Client, aws: MockedAws, inbox_settings: Settings):
    batch_id = open_batch(client)
    for number, (first, count) in enumerate([(0, 5), (100, 7), (200, 3)]):
        status, added = add(client, batch_id, items(first, count), f"call-{number}")
        assert (status, added["segment"], added["items"]) == (202, number, count), added
    assert len(inbox_objects(aws)) == 3
    plan_batches(inbox_settings)
    assert aws.header(batch_id)["status"] == model.CREATING

    status, sealed = api_tests.post(client, f"/batches/{batch_id}/seal")
    assert (status, sealed["sealed"], sealed["status"]) == (202, True, model.SEALED)
    (alert,) = api_tests.run_to_the_end(aws, inbox_settings)
    assert (alert["batch_id"], alert["totals"]["items"], alert["totals"]["failed"]) == (batch_id, 15, 0)
    assert api_tests.post(client, f"/batches/{batch_id}/seal")[0] == 202  # again: nothing more
    assert aws.alerts() == []


def test_a_retried_items_call_adds_nothing_even_after_its_segment_was_planned_and_its_row_deleted(
    client: Client, aws: MockedAws, inbox_settings: Settings
):
    batch_id = open_batch(client)
    assert add(client, batch_id, items(0, 4), "only-once")[0] == 202
    objects = inbox_objects(aws)
    status, again = add(client, batch_id, items(0, 4), "only-once")
    assert (status, again["segment"]) == (202, 0)
    plan_batches(inbox_settings)  # the segment is expanded: its row is gone, the call's marker stays
    assert not any(row["sk"].startswith(model.SEGMENT_PREFIX) for row in aws.rows())
    status, again = add(client, batch_id, items(0, 4), "only-once")
    assert (status, again["segment"]) == (202, 0)
    status, refused = add(client, batch_id, items(0, 5), "only-once")
    assert (status, refused["error"]["field"]) == (409, "Idempotency-Key")
    assert inbox_objects(aws) == objects and aws.planning_messages() == []
    marker = next(row for row in aws.rows() if row["sk"].startswith(model.ITEMS_CALL_PREFIX))
    assert marker["expires_at"] > int(model.utc_now().timestamp()) + 14 * 86_400  # TTL'd, like POISON rows

    api_tests.post(client, f"/batches/{batch_id}/seal")
    (alert,) = api_tests.run_to_the_end(aws, inbox_settings)
    assert alert["totals"]["items"] == 4


def test_no_completion_before_the_seal_even_when_every_segment_drained(client: Client, aws: MockedAws, inbox_settings: Settings):
    batch_id = open_batch(client)
    add(client, batch_id, items(0, 6), "a")
    add(client, batch_id, items(6, 6), "b")
    plan_batches(inbox_settings)
    assert api_tests.run_to_the_end(aws, inbox_settings) == []  # every item ran, every row gone: still no alert
    header = aws.header(batch_id)
    assert (header["status"], header["total_items"], aws.chunk_rows(batch_id)) == (model.CREATING, 12, [])
    sweeper.sweep(inbox_settings, {})
    assert aws.header(batch_id)["status"] == model.CREATING and aws.alerts() == []

    api_tests.post(client, f"/batches/{batch_id}/seal")
    (alert,) = api_tests.run_to_the_end(aws, inbox_settings)
    assert (alert["batch_id"], alert["totals"]["items"], alert["totals"]["succeeded"]) == (batch_id, 12, 12)


def test_items_after_the_seal_are_a_409_and_write_nothing(client: Client, aws: MockedAws, inbox_settings: Settings):
    batch_id = open_batch(client)
    add(client, batch_id, items(0, 2), "before")
    api_tests.post(client, f"/batches/{batch_id}/seal")
    objects, rows = inbox_objects(aws), aws.rows()

    status, refused = add(client, batch_id, items(2, 2), "after")
    assert (status, refused["error"]["field"]) == (409, "batch_id"), refused
    assert inbox_objects(aws) == objects and aws.rows() == rows
    assert api_tests.post(client, "/batches/nosuch-batch/items", {"items": [1]}, {**AUTH, "Idempotency-Key": "x"})[0] == 404
    plan_batches(inbox_settings)
    (alert,) = api_tests.run_to_the_end(aws, inbox_settings)
    assert alert["totals"]["items"] == 2


@pytest.mark.parametrize(
    "path, body, headers, field",
    [
        ("/batches", {"definition": "inline", "open": True, "items": [1]}, {}, "open"),
        ("/batches", {"definition": "inline", "open": "yes"}, {}, "open"),
        ("/batches/{id}/items", {"items": [1]}, {}, "Idempotency-Key"),
        ("/batches/{id}/items", {"items": []}, {"Idempotency-Key": "k"}, "items"),
        ("/batches/{id}/items", {"items": [1], "more": 1}, {"Idempotency-Key": "k"}, "body"),
    ],
)
def test_a_bad_open_batch_request_is_a_400_naming_the_field_and_writes_nothing(
    client: Client, aws: MockedAws, path: str, body: Any, headers: dict, field: str
):
    batch_id = open_batch(client)
    objects, rows = inbox_objects(aws), aws.rows()
    status, answer = api_tests.post(client, path.replace("{id}", batch_id), body, {**AUTH, **headers})
    assert (status, answer["error"]["field"]) == (400, field), answer
    assert inbox_objects(aws) == objects and aws.rows() == rows


def test_items_for_a_batch_that_is_not_open_are_a_409(client: Client, aws: MockedAws):
    status, made = api_tests.post(client, "/batches", {"definition": "inline", "items": [1, 2]})
    assert status == 202
    assert add(client, made["batch_id"], [3], "k")[0] == 409
    assert api_tests.post(client, f"/batches/{made['batch_id']}/seal")[0] == 409


def test_an_open_batch_cancelled_before_its_seal_still_ends_once(client: Client, aws: MockedAws, inbox_settings: Settings):
    batch_id = open_batch(client)
    add(client, batch_id, items(0, 3), "a")
    plan_batches(inbox_settings)
    assert api_tests.post(client, f"/batches/{batch_id}/cancel")[0] == 202
    assert add(client, batch_id, items(3, 3), "b")[0] == 409
    (alert,) = api_tests.run_to_the_end(aws, inbox_settings)
    assert (alert["batch_id"], alert["totals"]["items"]) == (batch_id, 3)
    assert alert.get("cancelled") is True


@pytest.mark.parametrize("round_", range(4))
def test_a_seal_racing_an_items_call_counts_the_call_only_if_it_was_accepted(
    client: Client, aws: MockedAws, inbox_settings: Settings, serialized_aws: None, round_: int
):
    batch_id = open_batch(client)
    api_tests.post(client, f"/batches/{batch_id}/items", {"items": items(0, 4)}, {**AUTH, "Idempotency-Key": "first"})
    store = BatchStore(inbox_settings.table_name)
    outcome: dict[str, Any] = {}
    start = threading.Barrier(2)

    def call() -> None:
        start.wait()
        try:
            outcome["items"] = api.add_items(store, batch_id, json.dumps({"items": items(100, 5)}), {"Idempotency-Key": "racing"}, inbox_settings)
        except api.ApiError as error:
            outcome["items"] = error

    def seal() -> None:
        start.wait()
        outcome["seal"] = api.seal(store, batch_id)

    threads = [threading.Thread(target=call), threading.Thread(target=seal)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    accepted = isinstance(outcome["items"], dict)
    if not accepted:
        assert outcome["items"].status == 409
    plan_batches(inbox_settings)
    (alert,) = api_tests.run_to_the_end(aws, inbox_settings)
    assert alert["totals"]["items"] == 4 + (5 if accepted else 0)
    assert aws.alerts() == []


def test_the_sweeper_leaves_an_open_batch_waiting_for_items_open_and_only_re_sends_its_lost_planning_messages(
    client: Client, aws: MockedAws, inbox_settings: Settings, clock
):
    """An open batch is CREATING for as long as its caller adds items: never re-planned from its source, nor failed."""
    batch_id = open_batch(client)
    add(client, batch_id, items(0, 3), "a")
    aws.planning_messages()  # the message is lost
    clock.advance(inbox_settings.stuck_creating_seconds * 3)

    sweeper.sweep(inbox_settings, {})

    header = aws.header(batch_id)
    assert (header["status"], header.get("planned")) == (model.CREATING, False)
    waiting = aws.sqs.receive_message(QueueUrl=aws.planning_queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0).get("Messages", [])
    assert [json.loads(message["Body"])["segment"] for message in waiting] == [0]  # re-sent once, left in the queue
    assert aws.alerts() == []
    add(client, batch_id, items(3, 2), "b")
    plan_batches(inbox_settings)
    api_tests.post(client, f"/batches/{batch_id}/seal")
    (alert,) = api_tests.run_to_the_end(aws, inbox_settings)
    assert alert["totals"]["items"] == 5


def test_an_open_batch_nobody_seals_is_sealed_by_the_sweeper_after_a_day_with_the_items_it_was_given(
    client: Client, aws: MockedAws, inbox_settings: Settings, clock
):
    """Every batch ends: an open batch whose caller never seals it ends, once, after OPEN_BATCH_SECONDS."""
    from chalicelib import planning

    batch_id = open_batch(client)
    add(client, batch_id, items(0, 4), "only-call")
    plan_batches(inbox_settings)
    clock.advance(planning.OPEN_BATCH_SECONDS - 60)
    sweeper.sweep(inbox_settings, {})
    assert aws.header(batch_id)["status"] == model.CREATING  # a day is not up: still open

    clock.advance(120)
    sweeper.sweep(inbox_settings, {})
    (alert,) = api_tests.run_to_the_end(aws, inbox_settings)

    assert (alert["batch_id"], alert["status"], alert["totals"]["items"]) == (batch_id, model.COMPLETED, 4)
    assert add(client, batch_id, items(4, 1), "too-late")[0] == 409
