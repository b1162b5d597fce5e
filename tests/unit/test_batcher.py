"""The batcher: header -> chunk rows -> their messages -> seal, once per schedule slot."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from chalicelib import aws as aws_clients
from chalicelib import batcher, model
from chalicelib.config import Definition, Settings
from chalicelib.errors import BadRequestError, UnknownTaskError
from chalicelib.sources import items_from
from chalicelib.store import BatchStore

from .conftest import MockedAws

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

    header = aws.header(BATCH_ID)
    assert header["status"] == model.SEALED == returned["status"]
    assert header["batch_id"] == BATCH_ID
    assert header["definition"] == "nightly"
    assert header["task"] == "sleep"
    assert header["scheduled_at"] == "2026-11-23T06:00:00.000Z"
    assert header["total_items"] == 1000
    assert header["total_chunks"] == 10
    assert header["shards"] == 1
    assert header["open_shards"] == {0}
    assert header["sealed_at"] >= header["created_at"]
    assert (header["attempt"], header["chunks_written"]) == (1, 10)
    rows = aws.chunk_rows(BATCH_ID)
    assert len(rows) == 10
    assert [row["pk"] for row in rows] == [f"B#{BATCH_ID}#0"] * 10
    assert [row["pending"] for row in rows] == [set(range(n * 100, n * 100 + 100)) for n in range(10)]
    # Each row belongs to the batch's attempt, starts with no item attempts or errors, and has
    # no TTL: it leaves only when its items are done or failed, however long the batch runs.
    assert all((row["attempt"], row["tries"], row["errors"]) == (1, {}, {}) for row in rows)
    assert not [row for row in rows if "expires_at" in row]


def test_create_batch_sends_one_message_per_chunk_with_the_items_of_the_source(
    aws: MockedAws, nightly: Definition, settings: Settings
):
    batcher.create_batch(nightly, SLOT, settings)

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
    number read back as 1 would change the message size and so where a resume cuts chunks."""
    options = {"scale": 1.0, "ratio": 0.002, "label": "x"}
    small = dataclasses.replace(settings, max_message_bytes=4096)  # chunks cut by size, not K

    batcher.create_batch(dataclasses.replace(nightly, task_options=options, items_per_message=1000), SLOT, small)

    sent = sorted((m["Body"] for m in aws.work_messages()), key=lambda body: model.parse_message(body).chunk_no)
    stored = aws.header(BATCH_ID)
    rebuilt = [chunk.body() for chunk in batcher.cut_chunks(stored, stored["shards"])]
    assert len(sent) > 1  # cut by size: K=1000 alone would make one chunk
    assert rebuilt == sent
    assert '"options":{"scale":1.0,"ratio":0.002,"label":"x"}' in sent[0]


@pytest.mark.parametrize("k", [70, 300, 1000])
def test_chunk_count_is_items_divided_by_k_rounded_up(aws: MockedAws, nightly: Definition, settings: Settings, k: int):
    batcher.create_batch(dataclasses.replace(nightly, items_per_message=k), SLOT, settings)

    expected = math.ceil(1000 / k)
    assert aws.header(BATCH_ID)["total_chunks"] == expected
    assert len(aws.chunk_rows(BATCH_ID)) == expected
    assert len(aws.work_messages()) == expected


def test_scheduled_event_time_names_the_batch(aws: MockedAws, nightly: Definition, settings: Settings):
    header = batcher.create_scheduled_batch(nightly, "2026-11-23T06:00:00Z", settings)

    assert header["batch_id"] == BATCH_ID
    assert aws.header(BATCH_ID)["scheduled_at"] == "2026-11-23T06:00:00.000Z"


def test_large_batch_spreads_rows_round_robin_over_shards(aws: MockedAws, nightly: Definition, settings: Settings):
    batcher.create_batch(nightly, SLOT, dataclasses.replace(settings, shard_chunk_target=3))

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
    assert len(aws.work_messages()) == 10
    rows_after_first = aws.rows()

    again = batcher.create_scheduled_batch(nightly, "2026-11-23T06:00:00Z", settings)

    assert aws.work_messages() == []
    assert aws.rows() == rows_after_first
    header = aws.header(BATCH_ID)
    assert again["batch_id"] == BATCH_ID
    assert again["created_at"] == header["created_at"]
    assert again["status"] == model.SEALED


