"""Object-source batches under faults, in moto: planners that die or run out of time, duplicate
and concurrent planning messages, objects that change or vanish mid-batch, throttled AWS calls.

Each test drives the whole flow by hand (planning queue, work queue, table stream, sweeper;
`Pipeline` below, the approach of test_object_sources.py), injects one fault, and checks what
the owner would see: one alert, exact totals, every item run once and never on other data.
Each docstring names the rule (and the line of chalicelib) without which the test fails.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import random
import threading
from collections import Counter
from datetime import UTC, datetime
from typing import Any, Callable, Mapping

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError
from moto.core.botocore_stubber import BotocoreStubber, MockRawResponse

from batchdrain_local.eventsources import DYNAMODB, load_mapping_settings
from batchdrain_local.filters import matching
from chalicelib import aws as aws_clients
from chalicelib import batcher, deadletters, finalizer, model, planner, planning, processor, redrive, sweeper, work
from chalicelib.config import Definition, Settings, Source
from chalicelib.store import segments as segments_store
from chalicelib.store import BatchStore
from chalicelib.tasks import task

from .conftest import DEAD_LETTER_QUEUE_NAME, PLANNING_QUEUE_NAME, REGION, Clock, MockedAws, sqs_event

BUCKET = "exports"
KEY = "orders.jsonl"
URI = f"s3://{BUCKET}/{KEY}"
SLOT = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
BATCH_ID = "orders-2026-12-01T06:00Z"
TASK = "planner-faults-record"
K = 5  # items per message
GROUP = 4  # chunks per planner checkpoint in these tests (planner.PLAN_GROUP_CHUNKS)
# Past a planner's lease (960 s) and the sweeper's stuck-CREATING age (960 s by default).
PAST_THE_LEASE = planning.LEASE_SECONDS + 1

RUNS: Counter[tuple[int, int]] = Counter()  # (item id, object version) -> times the task ran on it


@task(TASK)
def record(item: dict, options: Mapping[str, Any]) -> None:
    """Counts each run per object version, so a run on data the batch was not cut from shows."""
    RUNS[(item["id"], item.get("v", 1))] += 1
    if item.get("fail"):
        raise ValueError(f"item {item['id']} fails on purpose")


class Crash(BaseException):
    """The invocation dies here: not an Exception, so no handler catches it (as Lambda dying)."""


@pytest.fixture(autouse=True)
def small_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoint every 4 chunks instead of 250, so a few dozen lines make several groups; and fresh counts."""
    monkeypatch.setattr(planner, "PLAN_GROUP_CHUNKS", GROUP)
    RUNS.clear()


@pytest.fixture
def buckets(aws: MockedAws) -> MockedAws:
    aws.s3.create_bucket(Bucket=BUCKET)
    return aws


def lines(count: int, version: int = 1, failing: Callable[[int], bool] = lambda n: False) -> bytes:
    return b"".join(
        json.dumps({"id": n, "v": version, **({"fail": True} if failing(n) else {})}).encode() + b"\n" for n in range(count)
    )


def definition(source: Source | None = None) -> Definition:
    return Definition(
        name="orders",
        schedule="rate(6 hours)",
        source=source or Source(type="s3-jsonl", uri=URI),
        task=TASK,
        items_per_message=K,
        item_seconds=0.1,
    )


DEFINITIONS = {"orders": definition()}


class Pipeline:
    """The event sources, by hand: each planning message to its own invocation (batch size 1),
    work messages five at a time, the stream to the finalizer. A message whose invocation failed
    or crashed comes back (visibility 0, as after its timeout); one that succeeded is gone."""

    def __init__(self, aws: MockedAws, settings: Settings) -> None:
        self.aws, self.settings = aws, settings
        self.sent: Counter[tuple[int, int]] = Counter()  # (shard, chunk) -> work messages delivered
        self.outcomes: list[str] = []  # what each planner invocation's expand returned
        self.alerts: list[dict[str, Any]] = []
        self.context: Callable[[], Any] | None = None  # a Lambda context per planner invocation
        self._stream: Any = None
        self._position = ""

    def _return(self, url: str, message: Mapping[str, Any]) -> None:
        self.aws.sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)

    def plan(self) -> int:
        messages = self.aws.planning_messages()
        for message in messages:
            try:
                result = planner.handle_sqs_event(
                    sqs_event([message], PLANNING_QUEUE_NAME), self.settings, self.context() if self.context else None
                )
            except Crash:
                result = {"batchItemFailures": [{"itemIdentifier": message["MessageId"]}]}
            if result["batchItemFailures"]:
                self._return(self.aws.planning_queue_url, message)
        return len(messages)

    def work(self) -> int:
        messages = self.aws.work_messages()
        for message in messages:
            body = json.loads(message["Body"])
            self.sent[(body["shard"], body["chunk"])] += 1
        for start in range(0, len(messages), 5):
            batch = messages[start : start + 5]
            failed = {f["itemIdentifier"] for f in processor.handle_sqs_event(sqs_event(batch), self.settings)["batchItemFailures"]}
            for message in batch:
                if message["MessageId"] in failed:
                    self._return(self.aws.work_queue_url, message)
        return len(messages)

    def stream_records(self) -> list[dict[str, Any]]:
        """The stream's records since the last call (one iterator kept: MockedAws re-reads the whole stream)."""
        if self._stream is None:
            self._stream = boto3.client("dynamodbstreams", region_name=REGION, endpoint_url=f"https://streams.dynamodb.{REGION}.amazonaws.com")
            shard = self._stream.describe_stream(StreamArn=self.aws.stream_arn)["StreamDescription"]["Shards"][0]["ShardId"]
            self._position = self._stream.get_shard_iterator(
                StreamArn=self.aws.stream_arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
        records: list[dict[str, Any]] = []
        while True:
            page = self._stream.get_records(ShardIterator=self._position, Limit=1000)
            self._position = page["NextShardIterator"]
            records += page["Records"]
            if not page["Records"]:
                break
        for record in records:
            change = record["dynamodb"]
            change["ApproximateCreationDateTime"] = change["ApproximateCreationDateTime"].timestamp()
            record["eventSourceARN"] = self.aws.stream_arn
        return records

    def finalize(self) -> int:
        records = self.stream_records()
        if records:
            finalizer.handle_stream_event({"Records": records}, self.settings, DEFINITIONS)
        return len(records)

    def run(self, rounds: int = 60) -> list[dict[str, Any]]:
        """Until nothing is left to deliver; every alert published so far."""
        for _ in range(rounds):
            busy = self.plan() + self.work() + self.finalize()
            self.alerts += [json.loads(alert["Message"]) for alert in self.aws.alerts()]
            if not busy:
                return self.alerts
        raise AssertionError(f"still busy after {rounds} rounds")


@pytest.fixture
def pipeline(buckets: MockedAws, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Pipeline:
    line = Pipeline(buckets, settings)
    real_expand = planner.expand

    def expand(*args: Any, **kwargs: Any) -> str:
        outcome = real_expand(*args, **kwargs)
        line.outcomes.append(outcome)
        return outcome

    monkeypatch.setattr(planner, "expand", expand)
    return line


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[int, tuple[int, ...], str]]]:
    """Every put_chunks call: the rows it wrote, as (chunk, items, span digest)."""
    calls: list[list[tuple[int, tuple[int, ...], str]]] = []
    real = BatchStore.put_chunks

    def put_chunks(self: BatchStore, chunks: Any, attempt: int = 1) -> int:
        chunks = list(chunks)
        calls.append([(chunk.chunk_no, tuple(chunk.indices), json.dumps(chunk.span, sort_keys=True)) for chunk in chunks])
        return real(self, chunks, attempt)

    monkeypatch.setattr(BatchStore, "put_chunks", put_chunks)
    return calls


