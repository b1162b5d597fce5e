"""Object sources end to end in moto: S3 lines in, fanned out over segments, results out.

Each test uploads an object, fires the cron batcher, and drives the planning queue, the
work queue and the table stream by hand (the handlers the local stack polls) until the
alert: what the owner sees is the alert, the manifest and the result objects.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from datetime import UTC, datetime
from typing import Any, Mapping

import pytest

from chalicelib import batcher, finalizer, model, planner, planning, processor, results, sources, work
from chalicelib.config import Definition, Results, Settings, Source
from chalicelib import store as store_module
from chalicelib.store import BatchStore
from chalicelib.tasks import task

from .conftest import PLANNING_QUEUE_NAME, MockedAws, sqs_event

BUCKET = "exports"
OUT = "results"
SLOT = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)


@task("echo-id")
def echo_id(item: dict, options: Mapping[str, Any]) -> Any:
    """Returns the item's id, and fails items that say so: a task whose result and failures are checkable."""
    if item.get("fail"):
        raise ValueError(f"item {item['id']} asked to fail")
    return {"id": item["id"]}


def definition(source: Source, results: bool = True, k: int = 10) -> Definition:
    return Definition(
        name="orders",
        schedule="rate(6 hours)",
        source=source,
        task="echo-id",
        items_per_message=k,
        item_seconds=0.1,
        results=Results(OUT, "runs") if results else None,
    )


@pytest.fixture
def buckets(aws: MockedAws) -> MockedAws:
    aws.s3.create_bucket(Bucket=BUCKET)
    aws.s3.create_bucket(Bucket=OUT)
    return aws


def jsonl(count: int, start: int = 0) -> bytes:
    return b"".join(json.dumps({"id": n}).encode() + b"\n" for n in range(start, start + count))


def drive(aws: MockedAws, settings: Settings, rounds: int = 200) -> list[dict[str, Any]]:
    """Run planners, processors and the finalizer on whatever is queued until an alert arrives."""
    for _ in range(rounds):
        for message in aws.planning_messages():
            planner.handle_sqs_event(sqs_event([message], PLANNING_QUEUE_NAME), settings)
        work = aws.work_messages()
        for start in range(0, len(work), 5):
            processor.handle_sqs_event(sqs_event(work[start : start + 5]), settings)
        records = aws.stream_records()
        if records:
            finalizer.handle_stream_event({"Records": records}, settings, {})
        alerts = aws.alerts()
        if alerts:
            return [json.loads(alert["Message"]) for alert in alerts]
    raise AssertionError("no alert")


def result_lines(aws: MockedAws, batch_id: str) -> list[dict[str, Any]]:
    lines = []
    for page in aws.s3.get_paginator("list_objects_v2").paginate(Bucket=OUT, Prefix=f"runs/{batch_id}/1/"):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith(".jsonl") and not obj["Key"].endswith("failures.jsonl"):
                body = aws.s3.get_object(Bucket=OUT, Key=obj["Key"])["Body"].read()
                lines.extend(json.loads(line) for line in body.splitlines())
    return lines


