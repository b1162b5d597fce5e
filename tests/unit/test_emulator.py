"""batchdrain_local/emulator.py keeps moto's behaviour: the same randomized calls, stock and fixed, same answers.

Each differential test runs one seeded sequence of calls twice in-process (`mock_aws`),
once on moto as it ships and once with the fixes, and compares every response (or
error). moto's own randomness (message ids, receipt handles, event ids) is seeded, and
SQS reads a fake clock, so both runs see the same ids and times. The cost tests count
the items a Query touches: constant in the table's size with the fixes, all of them
without.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.moto_api._internal import mock_random

from batchdrain_local import emulator

REGION = "us-east-1"
STREAMS_ENDPOINT = f"https://streams.dynamodb.{REGION}.amazonaws.com"  # a host moto intercepts
SORT_KEY_CHARACTERS = "AB ab~é\U0001f600"


@contextmanager
def moto_with_fixes(on: bool) -> Iterator[None]:
    """moto with or without the fixes inside the block, as it was after (a local stack may have installed them)."""
    if not on:
        undo = emulator.without_fixes()
    elif emulator.installed():
        undo = lambda: None  # noqa: E731
    else:
        undo = emulator.install()
    try:
        yield
    finally:
        undo()


class FakeClock:
    """SQS's clock (visibility, delays, timestamps), moved by the test only."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def seconds(self, dt: Any = None) -> float:
        return self.now

    def millis(self, dt: Any = None) -> float:
        return self.now * 1000.0


def outcome(call: Callable[[], dict[str, Any]]) -> Any:
    """A response without its metadata, or the error's kind and code."""
    try:
        response = call()
    except ClientError as error:
        return ("error", error.response["Error"]["Code"])
    except Exception as error:  # moto's own failures (a KeyError for an unknown shard iterator, say)
        return ("error", type(error).__name__)
    response.pop("ResponseMetadata", None)
    return response


def run_both(sequence: Callable[[random.Random, "Calls"], None], seed: int, monkeypatch: pytest.MonkeyPatch) -> tuple["Calls", "Calls"]:
    """The calls of one seeded sequence, on stock moto and on moto with the fixes."""
    runs = []
    for fixed in (False, True):
        clock = FakeClock()
        from moto.sqs import models as sqs_models

        monkeypatch.setattr(sqs_models, "unix_time", clock.seconds)
        monkeypatch.setattr(sqs_models, "unix_time_millis", clock.millis)
        with moto_with_fixes(fixed), mock_aws():
            mock_random.seed(seed)
            calls = Calls(clock)
            sequence(random.Random(seed), calls)
            runs.append(calls)
    return runs[0], runs[1]


def assert_same(stock: "Calls", fixed: "Calls") -> None:
    assert len(stock.log) == len(fixed.log)
    for at, (expected, got) in enumerate(zip(stock.log, fixed.log)):
        assert got == expected, f"call {at}: {expected[0]}"


