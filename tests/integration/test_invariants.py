"""One test per DESIGN.md invariant (1-6), over the local stack with injected faults.

Each test holds the pipeline at the step where the invariant matters and shows the
unsafe outcome does not happen; where a control case is cheap, it also shows that the
test would catch the outcome if the protection were gone.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import pytest

from batchdrain_local import events
from batchdrain_local.faults import FaultInjector
from chalicelib import model
from chalicelib.store import BatchStore
from tests.integration.support import RUNS, stream_records

SLOT = datetime(2026, 11, 23, 6, 0, tzinfo=timezone.utc)


def wait_until(condition, timeout: float = 30.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def chunk_rows(stack, batch_id: str, shards: int) -> list[dict]:
    dynamodb = stack.client("dynamodb")
    rows = []
    for shard in range(shards):
        rows += dynamodb.query(
            TableName=stack.resources.table_name,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :c)",
            ExpressionAttributeValues={":pk": {"S": model.shard_pk(batch_id, shard)}, ":c": {"S": model.CHUNK_PREFIX}},
            ConsistentRead=True,
        )["Items"]
    return rows


def delete_rows(stack, rows: list[dict]) -> None:
    for row in rows:
        stack.client("dynamodb").delete_item(
            TableName=stack.resources.table_name, Key={"pk": row["pk"], "sk": row["sk"]}
        )


def settle(stack, seconds: float = 2.0) -> None:
    """Give the stream poller (window 1 s) time to deliver whatever the test caused."""
    time.sleep(seconds)


def test_1_a_message_whose_row_is_missing_is_a_no_op(start_stack):
    stack = start_stack(count=200, items_per_message=50, paused=frozenset({"process_work"}))
    header = stack.fire_schedule("nightly", SLOT)
    orphan = model.Chunk(header["batch_id"], 0, 999, "count", {}, ((0, {"id": 0, "value": 1}),))
    sqs = stack.client("sqs")
    sqs.send_message(QueueUrl=stack.resources.work_queue_url, MessageBody=orphan.body())
    received = []
    while len(received) < 5:  # 4 real chunks + the orphan
        received += sqs.receive_message(QueueUrl=stack.resources.work_queue_url, MaxNumberOfMessages=10, AttributeNames=["All"]).get("Messages", [])
    orphan_message = next(message for message in received if '"chunk":999' in message["Body"])

    result = stack.invoke(
        "process_work",
        events.sqs_event([events.sqs_record(orphan_message, stack.resources.work_queue_arn, "us-east-1")]),
    )
    settle(stack)

    assert result == {"batchItemFailures": []}
    assert RUNS == {}
    assert stack.header(header["batch_id"])["status"] == model.SEALED
    assert stack.alerts_for(header["batch_id"]) == []


def test_2_no_completion_before_the_seal_even_when_every_row_is_gone(start_stack, monkeypatch):
    release_seal = threading.Event()
    real_seal = BatchStore.seal

    def seal_when_released(self, *args, **kwargs):
        release_seal.wait(timeout=60)
        return real_seal(self, *args, **kwargs)

    monkeypatch.setattr(BatchStore, "seal", seal_when_released)
    stack = start_stack(count=400, items_per_message=50)
    batch_id = model.batch_id_for("nightly", SLOT)
    creator = threading.Thread(target=stack.fire_schedule, args=("nightly", SLOT))
    creator.start()

    wait_until(lambda: len(RUNS) == 400)
    wait_until(lambda: stack.chunks_left(batch_id, 2) == 0)
    settle(stack)
    assert stack.header(batch_id)["status"] == model.CREATING
    assert stack.alerts_for(batch_id) == []

    release_seal.set()
    creator.join()
    alert = stack.wait_for_alert(batch_id, timeout=30)
    settle(stack, 1.5)
    assert alert["message"]["totals"]["items"] == 400
    assert len(stack.alerts_for(batch_id)) == 1


def test_3_no_completion_while_any_row_remains(start_stack):
    stack = start_stack(count=400, items_per_message=50, paused=frozenset({"process_work"}))  # 8 chunks, 2 shards
    header = stack.fire_schedule("nightly", SLOT)
    rows = chunk_rows(stack, header["batch_id"], header["shards"])
    assert len(rows) == 8

    delete_rows(stack, rows[:-1])  # every shard but one emptied; the last shard keeps one row
    settle(stack)
    assert stack.header(header["batch_id"])["status"] == model.SEALED
    assert stack.alerts_for(header["batch_id"]) == []

    delete_rows(stack, rows[-1:])
    assert stack.wait_for_alert(header["batch_id"], timeout=30)["message"]["status"] == model.COMPLETED


def test_4_concurrent_finalizers_on_the_same_batch_send_one_alert(start_stack):
    stack = start_stack(
        count=1_000, items_per_message=50, faults=FaultInjector(0, {"concurrent_finalizers": 1.0}, finalizer_copies=(4,))
    )
    batch_ids = [stack.fire_schedule("nightly", SLOT.replace(hour=hour))["batch_id"] for hour in (0, 6, 12)]

    for batch_id in batch_ids:
        stack.wait_for_alert(batch_id, timeout=60)
    settle(stack)

    assert stack.invoker.invocations["finalize"] >= 4
    assert {batch_id: len(stack.alerts_for(batch_id)) for batch_id in batch_ids} == dict.fromkeys(batch_ids, 1)


def test_5_duplicate_sqs_deliveries_neither_rerun_finished_items_nor_double_alert(start_stack):
    # Every 7th item fails its first attempt, so duplicates arrive for rows still partly pending.
    stack = start_stack(count=1_000, items_per_message=50, task_name="flaky", faults=FaultInjector(0, {"sqs_duplicate": 1.0}))

    header = stack.fire_schedule("nightly", SLOT)
    alert = stack.wait_for_alert(header["batch_id"], timeout=60)
    settle(stack)

    assert sorted(RUNS) == list(range(1_000)) and set(RUNS.values()) == {1}
    assert alert["message"]["totals"] == {"items": 1_000, "succeeded": 1_000, "failed": 0}
    assert len(stack.alerts_for(header["batch_id"])) == 1


@pytest.mark.parametrize("ttl_expiry", [True, False], ids=["ttl-remove-ignored", "control-user-remove-completes"])
def test_6_ttl_removes_never_complete_a_batch(start_stack, ttl_expiry):
    stack = start_stack(count=200, items_per_message=50, paused=frozenset({"process_work", "finalize"}))
    header = stack.fire_schedule("nightly", SLOT)
    wait_until(lambda: stack.header(header["batch_id"])["total_chunks"] == 4)  # the planner wrote every row
    (planned,) = [r for r in stream_records(stack) if r["eventName"] == "REMOVE" and r["dynamodb"]["Keys"]["sk"]["S"].startswith("P#")]
    stack.invoke("finalize", events.stream_event([events.stream_record(planned, stack.resources.table_stream_arn, "us-east-1")]))
    assert stack.header(header["batch_id"])["status"] == model.SEALED  # sealed on its segment's REMOVE
    rows = chunk_rows(stack, header["batch_id"], header["shards"])
    delete_rows(stack, rows)  # what TTL expiry does to the rows
    records = [
        events.ttl_remove_record({"pk": row["pk"], "sk": row["sk"]}, row, stack.resources.table_stream_arn, "us-east-1")
        for row in rows
    ]
    if not ttl_expiry:
        for record in records:
            del record["userIdentity"]

    stack.invoke("finalize", events.stream_event(records))
    time.sleep(1.5)  # the alert inbox polls every second

    expected = model.SEALED if ttl_expiry else model.COMPLETED
    assert stack.header(header["batch_id"])["status"] == expected
    assert len(stack.alerts_for(header["batch_id"])) == (0 if ttl_expiry else 1)