def s3_json(aws: MockedAws, uri: str) -> Any:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return json.loads(aws.s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def failures(aws: MockedAws, alert: Mapping[str, Any]) -> dict[str, str]:
    """The batch's failures file, as {where the item is: its error}."""
    bucket, _, key = s3_json(aws, alert["manifest"])["failures"]["uri"][len("s3://") :].partition("/")
    lines = map(json.loads, aws.s3.get_object(Bucket=bucket, Key=key)["Body"].read().splitlines())
    return {line["at"]: line["error"] for line in lines}


def test_a_jsonl_object_cut_into_segments_runs_every_line_once_and_writes_its_results(
    buckets: MockedAws, settings: Settings
):
    body = jsonl(1000)
    buckets.s3.put_object(Bucket=BUCKET, Key="2026-12-01/orders.jsonl", Body=body)
    settings = dataclasses.replace(settings, segment_bytes=2048)
    source = Source(type="s3-jsonl", uri=f"s3://{BUCKET}/{{date}}/orders.jsonl")

    header = batcher.create_batch(definition(source), SLOT, settings)
    assert header["status"] == model.CREATING and header["planned"]
    assert header["segments"] == -(-len(body) // 2048) > 5  # the {date} placeholder named this run's object
    (alert,) = drive(buckets, settings)

    assert alert["status"] == model.COMPLETED and alert["totals"] == {"items": 1000, "succeeded": 1000, "failed": 0}
    lines = result_lines(buckets, header["batch_id"])
    assert sorted(line["result"]["id"] for line in lines) == list(range(1000))  # every line once, none twice
    manifest = s3_json(buckets, alert["manifest"])
    assert manifest["totals"] == {"items": 1000, "succeeded": 1000, "failed": 0}
    assert manifest["results"]["prefix"] == f"s3://{OUT}/runs/{header['batch_id']}/1/"
    # segments, chunks: all gone (its stats rows and the item times kept for the next batch are observations)
    batch_rows = [row for row in buckets.rows() if row["pk"].startswith("B#") and row["sk"] != "META"]
    assert [row for row in batch_rows if not row["sk"].startswith(model.STATS_PREFIX)] == []


def test_bad_lines_fail_alone_with_an_error_naming_their_byte(buckets: MockedAws, settings: Settings):
    big = json.dumps({"id": 3, "blob": "x" * (10 * 1024 * 1024)}).encode()
    lines = [b'{"id": 0}', b"not json", b'{"id": 2, "fail": true}', big, b"[1, 2]", b'{"id": 5}']
    body = b"\n".join(lines) + b"\n"
    buckets.s3.put_object(Bucket=BUCKET, Key="bad.jsonl", Body=body)
    settings = dataclasses.replace(settings, item_max_attempts=1)  # a failing item fails at once

    batcher.create_batch(definition(Source(type="s3-jsonl", uri=f"s3://{BUCKET}/bad.jsonl")), SLOT, settings)
    (alert,) = drive(buckets, settings)

    assert alert["status"] == model.COMPLETED_WITH_FAILURES
    assert alert["totals"] == {"items": 6, "succeeded": 2, "failed": 4}
    failed = failures(buckets, alert)
    offsets = [sum(len(line) + 1 for line in lines[:n]) for n in range(len(lines))]
    where = f"s3://{BUCKET}/bad.jsonl byte"
    assert len(failed) == 4
    assert "not JSON" in failed[f"{where} {offsets[1]}"]
    assert "asked to fail" in failed[f"{where} {offsets[2]}"]
    assert "more than a message holds" in failed[f"{where} {offsets[3]}"]
    assert "not an object" in failed[f"{where} {offsets[4]}"]


def test_a_csv_row_with_the_wrong_number_of_fields_fails_that_row(buckets: MockedAws, settings: Settings):
    buckets.s3.put_object(Bucket=BUCKET, Key="orders.csv.gz", Body=gzip.compress(b"id,name\n1,a\n2,b,extra\n3,c\n"))

    header = batcher.create_batch(definition(Source(type="s3-csv", uri=f"s3://{BUCKET}/orders.csv.gz")), SLOT, settings)
    (alert,) = drive(buckets, settings)

    assert alert["totals"] == {"items": 3, "succeeded": 2, "failed": 1}
    assert sorted(line["result"]["id"] for line in result_lines(buckets, header["batch_id"])) == ["1", "3"]
    # Byte 12 of the decompressed text (after "id,name" and "1,a"): the row with an extra field.
    assert failures(buckets, alert) == {
        f"s3://{BUCKET}/orders.csv.gz byte 12": f"line at byte 12 of s3://{BUCKET}/orders.csv.gz: 3 fields, the header has 2"
    }


def test_a_missing_object_ends_the_batch_failed_with_one_alert_and_nothing_else(buckets: MockedAws, settings: Settings):
    source = Source(type="s3-jsonl", uri=f"s3://{BUCKET}/{{date}}/orders.jsonl")

    header = batcher.create_batch(definition(source), SLOT, settings)
    again = batcher.create_batch(definition(source), SLOT, settings)  # EventBridge delivered the event twice

    assert header["status"] == again["status"] == model.FAILED
    (alert,) = [json.loads(alert["Message"]) for alert in buckets.alerts()]
    assert alert["status"] == model.FAILED
    assert alert["reason"] == f"s3://{BUCKET}/2026-12-01/orders.jsonl: not found"
    assert alert["totals"] == {"items": None, "succeeded": None, "failed": None} and alert["items_already_queued"] == 0
    assert [row["sk"] for row in buckets.rows()] == ["META"]  # nothing half created
    assert buckets.planning_messages() == [] and buckets.work_messages() == []


def test_concurrent_copies_of_a_planning_message_write_the_segment_once(buckets: MockedAws, settings: Settings):
    buckets.s3.put_object(Bucket=BUCKET, Key="o.jsonl", Body=jsonl(200))
    header = batcher.create_batch(definition(Source(type="s3-jsonl", uri=f"s3://{BUCKET}/o.jsonl")), SLOT, settings)
    (message,) = buckets.planning_messages()
    store = BatchStore(settings.table_name)

    # The first planner holds the lease; its twin, delivered at the same time, writes nothing.
    first = store.claim_segment(header["batch_id"], 0, "other-planner", 0, 2**40)
    assert first is not None
    assert planner.expand(store, header["batch_id"], 0, 1, settings) == "taken or done"
    assert buckets.chunk_rows(header["batch_id"]) == []
    store.release_segment(header["batch_id"], 0, "other-planner", 0)
    assert planner.expand(store, header["batch_id"], 0, 1, settings) == "finished"
    assert planner.expand(store, header["batch_id"], 0, 1, settings) == "taken or done"  # a late duplicate
    (alert,) = drive(buckets, settings)
    assert alert["totals"]["items"] == 200


def test_a_prefix_lists_objects_page_by_page(buckets: MockedAws, settings: Settings):
    for n in range(1005):  # more than one ListObjectsV2 page
        buckets.s3.put_object(Bucket=BUCKET, Key=f"photos/{n:05d}.jpg", Body=b"x" * (n % 7))
    buckets.s3.put_object(Bucket=BUCKET, Key="other/skip.jpg", Body=b"")

    header = batcher.create_batch(
        dataclasses.replace(definition(Source(type="s3-prefix", uri=f"s3://{BUCKET}/photos/")), task="noop", results=None),
        SLOT,
        settings,
    )
    (alert,) = drive(buckets, settings)

    assert alert["status"] == model.COMPLETED and alert["totals"]["items"] == 1005
    assert "manifest" not in alert  # no results asked for: nothing written
    assert buckets.s3.list_objects_v2(Bucket=OUT).get("KeyCount", 0) == 0
    assert header["source_pin"]["format"] == "prefix"


def test_an_inventory_manifest_reads_each_listed_csv_file(buckets: MockedAws, settings: Settings):
    rows = [[f"{BUCKET}", f"data/{n} copy.bin", str(n)] for n in range(30)]  # CSV inventories URL-encode keys
    files = []
    for part in range(3):
        text = "".join(f'"{b}","{k.replace(" ", "%20")}","{s}"\n' for b, k, s in rows[part * 10 : part * 10 + 10]).encode()
        key = f"inventory/{BUCKET}/daily/data/part-{part}.csv.gz"
        buckets.s3.put_object(Bucket=BUCKET, Key=key, Body=gzip.compress(text))
        files.append({"key": key, "size": len(text), "MD5checksum": "-"})
    manifest = {"sourceBucket": BUCKET, "destinationBucket": f"arn:aws:s3:::{BUCKET}", "fileFormat": "CSV", "fileSchema": "Bucket, Key, Size", "files": files}
    buckets.s3.put_object(Bucket=BUCKET, Key="inventory/exports/daily/2026-12-01T01-00Z/manifest.json", Body=json.dumps(manifest).encode())
    source = Source(type="s3-inventory", uri=f"s3://{BUCKET}/inventory/exports/daily/{{date}}T01-00Z/manifest.json")

    @task("echo-key")
    def echo_key(item: dict, options: Mapping[str, Any]) -> Any:
        return [item["key"], item["size"]]

    header = batcher.create_batch(dataclasses.replace(definition(source), task="echo-key"), SLOT, settings)
    (alert,) = drive(buckets, settings)

    assert header["segments"] == 3 and alert["totals"] == {"items": 30, "succeeded": 30, "failed": 0}
    assert sorted(line["result"] for line in result_lines(buckets, header["batch_id"])) == sorted([row[1], int(row[2])] for row in rows)


def test_a_chunk_rebuilt_after_its_object_changed_fails_its_items_instead_of_running_new_data(
    buckets: MockedAws, settings: Settings
):
    buckets.s3.put_object(Bucket=BUCKET, Key="o.jsonl", Body=jsonl(30))
    header = batcher.create_batch(definition(Source(type="s3-jsonl", uri=f"s3://{BUCKET}/o.jsonl")), SLOT, settings)
    for message in buckets.planning_messages():
        planner.handle_sqs_event(sqs_event([message], PLANNING_QUEUE_NAME), settings)
    lost = buckets.work_messages()  # every work message is lost...
    assert len(lost) == 3
    buckets.s3.put_object(Bucket=BUCKET, Key="o.jsonl", Body=jsonl(30, start=100))  # ...and the object replaced
    for records in (buckets.stream_records(),):
        finalizer.handle_stream_event({"Records": records}, settings, {})
    sealed = BatchStore(settings.table_name).get_header(header["batch_id"])
    assert sealed["status"] == model.SEALED

    store = BatchStore(settings.table_name)
    sent = sum(work.resend_rows(store, sealed, store.chunk_rows(header["batch_id"], shard), settings) for shard in range(sealed["shards"]))
    assert sent == 3
    (alert,) = drive(buckets, settings)

    assert alert["totals"] == {"items": 30, "succeeded": 0, "failed": 30}
    assert "changed since the batch was created" in json.dumps(alert["sample_errors"])
    assert result_lines(buckets, header["batch_id"]) == []  # nothing ran on the new data


def test_an_empty_export_completes_with_zero_items_and_one_alert(buckets: MockedAws, settings: Settings):
    buckets.s3.put_object(Bucket=BUCKET, Key="empty.csv", Body="\ufeffid,name\n".encode())  # a header (with a BOM) and no rows

    header = batcher.create_batch(definition(Source(type="s3-csv", uri=f"s3://{BUCKET}/empty.csv")), SLOT, settings)
    (alert,) = drive(buckets, settings)

    assert header["source_pin"]["fields"] == ["id", "name"]
    assert alert["status"] == model.COMPLETED and alert["totals"] == {"items": 0, "succeeded": 0, "failed": 0}
    assert s3_json(buckets, alert["manifest"])["totals"]["items"] == 0


def test_a_segment_with_more_chunks_than_its_number_range_fails_the_batch_before_it_collides(
    buckets: MockedAws, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """Segment s numbers its chunks s * SEGMENT_CHUNKS + n; one more chunk would take segment
    s + 1's numbers (and rows). Shown with 3 numbers per segment instead of 10^8."""
    monkeypatch.setattr(model, "SEGMENT_CHUNKS", 3)
    buckets.s3.put_object(Bucket=BUCKET, Key="o.jsonl", Body=jsonl(40))

    batcher.create_batch(definition(Source(type="s3-jsonl", uri=f"s3://{BUCKET}/o.jsonl")), SLOT, settings)
    (alert,) = drive(buckets, settings)

    assert alert["status"] == model.FAILED
    assert alert["reason"] == "segment 0 holds over 3 chunks (a gzip object is one segment): split the object or raise items_per_message"
    assert buckets.chunk_rows(alert["batch_id"]) == []  # nothing of it was written


def test_a_redrive_cursor_walks_f_rows_whose_chunk_numbers_differ_in_length_each_once(aws: MockedAws, settings: Settings):
    """Segment s numbers its chunks s * 10^8 + n, so sort keys have 8 to 12 digits and sort as
    text: after F#100000024 comes F#1000000235 (segment 10), not F#100000025. A cursor that
    asked for chunk `last + 1` and up skipped segment 10's failed items in a redrive."""
    store = BatchStore(settings.table_name)
    chunks = [23, 100_000_023, 100_000_024, 1_000_000_235, 1_000_000_236, 2_000_000_000]
    for chunk_no in chunks:
        aws.dynamodb.put_item(
            TableName=settings.table_name,
            Item=store_module.to_item({**model.failed_key("b", 0, chunk_no), "failed": {chunk_no}, "attempt": 1}),
        )

    walked, after = [], -1
    while True:
        page = list(store.failed_rows_after("b", 0, after, limit=2, before_attempt=2))
        if not page:
            break
        walked += [row["chunk_no"] for row in page]
        after = page[-1]["chunk_no"]

    assert sorted(walked) == chunks and len(walked) == len(chunks)


def test_a_seal_racing_a_segment_that_finishes_meanwhile_still_waits_for_its_chunks(
    buckets: MockedAws, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """The finalizer woken by segment 0's REMOVE reads the header (0 chunks so far), and before
    its Query another segment finishes. The seal must still open every shard: sealed with none
    open, the batch would complete while segment 1's items are pending (a premature alert)."""
    settings = dataclasses.replace(settings, segment_bytes=1024)
    body = b"\n" * 1024 + jsonl(30)  # segment 0: blank lines only (no chunk); segment 1: 30 items
    buckets.s3.put_object(Bucket=BUCKET, Key="o.jsonl", Body=body)
    header = batcher.create_batch(definition(Source(type="s3-jsonl", uri=f"s3://{BUCKET}/o.jsonl")), SLOT, settings)
    store = BatchStore(settings.table_name)
    assert planner.expand(store, header["batch_id"], 0, 1, settings) == "finished"
    real_has_segments = BatchStore.has_segments

    def segment_1_finishes_first(self: BatchStore, batch_id: str) -> bool:
        assert planner.expand(store, batch_id, 1, 1, settings) == "finished"  # its chunks now wait in the queue
        return real_has_segments(self, batch_id)

    monkeypatch.setattr(BatchStore, "has_segments", segment_1_finishes_first)
    assert planning.seal_when_planned(store, header["batch_id"], 1)
    monkeypatch.setattr(BatchStore, "has_segments", real_has_segments)
    for message in buckets.planning_messages():  # their duplicates: nothing left to do
        planner.handle_sqs_event(sqs_event([message], PLANNING_QUEUE_NAME), settings)
    finalizer.handle_stream_event({"Records": buckets.stream_records()}, settings, {})
    assert buckets.alerts() == []  # sealed, but segment 1's chunks are still pending

    (alert,) = drive(buckets, settings)
    assert alert["totals"] == {"items": 30, "succeeded": 30, "failed": 0}


@pytest.mark.parametrize(
    "key, body, limits, reason",
    [
        ("big.jsonl.gz", gzip.compress(jsonl(100)), {"MAX_GZIP_BYTES": 100}, "is over 100 (it cannot be entered mid-stream)"),
        ("wide.csv", b"a," * 100 + b"z\n1\n", {"HEAD_SAMPLE": 64}, "no header row in its first 64 bytes"),
    ],
)
def test_a_source_no_planner_could_finish_fails_the_batch_at_once_with_why(
    buckets: MockedAws, settings: Settings, monkeypatch: pytest.MonkeyPatch, key: str, body: bytes, limits: dict, reason: str
):
    """A gzip stream is entered only from its start (each continuation and rebuild decompresses
    up to its place), and a CSV header row is held whole: past their limits the batch ends FAILED
    at planning, with one alert, instead of planners that run out of time or memory for ever."""
    for name, value in limits.items():
        monkeypatch.setattr(sources, name, value)
    buckets.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    kind = "s3-csv" if key.endswith(".csv") else "s3-jsonl"

    header = batcher.create_batch(definition(Source(type=kind, uri=f"s3://{BUCKET}/{key}")), SLOT, settings)

    assert header["status"] == model.FAILED and reason in header["reason"]
    (alert,) = [json.loads(alert["Message"]) for alert in buckets.alerts()]
    assert reason in alert["reason"]


def test_a_transient_s3_error_is_retried_not_turned_into_a_failed_batch(buckets: MockedAws, settings: Settings, monkeypatch: pytest.MonkeyPatch):
    """Only what no retry changes (gone, denied) fails a batch; a 503 past botocore's retries
    fails the invocation, which the event source retries."""
    from botocore.exceptions import ClientError

    def slow_down(**kwargs: Any) -> Any:
        raise ClientError({"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."}}, "HeadObject")

    monkeypatch.setattr(sources.aws.client("s3"), "head_object", slow_down)
    with pytest.raises(ClientError, match="SlowDown"):
        batcher.create_batch(definition(Source(type="s3-jsonl", uri=f"s3://{BUCKET}/o.jsonl")), SLOT, settings)
    assert buckets.rows() == [] and buckets.alerts() == []


def test_a_planner_group_closes_at_its_byte_budget_so_a_planner_holds_at_most_8_mib_of_messages():
    chunks = [model.Chunk("b", 0, n, "noop", {}, ((n, {}),), size=3 * 1024 * 1024) for n in range(7)]

    assert [len(group) for group in planner._groups(iter(chunks))] == [3, 3, 1]  # 9 MiB >= 8 MiB closes a group


def test_a_segment_finishing_while_the_header_is_in_another_transaction_retries_instead_of_waiting_for_the_lease(
    buckets: MockedAws, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """DynamoDB cancels a transaction that meets another on the same item (TransactionConflict);
    parallel segments finishing and items failing all write the header. Treated as a lost
    lease, the segment would wait 16 minutes for the sweeper."""
    from botocore.exceptions import ClientError

    buckets.s3.put_object(Bucket=BUCKET, Key="o.jsonl", Body=jsonl(20))
    header = batcher.create_batch(definition(Source(type="s3-jsonl", uri=f"s3://{BUCKET}/o.jsonl")), SLOT, settings)
    dynamodb = sources.aws.client("dynamodb")
    real = dynamodb.transact_write_items
    conflicts = [1]

    def busy_header(**kwargs: Any) -> Any:
        if conflicts:
            conflicts.pop()
            raise ClientError(
                {
                    "Error": {"Code": "TransactionCanceledException", "Message": "Transaction cancelled"},
                    "CancellationReasons": [{"Code": "None"}, {"Code": "TransactionConflict"}],
                },
                "TransactWriteItems",
            )
        return real(**kwargs)

    monkeypatch.setattr(dynamodb, "transact_write_items", busy_header)
    assert planner.expand(BatchStore(settings.table_name), header["batch_id"], 0, 1, settings) == "finished"
    assert conflicts == [] and BatchStore(settings.table_name).get_header(header["batch_id"])["total_items"] == 20


def test_the_failures_file_lists_a_bounded_number_of_items_and_the_manifest_says_how_many(
    buckets: MockedAws, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """The alert waits for failures.jsonl: listing millions of failures there would make the
    completion path unbounded again (invariant 12). Shown with a cap of 3 instead of 100,000."""
    monkeypatch.setattr(results, "MAX_FAILURE_LINES", 3)
    buckets.s3.put_object(Bucket=BUCKET, Key="bad.jsonl", Body=b"x\n" * 8 + b'{"id": 1}\n')

    batcher.create_batch(definition(Source(type="s3-jsonl", uri=f"s3://{BUCKET}/bad.jsonl")), SLOT, settings)
    (alert,) = drive(buckets, settings)

    assert alert["totals"] == {"items": 9, "succeeded": 1, "failed": 8}
    assert s3_json(buckets, alert["manifest"])["failures"] == {
        "uri": f"s3://{OUT}/runs/{alert['batch_id']}/1/failures.jsonl", "items": 8, "listed": 3,
    }
    assert len(failures(buckets, alert)) == 3