def crash_on_call(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, call: int) -> list[int]:
    """Make owner.name die on its `call`-th call (1-based), once; returns the running call count."""
    real = getattr(owner, name)
    count = [0]

    def dying(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        if count[0] == call:
            raise Crash(f"{name} call {call}")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, dying)
    return count


def sweep_after(clock: Clock, seconds: float, settings: Settings) -> sweeper.SweepReport:
    clock.advance(seconds)
    return sweeper.sweep(settings, DEFINITIONS)


def every_item_ran_once(count: int, version: int = 1) -> bool:
    return RUNS == Counter({(n, version): 1 for n in range(count)})


def chunk_numbers(count: int, segment: int = 0) -> list[int]:
    return [segment * model.SEGMENT_CHUNKS + n for n in range(count)]


# -- planners that die ------------------------------------------------------------------------


def test_a_planner_dying_after_writing_a_group_before_its_checkpoint_is_resumed_with_identical_rows(
    pipeline: Pipeline, written: list, clock: Clock, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """expand resumes from the segment row's checkpoint (`spec.update(pos=row["pos"], ...)`,
    `chunks_done = row["chunks"]`): the group whose checkpoint never happened is written again,
    identically (its messages were never sent, so nothing ran), and no earlier group is.
    Resume from the start instead and group 1's rows come back after their items ran."""
    pipeline.aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=lines(60))  # 12 chunks: groups of 4, 4, 4
    crash_on_call(monkeypatch, BatchStore, "checkpoint_segment", 2)

    batcher.create_batch(definition(), SLOT, settings)
    assert pipeline.run() == []  # group 1 ran; the redelivered message found the lease held
    assert pipeline.outcomes == ["taken or done"]
    # Group 1's rows drained; group 2's are written, and nothing announced them.
    assert [row["chunk_no"] for row in BatchStore(settings.table_name).chunk_rows(BATCH_ID, 0)] == [4, 5, 6, 7]
    assert sorted(pipeline.sent) == [(0, n) for n in range(4)]

    assert sweep_after(clock, PAST_THE_LEASE, settings).resumed == [BATCH_ID]
    (alert,) = pipeline.run()

    assert written[1] == written[2]  # group 2 as the dead planner wrote it, then its successor
    assert [call[0][0] for call in written] == [0, 4, 4, 8]  # groups by first chunk: 1, 2, 2 again, 3
    assert alert["status"] == model.COMPLETED and alert["totals"] == {"items": 60, "succeeded": 60, "failed": 0}
    assert pipeline.aws.header(BATCH_ID)["total_chunks"] == 12
    assert every_item_ran_once(60) and set(pipeline.sent.values()) == {1} and len(pipeline.sent) == 12


def test_a_planner_dying_after_its_checkpoint_before_sending_leaves_the_group_to_be_sent_from_its_rows(
    pipeline: Pipeline, written: list, clock: Clock, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """The checkpoint lists the group `unsent` before its messages go out, and the next holder
    sends a listed group from its rows (`if row.get("unsent"): work.send_listed(...)`) rather
    than writing it again. Without that the group's rows wait with no message (no alert here)."""
    pipeline.aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=lines(60))
    crash_on_call(monkeypatch, work, "send_chunks", 2)  # the planner's send of group 2

    batcher.create_batch(definition(), SLOT, settings)
    assert pipeline.run() == []
    (segment,) = BatchStore(settings.table_name).segment_rows(BATCH_ID)
    assert segment["unsent"] == [[0, n] for n in chunk_numbers(8)[4:]] and segment["chunks"] == 8

    sweep_after(clock, PAST_THE_LEASE, settings)
    (alert,) = pipeline.run()

    assert alert["totals"] == {"items": 60, "succeeded": 60, "failed": 0}
    assert Counter(chunk for call in written for chunk, _, _ in call) == Counter(chunk_numbers(12))  # each row once
    assert pipeline.sent == Counter({(0, n): 1 for n in chunk_numbers(12)})  # each message once
    assert every_item_ran_once(60)


def test_a_planner_dying_before_finishing_its_segment_is_finished_after_the_lease_with_exact_totals(
    pipeline: Pipeline, clock: Clock, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """The segment's totals live on its row until `finish_segment` adds them to the header and
    deletes the row, in one transaction; the sweeper re-sends a segment only once its lease ran
    out (`lease_until < now` in planning.resume: before that it may still be running), and the
    next holder finishes with the row's counts. Count only what the last holder wrote and the
    header says 0 items."""
    pipeline.aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=lines(60))
    crash_on_call(monkeypatch, BatchStore, "finish_segment", 1)

    batcher.create_batch(definition(), SLOT, settings)
    clock.advance(500)  # the planning message waited in a backlog: the lease runs to 1,460 s
    assert pipeline.run() == []
    assert every_item_ran_once(60)  # every chunk ran; the batch cannot seal: its segment row is still there
    assert pipeline.aws.header(BATCH_ID)["status"] == model.CREATING

    # At 1,000 s the batch looks stuck, but its segment is leased: the sweeper sends nothing yet.
    assert sweep_after(clock, 500, settings).resumed == [BATCH_ID]
    assert pipeline.aws.planning_messages() == []
    sweep_after(clock, planning.LEASE_SECONDS - 500 + 1, settings)  # the lease is over
    (alert,) = pipeline.run()

    assert pipeline.outcomes[-1] == "finished"
    assert alert["totals"] == {"items": 60, "succeeded": 60, "failed": 0}
    assert pipeline.aws.header(BATCH_ID)["total_chunks"] == 12
    assert every_item_ran_once(60)


