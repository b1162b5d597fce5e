"""Results agree with totals (README invariant 15), and a results bucket that cannot be written ends the batch promptly.

What a reader of the results must be able to rely on once the alert is out: every item the
alert counts as succeeded has exactly one line `{"index", "result"}` across every attempt's
prefix, a failed item has none, and no object holds anything else. The chunk's object decides
each item first (a line, or a failed mark that is gone once the chunk is final), the row
follows; these tests strike at the places where the two could disagree: a delivery that kept
its results and died before its row update, a slow copy finishing an item after another copy
failed it for good, a redrive, a dead letter.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import threading
from collections import Counter
from datetime import UTC, datetime
from typing import Any, Mapping

import pytest
from botocore.exceptions import ClientError

from chalicelib import alerts, batcher, deadletters, finalizer, log, model, planner, processor, redrive, results, sweeper
from chalicelib.config import Definition, Results, Settings, Source
from chalicelib.errors import BatchdrainError, PermanentItemError
from chalicelib.store import BatchStore
from chalicelib.tasks import task

from .conftest import PLANNING_QUEUE_NAME, Clock, MockedAws, sqs_event

BUCKET = "exports"
OUT = "results"
KEY = "orders.jsonl"
SLOT = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
BATCH_ID = "orders-2026-12-01T06:00Z"
K = 5

# item id -> what its next runs do, in order ("ok", "fail", "permanent" or "not-json"); after the list, "ok".
SCRIPT: dict[int, list[str]] = {}
RUNS: Counter[int] = Counter()
# item id -> called when a run of it starts (to line up concurrent copies)
HOOKS: dict[int, Any] = {}


@task("results-scripted")
def scripted(item: dict, options: Mapping[str, Any]) -> Any:
    RUNS[item["id"]] += 1
    if item["id"] in HOOKS:
        HOOKS[item["id"]]()
    plan = SCRIPT.get(item["id"])
    step = plan.pop(0) if plan else "ok"
    if step == "fail":
        raise ValueError(f"item {item['id']} fails on purpose")
    if step == "permanent":
        raise PermanentItemError(f"item {item['id']} can never work")
    if step == "not-json":
        return {"id": item["id"], "tags": {"a", "b"}}  # a set: no JSON for it
    return {"id": item["id"]}


class Crash(BaseException):
    """The invocation dies here (not an Exception: no handler catches it, as Lambda dying)."""


@pytest.fixture(autouse=True)
def fresh_script():
    SCRIPT.clear()
    RUNS.clear()
    HOOKS.clear()
    yield
    SCRIPT.clear()
    HOOKS.clear()


@pytest.fixture
def buckets(aws: MockedAws) -> MockedAws:
    aws.s3.create_bucket(Bucket=BUCKET)
    aws.s3.create_bucket(Bucket=OUT)
    aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=b"".join(json.dumps({"id": n}).encode() + b"\n" for n in range(20)))
    return aws


DEFINITION = Definition(
    name="orders",
    schedule="rate(6 hours)",
    source=Source(type="s3-jsonl", uri=f"s3://{BUCKET}/{KEY}"),
    task="results-scripted",
    items_per_message=K,
    item_seconds=0.1,
    results=Results(OUT, "runs"),
)


def plan_all(aws: MockedAws, settings: Settings) -> None:
    for message in aws.planning_messages():
        planner.handle_sqs_event(sqs_event([message], PLANNING_QUEUE_NAME), settings)
    finalizer.handle_stream_event({"Records": aws.stream_records()}, settings, {})


def index_of(item_id: int) -> int:
    """The item's index: the byte offset of its line (ids 0-9 take 10 bytes a line, 10-19 take 11)."""
    return sum(len(json.dumps({"id": n})) + 1 for n in range(item_id))


def deliver(aws: MockedAws, settings: Settings, messages: list[dict[str, Any]]) -> set[str]:
    """One delivery of `messages`; the ids of those returned to the queue."""
    return {f["itemIdentifier"] for f in processor.handle_sqs_event(sqs_event(messages), settings)["batchItemFailures"]}


