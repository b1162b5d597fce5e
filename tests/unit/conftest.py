"""Unit-test fixtures: environment, moto's in-process AWS, and a small batch definition.

Every test gets the settings environment (fake credentials, table, queue, topic, stream
ARN) and fresh boto3 clients. Tests that touch AWS ask for `aws`, which runs inside
`mock_aws()` with the table, the work queue and the alert topic created; the topic has
an SQS queue subscribed so tests can read exactly which alerts were published.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.client import BaseClient
from moto import mock_aws

from batchdrain_local import events
from batchdrain_local import resources as local_resources
from chalicelib import aws as aws_clients
from chalicelib import model, planning
from chalicelib import store as store_module
from chalicelib.store import base as store_base
from chalicelib.config import Definition, Settings, load_definitions

REGION = "us-east-1"
TABLE_NAME = "batchdrain-test"
WORK_QUEUE_NAME = "batchdrain-test-work"
DEAD_LETTER_QUEUE_NAME = "batchdrain-test-dead-letters"
PLANNING_QUEUE_NAME = "batchdrain-test-planning"
ALERT_TOPIC_NAME = "batchdrain-test-alerts"
ALERT_TOPIC_ARN = f"arn:aws:sns:{REGION}:123456789012:{ALERT_TOPIC_NAME}"
# Replaced by the table's real LatestStreamArn once `aws` has created it.
PLACEHOLDER_STREAM_ARN = f"arn:aws:dynamodb:{REGION}:123456789012:table/{TABLE_NAME}/stream/2026-01-01T00:00:00.000"

# Settings the code reads from the environment; tests start from none of them set.
_OPTIONAL_SETTINGS = (
    "MAX_MESSAGE_BYTES",
    "SHARD_CHUNK_TARGET",
    "ROW_TTL_DAYS",
    "PROCESSOR_BATCH_SIZE",
    "PROCESSOR_BATCHING_WINDOW",
    "PROCESSOR_MAX_CONCURRENCY",
    "FINALIZER_BATCH_SIZE",
    "FINALIZER_BATCHING_WINDOW",
    "PROCESSOR_TIMEOUT_SECONDS",
    "ITEM_MAX_ATTEMPTS",
    "SEGMENT_BYTES",
    "PLANNER_MAX_CONCURRENCY",
    "BATCHDRAIN_DEFINITIONS",
    "INBOX_URI",
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_DYNAMODB",
    "AWS_ENDPOINT_URL_SQS",
    "AWS_ENDPOINT_URL_SNS",
    "AWS_ENDPOINT_URL_DYNAMODB_STREAMS",
)


def _forget_cached_clients() -> None:
    aws_clients.reset_clients()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The environment a deployed stage provides, with fake credentials."""
    for name in _OPTIONAL_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("TABLE_NAME", TABLE_NAME)
    monkeypatch.setenv("WORK_QUEUE_NAME", WORK_QUEUE_NAME)
    monkeypatch.setenv("DEAD_LETTER_QUEUE_NAME", DEAD_LETTER_QUEUE_NAME)
    monkeypatch.setenv("PLANNING_QUEUE_NAME", PLANNING_QUEUE_NAME)
    monkeypatch.setenv("ALERT_TOPIC_ARN", ALERT_TOPIC_ARN)
    monkeypatch.setenv("TABLE_STREAM_ARN", PLACEHOLDER_STREAM_ARN)
    _forget_cached_clients()
    yield
    _forget_cached_clients()


@pytest.fixture
def settings(aws_env: None) -> Settings:
    return Settings.from_env()