class Calls:
    """Clients, and a log of (what was called, what came back)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.dynamodb = boto3.client("dynamodb", region_name=REGION)
        self.streams = boto3.client("dynamodbstreams", region_name=REGION, endpoint_url=STREAMS_ENDPOINT)
        self.sqs = boto3.client("sqs", region_name=REGION)
        self.log: list[tuple[str, Any]] = []
        self.queries: list[tuple[dict[str, Any], Any]] = []  # (request, answer) of every Query

    def call(self, what: str, function: Callable[[], dict[str, Any]]) -> Any:
        answer = outcome(function)
        self.log.append((what, answer))
        return answer


# -- DynamoDB: Query ---------------------------------------------------------------------


def sort_key(rng: random.Random, numeric: bool) -> dict[str, str]:
    if numeric:
        return {"N": rng.choice(["-3", "0", "1", "1.0", "2.5", "10", "1e1", "99", str(rng.randint(-20, 120))])}
    return {"S": "".join(rng.choice(SORT_KEY_CHARACTERS) for _ in range(rng.randint(1, 3)))}


def item(rng: random.Random, table: str, numeric: bool) -> dict[str, Any]:
    body = {"pk": {"S": rng.choice("abc")}, "x": {"N": str(rng.randint(0, 9))}}
    if table != "h":
        body["sk"] = sort_key(rng, numeric)
    # Partition c holds the large items, so its pages end at 1 MB.
    size = rng.choice([150_000, 250_000, 390_000]) if body["pk"]["S"] == "c" else rng.choice([5, 5, 2_000])
    body["blob"] = {"S": "z" * size}
    if rng.random() < 0.5:
        body["g"] = {"S": rng.choice("gh")}
    if rng.random() < 0.3:
        body["tags"] = {"SS": rng.sample(["p", "q", "r", "s"], rng.randint(1, 3))}
    if rng.random() < 0.3:  # every kind of attribute value, as responses carry them
        body |= {"bin": {"B": bytes(rng.sample(range(256), 3))}, "bins": {"BS": [b"\x00", b"\xff\x01"]},
                 "flag": {"BOOL": rng.random() < 0.5}, "nothing": {"NULL": True}, "nums": {"NS": ["1", "2.5"]},
                 "doc": {"M": {"a": {"L": [{"S": "x"}, {"N": "1"}, {"B": b"\x02"}, {"NULL": True}, {"M": {}}, {"SS": ["y"]}]},
                               "e": {"S": ""}}}}
    return body


def key_condition(rng: random.Random, numeric: bool) -> tuple[str, dict[str, Any]]:
    values: dict[str, Any] = {":pk": {"S": rng.choice("abcd")}}
    form = rng.choice(["", "=", "<", "<=", ">", ">=", "between", "begins_with"] if not numeric else ["", "=", "<", "<=", ">", ">=", "between"])
    if not form:
        return "pk = :pk", values
    values[":a"] = sort_key(rng, numeric)
    if form == "between":
        values[":b"] = sort_key(rng, numeric)
        return "pk = :pk AND sk BETWEEN :a AND :b", values
    if form == "begins_with":
        values[":a"] = {"S": "".join(rng.choice(SORT_KEY_CHARACTERS) for _ in range(rng.randint(0, 2))) or "A"}
        return "pk = :pk AND begins_with(sk, :a)", values
    return f"pk = :pk AND sk {form} :a", values


def query(rng: random.Random, calls: Calls, table: str, numeric: bool) -> None:
    """One Query, paged to its end through LastEvaluatedKey (or from an arbitrary start key)."""
    request: dict[str, Any] = {"TableName": table, "ConsistentRead": rng.random() < 0.5}
    if table == "h":
        request["KeyConditionExpression"] = "pk = :pk"
        request["ExpressionAttributeValues"] = {":pk": {"S": rng.choice("abcd")}}
    elif rng.random() < 0.1:
        request["IndexName"] = "by-g"
        request["KeyConditionExpression"] = "g = :g"
        request["ExpressionAttributeValues"] = {":g": {"S": rng.choice("gh")}}
        request.pop("ConsistentRead")
    elif rng.random() < 0.1:
        request["KeyConditions"] = {"pk": {"ComparisonOperator": "EQ", "AttributeValueList": [{"S": rng.choice("abc")}]},
                                    "sk": {"ComparisonOperator": rng.choice(["GT", "LE", "BEGINS_WITH"]) if not numeric else "GT",
                                           "AttributeValueList": [sort_key(rng, numeric)]}}
    else:
        request["KeyConditionExpression"], request["ExpressionAttributeValues"] = key_condition(rng, numeric)
    if rng.random() < 0.6:
        request["Limit"] = rng.choice([1, 1, 2, 3, 7])
    if rng.random() < 0.4:
        request["ScanIndexForward"] = False
    if rng.random() < 0.2 and "KeyConditions" not in request:
        request["FilterExpression"] = "x > :x"
        request["ExpressionAttributeValues"][":x"] = {"N": str(rng.randint(0, 9))}
    if rng.random() < 0.2:
        request["ProjectionExpression"] = "pk, x"
    elif rng.random() < 0.15:
        request["Select"] = "COUNT"
    if rng.random() < 0.15 and table != "h":
        start = {"pk": {"S": rng.choice("abcd")}, "sk": sort_key(rng, numeric)}
        if "IndexName" in request:
            start["g"] = {"S": rng.choice("gh")}
        request["ExclusiveStartKey"] = start
    for _ in range(40):
        answer = calls.call(f"query {request}", lambda: calls.dynamodb.query(**request))
        calls.queries.append((dict(request), answer))
        if not isinstance(answer, dict) or "LastEvaluatedKey" not in answer:
            return
        request["ExclusiveStartKey"] = answer["LastEvaluatedKey"]


def dynamodb_sequence(rng: random.Random, calls: Calls) -> None:
    ddb = calls.dynamodb
    numeric = rng.random() < 0.35
    key_type = "N" if numeric else "S"
    ddb.create_table(
        TableName="r",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": key_type},
                              {"AttributeName": "g", "AttributeType": "S"}],
        GlobalSecondaryIndexes=[{"IndexName": "by-g", "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
                                 "Projection": {"ProjectionType": "ALL"}}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    ddb.create_table(TableName="h", KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
    for _ in range(140):
        table = "h" if rng.random() < 0.15 else "r"
        roll = rng.random()
        if roll < 0.35:
            body = item(rng, table, numeric)
            calls.call(f"put {table}", lambda: ddb.put_item(TableName=table, Item=body))
        elif roll < 0.5:
            key = {"pk": {"S": rng.choice("abc")}} | ({} if table == "h" else {"sk": sort_key(rng, numeric)})
            calls.call(f"delete {table} {key}", lambda: ddb.delete_item(TableName=table, Key=key, ReturnValues="ALL_OLD"))
        elif roll < 0.58:
            key = {"pk": {"S": rng.choice("abc")}} | ({} if table == "h" else {"sk": sort_key(rng, numeric)})
            calls.call(f"update {table} {key}", lambda: ddb.update_item(
                TableName=table, Key=key, UpdateExpression="ADD x :one DELETE tags :p", ReturnValues="ALL_NEW",
                ExpressionAttributeValues={":one": {"N": "1"}, ":p": {"SS": ["p"]}}))
        elif roll < 0.61:
            key = {"pk": {"S": rng.choice("abc")}} | ({} if table == "h" else {"sk": sort_key(rng, numeric)})
            calls.call(f"get {table} {key}", lambda: ddb.get_item(TableName=table, Key=key, ConsistentRead=True))
        elif roll < 0.64:
            requests = [{"PutRequest": {"Item": item(rng, "r", numeric) | {"blob": {"S": "y"}}}} for _ in range(rng.randint(1, 6))]
            calls.call("batch write", lambda: ddb.batch_write_item(RequestItems={"r": requests}))
        elif roll < 0.67:
            first, second = item(rng, "r", numeric), {"pk": {"S": rng.choice("abc")}, "sk": sort_key(rng, numeric)}
            calls.call("transaction", lambda: ddb.transact_write_items(TransactItems=[
                {"Put": {"TableName": "r", "Item": first | {"blob": {"S": "t"}}}},
                {"Delete": {"TableName": "r", "Key": second, "ConditionExpression": "attribute_exists(pk)"}}]))
        else:
            query(rng, calls, table, numeric)
    calls.call("scan r", lambda: ddb.scan(TableName="r", ProjectionExpression="pk, sk, x"))
    backup = ddb.create_backup(TableName="r", BackupName="backup")["BackupDetails"]["BackupArn"]
    ddb.restore_table_from_backup(TargetTableName="restored", BackupArn=backup)
    for _ in range(10):
        query(rng, calls, "r", numeric)
        request = {"TableName": "restored", "KeyConditionExpression": "pk = :pk",
                   "ExpressionAttributeValues": {":pk": {"S": rng.choice("abc")}}, "ProjectionExpression": "pk, sk, x"}
        calls.call("query restored", lambda: ddb.query(**request))


def test_query_answers_as_stock_moto(monkeypatch):
    cuts = set()
    for seed in range(4):
        stock, fixed = run_both(dynamodb_sequence, seed, monkeypatch)
        assert_same(stock, fixed)
        for request, answer in stock.queries:
            if isinstance(answer, dict) and "LastEvaluatedKey" in answer:
                cuts.add(("Limit" if answer["ScannedCount"] == request.get("Limit") else "1 MB", request.get("ScanIndexForward", True)))
    # The sequences reach pages that end at Limit and at 1 MB, forward and backward, or they prove little.
    assert cuts == {("Limit", True), ("Limit", False), ("1 MB", True), ("1 MB", False)}


# -- DynamoDB Streams ----------------------------------------------------------------------


def streams_sequence(rng: random.Random, calls: Calls) -> None:
    ddb, streams = calls.dynamodb, calls.streams
    arn = ddb.create_table(
        TableName="s", KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )["TableDescription"]["LatestStreamArn"]
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    iterators: list[str] = []
    sequence_numbers: list[str] = []

    def keep(answer: Any) -> Any:
        """Iterators differ by design (moto's are random); what they read must not."""
        if isinstance(answer, dict):
            for name in ("ShardIterator", "NextShardIterator"):
                if name in answer:
                    iterators.append(answer.pop(name))
                    answer[name] = "<iterator>"
            for record in answer.get("Records", []):
                record["dynamodb"].pop("ApproximateCreationDateTime")
                record["dynamodb"].pop("SizeBytes")  # moto measures the record with its time in it
                sequence_numbers.append(record["dynamodb"]["SequenceNumber"])
        return answer

    for _ in range(150):
        roll = rng.random()
        if roll < 0.35:
            key = {"pk": {"S": rng.choice("abcdef")}}
            if rng.random() < 0.7:
                calls.call("put", lambda: ddb.put_item(TableName="s", Item=key | {"n": {"N": str(rng.randint(0, 5))},
                                                                                    "b": {"B": bytes([rng.randint(0, 255)])}}))
            else:
                calls.call("delete", lambda: ddb.delete_item(TableName="s", Key=key))
        elif roll < 0.4:
            # A transaction, cancelled half of the time: its records must not stay on the stream.
            puts = [{"Put": {"TableName": "s", "Item": {"pk": {"S": f"t{n}"}, "m": {"M": {"l": {"L": [{"N": str(n)}]}}}}}}
                    for n in range(rng.randint(1, 6))]
            check = {"ConditionCheck": {"TableName": "s", "Key": {"pk": {"S": rng.choice("abcdef")}},
                                        "ConditionExpression": "attribute_exists(pk)"}}
            calls.call("transaction", lambda: ddb.transact_write_items(TransactItems=puts + [check]))
        elif roll < 0.55 or not iterators:
            kind = rng.choice(["TRIM_HORIZON", "LATEST", "AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER"])
            extra = {}
            if kind.endswith("SEQUENCE_NUMBER"):
                if not sequence_numbers:
                    continue
                extra["SequenceNumber"] = rng.choice(sequence_numbers)
            calls.log.append((f"iterator {kind}", keep(outcome(lambda: streams.get_shard_iterator(
                StreamArn=arn, ShardId=shard, ShardIteratorType=kind, **extra)))))
        else:
            # The newest iterator mostly, an older one (reused) sometimes, a damaged one rarely.
            iterator = iterators[-1] if rng.random() < 0.6 else rng.choice(iterators)
            if rng.random() < 0.05:
                iterator = iterator[:-3] + "999"
            limit = rng.choice([1, 2, 5, 1000])
            calls.log.append((f"records {limit}", keep(outcome(lambda: streams.get_records(ShardIterator=iterator, Limit=limit)))))


@pytest.mark.parametrize("seed", range(2))
def test_stream_reads_answer_as_stock_moto(seed, monkeypatch):
    monkeypatch.setattr(emulator._StreamRecords, "BLOCK", 4)  # records pass into blocks after 8, and get read back
    stock, fixed = run_both(streams_sequence, seed, monkeypatch)
    assert_same(stock, fixed)
    assert any(what.startswith("records") and isinstance(answer, dict) and answer["Records"] for what, answer in stock.log)
    assert any(isinstance(answer, tuple) for what, answer in stock.log if what.startswith("records"))  # a damaged iterator


def test_shard_iterators_are_not_kept(monkeypatch):
    from moto.dynamodbstreams.models import dynamodbstreams_backends

    with moto_with_fixes(True), mock_aws():
        calls = Calls(FakeClock())
        arn = calls.dynamodb.create_table(
            TableName="s", KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "KEYS_ONLY"},
        )["TableDescription"]["LatestStreamArn"]
        shard = calls.streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
        iterator = calls.streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        for n in range(50):
            calls.dynamodb.put_item(TableName="s", Item={"pk": {"S": str(n)}})
            iterator = calls.streams.get_records(ShardIterator=iterator)["NextShardIterator"]
        assert len(dynamodbstreams_backends["123456789012"][REGION].shard_iterators) == 0