@pytest.mark.parametrize("dies_at", ["the second segment row", "marking the batch planned"])
def test_the_sweeper_resumes_a_batch_whose_planning_died_before_planned_was_set(
    pipeline: Pipeline, clock: Clock, settings: Settings, monkeypatch: pytest.MonkeyPatch, dies_at: str
):
    """planning.resume plans again when `planned` is unset, writes the segment rows again (only
    while the batch is not planned: `put_segments`), sets `planned` and sends every segment.
    Without that branch a batch whose batcher died here stays CREATING forever with no planning
    message."""
    pipeline.aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=lines(60))
    settings = pipeline.settings = dataclasses.replace(settings, segment_bytes=400)  # 3 segments
    if dies_at == "the second segment row":
        monkeypatch.setattr(segments_store, "SEGMENTS_PER_TRANSACTION", 1)
        crash_on_call(monkeypatch, BatchStore, "_put_segment_group", 2)
    else:
        crash_on_call(monkeypatch, BatchStore, "mark_planned", 1)

    with pytest.raises(Crash):
        batcher.create_batch(definition(), SLOT, settings)
    assert pipeline.run() == [] and pipeline.aws.header(BATCH_ID)["planned"] is False

    assert sweep_after(clock, PAST_THE_LEASE, settings).resumed == [BATCH_ID]
    (alert,) = pipeline.run()

    assert pipeline.aws.header(BATCH_ID)["segments"] == 3
    assert alert["totals"] == {"items": 60, "succeeded": 60, "failed": 0}
    assert every_item_ran_once(60) and set(pipeline.sent.values()) == {1}


@pytest.mark.parametrize("late", ["after its segments finished", "after its alert"])
def test_a_sweep_that_read_the_batch_unplanned_and_resumes_after_a_rival_planned_it_writes_and_sends_nothing(
    pipeline: Pipeline, clock: Clock, settings: Settings, monkeypatch: pytest.MonkeyPatch, late: str
):
    """Two overlapping sweeps (EventBridge delivers at least once; a timed-out sweep is retried
    while the next runs): sweep A reads `planned` false, sweep B plans the batch, planners
    finish its segments (rows deleted, totals added); then A goes on. Segment rows are written
    only in transactions that check the header is not yet planned (`put_segments`), so A's
    writes fail and it sends nothing. With create-if-absent rows, A re-creates the finished
    segments and re-sends them: items run twice, totals doubled, and after the alert the
    re-created rows stay as orphans."""
    pipeline.aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=lines(60))
    settings = pipeline.settings = dataclasses.replace(settings, segment_bytes=400)  # 3 segments
    crash_on_call(monkeypatch, BatchStore, "mark_planned", 1)
    with pytest.raises(Crash):
        batcher.create_batch(definition(), SLOT, settings)
    store = BatchStore(settings.table_name)
    clock.advance(PAST_THE_LEASE)
    stale = store.get_header(BATCH_ID)  # sweep A's read

    planning.resume(store, store.get_header(BATCH_ID), settings)  # sweep B
    if late == "after its segments finished":
        pipeline.plan()
        assert list(store.segment_rows(BATCH_ID)) == []
    else:
        assert len(pipeline.run()) == 1
    planning.resume(store, stale, settings)  # sweep A, late

    assert pipeline.aws.planning_messages() == []
    alerts = pipeline.run()
    assert len(pipeline.alerts) == 1 and len(alerts) == 1
    assert alerts[0]["totals"] == {"items": 60, "succeeded": 60, "failed": 0}
    assert pipeline.aws.header(BATCH_ID)["total_chunks"] == len(pipeline.sent) and set(pipeline.sent.values()) == {1}
    assert every_item_ran_once(60)
    assert list(store.segment_rows(BATCH_ID)) == []


def test_two_sweeps_at_once_on_a_batch_whose_batcher_died_before_planning_plan_each_segment_once(
    pipeline: Pipeline, clock: Clock, settings: Settings, monkeypatch: pytest.MonkeyPatch, serialized_aws: None
):
    """Both sweeps read the header unplanned and plan together (a barrier before their segment
    writes): every segment row is written by both, `planned` set once, one planning message per
    segment per winner. Whatever the interleaving, each item runs once and the totals are exact."""
    pipeline.aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=lines(60))
    settings = pipeline.settings = dataclasses.replace(settings, segment_bytes=400)
    crash_on_call(monkeypatch, BatchStore, "mark_planned", 1)
    with pytest.raises(Crash):
        batcher.create_batch(definition(), SLOT, settings)
    clock.advance(PAST_THE_LEASE)
    both_write = threading.Barrier(2)
    real_put = BatchStore.put_segments

    def put_together(self: BatchStore, *args: Any) -> bool:
        both_write.wait(timeout=10)
        return real_put(self, *args)

    monkeypatch.setattr(BatchStore, "put_segments", put_together)
    sweeps = [threading.Thread(target=sweeper.sweep, args=(settings, DEFINITIONS)) for _ in range(2)]
    for sweep in sweeps:
        sweep.start()
    for sweep in sweeps:
        sweep.join(timeout=30)
    monkeypatch.setattr(BatchStore, "put_segments", real_put)

    (alert,) = pipeline.run()
    assert alert["totals"] == {"items": 60, "succeeded": 60, "failed": 0}
    assert every_item_ran_once(60)
    assert pipeline.aws.header(BATCH_ID)["total_chunks"] == len(pipeline.sent) and set(pipeline.sent.values()) == {1}


def test_planning_messages_waiting_in_a_deep_queue_are_sent_again_once_per_doubling_wait_however_often_sweeps_run(
    pipeline: Pipeline, clock: Clock, settings: Settings
):
    """A planned batch whose 3 planning messages only wait in a busy queue. Sweeps every 10 s,
    two at a time, for 8,000 s past the stuck age: a segment is re-sent only once nothing has
    happened to it for STUCK_CREATING_SECONDS, and each re-send doubles the wait
    (`_lost_segments`, claimed per segment by `claim_resend`), so each segment is re-sent at
    961, ~2,880 and ~6,720 s: 3 times, not once per sweep (800 times). Without the backoff the
    duplicates feed the queue that delays them."""
    pipeline.aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=lines(60))
    settings = pipeline.settings = dataclasses.replace(settings, segment_bytes=400)
    batcher.create_batch(definition(), SLOT, settings)
    waiting = pipeline.aws.planning_messages()  # held back: as far as the sweeps know, still queued
    assert len(waiting) == 3

    resent: Counter[int] = Counter()
    for _ in range(800):
        for _ in range(2):
            sweep_after(clock, 5, settings)
        duplicates = pipeline.aws.planning_messages()
        resent.update(json.loads(message["Body"])["segment"] for message in duplicates)
        waiting += duplicates

    assert resent == Counter({0: 3, 1: 3, 2: 3})
    for message in waiting:  # they all arrive at last: each segment is planned once
        pipeline._return(pipeline.aws.planning_queue_url, message)
    (alert,) = pipeline.run()
    assert alert["totals"] == {"items": 60, "succeeded": 60, "failed": 0}
    assert every_item_ran_once(60)