class Clock:
    """Stands in for model.utc_now: still unless moved (`at` seconds after the start, or `advance`)."""

    def __init__(self) -> None:
        self.start = self.now = datetime(2026, 11, 23, 6, 0, 7, 250_000, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def at(self, seconds: float) -> None:
        self.now = self.start + timedelta(seconds=seconds)

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Time stands still for the code under test (`model.utc_now`) until the test moves it."""
    fake = Clock()
    monkeypatch.setattr(model, "utc_now", fake)
    return fake


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Retries back off with time.sleep; tests record the delays instead of waiting."""
    delays: list[float] = []
    monkeypatch.setattr(store_base.time, "sleep", delays.append)  # the `time` module, shared
    return delays


@pytest.fixture
def serialized_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """One AWS request at a time, for tests that run handlers on threads at once.

    AWS serializes what these tests race on: conditional writes to an item, and
    TransactWriteItems, which is all-or-nothing and serializable with every other write
    (a conflicting one is cancelled, never half-applied). moto in-process does neither:
    with no lock, two threads' conditional writes can both win, and a cancelled
    transaction rolls back by restoring a copy of the whole table taken when it
    started, wiping what another thread's transaction committed meanwhile (a chunk's
    failed item gone from the header's `failed_items`, or its deleted row back).
    Threads still interleave between requests, so every ordering of them is tested.
    """
    lock = threading.RLock()
    real = BaseClient._make_api_call

    def one_at_a_time(self: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        with lock:
            return real(self, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", one_at_a_time)


@pytest.fixture
def nightly() -> Definition:
    """The shipped 'nightly' definition, cut down: 1,000 items, K=100, tasks that do not sleep."""
    shipped = load_definitions()["nightly"]
    return dataclasses.replace(
        shipped,
        source=dataclasses.replace(shipped.source, count=1000),
        items_per_message=100,
        task_options={"scale": 0},
    )


@dataclass
class MockedAws:
    """Handles on the mocked resources, and readers that state what a test observed."""

    dynamodb: Any
    sqs: Any
    sns: Any
    table_name: str
    stream_arn: str
    work_queue_url: str
    alert_inbox_url: str
    planning_queue_url: str = ""
    s3: Any = None
    _stream_seen: int = 0

    def rows(self) -> list[dict[str, Any]]:
        """Every row of the table, as plain Python values."""
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"TableName": self.table_name, "ConsistentRead": True}
        while True:
            page = self.dynamodb.scan(**kwargs)
            items.extend(store_module.from_item(item) for item in page["Items"])
            if "LastEvaluatedKey" not in page:
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def header(self, batch_id: str) -> dict[str, Any] | None:
        return next((row for row in self.rows() if row["pk"] == f"B#{batch_id}" and row["sk"] == "META"), None)

    def chunk_rows(self, batch_id: str) -> list[dict[str, Any]]:
        prefix = f"B#{batch_id}#"
        return sorted(
            (row for row in self.rows() if row["pk"].startswith(prefix) and row["sk"].startswith("C#")),
            key=lambda row: row["sk"],
        )

    def delete_chunk_row(self, batch_id: str, shard: int, chunk_no: int) -> None:
        self.dynamodb.delete_item(
            TableName=self.table_name,
            Key=store_module.to_item({"pk": f"B#{batch_id}#{shard}", "sk": f"C#{chunk_no:08d}"}),
        )

    def _drain_queue(self, url: str) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        while True:
            page = self.sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=600, MessageAttributeNames=["All"]
            )
            if not page.get("Messages"):
                return messages
            messages.extend(page["Messages"])

    def work_messages(self) -> list[dict[str, Any]]:
        """Receive (and hide) every message waiting on the work queue."""
        return self._drain_queue(self.work_queue_url)

    def planning_messages(self) -> list[dict[str, Any]]:
        """Receive (and hide) every message waiting on the planning queue."""
        return self._drain_queue(self.planning_queue_url)

    def stream_records(self) -> list[dict[str, Any]]:
        """The table's stream records since the last call, as Lambda's event source mapping delivers them."""
        records = self.stream_history()
        fresh, self._stream_seen = records[self._stream_seen :], len(records)
        return fresh

    def stream_history(self) -> list[dict[str, Any]]:
        """Every stream record from TRIM_HORIZON, as a mapping recreated (or a retried batch) delivers them again."""
        # botocore resolves the streams endpoint to a host moto does not intercept; name it.
        streams = boto3.client(
            "dynamodbstreams", region_name=REGION, endpoint_url=f"https://streams.dynamodb.{REGION}.amazonaws.com"
        )
        shard_id = streams.describe_stream(StreamArn=self.stream_arn)["StreamDescription"]["Shards"][0]["ShardId"]
        iterator = streams.get_shard_iterator(
            StreamArn=self.stream_arn, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
        )
        records: list[dict[str, Any]] = []
        position = iterator["ShardIterator"]
        while position:
            page = streams.get_records(ShardIterator=position, Limit=1000)
            records.extend(page["Records"])
            if not page["Records"]:
                break
            position = page.get("NextShardIterator")
        for record in records:
            change = record["dynamodb"]
            change["ApproximateCreationDateTime"] = change["ApproximateCreationDateTime"].timestamp()
            record["eventSourceARN"] = self.stream_arn
        return records

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert published since the last call, as the SNS envelopes an SQS subscriber sees."""
        return [json.loads(message["Body"]) for message in self._drain_queue(self.alert_inbox_url)]


def create_resources(region: str = REGION) -> MockedAws:
    """The local stack's resources (one definition of them), created inside mock_aws."""
    clients = {service: boto3.client(service, region_name=region) for service in ("dynamodb", "sqs", "sns", "s3")}
    created = local_resources.create_resources(
        clients.__getitem__,
        TABLE_NAME,
        WORK_QUEUE_NAME,
        dead_letter_queue_name=DEAD_LETTER_QUEUE_NAME,
        planning_queue_name=PLANNING_QUEUE_NAME,
        visibility_timeout=30,
        max_receive_count=5,
    )
    assert created.alert_topic_arn == ALERT_TOPIC_ARN
    return MockedAws(
        dynamodb=clients["dynamodb"],
        sqs=clients["sqs"],
        sns=clients["sns"],
        table_name=TABLE_NAME,
        stream_arn=created.table_stream_arn,
        work_queue_url=created.work_queue_url,
        alert_inbox_url=created.alert_inbox_url,
        planning_queue_url=created.planning_queue_url,
        s3=clients["s3"],
    )


@pytest.fixture
def aws(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[MockedAws]:
    """moto's in-process AWS with batchdrain's resources; the clients the code uses start fresh."""
    with mock_aws():
        resources = create_resources()
        monkeypatch.setenv("TABLE_STREAM_ARN", resources.stream_arn)
        _forget_cached_clients()
        yield resources
        _forget_cached_clients()


def sqs_event(messages: list[dict[str, Any]], queue_name: str = WORK_QUEUE_NAME) -> dict[str, Any]:
    """The Lambda event for `messages` as received from SQS (ReceiveMessage shape -> event shape)."""
    queue_arn = f"arn:aws:sqs:{REGION}:123456789012:{queue_name}"
    return events.sqs_event(
        [events.sqs_record({"ReceiptHandle": "receipt-handle", **message}, queue_arn, REGION) for message in messages]
    )


def cut_generated(items: Any, *, shards: int = 1, **settings: Any) -> list[model.Chunk]:
    """Items cut into chunks as a planner cuts generated ones (index = position; chunk n on shard n % shards)."""
    entries = (model.Entry(index, item) for index, item in enumerate(items))
    return list(model.cut_entries(entries, number=lambda local: (local, local % shards), **settings))


def plan_batches(settings: Settings) -> list[dict[str, Any]]:
    """Run a planner on every planning message until none is left, then seal what is planned.

    What the planning queue's handler and the finalizer's P# REMOVE do on AWS, in one
    call; returns the headers of the batches it planned, as stored.
    """
    from chalicelib import planner
    from chalicelib.store import BatchStore

    sqs, url = aws_clients.client("sqs"), aws_clients.queue_url(settings.planning_queue_name)
    store = BatchStore(settings.table_name)
    batch_ids: list[str] = []
    while True:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=600).get("Messages", [])
        if not messages:
            break
        for message in messages:
            batch_id, segment, attempt = planner.parse_planning_message(message["Body"])
            planner.expand(store, batch_id, segment, attempt, settings)
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            if batch_id not in batch_ids:
                batch_ids.append(batch_id)
    for batch_id in batch_ids:
        planning.seal_when_planned(store, batch_id, store.get_header(batch_id)["attempt"])
    return [store.get_header(batch_id) for batch_id in batch_ids]


def create_sealed_batch(definition: Definition, scheduled_at: datetime, settings: Settings) -> dict[str, Any]:
    """batcher.create_batch, then its planning and seal: the sealed header, as stored."""
    from chalicelib import batcher
    from chalicelib.store import BatchStore

    created = batcher.create_batch(definition, scheduled_at, settings)
    plan_batches(settings)
    return BatchStore(settings.table_name).get_header(created["batch_id"])


def raised_at(function: Any, raising: str = "") -> str:
    """` (at <file>:<line> in <name>)`: where `function` raises (its first `raise <raising>`), as an item's error names it."""
    path = Path(inspect.getsourcefile(function)).resolve().relative_to(Path.cwd().resolve())
    return f" (at {path}:{raise_line(function, raising)} in {function.__name__})"


def raise_line(function: Any, raising: str = "") -> int:
    """The line number of `function`'s first `raise <raising>` statement."""
    lines, first = inspect.getsourcelines(function)
    return first + next(number for number, text in enumerate(lines) if text.strip().startswith(f"raise {raising}"))
