"""Lambda event payloads in the shapes AWS sends them (pinned by tests/unit/test_event_shapes.py).

References: the AWS Lambda developer guide's sample events for EventBridge scheduled
events, SQS, DynamoDB Streams and SNS.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any, Mapping


def scheduled_event(time: datetime, rule_arn: str, account: str, region: str) -> dict[str, Any]:
    """An EventBridge scheduled event; `time` is the slot the rule fired for (seconds are 0)."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": account,
        "time": time.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [rule_arn],
        "detail": {},
    }


def sqs_record(message: Mapping[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """One SQS event record from a ReceiveMessage result (AttributeNames=All)."""
    attributes = message.get("Attributes", {})
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": {
            "ApproximateReceiveCount": attributes.get("ApproximateReceiveCount", "1"),
            "SentTimestamp": attributes.get("SentTimestamp", "0"),
            "SenderId": attributes.get("SenderId", ""),
            "ApproximateFirstReceiveTimestamp": attributes.get("ApproximateFirstReceiveTimestamp", "0"),
        },
        "messageAttributes": message.get("MessageAttributes", {}),
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


def sqs_event(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Records": records}


def stream_record(record: Mapping[str, Any], stream_arn: str, region: str) -> dict[str, Any]:
    """One DynamoDB Streams event record from a GetRecords result.

    GetRecords (via boto3) gives ApproximateCreationDateTime as a datetime; Lambda sends
    epoch seconds. userIdentity appears only on TTL deletes.
    """
    change = dict(record["dynamodb"])
    created = change.get("ApproximateCreationDateTime")
    if isinstance(created, datetime):
        change["ApproximateCreationDateTime"] = int(created.timestamp())
    event = {
        "eventID": record["eventID"],
        "eventName": record["eventName"],
        "eventVersion": record.get("eventVersion", "1.1"),
        "eventSource": "aws:dynamodb",
        "awsRegion": record.get("awsRegion", region),
        "dynamodb": change,
        "eventSourceARN": stream_arn,
    }
    if record.get("userIdentity"):
        event["userIdentity"] = dict(record["userIdentity"])
    return event


def ttl_remove_record(keys: Mapping[str, Any], old_image: Mapping[str, Any], stream_arn: str, region: str) -> dict[str, Any]:
    """The REMOVE record DynamoDB writes when TTL expires an item (moto never expires items)."""
    return {
        "eventID": uuid.uuid4().hex,
        "eventName": "REMOVE",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": region,
        "dynamodb": {
            "ApproximateCreationDateTime": int(datetime.now(timezone.utc).timestamp()),
            "Keys": dict(keys),
            "OldImage": dict(old_image),
            "SequenceNumber": str(uuid.uuid4().int)[:21],
            "SizeBytes": 100,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
        "userIdentity": {"type": "Service", "principalId": "dynamodb.amazonaws.com"},
        "eventSourceARN": stream_arn,
    }


def stream_event(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Records": records}


def stream_failure_record(
    records: list[dict[str, Any]],
    *,
    shard_id: str,
    stream_arn: str,
    function_arn: str,
    invoke_count: int,
    now: datetime | None = None,
) -> dict[str, Any]:
    """What Lambda sends to a stream mapping's on-failure destination when it gives up on a batch.

    The shape of the AWS Lambda guide's example invocation record for DynamoDB Streams
    ("Retain discarded batch records"): metadata only, never the records themselves, so a
    reader must fetch them from the stream by sequence number before they expire (24 h).
    `records` are the Lambda-shaped records of the batch given up, in stream order.
    """
    first, last = records[0]["dynamodb"], records[-1]["dynamodb"]
    return {
        "requestContext": {
            "requestId": str(uuid.uuid4()),
            "functionArn": function_arn,
            "condition": "RetryAttemptsExhausted",
            "approximateInvokeCount": invoke_count,
        },
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "version": "1.0",
        "timestamp": _iso_millis(now or datetime.now(timezone.utc)),
        "DDBStreamBatchInfo": {
            "shardId": shard_id,
            "startSequenceNumber": first["SequenceNumber"],
            "endSequenceNumber": last["SequenceNumber"],
            "approximateArrivalOfFirstRecord": _iso_seconds(first.get("ApproximateCreationDateTime")),
            "approximateArrivalOfLastRecord": _iso_seconds(last.get("ApproximateCreationDateTime")),
            "batchSize": len(records),
            "streamArn": stream_arn,
        },
    }


def _iso_millis(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _iso_seconds(epoch_seconds: Any) -> str:
    moment = datetime.fromtimestamp(float(epoch_seconds), timezone.utc) if epoch_seconds is not None else datetime.now(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def sns_envelope_to_alert(body: str) -> dict[str, Any]:
    """Unwrap an SNS notification as delivered to an SQS subscription (raw delivery off)."""
    import json

    envelope = json.loads(body)
    return {
        "subject": envelope.get("Subject"),
        "message": json.loads(envelope["Message"]),
        "attributes": {name: value.get("Value") for name, value in (envelope.get("MessageAttributes") or {}).items()},
        "sns_message_id": envelope.get("MessageId"),
    }
