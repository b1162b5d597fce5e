"""The local stack's own promises: Lambda's partial-batch rules, DynamoDB's write atomicity."""

from __future__ import annotations

import threading

import pytest
from botocore.exceptions import ClientError

from batchdrain_local.pollers import failed_message_ids
from batchdrain_local.stack import stage_environment

IDS = ["m1", "m2", "m3"]


@pytest.mark.parametrize(
    ("response", "failed"),
    [
        (None, set()),
        ({}, set()),
        ({"batchItemFailures": []}, set()),
        ({"batchItemFailures": None}, set()),
        ({"batchItemFailures": [{"itemIdentifier": "m2"}]}, {"m2"}),
        ({"batchItemFailures": [{"itemIdentifier": "nope"}]}, set(IDS)),  # unknown id: whole batch fails
        ({"batchItemFailures": [{"itemIdentifier": ""}]}, set(IDS)),
        ({"batchItemFailures": [{"wrongKey": "m1"}]}, set(IDS)),
        ("not a dict", set(IDS)),
    ],
)
def test_partial_batch_responses_are_read_as_lambda_reads_them(response, failed):
    assert failed_message_ids(response, IDS) == failed


def test_stage_environment_is_top_level_then_stage():
    local = stage_environment("local")
    assert local["TABLE_NAME"] == "batchdrain-local"
    assert local["PROCESSOR_BATCH_SIZE"] == "2"
    with pytest.raises(ValueError, match="no stage 'nope'"):
        stage_environment("nope")


def test_conditional_writes_have_exactly_one_winner_under_concurrency(start_stack):
    """DynamoDB applies writes to an item one at a time; moto needs the stack's lock for that."""
    stack = start_stack(count=100)
    table, clients = stack.resources.table_name, [stack.client("dynamodb") for _ in range(8)]
    winners_per_trial = []
    for trial in range(60):
        key = {"pk": {"S": f"race-{trial}"}, "sk": {"S": "META"}}
        clients[0].put_item(TableName=table, Item={**key, "status": {"S": "SEALED"}})
        wins, start = [], threading.Barrier(len(clients))

        def complete(client, key=key, wins=wins, start=start):
            start.wait()
            try:
                client.update_item(
                    TableName=table,
                    Key=key,
                    UpdateExpression="SET #s = :done",
                    ConditionExpression="#s = :sealed",
                    ExpressionAttributeNames={"#s": "status"},
                    ExpressionAttributeValues={":done": {"S": "COMPLETED"}, ":sealed": {"S": "SEALED"}},
                )
                wins.append(client)
            except ClientError:
                pass

        threads = [threading.Thread(target=complete, args=(client,)) for client in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners_per_trial.append(len(wins))
    assert set(winners_per_trial) == {1}


# -- moto's SQS, made thread-safe and O(1) per send (batchdrain_local/server.py) ------------------


@pytest.fixture
def sqs_server():
    """A bare moto server with the stack's patches, and a client of it."""
    import boto3

    from batchdrain_local.server import CLIENT_ENVIRONMENT, MotoServer

    server = MotoServer()
    endpoint = server.start()
    credentials = {key: CLIENT_ENVIRONMENT[name] for key, name in (("aws_access_key_id", "AWS_ACCESS_KEY_ID"), ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY"))}
    yield boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1", **credentials)
    server.stop()


def test_queue_counts_stay_exact_though_sends_no_longer_compute_them(sqs_server):
    url = sqs_server.create_queue(QueueName="counts")["QueueUrl"]
    sqs_server.send_message_batch(QueueUrl=url, Entries=[{"Id": str(n), "MessageBody": "x"} for n in range(7)])
    sqs_server.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=60)
    sqs_server.receive_message(QueueUrl=url, MaxNumberOfMessages=3, VisibilityTimeout=60)

    counts = sqs_server.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]

    assert (counts["ApproximateNumberOfMessages"], counts["ApproximateNumberOfMessagesNotVisible"]) == ("4", "3")
    assert counts["ApproximateNumberOfMessagesDelayed"] == "1"


def test_a_send_does_not_read_every_queued_message(sqs_server, monkeypatch):
    """moto computed the queue's message counts on every send: O(queue depth) per message."""
    from moto.sqs.models import Message

    url = sqs_server.create_queue(QueueName="deep")["QueueUrl"]
    for start in range(0, 200, 10):
        sqs_server.send_message_batch(QueueUrl=url, Entries=[{"Id": str(n), "MessageBody": "x"} for n in range(10)])
    reads = []
    visible = Message.visible
    monkeypatch.setattr(Message, "visible", property(lambda message: reads.append(1) or visible.fget(message)))

    sqs_server.send_message_batch(QueueUrl=url, Entries=[{"Id": str(n), "MessageBody": "x"} for n in range(10)])

    assert reads == []


def test_concurrent_receives_dead_letter_each_message_once_without_errors(sqs_server):
    """Unpatched, racing receives that both move a message to the DLQ fail with a 500 and may move it twice."""
    dlq = sqs_server.create_queue(QueueName="dead")["QueueUrl"]
    dlq_arn = sqs_server.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    policy = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 1}
    url = sqs_server.create_queue(QueueName="work", Attributes={"RedrivePolicy": __import__("json").dumps(policy), "VisibilityTimeout": "0"})["QueueUrl"]
    for start in range(0, 300, 10):
        sqs_server.send_message_batch(QueueUrl=url, Entries=[{"Id": str(n), "MessageBody": str(start + n)} for n in range(10)])
    errors, start = [], threading.Barrier(8)

    def receive_until_empty():
        start.wait()
        for _ in range(30):
            try:
                sqs_server.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
            except ClientError as error:
                errors.append(error)

    threads = [threading.Thread(target=receive_until_empty) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    dead = []
    while batch := sqs_server.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10, VisibilityTimeout=60).get("Messages"):
        dead += [message["Body"] for message in batch]

    assert errors == []
    assert sorted(dead, key=int) == [str(n) for n in range(300)]


