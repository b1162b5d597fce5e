"""The batcher and its planning of a generated source: header -> segment -> chunk rows -> their messages -> seal.

Generated (`random`) batches are planned like object sources (index ranges as segments),
so these tests drive the planner too (`create_sealed_batch`), as the planning queue and
the finalizer's segment REMOVE do on AWS.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from chalicelib import aws as aws_clients
from chalicelib import batcher, model, sources, work
from chalicelib.config import Definition, Settings, Source
from chalicelib.errors import BadRequestError, UnknownTaskError
from chalicelib.sources import items_from

from .conftest import MockedAws, create_sealed_batch, plan_batches

SLOT = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
BATCH_ID = "nightly-2026-11-23T06:00Z"


def spy(monkeypatch: pytest.MonkeyPatch, client: Any, operation: str, around: Callable[..., Any]) -> None:
    """Replace `client.operation` with `around(real, **kwargs)` for this test."""
    real = getattr(client, operation)
    monkeypatch.setattr(client, operation, lambda **kwargs: around(real, **kwargs))


def sent_chunks(aws: MockedAws) -> list[model.WorkMessage]:
    return sorted((model.parse_message(m["Body"]) for m in aws.work_messages()), key=lambda m: m.chunk_no)


# -- what a batch is made of ---------------------------------------------------------------


def test_create_batch_writes_a_sealed_header_and_one_row_per_chunk(
    aws: MockedAws, nightly: Definition, settings: Settings
):
    returned = batcher.create_batch(nightly, SLOT, settings)
    assert returned["status"] == model.CREATING  # planned: a planner writes the chunks
    create_sealed_batch(nightly, SLOT, settings)

    header = aws.header(BATCH_ID)
    assert header["status"] == model.SEALED
    assert header["batch_id"] == BATCH_ID
    assert header["definition"] == "nightly"
    assert header["task"] == "sleep"
    assert header["scheduled_at"] == "2026-11-23T06:00:00.000Z"
    assert header["total_items"] == 1000
    assert header["total_chunks"] == 10
    assert header["shards"] == 1
    assert header["open_shards"] == {0}
    assert header["sealed_at"] >= header["created_at"]
    assert (header["attempt"], header["segments"]) == (1, 1)
    rows = aws.chunk_rows(BATCH_ID)
    assert len(rows) == 10
    assert [row["pk"] for row in rows] == [f"B#{BATCH_ID}#0"] * 10
    assert [row["pending"] for row in rows] == [set(range(n * 100, n * 100 + 100)) for n in range(10)]
    # Each row belongs to the batch's attempt, starts with no item attempts or errors, and has
    # no TTL: it leaves only when its items are done or failed, however long the batch runs.
    assert all((row["attempt"], row["tries"], row["errors"]) == (1, {}, {}) for row in rows)
    assert not [row for row in rows if "expires_at" in row]
    # A generated chunk is rebuilt from its indices alone: its row carries no span.
    assert not [row for row in rows if "span" in row]


def test_create_batch_sends_one_message_per_chunk_with_the_items_of_the_source(
    aws: MockedAws, nightly: Definition, settings: Settings
):
    create_sealed_batch(nightly, SLOT, settings)

    messages = sent_chunks(aws)
    assert [m.chunk_no for m in messages] == list(range(10))
    assert {(m.batch_id, m.shard, m.task) for m in messages} == {(BATCH_ID, 0, "sleep")}
    assert all(dict(m.options) == {"scale": 0} for m in messages)
    sent_items = [item for m in messages for item in m.items]
    assert sent_items == list(enumerate(items_from(nightly.source, BATCH_ID)))


def test_fractional_task_options_survive_the_header_so_a_resume_rebuilds_identical_messages(
    aws: MockedAws, nightly: Definition, settings: Settings
):
    """Options like {"scale": 1.0} are floats once parsed: boto3 refuses them as numbers, and a
    number read back as 1 would change the messages a re-send rebuilds."""
    options = {"scale": 1.0, "ratio": 0.002, "label": "x"}
    small = dataclasses.replace(settings, max_message_bytes=4096)  # chunks cut by size, not K

    create_sealed_batch(dataclasses.replace(nightly, task_options=options, items_per_message=1000), SLOT, small)

    sent = sorted((m["Body"] for m in aws.work_messages()), key=lambda body: model.parse_message(body).chunk_no)
    stored = aws.header(BATCH_ID)
    rebuilt = [  # what a sweeper re-send or a dead-letter round builds from the rows
        work.chunk_of(stored, int(row["pk"].rsplit("#", 1)[1]), int(row["sk"][2:]), row["pending"]).body()
        for row in aws.chunk_rows(BATCH_ID)
    ]
    assert len(sent) > 1  # cut by size: K=1000 alone would make one chunk
    assert rebuilt == sent
    assert '"options":{"scale":1.0,"ratio":0.002,"label":"x"}' in sent[0]


@pytest.mark.parametrize("k", [70, 300, 1000])
def test_chunk_count_is_items_divided_by_k_rounded_up(aws: MockedAws, nightly: Definition, settings: Settings, k: int):
    create_sealed_batch(dataclasses.replace(nightly, items_per_message=k), SLOT, settings)

    expected = math.ceil(1000 / k)
    assert aws.header(BATCH_ID)["total_chunks"] == expected
    assert len(aws.chunk_rows(BATCH_ID)) == expected
    assert len(aws.work_messages()) == expected


def test_scheduled_event_time_names_the_batch(aws: MockedAws, nightly: Definition, settings: Settings):
    header = batcher.create_scheduled_batch(nightly, "2026-11-23T06:00:00Z", settings)

    assert header["batch_id"] == BATCH_ID
    assert aws.header(BATCH_ID)["scheduled_at"] == "2026-11-23T06:00:00.000Z"


def test_large_batch_spreads_rows_round_robin_over_shards(aws: MockedAws, nightly: Definition, settings: Settings):
    create_sealed_batch(nightly, SLOT, dataclasses.replace(settings, shard_chunk_target=3))

    header = aws.header(BATCH_ID)
    assert header["shards"] == 4
    assert header["open_shards"] == {0, 1, 2, 3}
    rows_per_shard = {
        shard: [r["sk"] for r in aws.chunk_rows(BATCH_ID) if r["pk"] == f"B#{BATCH_ID}#{shard}"] for shard in range(4)
    }
    assert rows_per_shard == {
        0: ["C#00000000", "C#00000004", "C#00000008"],
        1: ["C#00000001", "C#00000005", "C#00000009"],
        2: ["C#00000002", "C#00000006"],
        3: ["C#00000003", "C#00000007"],
    }
    assert [(m.chunk_no, m.shard) for m in sent_chunks(aws)] == [(n, n % 4) for n in range(10)]


# -- one batch per schedule slot ----------------------------------------------------------------


def test_duplicate_schedule_delivery_creates_nothing_new(aws: MockedAws, nightly: Definition, settings: Settings):
    batcher.create_scheduled_batch(nightly, "2026-11-23T06:00:00Z", settings)
    plan_batches(settings)
    assert len(aws.work_messages()) == 10
    rows_after_first = aws.rows()

    again = batcher.create_scheduled_batch(nightly, "2026-11-23T06:00:00Z", settings)

    assert aws.planning_messages() == []
    assert aws.work_messages() == []
    assert aws.rows() == rows_after_first
    header = aws.header(BATCH_ID)
    assert again["batch_id"] == BATCH_ID
    assert again["created_at"] == header["created_at"]
    assert again["status"] == model.SEALED


def test_a_later_slot_is_a_new_batch(aws: MockedAws, nightly: Definition, settings: Settings):
    batcher.create_scheduled_batch(nightly, "2026-11-23T06:00:00Z", settings)
    batcher.create_scheduled_batch(nightly, "2026-11-23T12:00:00Z", settings)
    plan_batches(settings)

    assert aws.header("nightly-2026-11-23T12:00Z")["status"] == model.SEALED
    assert len(aws.work_messages()) == 20


# -- bad input writes nothing ---------------------------------------------------------------------


def test_unknown_task_raises_and_writes_nothing(aws: MockedAws, nightly: Definition, settings: Settings):
    with pytest.raises(UnknownTaskError, match="unknown task 'resize'"):
        batcher.create_batch(dataclasses.replace(nightly, task="resize"), SLOT, settings)

    assert aws.rows() == []
    assert aws.work_messages() == []


def test_item_too_large_for_a_message_writes_nothing(aws: MockedAws, nightly: Definition, settings: Settings):
    """Checked on the largest item the source can generate, before the header exists."""
    bulky = dataclasses.replace(nightly, task_options={"note": "x" * 3900})

    with pytest.raises(BadRequestError, match=r"^item 999 is \d+ bytes as JSON; a message holds at most"):
        batcher.create_batch(bulky, SLOT, dataclasses.replace(settings, max_message_bytes=4096))

    assert aws.rows() == []
    assert aws.planning_messages() == [] and aws.work_messages() == []


def test_the_largest_generated_item_is_the_largest_of_its_batch():
    """The check above trusts that no item of a random source is larger than `largest_item`."""
    source = Source(type="random", count=1500, max_value=1000)
    largest = len(json.dumps(sources.largest_item(source).item, separators=(",", ":")))
    sizes = [len(json.dumps(sources.item_at(source, BATCH_ID, index), separators=(",", ":"))) for index in range(source.count)]
    assert max(sizes) <= largest


# -- AWS partial failures are retried ----------------------------------------------------------------


def test_unprocessed_items_are_retried_until_every_row_is_written(
    aws: MockedAws, nightly: Definition, settings: Settings, monkeypatch: pytest.MonkeyPatch, no_backoff: list[float]
):
    calls: list[int] = []

    def throttle_first_call(real, RequestItems, **kwargs):
        ((table, requests),) = RequestItems.items()
        calls.append(len(requests))
        if len(calls) > 1:
            return real(RequestItems=RequestItems, **kwargs)
        real(RequestItems={table: requests[:4]}, **kwargs)
        return {"UnprocessedItems": {table: requests[4:]}}

    spy(monkeypatch, aws_clients.client("dynamodb"), "batch_write_item", throttle_first_call)

    create_sealed_batch(nightly, SLOT, settings)

    assert calls == [10, 6]
    assert len(no_backoff) == 1  # backed off once before the retry
    assert [row["sk"] for row in aws.chunk_rows(BATCH_ID)] == [model.chunk_sk(n) for n in range(10)]
    assert aws.header(BATCH_ID)["status"] == model.SEALED


def test_rows_that_can_never_be_written_are_never_announced_or_sealed(
    aws: MockedAws, nightly: Definition, settings: Settings, monkeypatch: pytest.MonkeyPatch, no_backoff: list[float]
):
    spy(
        monkeypatch,
        aws_clients.client("dynamodb"),
        "batch_write_item",
        lambda real, RequestItems, **kwargs: {"UnprocessedItems": RequestItems},
    )

    with pytest.raises(RuntimeError, match="unprocessed"):
        create_sealed_batch(nightly, SLOT, settings)

    assert aws.work_messages() == []
    assert aws.header(BATCH_ID)["status"] == model.CREATING


def test_failed_send_entries_are_retried_alone(
    aws: MockedAws, nightly: Definition, settings: Settings, monkeypatch: pytest.MonkeyPatch, no_backoff: list[float]
):
    calls: list[list[str]] = []

    def fail_three_the_first_time(real, QueueUrl, Entries, **kwargs):
        if QueueUrl != aws.work_queue_url:
            return real(QueueUrl=QueueUrl, Entries=Entries, **kwargs)
        calls.append([entry["Id"] for entry in Entries])
        if len(calls) > 1:
            return real(QueueUrl=QueueUrl, Entries=Entries, **kwargs)
        response = real(QueueUrl=QueueUrl, Entries=Entries[:-3], **kwargs)
        failed = [{"Id": e["Id"], "SenderFault": False, "Code": "InternalError"} for e in Entries[-3:]]
        return {"Successful": response["Successful"], "Failed": failed}

    spy(monkeypatch, aws_clients.client("sqs"), "send_message_batch", fail_three_the_first_time)

    create_sealed_batch(nightly, SLOT, settings)

    assert calls == [[str(n) for n in range(10)], ["7", "8", "9"]]
    assert [m.chunk_no for m in sent_chunks(aws)] == list(range(10))  # each exactly once
    assert aws.header(BATCH_ID)["status"] == model.SEALED


def test_malformed_message_rejection_stops_the_batch_before_the_seal(
    aws: MockedAws, nightly: Definition, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    def reject(real, QueueUrl, Entries, **kwargs):
        return {
            "Successful": [],
            "Failed": [{"Id": e["Id"], "SenderFault": True, "Code": "InvalidMessageContents"} for e in Entries],
        }

    spy(monkeypatch, aws_clients.client("sqs"), "send_message_batch", reject)

    with pytest.raises(RuntimeError, match="malformed"):
        create_sealed_batch(nightly, SLOT, settings)

    assert aws.header(BATCH_ID)["status"] == model.CREATING


# -- invariants 1 and 2: order of operations -------------------------------------------------------


def test_every_chunk_row_exists_before_its_message_is_sent(
    aws: MockedAws, nightly: Definition, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """Invariant 1: a message whose row is not there yet could be drained into nothing."""
    checked: list[int] = []
    missing: list[int] = []

    def check_rows_then_send(real, QueueUrl, Entries, **kwargs):
        for entry in Entries if QueueUrl == aws.work_queue_url else ():
            chunk = model.parse_message(entry["MessageBody"])
            row = aws.dynamodb.get_item(
                TableName=aws.table_name,
                Key={
                    "pk": {"S": model.shard_pk(chunk.batch_id, chunk.shard)},
                    "sk": {"S": model.chunk_sk(chunk.chunk_no)},
                },
                ConsistentRead=True,
            )
            (checked if "Item" in row else missing).append(chunk.chunk_no)
        return real(QueueUrl=QueueUrl, Entries=Entries, **kwargs)

    spy(monkeypatch, aws_clients.client("sqs"), "send_message_batch", check_rows_then_send)

    # K=10: 100 chunks, so rows go in several BatchWriteItem calls and messages in several sends.
    create_sealed_batch(dataclasses.replace(nightly, items_per_message=10), SLOT, settings)

    assert missing == []
    assert sorted(checked) == list(range(100))


def test_batch_is_sealed_only_after_every_row_is_written(
    aws: MockedAws, nightly: Definition, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """Invariant 2: until the seal, the finalizer may not complete the batch, so no row may come after it."""
    operations: list[tuple[str, int]] = []
    dynamodb = aws_clients.client("dynamodb")

    def record(name: str, count: Callable[[dict], int] = lambda kwargs: 1):
        def around(real, **kwargs):
            operations.append((name, count(kwargs)))
            return real(**kwargs)

        return around

    spy(monkeypatch, dynamodb, "put_item", record("header"))
    spy(
        monkeypatch,
        dynamodb,
        "batch_write_item",
        record("rows", lambda kw: sum(len(r) for r in kw["RequestItems"].values())),
    )
    def record_update(real, **kwargs):
        # Planning and checkpoints record progress while CREATING; the seal is the one that sets SEALED.
        operations.append(("seal" if ":sealed" in kwargs["UpdateExpression"] else "checkpoint", 1))
        return real(**kwargs)

    spy(monkeypatch, dynamodb, "update_item", record_update)
    work_entries = lambda kw: len(kw["Entries"]) if kw["QueueUrl"] == aws.work_queue_url else 0  # noqa: E731
    spy(monkeypatch, aws_clients.client("sqs"), "send_message_batch", record("send", work_entries))

    create_sealed_batch(dataclasses.replace(nightly, items_per_message=10), SLOT, settings)

    names = [name for name, _ in operations]
    assert names[0] == "header"
    assert names.count("seal") == 1 and names[-1] == "seal"
    seal = names.index("seal")
    assert sum(n for name, n in operations[:seal] if name == "rows") == 100
    assert "rows" not in names[seal:]
    assert sum(n for name, n in operations if name == "send") == 100
    assert aws.header(BATCH_ID)["status"] == model.SEALED