# -- SQS ----------------------------------------------------------------------------------


def sqs_sequence(rng: random.Random, calls: Calls) -> None:
    sqs = calls.sqs
    dlq = sqs.create_queue(QueueName="dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queues = [
        sqs.create_queue(QueueName="q", Attributes={
            "VisibilityTimeout": "2", "RedrivePolicy": f'{{"deadLetterTargetArn": "{dlq_arn}", "maxReceiveCount": "2"}}'})["QueueUrl"],
        sqs.create_queue(QueueName="f.fifo", Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true",
                                                         "VisibilityTimeout": "1"})["QueueUrl"],
        dlq,
    ]
    handles: list[str] = []
    for _ in range(260):
        url = rng.choices(queues, weights=[70, 20, 10])[0]
        fifo = url.endswith(".fifo")
        roll = rng.random()
        if roll < 0.3:
            extra: dict[str, Any] = {"MessageGroupId": rng.choice("gh")} if fifo else {}
            if not fifo and rng.random() < 0.2:
                extra["DelaySeconds"] = rng.randint(1, 2)
            if rng.random() < 0.3:
                extra["MessageAttributes"] = {"kind": {"DataType": "String", "StringValue": rng.choice("xy")},
                                              "n": {"DataType": "Number", "StringValue": "7"}}
            body = f"m{rng.randint(0, 10**6)}"
            if rng.random() < 0.3:
                calls.call("send batch", lambda: sqs.send_message_batch(QueueUrl=url, Entries=[
                    {"Id": str(n), "MessageBody": f"{body}-{n}", **extra} for n in range(rng.randint(1, 10))]))
            else:
                calls.call("send", lambda: sqs.send_message(QueueUrl=url, MessageBody=body, **extra))
        elif roll < 0.6:
            request: dict[str, Any] = {"QueueUrl": url, "MaxNumberOfMessages": rng.randint(1, 10),
                                       "AttributeNames": ["All"], "MessageAttributeNames": [rng.choice(["All", "kind"])]}
            if rng.random() < 0.5:
                request["VisibilityTimeout"] = rng.randint(0, 3)
            answer = calls.call(f"receive {url.rsplit('/', 1)[1]}", lambda: sqs.receive_message(**request))
            handles.extend(message["ReceiptHandle"] for message in answer.get("Messages", []))
        elif roll < 0.75 and handles:
            handle = rng.choice(handles[-12:] + handles[:2]) if rng.random() < 0.95 else "not-a-handle"
            if rng.random() < 0.3:
                calls.call("delete batch", lambda: sqs.delete_message_batch(
                    QueueUrl=url, Entries=[{"Id": "1", "ReceiptHandle": handle}, {"Id": "2", "ReceiptHandle": rng.choice(handles)}]))
            else:
                calls.call("delete", lambda: sqs.delete_message(QueueUrl=url, ReceiptHandle=handle))
        elif roll < 0.8 and handles:
            handle = rng.choice(handles[-8:])
            calls.call("visibility", lambda: sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=handle,
                                                                           VisibilityTimeout=rng.randint(0, 2)))
        elif roll < 0.92:
            calls.clock.now += rng.choice([0.0, 0.5, 1.001, 2.5])
        else:
            calls.call("attributes", lambda: sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]))