@pytest.fixture
def dynamodb_server():
    """A bare moto server with the stack's patches: DynamoDB and DynamoDB Streams clients of it."""
    import boto3

    from batchdrain_local.server import CLIENT_ENVIRONMENT, MotoServer

    server = MotoServer()
    endpoint = server.start()
    session = boto3.session.Session(
        aws_access_key_id=CLIENT_ENVIRONMENT["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CLIENT_ENVIRONMENT["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    yield session.client("dynamodb", endpoint_url=endpoint), session.client("dynamodbstreams", endpoint_url=endpoint)
    server.stop()


def _table_with_a_stream(dynamodb, name: str, range_key: bool = False) -> str:
    keys = [("pk", "HASH")] + ([("sk", "RANGE")] if range_key else [])
    return dynamodb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": attribute, "KeyType": kind} for attribute, kind in keys],
        AttributeDefinitions=[{"AttributeName": attribute, "AttributeType": "S"} for attribute, _ in keys],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )["TableDescription"]["LatestStreamArn"]


def test_a_cancelled_transaction_leaves_the_stream_readable_and_without_its_undone_writes(dynamodb_server):
    """Unpatched, moto swaps in a pre-transaction copy of the table: readers' iterators go stale."""
    dynamodb, streams = dynamodb_server
    stream_arn = _table_with_a_stream(dynamodb, "t")
    shard_id = streams.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = streams.get_shard_iterator(StreamArn=stream_arn, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    dynamodb.put_item(TableName="t", Item={"pk": {"S": "before"}})
    page = streams.get_records(ShardIterator=iterator)
    with pytest.raises(ClientError, match="TransactionCanceled"):
        dynamodb.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": "t", "Item": {"pk": {"S": "undone"}}}},
                {"Delete": {"TableName": "t", "Key": {"pk": {"S": "absent"}}, "ConditionExpression": "attribute_exists(pk)"}},
            ]
        )
    dynamodb.put_item(TableName="t", Item={"pk": {"S": "after"}})

    later = streams.get_records(ShardIterator=page["NextShardIterator"])["Records"]

    assert [record["dynamodb"]["Keys"]["pk"]["S"] for record in page["Records"]] == ["before"]
    assert [record["dynamodb"]["Keys"]["pk"]["S"] for record in later] == ["after"]