def test_a_sweep_sends_at_most_a_page_of_planning_messages_per_batch(
    pipeline: Pipeline, clock: Clock, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """Work per sweep is bounded (RESEND_SEGMENTS_PER_SWEEP): a batch with many lost segments is
    repaired over several sweeps, never in one call that starves the other batches."""
    monkeypatch.setattr(planning, "RESEND_SEGMENTS_PER_SWEEP", 2)
    pipeline.aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=lines(60))
    settings = pipeline.settings = dataclasses.replace(settings, segment_bytes=400)
    batcher.create_batch(definition(), SLOT, settings)
    pipeline.aws.planning_messages()  # lost

    sweep_after(clock, PAST_THE_LEASE, settings)
    first = pipeline.aws.planning_messages()
    sweep_after(clock, 1, settings)
    second = pipeline.aws.planning_messages()
    assert (len(first), len(second)) == (2, 1)
    for message in first + second:
        pipeline._return(pipeline.aws.planning_queue_url, message)
    (alert,) = pipeline.run()
    assert alert["totals"]["items"] == 60 and every_item_ran_once(60)


KEYS: Counter[str] = Counter()  # inventory item key -> times the task ran on it


@task("planner-faults-key")
def record_key(item: dict, options: Mapping[str, Any]) -> None:
    KEYS[item["key"]] += 1


def put_inventory(aws: MockedAws, name: str) -> list[str]:
    """An S3 Inventory (CSV, gzip) of 3 files x 4 objects at inv/manifest.json; the keys it lists."""
    files, keys = [], []
    for part in range(3):
        listed = [f"{name}/{part}/{n}.bin" for n in range(4)]
        keys += listed
        text = "".join(f'"{BUCKET}","{key}","1"\n' for key in listed).encode()
        data_key = f"inv/data/{name}-{part}.csv.gz"
        aws.s3.put_object(Bucket=BUCKET, Key=data_key, Body=gzip.compress(text))
        files.append({"key": data_key, "size": len(text), "MD5checksum": "-"})
    manifest = {"sourceBucket": BUCKET, "destinationBucket": f"arn:aws:s3:::{BUCKET}", "fileFormat": "CSV", "fileSchema": "Bucket, Key, Size", "files": files}
    aws.s3.put_object(Bucket=BUCKET, Key="inv/manifest.json", Body=json.dumps(manifest).encode())
    return keys