@pytest.mark.parametrize("seed", range(4))
def test_sqs_answers_as_stock_moto(seed, monkeypatch):
    stock, fixed = run_both(sqs_sequence, seed, monkeypatch)
    assert_same(stock, fixed)
    received = {what for what, answer in stock.log if what.startswith("receive") and answer.get("Messages")}
    assert received == {"receive q", "receive f.fifo", "receive dlq"}  # the dead-letter queue got redriven messages


def test_a_long_poll_is_woken_by_a_send_as_in_stock_moto():
    for fixed in (False, True):
        with moto_with_fixes(fixed), mock_aws():
            sqs = boto3.client("sqs", region_name=REGION)
            url = sqs.create_queue(QueueName="long")["QueueUrl"]
            sender = threading.Timer(0.3, lambda: sqs.send_message(QueueUrl=url, MessageBody="late"))
            sender.start()
            started = time.monotonic()
            messages = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5)["Messages"]
            assert [message["Body"] for message in messages] == ["late"]
            assert time.monotonic() - started < 2.0
            sender.join()


def test_a_receive_reads_the_queue_only_up_to_what_it_returns(monkeypatch):
    """Cost, not time: the messages whose visibility a receive checks, with 500 messages queued and 20 in flight."""
    from moto.sqs import models as sqs_models

    for name in ("approximate_number_of_messages", "approximate_number_of_messages_not_visible",
                 "approximate_number_of_messages_delayed"):  # moto counts the queue per message sent and received
        monkeypatch.setattr(sqs_models.Queue, name, property(lambda queue: 0))  # (the local stack, only when asked)
    visible = sqs_models.Message.visible
    for fixed in (True, False):
        with moto_with_fixes(fixed), mock_aws():
            sqs = boto3.client("sqs", region_name=REGION)
            url = sqs.create_queue(QueueName="deep")["QueueUrl"]
            for start in range(0, 500, 10):
                sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(n), "MessageBody": str(start + n)} for n in range(10)])
            assert len(sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]) == 10
            assert len(sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]) == 10
            checked = []
            with monkeypatch.context() as patch:
                patch.setattr(sqs_models.Message, "visible", property(lambda message: checked.append(1) or visible.fget(message)))
                bodies = [message["Body"] for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]]
            assert bodies == [str(n) for n in range(20, 30)]
            assert len(checked) <= 60 if fixed else len(checked) >= 500


