"""The whole product over the local stack: cron event -> batcher -> SQS -> processor ->
stream -> finalizer -> SNS, with real AWS event shapes on a moto server."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

from chalicelib import model
from tests.integration.support import RUNS

SLOT = datetime(2026, 11, 23, 6, 0, tzinfo=timezone.utc)


def test_cron_batch_ends_with_exactly_one_alert_with_correct_totals(start_stack):
    stack = start_stack(count=2_000, items_per_message=50)

    header = stack.fire_schedule("nightly", SLOT)
    alert = stack.wait_for_alert(header["batch_id"], timeout=60)
    time.sleep(1.5)  # anything late would arrive now

    assert header["batch_id"] == "nightly-2026-11-23T06:00Z"
    assert header["shards"] == 10  # 40 chunks, 4 per shard in this stack
    assert len(stack.alerts_for(header["batch_id"])) == 1
    body = alert["message"]
    assert body["status"] == model.COMPLETED
    assert body["totals"] == {"items": 2_000, "succeeded": 2_000, "failed": 0}
    assert body["alert_id"] == "nightly-2026-11-23T06:00Z/1"
    assert alert["attributes"] == {"status": "COMPLETED", "definition": "nightly"}
    assert alert["subject"].startswith("batch nightly-2026-11-23T06:00Z completed: 2,000 items in ")
    final = stack.header(header["batch_id"])
    assert final["status"] == model.COMPLETED and "notified_at" in final and "open_shards" not in final
    assert stack.chunks_left(header["batch_id"], header["shards"]) == 0
    assert sorted(RUNS) == list(range(2_000)) and set(RUNS.values()) == {1}


def test_duplicate_cron_event_creates_no_second_batch(start_stack):
    stack = start_stack(count=500, items_per_message=50)

    first = stack.fire_schedule("nightly", SLOT)
    second = stack.fire_schedule("nightly", SLOT.replace(second=41))  # same slot, redelivered
    stack.wait_for_alert(first["batch_id"], timeout=60)
    time.sleep(1.5)

    assert second["batch_id"] == first["batch_id"]
    assert second["created_at"] == first["created_at"]
    assert stack.requests.sqs_messages_sent == 1 + 10  # one planning message, one message per chunk, once
    assert stack.requests.total("dynamodb", "BatchWriteItem") == 1
    assert len(stack.alerts_for(first["batch_id"])) == 1


def test_next_slot_is_a_new_batch(start_stack):
    stack = start_stack(count=100, items_per_message=50)

    morning = stack.fire_schedule("nightly", SLOT)
    noon = stack.fire_schedule("nightly", SLOT.replace(hour=12))

    assert noon["batch_id"] == "nightly-2026-11-23T12:00Z" != morning["batch_id"]
    for batch_id in (morning["batch_id"], noon["batch_id"]):
        assert stack.wait_for_alert(batch_id, timeout=60)["message"]["totals"]["items"] == 100


def test_alert_attributes_drive_subscription_filter_policies(start_stack):
    stack = start_stack(count=100, items_per_message=50)
    sqs, sns = stack.client("sqs"), stack.client("sns")
    inboxes = {}
    for status in ("COMPLETED", "COMPLETED_WITH_FAILURES"):
        url = sqs.create_queue(QueueName=f"only-{status.lower().replace('_', '-')}")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(
            TopicArn=stack.resources.alert_topic_arn,
            Protocol="sqs",
            Endpoint=arn,
            Attributes={"FilterPolicy": json.dumps({"status": [status], "definition": ["nightly"]})},
        )
        inboxes[status] = url

    header = stack.fire_schedule("nightly", SLOT)
    stack.wait_for_alert(header["batch_id"], timeout=60)

    received = {
        status: sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        for status, url in inboxes.items()
    }
    assert len(received["COMPLETED"]) == 1
    assert received["COMPLETED_WITH_FAILURES"] == []


def test_requests_per_batch_stay_within_the_cost_model(start_stack):
    """Per chunk: one row write, one message, one consistent read, one delete; per batch a handful more."""
    stack = start_stack(count=1_000, items_per_message=100)  # 10 chunks, 3 shards

    header = stack.fire_schedule("nightly", SLOT)
    stack.wait_for_alert(header["batch_id"], timeout=60)
    time.sleep(1.0)

    header = stack.header(header["batch_id"])  # totals are the planners', added as each segment finishes
    chunks, shards, segments = header["total_chunks"], header["shards"], header["segments"]
    assert (chunks, segments) == (10, 1)
    counts = stack.requests
    assert counts.sqs_messages_sent == segments + chunks
    assert counts.total("dynamodb", "BatchWriteItem") == 1
    # chunk reads + the finalizer's header reads + each planner's header read and the sealer's
    assert counts.total("dynamodb", "GetItem") <= chunks + shards + 1 + 2 * segments
    assert counts.total("dynamodb", "DeleteItem") == chunks
    # the segment rows (with a check on the header, 99 a transaction), and each segment's finish with its totals
    assert counts.total("dynamodb", "TransactWriteItems") == -(-segments // 99) + segments
    groups = -(-chunks // 250)  # a planner's group: its checkpoint, and its "sent" once out
    # + marked planned, a claim per segment, seal, shard closes, complete, notified, the
    # finalizer's progress stamp (at most one a minute), and each processor invocation's ADD to the batch's stats
    invocations = stack.invoker.invocations["process_work"]
    assert counts.total("dynamodb", "UpdateItem") <= 1 + segments + 2 * groups + shards + 4 + invocations
    assert counts.total("sns", "Publish") == 1


def test_accelerated_clock_fires_cron_slots_that_each_end_in_one_alert(start_stack):
    stack = start_stack(count=100, items_per_message=50)
    # 4 simulated hours per wall second from 05:59: the 06:00 slot fires at once, 12:00 ~1.5 s later.
    clock = stack.start_clock(speed=14_400, start=SLOT.replace(hour=5, minute=59))

    first = stack.wait_for_alert("nightly-2026-11-23T06:00Z", timeout=60)
    second = stack.wait_for_alert("nightly-2026-11-23T12:00Z", timeout=60)
    clock.stop()

    assert [slot for _, slot in clock.fired[:2]] == [SLOT, SLOT.replace(hour=12)]
    assert first["message"]["totals"]["items"] == second["message"]["totals"]["items"] == 100