def test_an_inventory_manifest_replaced_before_planning_finished_is_not_mixed_into_one_batch(
    pipeline: Pipeline, clock: Clock, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """planning.resume plans again and compares the new plan's pin with the header's (`planned.pin
    != pin` -> FAILED "changed while the batch was being planned"), then writes only the segment
    rows. The pin holds the manifest's ETag (and each segment its file's), so a
    manifest replaced between the crash and the resume is caught: the batch runs one manifest's
    objects, or ends FAILED saying the manifest changed, never segment 0 from the old manifest's
    files and segments 1-2 from the new one's."""
    KEYS.clear()
    old = put_inventory(pipeline.aws, "old")
    inventory = dataclasses.replace(definition(Source(type="s3-inventory", uri=f"s3://{BUCKET}/inv/manifest.json")), task="planner-faults-key")
    monkeypatch.setattr(segments_store, "SEGMENTS_PER_TRANSACTION", 1)
    crash_on_call(monkeypatch, BatchStore, "_put_segment_group", 2)  # segment 0's row is written from the old manifest
    with pytest.raises(Crash):
        batcher.create_batch(inventory, SLOT, settings)
    new = put_inventory(pipeline.aws, "new")  # the next inventory lands on the same key

    sweep_after(clock, PAST_THE_LEASE, settings)
    alerts = pipeline.run()

    assert len(alerts) == 1
    if alerts[0]["status"] == model.FAILED:
        assert "changed" in alerts[0]["reason"] and not KEYS
    else:
        assert set(KEYS) in (set(old), set(new)), f"ran {sorted(KEYS)}"
        assert alerts[0]["totals"]["items"] == 12


def test_a_damaged_gzip_object_ends_the_batch_failed_with_one_alert(pipeline: Pipeline, clock: Clock, settings: Settings):
    """A source that cannot be read ends its batch FAILED with one alert (README, invariant 14).
    A gzip object whose CRC does not match is a SourceError: were the raw zlib.error to reach the
    planner, the invocation would fail, the sweeper would re-send it after the lease, it would
    fail again, and so on: no alert, ever."""
    damaged = bytearray(gzip.compress(lines(60)))
    damaged[-6] ^= 0xFF  # the CRC32 trailer
    pipeline.aws.s3.put_object(Bucket=BUCKET, Key="orders.jsonl.gz", Body=bytes(damaged))
    batcher.create_batch(definition(Source(type="s3-jsonl", uri=f"s3://{BUCKET}/orders.jsonl.gz")), SLOT, settings)

    alerts = pipeline.run()
    for _ in range(2):  # two sweeps later, still nothing
        sweep_after(clock, PAST_THE_LEASE, settings)
        alerts = pipeline.run()

    assert [alert["status"] for alert in alerts] == [model.FAILED]
    assert "orders.jsonl.gz" in alerts[0]["reason"]


# -- duplicates and time ----------------------------------------------------------------------


def test_two_planners_given_one_planning_message_at_once_write_and_count_the_segment_once(
    pipeline: Pipeline, written: list, settings: Settings, monkeypatch: pytest.MonkeyPatch, serialized_aws: None
):
    """SQS can hand one message to two invocations at once. Both read the header, then both try to
    take the segment at the same moment (a barrier); `claim_segment`'s condition (no live lease)
    lets one in. Without it both write every row and send every message, and the second's rows
    come back after the first's items ran."""
    pipeline.aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=lines(60))
    batcher.create_batch(definition(), SLOT, settings)
    (message,) = pipeline.aws.planning_messages()
    both_claim = threading.Barrier(2)
    real_claim = BatchStore.claim_segment
    claims: list[bool] = []

    def claim_together(self: BatchStore, *args: Any) -> Any:
        both_claim.wait(timeout=10)
        row = real_claim(self, *args)
        claims.append(row is not None)
        return row

    monkeypatch.setattr(BatchStore, "claim_segment", claim_together)
    results: list[dict[str, Any]] = []
    threads = [
        threading.Thread(target=lambda: results.append(planner.handle_sqs_event(sqs_event([message], PLANNING_QUEUE_NAME), settings)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(claims) == [False, True] and sorted(pipeline.outcomes) == ["finished", "taken or done"]
    assert results == [{"batchItemFailures": []}] * 2
    (alert,) = pipeline.run()
    assert alert["totals"] == {"items": 60, "succeeded": 60, "failed": 0}
    assert Counter(chunk for call in written for chunk, _, _ in call) == Counter(chunk_numbers(12))
    assert pipeline.sent == Counter({(0, n): 1 for n in chunk_numbers(12)})
    assert every_item_ran_once(60)


class ShortContext:
    """A Lambda context with time for one group: 900 s at the start, 10 s left at the first check."""

    def __init__(self) -> None:
        self.left = iter([900_000])

    def get_remaining_time_in_millis(self) -> int:
        return next(self.left, 10_000)


def test_a_planner_out_of_time_continues_in_a_new_planning_message_and_the_totals_stay_exact(
    pipeline: Pipeline, written: list, settings: Settings
):
    """When the deadline passes (planner.MARGIN_MS before the timeout) the planner gives its lease
    back and queues the segment again (`release_segment` + `send_segments`); the next invocation
    continues from the checkpoint. Without the new message the batch never seals."""
    pipeline.aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=lines(60))
    pipeline.context = ShortContext

    batcher.create_batch(definition(), SLOT, settings)
    (alert,) = pipeline.run()

    assert pipeline.outcomes == ["continued"] * 3 + ["finished"]  # one group each, then the empty rest
    assert alert["totals"] == {"items": 60, "succeeded": 60, "failed": 0}
    assert pipeline.aws.header(BATCH_ID)["total_chunks"] == 12
    assert [len(call) for call in written] == [GROUP] * 3
    assert pipeline.sent == Counter({(0, n): 1 for n in chunk_numbers(12)})
    assert every_item_ran_once(60)


def test_a_segment_remove_delivered_three_times_at_once_seals_the_batch_once(
    pipeline: Pipeline, settings: Settings, monkeypatch: pytest.MonkeyPatch, serialized_aws: None
):
    """The stream record of the last segment row's REMOVE, redelivered, reaches three finalizers
    together; each finds no segment row and tries to seal. `store.seal` is conditioned on
    CREATING, so one wins; without the condition each rewrites `sealed_at` and `open_shards`."""
    pipeline.aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=lines(20))
    batcher.create_batch(definition(), SLOT, settings)
    pipeline.plan()
    records = pipeline.stream_records()
    assert any(r["eventName"] == "REMOVE" and r["dynamodb"]["Keys"]["sk"]["S"].startswith("P#") for r in records)
    all_seal = threading.Barrier(3)
    real_seal = BatchStore.seal
    sealed: list[bool] = []

    def seal_together(self: BatchStore, *args: Any) -> bool:
        all_seal.wait(timeout=10)
        sealed.append(real_seal(self, *args))
        return sealed[-1]

    monkeypatch.setattr(BatchStore, "seal", seal_together)
    threads = [
        threading.Thread(target=finalizer.handle_stream_event, args=({"Records": records}, settings, DEFINITIONS))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    monkeypatch.setattr(BatchStore, "seal", real_seal)

    assert sorted(sealed) == [False, False, True]
    seals = [
        r for r in pipeline.stream_records()
        if r["dynamodb"]["Keys"]["sk"]["S"] == "META" and r["dynamodb"].get("NewImage", {}).get("status", {}).get("S") == model.SEALED
        and r["dynamodb"].get("OldImage", {}).get("status", {}).get("S") == model.CREATING
    ]
    assert len(seals) == 1
    (alert,) = pipeline.run()
    assert alert["totals"] == {"items": 20, "succeeded": 20, "failed": 0}


def test_the_finalizers_stream_filter_lets_a_segment_rows_remove_through(pipeline: Pipeline, settings: Settings):
    """The finalizer seals an object-source batch when it sees its last segment row's REMOVE
    (finalizer.segments_drained). The deployed mapping's FilterCriteria (infra/event-sources.json,
    applied the same way by the local stack) keeps only chunk REMOVEs (`sk` prefix "C#") and the
    header's CREATING -> SEALED change, so on AWS that REMOVE never reaches the finalizer: the
    batch stays CREATING until the sweeper's resume seals it, STUCK_CREATING_SECONDS (16 min)
    later. The filter needs a third pattern, the same as the chunk one with the prefix "P#"."""
    pipeline.aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=lines(20))
    batcher.create_batch(definition(), SLOT, settings)
    pipeline.plan()
    removes = [r for r in pipeline.stream_records() if r["eventName"] == "REMOVE" and r["dynamodb"]["Keys"]["sk"]["S"].startswith("P#")]
    assert len(removes) == 1
    deployed = load_mapping_settings("finalize", DYNAMODB)

    assert matching(removes, deployed.event_filter) == removes


# -- the object vanishes or changes --------------------------------------------------------------


@pytest.mark.parametrize("change", ["deleted", "replaced"])
def test_an_object_gone_or_replaced_mid_expansion_ends_the_batch_failed_with_one_alert_naming_it(
    pipeline: Pipeline, settings: Settings, change: str
):
    """A segment read after its object went (NoSuchKey) or changed (If-Match: 412) ends the batch:
    expand's `except (SourceError, SourceChangedError): fail(...)`, and `fail_batch` is conditioned
    on CREATING so the other segments' planners alert no one again. Without the except, the
    planner fails forever and no alert is ever sent."""
    pipeline.aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=lines(60))
    settings = pipeline.settings = dataclasses.replace(settings, segment_bytes=400)
    header = batcher.create_batch(definition(), SLOT, settings)
    assert header["segments"] == 3
    messages = sorted(pipeline.aws.planning_messages(), key=lambda m: json.loads(m["Body"])["segment"])
    planner.handle_sqs_event(sqs_event(messages[:1], PLANNING_QUEUE_NAME), settings)  # segment 0 expanded
    if change == "deleted":
        pipeline.aws.s3.delete_object(Bucket=BUCKET, Key=KEY)
        reason = f"{URI}: not found"
    else:
        pipeline.aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=lines(60, version=2))
        reason = f"{URI} changed since the batch was created (ETag "
    for message in messages[1:]:
        pipeline._return(pipeline.aws.planning_queue_url, message)

    alerts = pipeline.run()

    assert [alert["status"] for alert in alerts] == [model.FAILED]
    assert alerts[0]["reason"].startswith(reason)
    assert pipeline.outcomes == ["finished", "failed", "not creating"]
    assert list(BatchStore(settings.table_name).segment_rows(BATCH_ID)) == []
    assert all(version == 1 for _, version in RUNS)  # nothing ran on the new data