def drain(aws: MockedAws, settings: Settings, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Deliver until every message is acknowledged, then finalize; the alerts."""
    for _ in range(10):
        if not messages:
            break
        returned = deliver(aws, settings, messages)
        messages = [m for m in messages if m["MessageId"] in returned]
    finalizer.handle_stream_event({"Records": aws.stream_records()}, settings, {})
    return [json.loads(alert["Message"]) for alert in aws.alerts()]


def objects(aws: MockedAws) -> dict[str, bytes]:
    """Every result object of the batch (all attempts), by key; the manifests and failures files apart."""
    found = {}
    for page in aws.s3.get_paginator("list_objects_v2").paginate(Bucket=OUT, Prefix=f"runs/{BATCH_ID}/"):
        for obj in page.get("Contents", []):
            name = obj["Key"].rsplit("/", 1)[1]
            if name not in ("manifest.json", "failures.jsonl"):
                found[obj["Key"]] = aws.s3.get_object(Bucket=OUT, Key=obj["Key"])["Body"].read()
    return found


def lines_by_index(aws: MockedAws) -> Counter[int]:
    """How many result lines each index has across every attempt; asserts no object holds any other line."""
    counts: Counter[int] = Counter()
    for key, body in objects(aws).items():
        for text in body.decode().splitlines():
            line = json.loads(text)
            assert set(line) == {"index", "result"}, f"{key}: {text}"
            counts[line["index"]] += 1
    return counts


def failed_indices(aws: MockedAws, alert: Mapping[str, Any]) -> set[int]:
    uri = json.loads(aws.s3.get_object(Bucket=OUT, Key=alert["manifest"].split("/", 3)[3])["Body"].read())["failures"]["uri"]
    body = aws.s3.get_object(Bucket=OUT, Key=uri.split("/", 3)[3])["Body"].read()
    return {json.loads(line)["index"] for line in body.splitlines()}


def assert_results_agree(aws: MockedAws, alert: Mapping[str, Any], failed_ids: set[int]) -> None:
    """One line per succeeded item, none for failed ones; the alert and failures.jsonl say the same."""
    failed = {index_of(n) for n in failed_ids}
    assert lines_by_index(aws) == Counter({index_of(n): 1 for n in range(20) if n not in failed_ids})
    assert alert["totals"] == {"items": 20, "succeeded": 20 - len(failed), "failed": len(failed)}
    assert failed_indices(aws, alert) == failed


# -- the object decides, the row follows -----------------------------------------------------------------------


def test_an_item_whose_result_was_kept_before_its_delivery_died_counts_succeeded_however_its_reruns_end(
    buckets: MockedAws, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """A delivery keeps item 3's line, then dies before its row update (crash_before_row_update);
    every later run of item 3 fails. The line was kept, so the item succeeded: the rerun's
    failure is not recorded (`results.settler` finds the line and counts it done). Recording
    it failed instead leaves a line for an item the alert and failures.jsonl call failed."""
    batcher.create_batch(DEFINITION, SLOT, settings)
    plan_all(buckets, settings)
    messages = sorted(buckets.work_messages(), key=lambda m: json.loads(m["Body"])["chunk"])
    real_record = BatchStore.record

    def die_once(self: BatchStore, *args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(BatchStore, "record", real_record)
        raise Crash("before the row update")

    monkeypatch.setattr(BatchStore, "record", die_once)
    with pytest.raises(Crash):
        deliver(buckets, settings, messages[:1])  # items 0-4 ran and kept their lines
    SCRIPT[3] = ["fail"] * settings.item_max_attempts

    (alert,) = drain(buckets, settings, messages)

    assert RUNS[3] == 1 + settings.item_max_attempts  # the crashed run, then reruns until the last one's failure found the line
    assert alert["status"] == model.COMPLETED
    assert_results_agree(buckets, alert, set())


def test_a_slow_copy_finishing_an_item_after_another_copy_failed_it_for_good_keeps_no_line(
    buckets: MockedAws, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """SQS hands chunk 0's message to two invocations at once. Item 2 has one attempt left: copy
    A's run fails it, copy B's run succeeds, but B keeps its lines only after A has recorded
    item 2 failed (its mark in the object came first). B is refused item 2's line and records
    nothing for it. Without the mark, B's line stays for an item the alert counts failed."""
    batcher.create_batch(DEFINITION, SLOT, settings)
    plan_all(buckets, settings)
    messages = sorted(buckets.work_messages(), key=lambda m: json.loads(m["Body"])["chunk"])
    SCRIPT[2] = ["fail"] * (settings.item_max_attempts - 1)
    for _ in range(settings.item_max_attempts - 1):
        deliver(buckets, settings, messages[:1])
    real_save = results.save
    copy_a: list[set[str]] = []

    def copy_a_first(message: Any, values: Mapping[int, Any]) -> Any:
        if not copy_a:  # copy B, its tasks done: copy A runs and records meanwhile
            SCRIPT[2] = ["fail"]
            copy_a.append(deliver(buckets, settings, messages[:1]))
        return real_save(message, values)

    monkeypatch.setattr(results, "save", copy_a_first)
    deliver(buckets, settings, messages[:1])  # copy B
    monkeypatch.setattr(results, "save", real_save)

    (alert,) = drain(buckets, settings, messages[1:])

    assert alert["status"] == model.COMPLETED_WITH_FAILURES
    assert_results_agree(buckets, alert, {2})


def test_a_result_that_is_not_json_fails_its_item_at_its_first_run_and_keeps_no_line(buckets: MockedAws, settings: Settings):
    """Item 4 returns a set, which no JSON holds: it fails at its first run (running it again returns
    the same), with no line and the error saying why. Without it the item runs ITEM_MAX_ATTEMPTS times
    and holds its batch open for every retry delay."""
    SCRIPT[4] = ["not-json"] * settings.item_max_attempts
    batcher.create_batch(DEFINITION, SLOT, settings)
    plan_all(buckets, settings)

    (alert,) = drain(buckets, settings, buckets.work_messages())

    assert RUNS[4] == 1
    assert_results_agree(buckets, alert, {4})
    assert alert["sample_errors"][0]["error"].startswith("the task's result is not JSON: Object of type set")


def test_an_item_failing_permanently_in_two_concurrent_copies_fails_once_is_logged_once_and_keeps_no_line(
    buckets: MockedAws, settings: Settings
):
    """SQS hands chunk 0's message to two invocations at once, and item 2 raises PermanentItemError in
    both. One record fails it (F row, header count, results object marked, then final); the other's
    write finds it gone and records nothing: counted failed once, one traceback logged, no line, and
    every other item of the chunk one line."""
    batcher.create_batch(DEFINITION, SLOT, settings)
    plan_all(buckets, settings)
    messages = sorted(buckets.work_messages(), key=lambda m: json.loads(m["Body"])["chunk"])
    SCRIPT[2] = ["permanent", "permanent"]
    both_running = threading.Barrier(2)
    HOOKS[2] = lambda: both_running.wait(timeout=10)
    logged: list[dict[str, Any]] = []
    handler = _Collect(logged)
    logging.getLogger(log.LOGGER_NAME).addHandler(handler)
    try:
        copies = [threading.Thread(target=deliver, args=(buckets, settings, messages[:1])) for _ in range(2)]
        for copy in copies:
            copy.start()
        for copy in copies:
            copy.join(timeout=30)
    finally:
        logging.getLogger(log.LOGGER_NAME).removeHandler(handler)
    HOOKS.clear()

    (alert,) = drain(buckets, settings, messages[1:])

    assert RUNS[2] == 2
    assert_results_agree(buckets, alert, {2})
    assert buckets.header(BATCH_ID)["failed_items"] == 1
    assert [line["item"] for line in logged if line["message"] == "item failed for good"] == [index_of(2)]


class _Collect(logging.Handler):
    def __init__(self, into: list[dict[str, Any]]) -> None:
        super().__init__(logging.INFO)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append({"message": record.getMessage(), **getattr(record, "fields", {})})


def test_a_chunk_dead_lettered_after_a_delivery_kept_some_results_counts_exactly_those(
    buckets: MockedAws, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """Deliveries of chunk 0 keep items 0-4's lines and die before recording, until the message
    is dead-lettered; the dead-letter handler's last resort fails every pending item, but the
    object already decided items 0-4 succeeded: they are recorded done, the chunk has no
    failures and its object no marks."""
    settings = settings.__class__(**{**settings.__dict__, "item_max_attempts": 1})
    batcher.create_batch(DEFINITION, SLOT, settings)
    plan_all(buckets, settings)
    messages = sorted(buckets.work_messages(), key=lambda m: json.loads(m["Body"])["chunk"])
    real_record = BatchStore.record

    def die(self: BatchStore, *args: Any, **kwargs: Any) -> Any:
        raise Crash("before the row update")

    monkeypatch.setattr(BatchStore, "record", die)
    with pytest.raises(Crash):
        deliver(buckets, settings, messages[:1])
    monkeypatch.setattr(BatchStore, "record", real_record)
    assert deadletters.record_dead_letter(
        BatchStore(settings.table_name), {**messages[0], "messageId": messages[0]["MessageId"], "body": messages[0]["Body"]},
        model.iso(model.utc_now()), settings,
    ) == "failed"

    (alert,) = drain(buckets, settings, messages[1:])

    assert alert["status"] == model.COMPLETED
    assert_results_agree(buckets, alert, set())


def test_a_redriven_item_has_one_line_across_attempts_and_no_object_keeps_a_failed_mark(
    buckets: MockedAws, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """Items 2 and 13 fail every attempt of attempt 1 (their chunks' objects mark them failed,
    then are made final without the marks), then succeed when redriven: their lines are under
    `/2/` only, every other item's under `/1/` only, and the manifest names both prefixes."""
    SCRIPT.update({2: ["fail"] * settings.item_max_attempts, 13: ["fail"] * settings.item_max_attempts})
    batcher.create_batch(DEFINITION, SLOT, settings)
    plan_all(buckets, settings)
    (first,) = drain(buckets, settings, buckets.work_messages())
    assert first["status"] == model.COMPLETED_WITH_FAILURES
    assert_results_agree(buckets, first, {2, 13})

    redrive.redrive(BATCH_ID, settings)
    (second,) = drain(buckets, settings, buckets.work_messages())

    assert second["status"] == model.COMPLETED
    assert_results_agree(buckets, second, set())
    by_attempt = {key.split("/")[2] for key, body in objects(buckets).items() if str(index_of(2)).encode() in body}
    assert by_attempt == {"2"}
    manifest = json.loads(buckets.s3.get_object(Bucket=OUT, Key=second["manifest"].split("/", 3)[3])["Body"].read())
    assert manifest["results"]["earlier_attempts"] == [f"s3://{OUT}/runs/{BATCH_ID}/1/"]


# -- failures.jsonl names a failed line by its number -------------------------------------------------------------

# Line 2 is not JSON (a bad line); the item on line 5 (id 4) raises PermanentItemError.
BAD_EXPORT = b"".join(b"not json\n" if n == 1 else json.dumps({"id": n}).encode() + b"\n" for n in range(8))


def failure_file(aws: MockedAws, alert: Mapping[str, Any]) -> list[dict[str, Any]]:
    uri = json.loads(aws.s3.get_object(Bucket=OUT, Key=alert["manifest"].split("/", 3)[3])["Body"].read())["failures"]["uri"]
    return [json.loads(line) for line in aws.s3.get_object(Bucket=OUT, Key=uri.split("/", 3)[3])["Body"].read().splitlines()]


def one_delivery_each(aws: MockedAws, settings: Settings, key: str) -> None:
    """Plan the batch of s3://BUCKET/key and deliver each work message once (no retries, nothing finalized yet)."""
    SCRIPT[4] = ["permanent"]
    definition = dataclasses.replace(DEFINITION, source=Source(type="s3-jsonl", uri=f"s3://{BUCKET}/{key}"))
    batcher.create_batch(definition, SLOT, settings)
    plan_all(aws, settings)
    assert deliver(aws, settings, aws.work_messages()) == set()  # nothing to retry: both failures are permanent


@pytest.mark.parametrize("key, body", [("bad.jsonl", BAD_EXPORT), ("bad.jsonl.gz", gzip.compress(BAD_EXPORT, mtime=0))], ids=["plain", "gzip"])
def test_a_failed_line_is_listed_with_its_line_number_and_a_bad_line_fails_at_its_first_delivery(
    buckets: MockedAws, settings: Settings, key: str, body: bytes
):
    """Rule: failures.jsonl gives each failed item of a JSONL or CSV object its 1-based `line`
    (counted in the decompressed text for gzip), beside `at` (object and byte). A line that
    does not parse fails at its first delivery, as does a PermanentItemError: one delivery of
    each message ends the batch. Without `line`, a reader must count bytes to find the row."""
    buckets.s3.put_object(Bucket=BUCKET, Key=key, Body=body)

    one_delivery_each(buckets, settings, key)
    finalizer.handle_stream_event({"Records": buckets.stream_records()}, settings, {})

    (alert,) = [json.loads(alert["Message"]) for alert in buckets.alerts()]
    assert alert["totals"] == {"items": 8, "succeeded": 6, "failed": 2}
    starts = [BAD_EXPORT.index(b"not json"), BAD_EXPORT.index(b'{"id": 4}')]
    assert [(line["line"], line["at"]) for line in failure_file(buckets, alert)] == [
        (2, f"s3://{BUCKET}/{key} byte {starts[0]}"),
        (5, f"s3://{BUCKET}/{key} byte {starts[1]}"),
    ]
    assert RUNS[4] == 1


def test_an_object_overwritten_before_completion_lists_its_failures_without_line_numbers_and_the_alert_goes_out(
    buckets: MockedAws, settings: Settings
):
    """Rule: line numbers are counted from the object the batch was planned from (its ETag), never
    from other data. Overwritten before completion, it is not read: the failures are listed
    without `line`, one warning says why, and the alert goes out as ever."""
    buckets.s3.put_object(Bucket=BUCKET, Key="bad.jsonl", Body=BAD_EXPORT)
    one_delivery_each(buckets, settings, "bad.jsonl")
    buckets.s3.put_object(Bucket=BUCKET, Key="bad.jsonl", Body=b"\n" * 100 + BAD_EXPORT)
    logged: list[dict[str, Any]] = []
    handler = _Collect(logged)
    logging.getLogger(log.LOGGER_NAME).addHandler(handler)
    try:
        finalizer.handle_stream_event({"Records": buckets.stream_records()}, settings, {})
    finally:
        logging.getLogger(log.LOGGER_NAME).removeHandler(handler)

    (alert,) = [json.loads(alert["Message"]) for alert in buckets.alerts()]
    assert alert["status"] == model.COMPLETED_WITH_FAILURES
    listed = failure_file(buckets, alert)
    assert len(listed) == 2 and all("line" not in line and " byte " in line["at"] for line in listed)
    (warning,) = [line for line in logged if line["message"] == "failures listed without line numbers: objects not read"]
    assert "changed since the batch was created" in warning["objects"][0]


def test_line_numbers_stop_at_their_read_budget(buckets: MockedAws, settings: Settings, monkeypatch: pytest.MonkeyPatch):
    """Rule: completion reads at most LINE_NUMBER_BYTES of source text to number failed lines (the alert
    waits for it); an item past the budget is listed without `line`, never left out."""
    monkeypatch.setattr(results, "LINE_NUMBER_BYTES", BAD_EXPORT.index(b'{"id": 4}'))
    buckets.s3.put_object(Bucket=BUCKET, Key="bad.jsonl", Body=BAD_EXPORT)

    one_delivery_each(buckets, settings, "bad.jsonl")
    finalizer.handle_stream_event({"Records": buckets.stream_records()}, settings, {})

    (alert,) = [json.loads(alert["Message"]) for alert in buckets.alerts()]
    assert [line.get("line") for line in failure_file(buckets, alert)] == [2, None]


# -- a results bucket that cannot be written ------------------------------------------------------------------


def test_a_missing_results_bucket_ends_the_batch_failed_at_once_with_one_alert_naming_it(
    aws: MockedAws, settings: Settings
):
    """Checked before anything is written (`results.check_writable`, like an unreadable source):
    otherwise every item fails on its own, and the alert waits on a manifest it cannot write."""
    aws.s3.create_bucket(Bucket=BUCKET)
    aws.s3.put_object(Bucket=BUCKET, Key=KEY, Body=b'{"id": 1}\n')

    header = batcher.create_batch(DEFINITION, SLOT, settings)
    again = batcher.create_batch(DEFINITION, SLOT, settings)  # a duplicate schedule delivery

    assert header["status"] == again["status"] == model.FAILED
    (alert,) = [json.loads(alert["Message"]) for alert in aws.alerts()]
    assert alert["status"] == model.FAILED
    assert alert["reason"] == f"results bucket {OUT!r} cannot be written: NoSuchBucket"
    assert "manifest" not in alert
    assert [row["sk"] for row in aws.rows()] == ["META"]
    assert aws.planning_messages() == [] and aws.work_messages() == []


def test_the_running_manifest_is_written_once_and_a_duplicate_schedule_never_overwrites_the_final_one(
    buckets: MockedAws, settings: Settings
):
    batcher.create_batch(DEFINITION, SLOT, settings)
    key = f"runs/{BATCH_ID}/1/manifest.json"
    assert json.loads(buckets.s3.get_object(Bucket=OUT, Key=key)["Body"].read())["status"] == model.CREATING
    plan_all(buckets, settings)
    (alert,) = drain(buckets, settings, buckets.work_messages())

    batcher.create_batch(DEFINITION, SLOT, settings)  # the schedule's event, delivered again later

    assert json.loads(buckets.s3.get_object(Bucket=OUT, Key=key)["Body"].read())["status"] == model.COMPLETED


def test_a_results_bucket_deleted_mid_batch_fails_its_items_at_once_and_the_alert_says_why(
    buckets: MockedAws, settings: Settings
):
    """Each item whose result cannot be stored fails on its first run with the bucket named (no
    retry can mend it); the completion cannot write its manifest and publishes the alert with
    `results_error` instead of waiting for the sweeper for ever."""
    batcher.create_batch(DEFINITION, SLOT, settings)
    plan_all(buckets, settings)
    messages = buckets.work_messages()
    for page in buckets.s3.get_paginator("list_objects_v2").paginate(Bucket=OUT):
        for obj in page.get("Contents", []):
            buckets.s3.delete_object(Bucket=OUT, Key=obj["Key"])
    buckets.s3.delete_bucket(Bucket=OUT)

    assert deliver(buckets, settings, messages) == set()  # one delivery each: nothing comes back
    finalizer.handle_stream_event({"Records": buckets.stream_records()}, settings, {})
    (alert,) = [json.loads(alert["Message"]) for alert in buckets.alerts()]

    assert alert["status"] == model.COMPLETED_WITH_FAILURES
    assert alert["totals"] == {"items": 20, "succeeded": 0, "failed": 20}
    assert f"results bucket {OUT!r} cannot be written: NoSuchBucket" in alert["sample_errors"][0]["error"]
    assert alert["results_error"] == f"results manifest not written to s3://{OUT}: NoSuchBucket"
    assert "manifest" not in alert
    assert max(RUNS.values()) == 1


def test_a_manifest_that_keeps_failing_goes_out_without_it_on_the_last_try(
    buckets: MockedAws, settings: Settings, clock: Clock, monkeypatch: pytest.MonkeyPatch
):
    """A passing S3 error (500) is retried by the sweeper after the lease; after MAX_NOTIFY_TRIES
    the alert goes out with `results_error`, so no batch waits for ever on its manifest."""
    batcher.create_batch(DEFINITION, SLOT, settings)
    plan_all(buckets, settings)

    def unavailable(*args: Any, **kwargs: Any) -> None:
        raise ClientError({"Error": {"Code": "InternalError", "Message": "try again"}}, "PutObject")

    monkeypatch.setattr(results, "write_manifest", unavailable)
    assert drain(buckets, settings, buckets.work_messages()) == []
    published: list[dict[str, Any]] = []
    for _ in range(alerts.MAX_NOTIFY_TRIES - 1):  # the finalizer's try failed; then one per sweeper lease
        assert published == []
        clock.advance(settings.notify_lease_seconds + 1)
        sweeper.sweep(settings, {})
        published += [json.loads(alert["Message"]) for alert in buckets.alerts()]

    (alert,) = published
    assert alert["status"] == model.COMPLETED
    assert alert["results_error"] == f"results manifest not written to s3://{OUT}: InternalError"


def test_a_redrive_whose_results_bucket_is_gone_is_refused_and_changes_nothing(
    buckets: MockedAws, settings: Settings
):
    SCRIPT[2] = ["fail"] * settings.item_max_attempts
    batcher.create_batch(DEFINITION, SLOT, settings)
    plan_all(buckets, settings)
    (alert,) = drain(buckets, settings, buckets.work_messages())
    assert alert["status"] == model.COMPLETED_WITH_FAILURES
    before = buckets.header(BATCH_ID)
    for page in buckets.s3.get_paginator("list_objects_v2").paginate(Bucket=OUT):
        for obj in page.get("Contents", []):
            buckets.s3.delete_object(Bucket=OUT, Key=obj["Key"])
    buckets.s3.delete_bucket(Bucket=OUT)

    with pytest.raises(BatchdrainError, match=f"results bucket {OUT!r} cannot be written: NoSuchBucket"):
        redrive.redrive(BATCH_ID, settings)

    assert buckets.header(BATCH_ID) == before