def test_deleting_by_receipt_handle_keeps_moto_semantics():
    with moto_with_fixes(True), mock_aws():
        sqs = boto3.client("sqs", region_name=REGION)
        url = sqs.create_queue(QueueName="fixes", Attributes={"VisibilityTimeout": "0"})["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody="kept")
        sqs.send_message(QueueUrl=url, MessageBody="deleted")
        handles: dict[str, list[str]] = {}
        for _ in range(2):  # visible again at once: each message is received twice, with two handles
            for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]:
                handles.setdefault(message["Body"], []).append(message["ReceiptHandle"])
        first, second = handles["deleted"]
        sqs.delete_message(QueueUrl=url, ReceiptHandle=first)  # an earlier handle still deletes, as in moto
        sqs.delete_message(QueueUrl=url, ReceiptHandle=second)  # already deleted: ignored, as in moto
        with pytest.raises(ClientError, match="ReceiptHandleIsInvalid"):
            sqs.delete_message(QueueUrl=url, ReceiptHandle="not-a-handle")
        left = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
        assert [message["Body"] for message in left] == ["kept"]


# -- Query cost ----------------------------------------------------------------------------


def touched_by_query(monkeypatch: pytest.MonkeyPatch, partition_rows: int, fixed: bool) -> int:
    """Items a `begins_with Limit=1` Query reads a key of, in a table of 3 partitions of `partition_rows` rows."""
    from moto.dynamodb.models.dynamo_type import Item

    touched: set[int] = set()

    def counted(name: str) -> property:
        def get(item: Any) -> Any:
            touched.add(id(item))
            return item.__dict__[name]

        return property(get, lambda item, value: item.__dict__.__setitem__(name, value))

    with moto_with_fixes(fixed), mock_aws():
        ddb = boto3.client("dynamodb", region_name=REGION)
        ddb.create_table(TableName="t", KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
                         AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "S"}],
                         BillingMode="PAY_PER_REQUEST")
        for shard in "012":
            for start in range(0, partition_rows, 25):
                ddb.batch_write_item(RequestItems={"t": [
                    {"PutRequest": {"Item": {"pk": {"S": f"B#x#{shard}"}, "sk": {"S": f"{'CF'[n % 2]}#{n:06d}"}}}}
                    for n in range(start, min(start + 25, partition_rows))]})
        with monkeypatch.context() as patch:
            for name in ("hash_key", "range_key"):
                patch.setattr(Item, name, counted(name), raising=False)
            answer = ddb.query(TableName="t", KeyConditionExpression="pk = :pk AND begins_with(sk, :c)", Limit=1,
                               ExpressionAttributeValues={":pk": {"S": "B#x#1"}, ":c": {"S": "F#"}}, ConsistentRead=True)
        assert answer["Items"][0]["sk"]["S"] == "F#000001" and "LastEvaluatedKey" in answer
    return len(touched)