def test_a_chunk_re_sent_by_the_sweeper_after_its_object_changed_fails_and_nothing_runs_on_new_data(
    pipeline: Pipeline, clock: Clock, settings: Settings
):
    """The sweeper re-sends lost messages rebuilt from the row's span (`work.chunk_of` ->
    `sources.rebuild`, If-Match on the planned ETag): items of an object that changed fail with
    "changed since the batch was created"; items that ran before the change count as done."""
    pipeline.aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=lines(60))
    batcher.create_batch(definition(), SLOT, settings)
    pipeline.plan()
    work = sorted(pipeline.aws.work_messages(), key=lambda m: json.loads(m["Body"])["chunk"])
    processor.handle_sqs_event(sqs_event(work[:5]), settings)  # 25 items run; the other messages are lost
    pipeline.finalize()
    assert pipeline.aws.header(BATCH_ID)["status"] == model.SEALED
    pipeline.aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=lines(60, version=2))

    report = sweep_after(clock, settings.resend_after_seconds + 1, settings)
    (alert,) = pipeline.run()

    assert report.resent == {BATCH_ID: 7}
    assert alert["status"] == model.COMPLETED_WITH_FAILURES
    assert alert["totals"] == {"items": 60, "succeeded": 25, "failed": 35}
    assert all("changed since the batch was created" in sample["error"] for sample in alert["sample_errors"])
    assert RUNS == Counter({(n, 1): 1 for n in range(25)})  # nothing on the new data, nothing twice


@pytest.mark.parametrize("rebuilt_by", ["the sweeper", "a redrive"])
def test_a_chunk_rebuilt_after_its_object_changed_is_sent_in_messages_the_queue_accepts_and_the_batch_ends(
    pipeline: Pipeline, clock: Clock, settings: Settings, rebuilt_by: str
):
    """A rebuilt chunk of a changed object carries an error per item instead of its line (and
    each error names the object): 200 items of ~20 bytes cut to fit 8 KiB come back as ~50 KB.
    `send_chunks` checks every body against the queue's limit (`model.fit_to_message`) and
    sends such a chunk as several messages; without it SQS refuses the request on every
    sweep (BatchRequestTooLong) and the batch never ends."""
    settings = pipeline.settings = dataclasses.replace(settings, max_message_bytes=8192)
    pipeline.aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=lines(400, failing=lambda n: rebuilt_by == "a redrive"))
    big = dataclasses.replace(definition(), items_per_message=200)
    batcher.create_batch(big, SLOT, settings)
    pipeline.plan()
    if rebuilt_by == "the sweeper":
        lost = pipeline.aws.work_messages()  # every message lost
        pipeline.finalize()
        pipeline.aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=lines(400, version=2))
        report = sweep_after(clock, settings.resend_after_seconds + 1, settings)
        assert report.resent == {BATCH_ID: len(lost)}
    else:
        (first,) = pipeline.run()
        assert first["totals"]["failed"] == 400
        pipeline.aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=lines(400, version=2))
        redrive.redrive(BATCH_ID, settings)
    messages = pipeline.aws.work_messages()
    assert len(messages) > 2 and max(len(message["Body"].encode()) for message in messages) <= 8192
    for message in messages:
        pipeline._return(pipeline.aws.work_queue_url, message)

    alert = pipeline.run()[-1]

    assert alert["status"] == model.COMPLETED_WITH_FAILURES
    assert alert["totals"] == {"items": 400, "succeeded": 0, "failed": 400}
    assert all("changed since the batch was created" in sample["error"] for sample in alert["sample_errors"])
    assert not any(version == 2 for _, version in RUNS)


def test_a_dead_letter_after_its_object_changed_runs_the_items_it_carries_never_the_new_data(
    pipeline: Pipeline, settings: Settings
):
    """The dead-letter handler re-sends the dead letter's own items (`message.rest(row["pending"])`):
    the data the chunk was cut from, not a re-read of the object. So a change after planning runs
    nothing new there, and nothing needs to fail. (Rebuild from the source instead and these items
    would fail as changed, or, without the pin, run on the new data.)"""
    pipeline.aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=lines(20))
    batcher.create_batch(definition(), SLOT, settings)
    pipeline.plan()
    work = pipeline.aws.work_messages()
    processor.handle_sqs_event(sqs_event(work[1:]), settings)
    pipeline.aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=lines(20, version=2))

    # The first message's deliveries all crashed: it reaches the dead-letter queue.
    dead = sqs_event(work[:1], DEAD_LETTER_QUEUE_NAME)
    dead["Records"][0]["attributes"]["ApproximateReceiveCount"] = "5"
    assert deadletters.handle_sqs_event(dead, settings) == {"batchItemFailures": []}
    (alert,) = pipeline.run()

    assert alert["status"] == model.COMPLETED and alert["totals"] == {"items": 20, "succeeded": 20, "failed": 0}
    assert every_item_ran_once(20, version=1)


def test_a_redrive_after_the_object_changed_fails_the_redriven_items_as_changed_and_runs_nothing_new(
    pipeline: Pipeline, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """A redrive restores F rows with their span and rebuilds their messages from the object
    (`work.chunk_of(..., row.get("span"))` in restoring.restore_failures): once the object changed, the
    redriven items fail again, now as "changed since the batch was created", in attempt 2's alert."""
    monkeypatch.setenv("ITEM_MAX_ATTEMPTS", "1")
    settings = pipeline.settings = dataclasses.replace(settings, item_max_attempts=1)
    pipeline.aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=lines(30, failing=lambda n: n % 10 == 3))
    batcher.create_batch(definition(), SLOT, settings)
    (first,) = pipeline.run()
    assert first["totals"] == {"items": 30, "succeeded": 27, "failed": 3}
    pipeline.aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=lines(30, version=2))

    redrive.redrive(BATCH_ID, settings)
    (_, second) = pipeline.run()

    assert second["alert_id"] == f"{BATCH_ID}/2" and second["status"] == model.COMPLETED_WITH_FAILURES
    assert second["totals"] == {"items": 30, "succeeded": 27, "failed": 3}
    assert all("changed since the batch was created" in sample["error"] for sample in second["sample_errors"])
    assert len(second["sample_errors"]) == 3
    assert RUNS == Counter({(n, 1): 1 for n in range(30)})  # attempt 1 only; nothing on version 2