def test_a_later_slot_is_a_new_batch(aws: MockedAws, nightly: Definition, settings: Settings):
    batcher.create_scheduled_batch(nightly, "2026-11-23T06:00:00Z", settings)
    batcher.create_scheduled_batch(nightly, "2026-11-23T12:00:00Z", settings)

    assert aws.header("nightly-2026-11-23T12:00Z")["status"] == model.SEALED
    assert len(aws.work_messages()) == 20


# -- bad input writes nothing ---------------------------------------------------------------------


def test_unknown_task_raises_and_writes_nothing(aws: MockedAws, nightly: Definition, settings: Settings):
    with pytest.raises(UnknownTaskError, match="unknown task 'resize'"):
        batcher.create_batch(dataclasses.replace(nightly, task="resize"), SLOT, settings)

    assert aws.rows() == []
    assert aws.work_messages() == []


def test_item_too_large_for_a_message_writes_nothing(
    aws: MockedAws, nightly: Definition, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    def source_with_one_large_item(source, batch_id):
        for index in range(source.count):
            yield {"id": index, "payload": "x" * (5000 if index == 750 else 10)}

    monkeypatch.setattr(batcher.sources, "items_from", source_with_one_large_item)

    with pytest.raises(BadRequestError, match=r"^item 750 is"):
        batcher.create_batch(nightly, SLOT, dataclasses.replace(settings, max_message_bytes=4096))

    # Items 0..749 were fine: writing as it went would have left 7 chunks behind.
    assert aws.rows() == []
    assert aws.work_messages() == []


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

    batcher.create_batch(nightly, SLOT, settings)

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
        batcher.create_batch(nightly, SLOT, settings)

    assert aws.work_messages() == []
    assert aws.header(BATCH_ID)["status"] == model.CREATING


def test_failed_send_entries_are_retried_alone(
    aws: MockedAws, nightly: Definition, settings: Settings, monkeypatch: pytest.MonkeyPatch, no_backoff: list[float]
):
    calls: list[list[str]] = []

    def fail_three_the_first_time(real, QueueUrl, Entries, **kwargs):
        calls.append([entry["Id"] for entry in Entries])
        if len(calls) > 1:
            return real(QueueUrl=QueueUrl, Entries=Entries, **kwargs)
        response = real(QueueUrl=QueueUrl, Entries=Entries[:-3], **kwargs)
        failed = [{"Id": e["Id"], "SenderFault": False, "Code": "InternalError"} for e in Entries[-3:]]
        return {"Successful": response["Successful"], "Failed": failed}

    spy(monkeypatch, aws_clients.client("sqs"), "send_message_batch", fail_three_the_first_time)

    batcher.create_batch(nightly, SLOT, settings)

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
        batcher.create_batch(nightly, SLOT, settings)

    assert aws.header(BATCH_ID)["status"] == model.CREATING


# -- invariants 1 and 2: order of operations -------------------------------------------------------


def test_every_chunk_row_exists_before_its_message_is_sent(
    aws: MockedAws, nightly: Definition, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """Invariant 1: a message whose row is not there yet could be drained into nothing."""
    checked: list[int] = []
    missing: list[int] = []

    def check_rows_then_send(real, QueueUrl, Entries, **kwargs):
        for entry in Entries:
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
    batcher.create_batch(dataclasses.replace(nightly, items_per_message=10), SLOT, settings)

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
        # Checkpoints record progress while CREATING; the seal is the one that sets SEALED.
        operations.append(("seal" if ":sealed" in kwargs["UpdateExpression"] else "checkpoint", 1))
        return real(**kwargs)

    spy(monkeypatch, dynamodb, "update_item", record_update)
    spy(monkeypatch, aws_clients.client("sqs"), "send_message_batch", record("send", lambda kw: len(kw["Entries"])))

    batcher.create_batch(dataclasses.replace(nightly, items_per_message=10), SLOT, settings)

    names = [name for name, _ in operations]
    assert names[0] == "header"
    assert names.count("seal") == 1 and names[-1] == "seal"
    seal = names.index("seal")
    assert sum(n for name, n in operations[:seal] if name == "rows") == 100
    assert "rows" not in names[seal:]
    assert sum(n for name, n in operations if name == "send") == 100
    assert aws.header(BATCH_ID)["status"] == model.SEALED


# -- invariant 11: two fillers of one batch never both seal ------------------------------------------


def test_a_filler_overtaken_by_a_resumed_one_stops_at_its_next_checkpoint_and_never_seals(
    aws: MockedAws, nightly: Definition, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """104 items, K=2: 52 chunks in groups of 25, 25 and 2. The sweeper resumes the batch (it looked
    stuck) while the first batcher is still writing its first group; the rival finishes and seals."""
    small = dataclasses.replace(nightly, source=dataclasses.replace(nightly.source, count=104), items_per_message=2)
    real_checkpoint = BatchStore.checkpoint
    seals: list[str] = []
    checkpoints: list[tuple[int, bool]] = []
    real_seal = BatchStore.seal

    def seal(self, batch_id, attempt, shards, sealed_at):
        sealed = real_seal(self, batch_id, attempt, shards, sealed_at)
        seals.append("sealed" if sealed else "refused")
        return sealed

    def checkpoint(self, batch_id, attempt, chunks_written, unsent):
        if not checkpoints:
            checkpoints.append((-1, True))
            batcher.fill_and_seal(self, self.get_header(batch_id), settings)  # the rival, start to finish
        moved = real_checkpoint(self, batch_id, attempt, chunks_written, unsent)
        checkpoints.append((chunks_written, moved))
        return moved

    monkeypatch.setattr(BatchStore, "checkpoint", checkpoint)
    monkeypatch.setattr(BatchStore, "seal", seal)

    returned = batcher.create_batch(small, SLOT, settings)

    assert checkpoints[1:] == [(25, True), (50, True), (52, True), (25, False)]  # the rival's three, then the first's
    assert seals == ["sealed"]
    header = aws.header(BATCH_ID)
    assert (header["status"], header["chunks_written"]) == (model.SEALED, 52)
    assert returned["status"] == model.SEALED
    # The overtaken filler's checkpoint comes before its send, so it sends nothing: every message once.
    assert Counter(m.chunk_no for m in sent_chunks(aws)) == Counter(range(52))


def test_a_checkpoint_only_moves_forward_and_only_while_creating_at_its_attempt(
    aws: MockedAws, nightly: Definition, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    store = BatchStore(settings.table_name)
    seal = BatchStore.seal
    monkeypatch.setattr(BatchStore, "seal", lambda *args: False)  # the batcher dies before its seal
    batcher.create_batch(nightly, SLOT, settings)
    assert aws.header(BATCH_ID)["chunks_written"] == 10

    assert store.checkpoint(BATCH_ID, 1, 5, [[0, 4]]) is False  # backwards
    assert store.checkpoint(BATCH_ID, 1, 10, [[0, 9]]) is False  # not forward
    assert store.checkpoint(BATCH_ID, 2, 11, [[0, 10]]) is False  # another attempt
    assert aws.header(BATCH_ID)["chunks_written"] == 10
    assert store.checkpoint(BATCH_ID, 1, 11, [[0, 10]]) is True
    assert store.checkpoint(BATCH_ID, 1, 12, [[0, 11]]) is False  # the group before is not sent yet
    assert seal(store, BATCH_ID, 1, {0}, model.iso(model.utc_now())) is False  # nor can the batch be sealed
    assert store.clear_unsent(BATCH_ID, 1, [[0, 9]]) is False  # another group's list
    assert store.clear_unsent(BATCH_ID, 1, [[0, 10]]) is True

    assert seal(store, BATCH_ID, 2, {0}, model.iso(model.utc_now())) is False  # the seal is fenced on the attempt too
    assert seal(store, BATCH_ID, 1, {0}, model.iso(model.utc_now())) is True
    assert store.checkpoint(BATCH_ID, 1, 12, [[0, 11]]) is False  # sealed: no filler moves on
    assert aws.header(BATCH_ID)["chunks_written"] == 11
