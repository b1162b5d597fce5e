"""The local stack's events have the shapes AWS sends (the Lambda developer guide's samples).

Shapes, not values: the same keys at every level and the same JSON types, so a handler
that works locally reads the same fields in AWS. Item images are compared only as typed
attribute maps, since their contents are the table's own.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

# Documented samples, trimmed to one record each.
SCHEDULED_EVENT_SAMPLE = {
    "version": "0",
    "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
    "detail-type": "Scheduled Event",
    "source": "aws.events",
    "account": "123456789012",
    "time": "2015-10-08T16:53:06Z",
    "region": "us-east-1",
    "resources": ["arn:aws:events:us-east-1:123456789012:rule/my-scheduled-rule"],
    "detail": {},
}
SQS_RECORD_SAMPLE = {
    "messageId": "059f36b4-87a3-44ab-83d2-661975830a7d",
    "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a...",
    "body": "Test message.",
    "attributes": {
        "ApproximateReceiveCount": "1",
        "SentTimestamp": "1545082649183",
        "SenderId": "AIDAIENQZJOLO23YVJ4VO",
        "ApproximateFirstReceiveTimestamp": "1545082649185",
    },
    "messageAttributes": {},
    "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
    "eventSource": "aws:sqs",
    "eventSourceARN": "arn:aws:sqs:us-east-2:123456789012:my-queue",
    "awsRegion": "us-east-2",
}
STREAM_RECORD_SAMPLES = {
    "MODIFY": {
        "eventID": "c81e728d9d4c2f636f067f89cc14862c",
        "eventName": "MODIFY",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {
            "ApproximateCreationDateTime": 1480642020,
            "Keys": {"Id": {"N": "101"}},
            "NewImage": {"Message": {"S": "This item has changed"}, "Id": {"N": "101"}},
            "OldImage": {"Message": {"S": "New item!"}, "Id": {"N": "101"}},
            "SequenceNumber": "222",
            "SizeBytes": 59,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/ExampleTable/stream/2015-06-27T00:48:05.899",
    },
    "REMOVE": {
        "eventID": "eccbc87e4b5ce2fe28308fd9f2a7baf3",
        "eventName": "REMOVE",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {
            "ApproximateCreationDateTime": 1480642020,
            "Keys": {"Id": {"N": "101"}},
            "OldImage": {"Message": {"S": "This item has changed"}, "Id": {"N": "101"}},
            "SequenceNumber": "333",
            "SizeBytes": 38,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/ExampleTable/stream/2015-06-27T00:48:05.899",
    },
}
TTL_USER_IDENTITY_SAMPLE = {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
_IMAGES = {"Keys", "NewImage", "OldImage"}


def shape(value: Any, key: str = "") -> Any:
    """Keys and JSON types, recursively; attribute maps reduce to 'typed attribute map'."""
    if key in _IMAGES:
        assert all(isinstance(attribute, dict) and len(attribute) == 1 for attribute in value.values())
        return "typed attribute map"
    if isinstance(value, dict):
        return {name: shape(member, name) for name, member in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if isinstance(value, bool) or value is None:
        return type(value).__name__
    return "number" if isinstance(value, (int, float)) else type(value).__name__


def test_scheduled_event_has_eventbridge_shape(start_stack):
    stack = start_stack(count=100)
    stack.fire_schedule("nightly", datetime(2026, 11, 23, 6, 0, tzinfo=timezone.utc))

    event = stack.invoker.last_events["batch_nightly"]
    assert shape(event) == shape(SCHEDULED_EVENT_SAMPLE)
    assert event["time"] == "2026-11-23T06:00:00Z"


def test_sqs_and_stream_events_have_lambda_shapes(start_stack):
    stack = start_stack(count=100, items_per_message=50)
    batch_id = stack.fire_schedule("nightly")["batch_id"]
    stack.wait_for_alert(batch_id, timeout=60)

    sqs_event = stack.invoker.last_events["process_work"]
    assert set(sqs_event) == {"Records"}
    for record in sqs_event["Records"]:
        assert shape(record) == shape(SQS_RECORD_SAMPLE)
        assert record["eventSourceARN"] == stack.resources.work_queue_arn

    stream_event = stack.invoker.last_events["finalize"]
    assert set(stream_event) == {"Records"}
    for record in stream_event["Records"]:
        sample = STREAM_RECORD_SAMPLES.get(record["eventName"])
        if sample is None:  # INSERT: the MODIFY sample without OldImage
            sample = {**STREAM_RECORD_SAMPLES["MODIFY"], "dynamodb": {
                key: value for key, value in STREAM_RECORD_SAMPLES["MODIFY"]["dynamodb"].items() if key != "OldImage"
            }}
        assert shape(record) == shape(sample)
        assert record["eventSourceARN"] == stack.resources.table_stream_arn


def test_ttl_remove_record_carries_the_service_identity():
    from batchdrain_local import events

    record = events.ttl_remove_record({"pk": {"S": "B#x#0"}, "sk": {"S": "C#00000000"}}, {"pk": {"S": "B#x#0"}}, "arn", "us-east-1")

    assert record["userIdentity"] == TTL_USER_IDENTITY_SAMPLE
    assert shape({key: value for key, value in record.items() if key != "userIdentity"}) == shape(STREAM_RECORD_SAMPLES["REMOVE"])