# -- throttling ----------------------------------------------------------------------------------


def _caps(base: float, ceiling: float, rounds: int) -> list[float]:
    return [min(ceiling, base * 2**n) for n in range(rounds)]


def assert_jittered(sleeps: list[float], caps: list[float]) -> None:
    """Each wait within its round's exponential cap, and spread out (full jitter), not the cap itself."""
    assert len(sleeps) == len(caps)
    assert all(0 <= wait <= cap for wait, cap in zip(sleeps, caps)), list(zip(sleeps, caps))
    assert len(set(sleeps)) == len(sleeps) and any(wait < cap * 0.9 for wait, cap in zip(sleeps, caps))


def spy(monkeypatch: pytest.MonkeyPatch, client: Any, name: str, fake: Callable[..., Any]) -> None:
    real = getattr(client, name)
    monkeypatch.setattr(client, name, lambda **kwargs: fake(real, **kwargs))


def test_unprocessed_items_from_batch_write_item_are_retried_alone_with_jittered_backoff(
    pipeline: Pipeline, written: list, settings: Settings, monkeypatch: pytest.MonkeyPatch, no_backoff: list[float]
):
    """store._batch_write retries exactly the UnprocessedItems, after a full-jitter wait that
    doubles from 50 ms up to 2 s (`random.uniform(0, min(2.0, 0.05 * 2**attempt))`). Drop the
    retry and rows are missing (their messages run nothing: items lost)."""
    random.seed(20261201)
    pipeline.aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=lines(60))
    requests: list[int] = []

    def two_at_a_time(real: Any, RequestItems: dict, **kwargs: Any) -> Any:
        ((table, puts),) = RequestItems.items()
        requests.append(len(puts))
        real(RequestItems={table: puts[:2]}, **kwargs)  # DynamoDB took two, throttled the rest
        return {"UnprocessedItems": {table: puts[2:]} if puts[2:] else {}}

    spy(monkeypatch, aws_clients.client("dynamodb"), "batch_write_item", two_at_a_time)
    batcher.create_batch(definition(), SLOT, settings)
    (alert,) = pipeline.run()

    assert requests == [4, 2] * 3  # each group: 4 rows, then the 2 left over
    assert_jittered(no_backoff, _caps(0.05, 2.0, 1) * 3)
    assert alert["totals"] == {"items": 60, "succeeded": 60, "failed": 0} and every_item_ran_once(60)


def test_batch_write_item_that_keeps_leaving_rows_unprocessed_gives_up_after_its_bound_and_the_batch_still_ends(
    pipeline: Pipeline, clock: Clock, settings: Settings, monkeypatch: pytest.MonkeyPatch, no_backoff: list[float]
):
    """The retry is bounded (`_MAX_UNPROCESSED_ROUNDS` = 12, waits capped at 2 s): the planner
    invocation fails with an error saying how many rows were left, instead of retrying for
    ever inside one Lambda. Nothing was checkpointed, so the segment is expanded again later
    (sweeper, after the lease) and the batch ends with exact totals."""
    random.seed(7)
    pipeline.aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=lines(20))
    calls: list[int] = []
    throttled = [True]

    def nothing_processed(real: Any, RequestItems: dict, **kwargs: Any) -> Any:
        if not throttled[0]:
            return real(RequestItems=RequestItems, **kwargs)
        calls.append(1)
        return {"UnprocessedItems": RequestItems}

    spy(monkeypatch, aws_clients.client("dynamodb"), "batch_write_item", nothing_processed)
    batcher.create_batch(definition(), SLOT, settings)
    (message,) = pipeline.aws.planning_messages()
    with pytest.raises(RuntimeError, match="^BatchWriteItem left 4 rows unprocessed after 12 rounds$"):
        planner.expand(BatchStore(settings.table_name), BATCH_ID, 0, 1, settings)

    assert len(calls) == 12
    assert_jittered(no_backoff, _caps(0.05, 2.0, 12))
    assert sum(no_backoff) <= sum(_caps(0.05, 2.0, 12))  # at most ~17 s of waiting, then the error
    assert pipeline.aws.chunk_rows(BATCH_ID) == [] and pipeline.aws.work_messages() == []

    throttled[0] = False
    sweep_after(clock, PAST_THE_LEASE, settings)
    (alert,) = pipeline.run()
    assert alert["totals"] == {"items": 20, "succeeded": 20, "failed": 0} and every_item_ran_once(20)


def test_failed_send_message_batch_entries_are_retried_alone_with_jittered_backoff(
    pipeline: Pipeline, settings: Settings, monkeypatch: pytest.MonkeyPatch, no_backoff: list[float]
):
    """batcher._send_with_retries re-sends only the entries SQS reported `Failed` (not sender
    faults), after a full-jitter wait doubling from 50 ms to 2 s. Drop the retry and those
    chunks' rows wait for a message that never comes."""
    random.seed(11)
    pipeline.aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=lines(60))
    requests: list[list[str]] = []

    def fail_the_last_two(real: Any, QueueUrl: str, Entries: list, **kwargs: Any) -> Any:
        requests.append([entry["Id"] for entry in Entries])
        if len(Entries) < 3:
            return real(QueueUrl=QueueUrl, Entries=Entries, **kwargs)
        response = real(QueueUrl=QueueUrl, Entries=Entries[:-2], **kwargs)
        failed = [{"Id": e["Id"], "SenderFault": False, "Code": "ServiceUnavailable", "Message": "try again"} for e in Entries[-2:]]
        return {"Successful": response["Successful"], "Failed": failed}

    spy(monkeypatch, aws_clients.client("sqs"), "send_message_batch", fail_the_last_two)
    batcher.create_batch(definition(), SLOT, settings)  # the planning message goes through the same retry
    (alert,) = pipeline.run()

    work_sends = [ids for ids in requests if len(ids) == GROUP]
    assert len(work_sends) == 3 and all(ids == ["0", "1", "2", "3"] for ids in work_sends)
    assert requests.count(["2", "3"]) == 3  # each group's failed entries, alone
    assert_jittered(no_backoff, _caps(0.05, 2.0, 1) * 3)
    assert pipeline.sent == Counter({(0, n): 1 for n in chunk_numbers(12)})
    assert alert["totals"] == {"items": 60, "succeeded": 60, "failed": 0} and every_item_ran_once(60)