def test_a_cancelled_transaction_puts_back_every_item_it_wrote_as_it_was(dynamodb_server):
    dynamodb, _ = dynamodb_server
    _table_with_a_stream(dynamodb, "r", range_key=True)
    for sk in ("updated", "deleted", "untouched"):
        dynamodb.put_item(TableName="r", Item={"pk": {"S": "p"}, "sk": {"S": sk}, "n": {"N": "1"}})
    before = dynamodb.scan(TableName="r", ConsistentRead=True)["Items"]

    with pytest.raises(ClientError, match="TransactionCanceled"):
        dynamodb.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": "r", "Item": {"pk": {"S": "p"}, "sk": {"S": "new"}}}},
                {"Put": {"TableName": "r", "Item": {"pk": {"S": "q"}, "sk": {"S": "new"}}}},
                {"Update": {"TableName": "r", "Key": {"pk": {"S": "p"}, "sk": {"S": "updated"}},
                            "UpdateExpression": "ADD n :one", "ExpressionAttributeValues": {":one": {"N": "1"}}}},
                {"Delete": {"TableName": "r", "Key": {"pk": {"S": "p"}, "sk": {"S": "deleted"}}}},
                {"ConditionCheck": {"TableName": "r", "Key": {"pk": {"S": "p"}, "sk": {"S": "absent"}},
                                    "ConditionExpression": "attribute_exists(pk)"}},
            ]
        )

    assert dynamodb.scan(TableName="r", ConsistentRead=True)["Items"] == before


def test_a_transaction_copies_the_items_it_names_not_the_whole_table(dynamodb_server, monkeypatch):
    """moto deep-copied every table a transaction touched: O(table) per transaction, quadratic over a run."""
    from moto.dynamodb.models.dynamo_type import Item

    dynamodb, _ = dynamodb_server
    _table_with_a_stream(dynamodb, "big")
    for n in range(300):
        dynamodb.put_item(TableName="big", Item={"pk": {"S": f"item-{n}"}})
    copies = []
    item_copy = Item.__deepcopy__
    monkeypatch.setattr(Item, "__deepcopy__", lambda item, memo: copies.append(1) or item_copy(item, memo))

    dynamodb.transact_write_items(
        TransactItems=[
            {"Delete": {"TableName": "big", "Key": {"pk": {"S": "item-1"}}}},
            {"Put": {"TableName": "big", "Item": {"pk": {"S": "item-300"}}}},
        ]
    )

    assert len(copies) <= 2
    assert dynamodb.describe_table(TableName="big")["Table"]["ItemCount"] == 300


def test_a_backup_is_still_a_copy_of_the_table_as_it_was(dynamodb_server):
    """Only a transaction's snapshot skips the table copy; CreateBackup keeps moto's whole copy."""
    dynamodb, _ = dynamodb_server
    _table_with_a_stream(dynamodb, "kept")
    dynamodb.put_item(TableName="kept", Item={"pk": {"S": "before"}})
    backup_arn = dynamodb.create_backup(TableName="kept", BackupName="before-after")["BackupDetails"]["BackupArn"]
    dynamodb.put_item(TableName="kept", Item={"pk": {"S": "after"}})

    dynamodb.restore_table_from_backup(TargetTableName="restored", BackupArn=backup_arn)

    assert [item["pk"]["S"] for item in dynamodb.scan(TableName="restored")["Items"]] == ["before"]


def test_moto_keeps_no_record_of_every_item_it_ever_made(sqs_server):
    """moto appends every model instance (and every copy) to a list for its dashboard: memory without bound."""
    from moto.sqs.models import Message

    url = sqs_server.create_queue(QueueName="tracked")["QueueUrl"]
    sqs_server.send_message_batch(QueueUrl=url, Entries=[{"Id": str(n), "MessageBody": "x"} for n in range(10)])
    sqs_server.receive_message(QueueUrl=url, MaxNumberOfMessages=10)

    assert Message.instances_tracked == []
