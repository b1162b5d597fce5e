"""The event-source settings of infra/event-sources.json, as the local stack runs them.

First the pollers alone, with a fake stream (exact invocation sequences: bisection,
retries, ordering); then the real stack: the finalizer's filter, the processor's
ReportBatchItemFailures, the planner's own mapping on the planning queue, and a poison
stream record bisected out, retried, given up and reported to the
<table>-stream-failures queue while its batch still completes.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from typing import Any

import pytest

from batchdrain_local.eventsources import MappingSettings
from batchdrain_local.pollers import StreamPoller
from chalicelib import finalizer, model
from tests.integration.support import ATTEMPTS, stream_records
from tests.integration.test_event_shapes import SQS_RECORD_SAMPLE, shape

SLOT = datetime(2026, 11, 23, 6, 0, tzinfo=timezone.utc)
STREAM_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/2026-01-01T00:00:00.000"


def wait_until(condition, timeout: float = 30.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


# -- the stream poller against a fake stream ----------------------------------------


class FakeStream:
    """One shard holding `names` as records (eventName REMOVE, sk = the name), read in order."""

    def __init__(self, names: list[str]) -> None:
        self.records = [
            {
                "eventID": name,
                "eventName": "REMOVE",
                "dynamodb": {
                    "ApproximateCreationDateTime": datetime(2026, 11, 23, 6, 0, number, tzinfo=timezone.utc),
                    "Keys": {"pk": {"S": "B#x#0"}, "sk": {"S": name}},
                    "SequenceNumber": str(1000 + number),
                    "SizeBytes": 10,
                    "StreamViewType": "NEW_AND_OLD_IMAGES",
                },
            }
            for number, name in enumerate(names)
        ]
        self.reads: list[str] = []

    def describe_stream(self, StreamArn: str) -> dict:
        return {"StreamDescription": {"Shards": [{"ShardId": "shardId-1"}]}}

    def get_shard_iterator(self, **_: Any) -> dict:
        return {"ShardIterator": "0"}

    def get_records(self, ShardIterator: str, Limit: int) -> dict:
        self.reads.append(ShardIterator)
        start = int(ShardIterator)
        page = self.records[start : start + Limit]
        return {"Records": page, "NextShardIterator": str(start + len(page))}


def fake_poller(stream: FakeStream, settings: MappingSettings, fails, batch_size: int = 100):
    """A StreamPoller over `stream` whose handler raises when `fails(names)`; returns it and the calls."""
    calls: list[list[str]] = []
    failures: list[dict] = []

    def handler(event: dict, context: Any) -> None:
        names = [record["dynamodb"]["Keys"]["sk"]["S"] for record in event["Records"]]
        calls.append(names)
        if fails(names):
            raise RuntimeError(f"handler fails on {names}")

    poller = StreamPoller(
        stream,
        function_name="finalize",
        handler=handler,
        invoke=lambda name, handler, event: handler(event, None),
        stream_arn=STREAM_ARN,
        region="us-east-1",
        batch_size=batch_size,
        batching_window=0,
        settings=settings,
        on_failure=failures.append,
        poll_interval=0,
        retry_delay=0,
    )
    return poller, calls, failures


def test_a_failing_record_is_bisected_out_retried_then_given_up_in_stream_order():
    stream = FakeStream(["r1", "r2", "r3", "r4", "r5", "r6"])
    settings = MappingSettings(bisect_batch_on_function_error=True, maximum_retry_attempts=1)
    poller, calls, failures = fake_poller(stream, settings, lambda names: "r3" in names)

    poller.poll_once()

    assert calls == [
        ["r1", "r2", "r3", "r4", "r5", "r6"],
        ["r1", "r2", "r3"],  # split: the first half runs first ...
        ["r1", "r2"],
        ["r3"],
        ["r3"],  # ... one retry (MaximumRetryAttempts=1), then given up ...
        ["r4", "r5", "r6"],  # ... before anything after it in the shard
    ]
    assert (poller.batches_bisected, poller.batches_retried, poller.batches_given_up) == (2, 1, 1)
    assert (poller.records_delivered, poller.records_given_up) == (5, 1)
    [failure] = failures
    assert failure["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert failure["requestContext"]["approximateInvokeCount"] == 2
    assert failure["DDBStreamBatchInfo"] == {
        "shardId": "shardId-1",
        "startSequenceNumber": "1002",
        "endSequenceNumber": "1002",
        "approximateArrivalOfFirstRecord": "2026-11-23T06:00:02Z",
        "approximateArrivalOfLastRecord": "2026-11-23T06:00:02Z",
        "batchSize": 1,
        "streamArn": STREAM_ARN,
    }


def test_without_bisection_the_whole_batch_is_retried_and_given_up_together():
    stream = FakeStream(["r1", "r2", "r3"])
    poller, calls, failures = fake_poller(stream, MappingSettings(maximum_retry_attempts=2), lambda names: "r2" in names)

    poller.poll_once()

    assert calls == [["r1", "r2", "r3"]] * 3
    assert failures[0]["DDBStreamBatchInfo"]["batchSize"] == 3
    assert failures[0]["requestContext"]["approximateInvokeCount"] == 3
    assert (poller.records_delivered, poller.records_given_up, poller.batches_bisected) == (0, 3, 0)


def test_a_failing_batch_blocks_its_shard_until_it_succeeds():
    stream = FakeStream(["r1", "r2", "r3", "r4"])
    attempts = iter(range(100))
    poller, calls, failures = fake_poller(
        stream, MappingSettings(), lambda names: names[0] == "r1" and next(attempts) < 3, batch_size=2
    )

    for _ in range(3):
        poller.poll_once()

    assert calls == [["r1", "r2"]] * 4 + [["r3", "r4"]]
    assert failures == [] and poller.batches_retried == 3


def test_records_no_filter_keeps_never_invoke_and_the_shard_moves_on():
    stream = FakeStream(["C#1", "F#1", "C#2"])
    settings = MappingSettings.from_properties(
        {"FilterCriteria": {"Filters": [{"Pattern": json.dumps({"dynamodb": {"Keys": {"sk": {"S": ["nothing"]}}}})}]}}
    )
    poller, calls, _ = fake_poller(stream, settings, lambda names: False, batch_size=2)

    for _ in range(3):
        poller.poll_once()

    assert calls == []
    assert poller.records_filtered == 3
    assert stream.reads[:3] == ["0", "2", "3"]  # the iterator advanced past what was dropped


# -- the real stack -------------------------------------------------------------------


def record_finalizer_events(monkeypatch, poison: dict[str, str] | None = None) -> list[tuple[list[dict], bool]]:
    """Wrap the finalizer: log each invocation's records and whether it succeeded; raise on `poison`'s key."""
    calls: list[tuple[list[dict], bool]] = []
    lock = threading.Lock()
    real = finalizer.handle_stream_event

    def handle(event, settings, definitions):
        records = event["Records"]
        keys = [{name: value["S"] for name, value in record["dynamodb"]["Keys"].items()} for record in records]
        if poison is not None and poison in keys:
            with lock:
                calls.append((records, False))
            raise RuntimeError(f"poison record {poison}")
        result = real(event, settings, definitions)
        with lock:
            calls.append((records, True))
        return result

    monkeypatch.setattr(finalizer, "handle_stream_event", handle)
    return calls


def describe(record: dict) -> str:
    change = record["dynamodb"]
    status = lambda image: (image or {}).get("status", {}).get("S")  # noqa: E731
    sk = change["Keys"]["sk"]["S"]
    if sk == model.HEADER_SK:
        return f"{record['eventName']} header {status(change.get('OldImage'))}->{status(change.get('NewImage'))}"
    return f"{record['eventName']} {sk[:2]}"


def test_the_finalizer_sees_only_segment_and_chunk_removes_and_the_seal(start_stack, monkeypatch):
    calls = record_finalizer_events(monkeypatch)
    stack = start_stack(count=400, items_per_message=50)  # 8 chunks
    poller = stack.pollers["finalize"]

    header = stack.fire_schedule("nightly", SLOT)
    stack.wait_for_alert(header["batch_id"], timeout=60)
    # The invocation that completed the batch is logged once it returns (after the alert, its last writes).
    wait_until(lambda: len([record for records, _ in calls for record in records]) >= 10)
    time.sleep(1.5)  # the completion and notification writes reach the stream

    seen = [describe(record) for records, _ in calls for record in records]
    assert sorted(seen) == ["MODIFY header CREATING->SEALED"] + ["REMOVE C#"] * 8 + ["REMOVE P#"]
    assert poller.records_delivered == 10
    total = len(stream_records(stack))
    wait_until(lambda: poller.records_filtered + poller.records_delivered == total)
    assert poller.records_filtered >= 8 + 1 + 1  # chunk INSERTs, header INSERT, completion at least
    assert stack.invoker.invocations["finalize"] == len(calls)


@pytest.mark.parametrize("report_failures", [True, False], ids=["with-ReportBatchItemFailures", "without"])
def test_report_batch_item_failures_keeps_a_failed_items_message(start_stack, report_failures):
    overrides = {} if report_failures else {"process_work": {"FunctionResponseTypes": None}}
    # 10 chunks of 10; every chunk has an item that fails its first attempt (every 7th).
    stack = start_stack(count=100, items_per_message=10, task_name="flaky", event_source_overrides=overrides)
    header = stack.fire_schedule("nightly", SLOT)
    failing = [item for item in range(100) if item % 7 == 0]

    if report_failures:
        alert = stack.wait_for_alert(header["batch_id"], timeout=60)  # after the visibility timeout (5 s)
        assert alert["message"]["totals"]["items"] == 100
        assert {item: ATTEMPTS[item] for item in failing} == dict.fromkeys(failing, 2)
        assert stack.pollers["process_work"].failures_ignored == 0
        return

    sqs = stack.client("sqs")

    def queue_drained() -> bool:
        attributes = sqs.get_queue_attributes(
            QueueUrl=stack.resources.work_queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return len(ATTEMPTS) == 100 and set(attributes.values()) == {"0"}

    wait_until(queue_drained)  # nothing in flight: the failed items' messages were deleted, not hidden
    time.sleep(1.5)
    assert stack.pollers["process_work"].failures_ignored == 10
    assert stack.chunks_left(header["batch_id"], header["shards"]) == 10  # their items stay pending for good
    assert {item: ATTEMPTS[item] for item in failing} == dict.fromkeys(failing, 1)
    assert stack.header(header["batch_id"])["status"] == model.SEALED
    assert stack.alerts_for(header["batch_id"]) == []


def test_an_item_failing_all_its_attempts_reaches_the_alert_within_seconds_locally(start_stack):
    """Rule: locally a failing item reaches its final state in seconds. Its message comes back after
    RETRY_DELAY_SECONDS (2 s in the local stage, doubling: about 2 + 4 s for three attempts), set
    by the processor with the event record's receipt handle on the queue its eventSourceARN names.
    The queue's visibility timeout here is 30 s, so without that change the alert would take
    over 60 s; the bound is generous, for a busy machine."""
    stack = start_stack(count=100, items_per_message=10, task_name="poison", visibility_timeout=30)
    started = time.monotonic()
    header = stack.fire_schedule("nightly", SLOT)

    alert = stack.wait_for_alert(header["batch_id"], timeout=30)["message"]
    elapsed = time.monotonic() - started

    print(f"item 0 failed 3 attempts and the alert arrived {elapsed:.1f} s after the schedule fired")
    assert alert["status"] == model.COMPLETED_WITH_FAILURES
    assert alert["totals"] == {"items": 100, "succeeded": 99, "failed": 1}
    assert ATTEMPTS[0] == 3
    assert elapsed < 30


def test_the_planner_polls_the_planning_queue_one_segment_at_a_time_and_keeps_a_failed_one(start_stack, monkeypatch):
    """plan_segments is wired from its Chalice registration: its queue, batch size 1, ReportBatchItemFailures."""
    from chalicelib import planner

    events_seen: list[dict] = []
    lock = threading.Lock()

    def handle(event, settings, context):
        with lock:
            events_seen.append(event)
            first = len(events_seen) == 1
        # The first segment reports itself failed: it must come back, not be deleted.
        return {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}] if first else []}

    monkeypatch.setattr(planner, "handle_sqs_event", handle)
    stack = start_stack(count=100)
    poller = stack.pollers["plan_segments"]
    assert poller.queue_url == stack.resources.planning_queue_url
    assert poller.queue_arn.endswith(":batchdrain-local-planning")
    assert poller.batch_size == 1 and poller.settings.report_batch_item_failures  # infra/event-sources.json

    sqs = stack.client("sqs")
    for segment in range(2):
        sqs.send_message(QueueUrl=stack.resources.planning_queue_url, MessageBody=json.dumps({"segment": segment}))
    wait_until(lambda: len(events_seen) == 3, timeout=30)  # the failed one again after the 5 s visibility timeout

    records = [record for event in events_seen for record in event["Records"]]
    assert [len(event["Records"]) for event in events_seen] == [1, 1, 1]
    for record in records:
        assert shape(record) == shape(SQS_RECORD_SAMPLE)
        assert record["eventSourceARN"] == poller.queue_arn
    failed, retried = records[0], records[2]
    assert (retried["body"], retried["messageId"]) == (failed["body"], failed["messageId"])
    assert (failed["attributes"]["ApproximateReceiveCount"], retried["attributes"]["ApproximateReceiveCount"]) == ("1", "2")
    assert {records[0]["body"], records[1]["body"]} == {'{"segment": 0}', '{"segment": 1}'}

    def drained() -> bool:
        attributes = sqs.get_queue_attributes(
            QueueUrl=stack.resources.planning_queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return set(attributes.values()) == {"0"}

    wait_until(drained)  # both deleted once they succeeded
    assert poller.failures_ignored == 0


def test_the_apps_s3_client_reaches_the_stacks_moto_server(start_stack):
    """Object sources and results need no S3 resources in the stack: buckets are the user's, made by the caller."""
    from chalicelib import aws

    stack = start_stack(count=100)
    stack.client("s3").create_bucket(Bucket="local-source-bucket")
    stack.client("s3").put_object(Bucket="local-source-bucket", Key="exports/2026-11-23/items.jsonl", Body=b'{"id": 1}\n')

    s3 = aws.client("s3")  # as chalicelib builds it: AWS_ENDPOINT_URL from the stack's environment
    assert s3.meta.endpoint_url == stack.endpoint_url
    listed = s3.list_objects_v2(Bucket="local-source-bucket", Prefix="exports/")["Contents"]
    assert [entry["Key"] for entry in listed] == ["exports/2026-11-23/items.jsonl"]
    assert s3.get_object(Bucket="local-source-bucket", Key=listed[0]["Key"], Range="bytes=0-8")["Body"].read() == b'{"id": 1}'