def test_send_message_batch_that_keeps_failing_gives_up_after_its_bound_and_the_listed_group_is_sent_later(
    pipeline: Pipeline, clock: Clock, settings: Settings, monkeypatch: pytest.MonkeyPatch, no_backoff: list[float]
):
    """Bounded at `_MAX_SEND_ROUNDS` = 8 with a clear error; the group was checkpointed as
    `unsent` before the send, so the segment's next holder sends it from its rows."""
    random.seed(3)
    pipeline.aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=lines(20))
    batcher.create_batch(definition(), SLOT, settings)
    (message,) = pipeline.aws.planning_messages()
    failing = [True]

    def always_failed(real: Any, QueueUrl: str, Entries: list, **kwargs: Any) -> Any:
        if not failing[0]:
            return real(QueueUrl=QueueUrl, Entries=Entries, **kwargs)
        return {"Successful": [], "Failed": [{"Id": e["Id"], "SenderFault": False, "Code": "ServiceUnavailable"} for e in Entries]}

    spy(monkeypatch, aws_clients.client("sqs"), "send_message_batch", always_failed)
    with pytest.raises(RuntimeError, match="^SendMessageBatch still failing for 4 messages after 8 rounds$"):
        planner.expand(BatchStore(settings.table_name), BATCH_ID, 0, 1, settings)

    assert_jittered(no_backoff, _caps(0.05, 2.0, 8))
    (segment,) = BatchStore(settings.table_name).segment_rows(BATCH_ID)
    assert segment["unsent"] == [[0, n] for n in chunk_numbers(4)]

    failing[0] = False
    sweep_after(clock, PAST_THE_LEASE, settings)
    (alert,) = pipeline.run()
    assert alert["totals"] == {"items": 20, "succeeded": 20, "failed": 0} and every_item_ran_once(20)
    assert pipeline.sent == Counter({(0, n): 1 for n in chunk_numbers(4)})


_ERROR_TYPES = {
    "dynamodb": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
    "sqs": "com.amazonaws.sqs#ThrottlingException",
}


@pytest.fixture
def throttle(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """{"dynamodb.BatchWriteItem": n, ...}: the next n requests of that operation answer HTTP 400
    ProvisionedThroughputExceededException (DynamoDB) or ThrottlingException (SQS), in front of
    moto, so botocore's own retry (standard mode, aws._CONFIG) sees a real throttling response."""
    plan: dict[str, int] = {}
    real = BotocoreStubber.__call__

    def throttled(self: BotocoreStubber, event_name: str, request: Any, **kwargs: Any) -> Any:
        operation = event_name.removeprefix("before-send.")
        if plan.get(operation, 0) > 0:
            plan[operation] -= 1
            service = operation.split(".")[0]
            body = json.dumps({"__type": _ERROR_TYPES[service], "message": "Rate exceeded"})
            return AWSResponse(request.url, 400, {"Content-Type": "application/x-amz-json-1.0"}, MockRawResponse(body))
        return real(self, event_name, request, **kwargs)

    monkeypatch.setattr(BotocoreStubber, "__call__", throttled)
    return plan


def test_throttling_errors_are_retried_by_the_client_with_jittered_exponential_backoff(
    pipeline: Pipeline, settings: Settings, throttle: dict[str, int], no_backoff: list[float]
):
    """aws._CONFIG's standard retry mode retries ProvisionedThroughputExceededException and
    ThrottlingException with full jitter, rand * min(2^attempt s, 20 s). With max_attempts 0
    the first throttle fails the call: here the batcher's planning, the planner, the finalizer."""
    random.seed(5)
    pipeline.aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=lines(60))
    throttle.update({"dynamodb.BatchWriteItem": 2, "sqs.SendMessageBatch": 2, "dynamodb.UpdateItem": 1, "dynamodb.TransactWriteItems": 1})

    batcher.create_batch(definition(), SLOT, settings)
    (alert,) = pipeline.run()

    assert set(throttle.values()) == {0}  # every throttle struck
    # Two in a row on BatchWriteItem and on SendMessageBatch: waits of up to 1 s then 2 s.
    assert len(no_backoff) == 6 and all(0 < wait <= 2 for wait in no_backoff) and len(set(no_backoff)) == 6
    assert alert["totals"] == {"items": 60, "succeeded": 60, "failed": 0} and every_item_ran_once(60)
    assert pipeline.sent == Counter({(0, n): 1 for n in chunk_numbers(12)})


def test_throttling_past_the_client_bound_fails_the_planner_with_the_error_and_the_batch_still_ends(
    pipeline: Pipeline, clock: Clock, settings: Settings, throttle: dict[str, int], no_backoff: list[float]
):
    """The client gives up after 5 retries (6 attempts; waits capped at 1, 2, 4, 8, 16 s) and the
    planner invocation fails naming the throttling error; the segment is expanded again after its
    lease and the totals are exact."""
    random.seed(9)
    pipeline.aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=lines(20))
    batcher.create_batch(definition(), SLOT, settings)
    throttle["dynamodb.BatchWriteItem"] = 6

    with pytest.raises(ClientError, match=r"ProvisionedThroughputExceededException.*BatchWriteItem operation \(reached max retries: 5\)"):
        planner.expand(BatchStore(settings.table_name), BATCH_ID, 0, 1, settings)

    assert throttle["dynamodb.BatchWriteItem"] == 0
    assert_jittered(no_backoff, _caps(1.0, 20.0, 5))
    sweep_after(clock, PAST_THE_LEASE, settings)
    (alert,) = pipeline.run()
    assert alert["totals"] == {"items": 20, "succeeded": 20, "failed": 0} and every_item_ran_once(20)


def test_a_planner_that_fails_with_an_error_gives_its_segment_back_so_the_retry_finishes_it(
    pipeline: Pipeline, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """A planner that raises (throttled past every retry, say) is alive to clean up: it releases
    its lease (planner.expand's `except Exception`), so the message's retry takes the segment at
    once instead of finding it "taken or done" and leaving it to the sweeper after the lease.
    A Lambda that dies (Crash, above) cannot, and the lease covers that case."""
    pipeline.aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=lines(60))
    real = BatchStore.finish_segment
    calls: list[int] = []

    def throttled_once(self: BatchStore, *args: Any, **kwargs: Any) -> bool:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("BatchWriteItem left 3 rows unprocessed after 12 rounds")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(BatchStore, "finish_segment", throttled_once)
    batcher.create_batch(definition(), SLOT, settings)

    (alert,) = pipeline.run()

    assert pipeline.outcomes[-1] == "finished" and len(calls) == 2
    assert alert["totals"] == {"items": 60, "succeeded": 60, "failed": 0}
    assert every_item_ran_once(60)