def test_a_query_touches_the_same_items_at_any_table_size(monkeypatch):
    small, large = touched_by_query(monkeypatch, 100, fixed=True), touched_by_query(monkeypatch, 2_000, fixed=True)
    assert small == large <= 3
    assert touched_by_query(monkeypatch, 2_000, fixed=False) >= 3 * 2_000  # stock moto walks every item of the table


def test_a_partition_keeps_its_keys_sorted_through_every_change():
    from moto.dynamodb.models.dynamo_type import DynamoType

    rng = random.Random(7)
    partition = emulator._Partition()
    for _ in range(2_000):
        key = DynamoType({"N": str(rng.randint(0, 60))})
        roll = rng.random()
        if roll < 0.5:
            partition[key] = object()
        elif roll < 0.8:
            partition.pop(key, None)
        elif roll < 0.85:
            partition.setdefault(key, object())
        elif roll < 0.9 and key in partition:
            del partition[key]
        elif roll < 0.92:
            partition.update({key: object()})
        casts, keys = partition.order()
        assert keys == sorted(partition, key=lambda k: k.cast_value)
        assert casts == [k.cast_value for k in keys]


def test_stream_records_read_as_the_list_moto_kept(monkeypatch):
    """Appends, slices, a rolled-back tail (the local stack's transactions), copies: as a list would."""
    import copy
    import pickle

    monkeypatch.setattr(emulator._StreamRecords, "BLOCK", 3)
    rng = random.Random(11)
    records, model = emulator._StreamRecords(), []
    for n in range(600):
        roll = rng.random()
        if roll < 0.6:
            record = emulator._Record({"SequenceNumber": str(n), "b": bytes([n % 256])})
            records.append(record)
            model.append(record)
        elif roll < 0.7:
            cut = rng.randint(max(0, len(model) - 8), len(model)) if rng.random() < 0.8 else rng.randint(0, len(model))
            del records[cut:]
            del model[cut:]
        elif roll < 0.73:
            records = copy.deepcopy(records)
        elif roll < 0.75:
            records = pickle.loads(pickle.dumps(records))
            model = [emulator._Record(record.to_json()) for record in model]
        else:
            start, stop, step = rng.randint(-5, len(model) + 2), rng.randint(-5, len(model) + 3), rng.choice([None, 1, 2, -1])
            assert [r.to_json() for r in records[start:stop:step]] == [r.to_json() for r in model[start:stop:step]]
        assert len(records) == len(model)
    assert [r.to_json() for r in records] == [r.to_json() for r in model]
    assert records[-1].to_json() == model[-1].to_json() and records[0].to_json() == model[0].to_json()