def drain_then_release_finalizer(stack) -> tuple[dict, dict[str, str]]:
    """Run a batch with the finalizer paused until every chunk row is gone; the poison is chunk 0's REMOVE.

    The finalizer then gets the segment's REMOVE (on which it seals) and all 8 chunk
    REMOVEs in one stream batch, so what bisection does is the same on every run.
    """
    header = stack.fire_schedule("nightly", SLOT)
    wait_until(lambda: stack.chunks_left(header["batch_id"], header["shards"]) == 0)
    return header, model.chunk_key(header["batch_id"], 0, 0)


def failure_records(stack) -> list[dict]:
    messages = stack.client("sqs").receive_message(
        QueueUrl=stack.resources.stream_failures_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
    ).get("Messages", [])
    return [json.loads(message["Body"]) for message in messages]


def test_a_poison_record_is_bisected_out_and_reported_while_its_batch_completes(start_stack, monkeypatch):
    stack = start_stack(count=400, items_per_message=50, paused=frozenset({"finalize"}))  # 8 chunks, 2 shards
    header, poison = drain_then_release_finalizer(stack)
    calls = record_finalizer_events(monkeypatch, poison)
    poller = stack.pollers["finalize"]
    retries = stack.mapping_settings("finalize", "dynamodb").maximum_retry_attempts  # 8, from the file

    stack.resume("finalize")
    alert = stack.wait_for_alert(header["batch_id"], timeout=60)
    wait_until(lambda: poller.records_delivered + poller.records_given_up == 9)  # the seal and 8 REMOVEs

    assert alert["message"]["status"] == model.COMPLETED and alert["message"]["totals"]["items"] == 400
    sizes = [len(records) for records, succeeded in calls if not succeeded]
    assert sizes[0] == 9  # the seal and 8 REMOVEs
    halvings = sizes[: sizes.index(1)]
    assert all(after in (before // 2, (before + 1) // 2) for before, after in zip(halvings, halvings[1:] + [1]))
    assert sizes[len(halvings) :] == [1] * (1 + retries)  # then MaximumRetryAttempts retries alone
    assert poller.batches_bisected == len(halvings)
    delivered = sorted(record["dynamodb"]["SequenceNumber"] for records, ok in calls if ok for record in records)
    assert len(delivered) == len(set(delivered)) == 8  # everything but the poison, once

    [failure] = failure_records(stack)
    poison_record = next(records[0] for records, ok in calls if len(records) == 1 and not ok)
    sequence = poison_record["dynamodb"]["SequenceNumber"]
    assert set(failure) == {"requestContext", "responseContext", "version", "timestamp", "DDBStreamBatchInfo"}
    assert failure["version"] == "1.0" and failure["timestamp"].endswith("Z")
    assert failure["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert failure["requestContext"]["approximateInvokeCount"] == 1 + retries
    assert failure["requestContext"]["functionArn"].endswith(":function:finalize")
    assert failure["responseContext"]["functionError"] == "Unhandled"
    info = failure["DDBStreamBatchInfo"]
    assert (info["startSequenceNumber"], info["endSequenceNumber"], info["batchSize"]) == (sequence, sequence, 1)
    assert info["streamArn"] == stack.resources.table_stream_arn
    shards = stack.client("dynamodbstreams").describe_stream(StreamArn=info["streamArn"])["StreamDescription"]["Shards"]
    assert info["shardId"] in {shard["ShardId"] for shard in shards}
    assert set(info) >= {"approximateArrivalOfFirstRecord", "approximateArrivalOfLastRecord"}
    time.sleep(1.0)
    assert len(stack.alerts_for(header["batch_id"])) == 1


def test_without_bisection_one_poison_record_takes_its_whole_batch_and_the_seal_with_it(start_stack, monkeypatch):
    stack = start_stack(
        count=400,
        items_per_message=50,
        paused=frozenset({"finalize"}),
        event_source_overrides={"finalize": {"BisectBatchOnFunctionError": None, "MaximumRetryAttempts": 1}},
    )
    header, poison = drain_then_release_finalizer(stack)
    calls = record_finalizer_events(monkeypatch, poison)
    poller = stack.pollers["finalize"]

    stack.resume("finalize")
    wait_until(lambda: poller.batches_given_up == 1)
    time.sleep(1.5)

    assert [len(records) for records, _ in calls] == [9, 9]
    [failure] = failure_records(stack)
    assert failure["DDBStreamBatchInfo"]["batchSize"] == 9
    assert failure["requestContext"]["approximateInvokeCount"] == 2
    # The segment's REMOVE went down with its batch, so nothing sealed it: only the sweeper can end it now.
    assert stack.header(header["batch_id"])["status"] == model.CREATING
    assert stack.alerts_for(header["batch_id"]) == []
