"""The AWS resources the app needs, created on the local stack's moto server.

Mirrors what infra/ declares for AWS: a table with a NEW_AND_OLD_IMAGES stream, a TTL
attribute and the sparse "open-batches" index the sweeper queries; a work queue and a
planning queue, each with a redrive policy to the dead-letter queue the stage names
(DEAD_LETTER_QUEUE_NAME); the alert topic; and, local only, a queue subscribed to the
topic so alerts can be read back, and the stream mapping's on-failure destination queue.

No bucket: object sources and results name the user's buckets, which a caller creates
on the same moto server (the app's S3 client follows AWS_ENDPOINT_URL like the others).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from chalicelib.model import HISTORY_FIELDS, HISTORY_INDEX
from chalicelib.model import OPEN_INDEX as OPEN_BATCHES_INDEX  # the name the store queries



@dataclass(frozen=True)
class Resources:
    table_name: str
    table_stream_arn: str
    work_queue_name: str
    work_queue_url: str
    work_queue_arn: str
    dead_letter_queue_name: str
    dead_letter_queue_url: str
    dead_letter_queue_arn: str
    planning_queue_url: str
    alert_topic_arn: str
    alert_inbox_url: str
    # Where the stream mapping sends the on-failure record of a batch it gave up on.
    stream_failures_url: str
    stream_failures_arn: str


def create_resources(
    clients: Any,
    table_name: str,
    work_queue_name: str,
    *,
    dead_letter_queue_name: str,
    planning_queue_name: str,
    visibility_timeout: int,
    max_receive_count: int,
) -> Resources:
    """Create every resource (idempotent names); `clients(service)` returns a boto3 client."""
    dynamodb, sqs, sns = clients("dynamodb"), clients("sqs"), clients("sns")
    table = dynamodb.create_table(
        TableName=table_name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
            {"AttributeName": "open_pk", "AttributeType": "S"},
            {"AttributeName": "open_sk", "AttributeType": "S"},
            {"AttributeName": "history_pk", "AttributeType": "S"},
            {"AttributeName": "history_sk", "AttributeType": "S"},
        ],
        # Sparse: only open batch headers carry open_pk/open_sk, so the sweeper reads few items.
        GlobalSecondaryIndexes=[
            {
                "IndexName": OPEN_BATCHES_INDEX,
                "KeySchema": [
                    {"AttributeName": "open_pk", "KeyType": "HASH"},
                    {"AttributeName": "open_sk", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            },
            {
                "IndexName": HISTORY_INDEX,
                "KeySchema": [
                    {"AttributeName": "history_pk", "KeyType": "HASH"},
                    {"AttributeName": "history_sk", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": list(HISTORY_FIELDS)},
            },
        ],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )["TableDescription"]
    dynamodb.update_time_to_live(
        TableName=table_name, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
    )

    dead_letter_url = sqs.create_queue(QueueName=dead_letter_queue_name)["QueueUrl"]
    dead_letter_arn = _queue_arn(sqs, dead_letter_url)
    work_url = sqs.create_queue(
        QueueName=work_queue_name,
        Attributes={
            "VisibilityTimeout": str(visibility_timeout),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": max_receive_count}),
        },
    )["QueueUrl"]
    # Segments of object sources; a planning message that keeps failing goes to the dead-letter
    # queue, whose handler keeps it as a POISON row, and the sweeper re-sends the segment.
    planning_url = sqs.create_queue(
        QueueName=planning_queue_name,
        Attributes={
            "VisibilityTimeout": str(visibility_timeout),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": max_receive_count}),
        },
    )["QueueUrl"]
    stream_failures_url = sqs.create_queue(QueueName=f"{table_name}-stream-failures")["QueueUrl"]

    topic_arn = sns.create_topic(Name=f"{table_name}-alerts")["TopicArn"]
    inbox_url = sqs.create_queue(QueueName=f"{table_name}-alerts-inbox")["QueueUrl"]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=_queue_arn(sqs, inbox_url))
    return Resources(
        table_name=table_name,
        table_stream_arn=table["LatestStreamArn"],
        work_queue_name=work_queue_name,
        work_queue_url=work_url,
        work_queue_arn=_queue_arn(sqs, work_url),
        dead_letter_queue_name=dead_letter_queue_name,
        dead_letter_queue_url=dead_letter_url,
        dead_letter_queue_arn=dead_letter_arn,
        planning_queue_url=planning_url,
        alert_topic_arn=topic_arn,
        alert_inbox_url=inbox_url,
        stream_failures_url=stream_failures_url,
        stream_failures_arn=_queue_arn(sqs, stream_failures_url),
    )


def _queue_arn(sqs: Any, url: str) -> str:
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
