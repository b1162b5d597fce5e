"""Object sources on the local stack, under faults: throttling, objects that change or vanish, a
manifest replaced mid-batch, a gzip file with a 10 MB line. Pollers, planners, processors and
the finalizer run as on AWS (batchdrain_local), with the deployed mapping settings (so object
batches seal on their last segment row's REMOVE, through the stream filter); the sweeper runs
only where a test fires it. The S3 objects live on the stack's moto server. Each test names the
rule without which it fails.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from batchdrain_local import LocalStack, StackOptions
from batchdrain_local.faults import THROTTLE_FAULTS, FaultInjector
from chalicelib import model
from chalicelib.tasks import task
from tests.integration.support import RUNS

SLOT = datetime(2026, 12, 1, 6, 0, tzinfo=timezone.utc)
BUCKET = "exports"
KEYS: Counter[str] = Counter()  # object key of an s3-inventory item -> times the task ran on it
_KEYS_LOCK = threading.Lock()


@task("object-faults-key")
def record_key(item: dict, options: Mapping[str, Any]) -> None:
    """Test task for inventory items: counts runs per listed object key."""
    with _KEYS_LOCK:
        KEYS[item["key"]] += 1


def definition(name: str, source: dict[str, Any], task_name: str = "count", k: int = 20) -> dict[str, Any]:
    return {
        "name": name,
        "schedule": "rate(6 hours)",
        "source": source,
        "task": task_name,
        "items_per_message": k,
        "item_seconds": 0.01,
    }


def start(tmp_path: Path, definitions: list[dict[str, Any]], **options: Any) -> LocalStack:
    """A local stack with these definitions and the source bucket; RUNS and KEYS cleared."""
    path = tmp_path / "batches.json"
    path.write_text(json.dumps({"definitions": definitions}))
    RUNS.clear()
    KEYS.clear()
    environment = {"SHARD_CHUNK_TARGET": "4", **options.pop("extra_environment", {})}
    stack = LocalStack(StackOptions(definitions_file=path, visibility_timeout=5, extra_environment=environment, **options))
    stack.start()
    stack.client("s3").create_bucket(Bucket=BUCKET)
    return stack


def jsonl(ids: range, version: int = 1) -> bytes:
    return b"".join(json.dumps({"id": n, "v": version}).encode() + b"\n" for n in ids)


def only_alert(stack: LocalStack, batch_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """The batch's alert, after waiting long enough for a second one to show."""
    alert = stack.wait_for_alert(batch_id, timeout=timeout)
    time.sleep(2)
    assert len(stack.alerts_for(batch_id)) == 1
    return alert["message"]


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def test_object_batches_under_injected_throttling_end_with_one_exact_alert_each(tmp_path: Path):
    """Throttling at this size is normal: DynamoDB writes answered ProvisionedThroughputExceeded,
    SendMessageBatch answered ThrottlingException (botocore's standard retry, aws._CONFIG),
    BatchWriteItem leaving UnprocessedItems (store._batch_write) and SendMessageBatch reporting
    Failed entries (work._send_with_retries). Take any of those retries away and rows or
    messages go missing: a batch never ends, or ends with items lost. Two batches at once: a
    plain object cut into segments (planners in parallel), and a multi-member gzip file holding
    a 10 MB line, which fails alone."""
    faults = FaultInjector(
        seed=20261201,
        rates={"dynamodb_throttle": 0.1, "sqs_throttle": 0.2, "unprocessed_items": 0.5, "send_batch_failures": 0.5},
        limits=dict.fromkeys(THROTTLE_FAULTS, 6),
        ensure_every_fault=True,  # each strikes at its first chance too: the draws alone may miss one
    )
    stack = start(
        tmp_path,
        [
            definition("plain", {"type": "s3-jsonl", "uri": f"s3://{BUCKET}/{{date}}/plain.jsonl"}),
            definition("zipped", {"type": "s3-jsonl", "uri": f"s3://{BUCKET}/{{date}}/zipped.jsonl.gz"}),
        ],
        faults=faults,
        extra_environment={"SEGMENT_BYTES": "8192"},
    )
    try:
        s3 = stack.client("s3")
        s3.put_object(Bucket=BUCKET, Key="2026-12-01/plain.jsonl", Body=jsonl(range(1500)))
        big = json.dumps({"id": -1, "blob": "x" * (10 * 1024 * 1024)}).encode() + b"\n"
        text = jsonl(range(10_000, 10_300)) + big + jsonl(range(10_300, 10_600))
        cuts = [0, len(jsonl(range(10_000, 10_150))) + 5, len(text) // 2, len(text)]
        # `cat a.gz b.gz c.gz`: a small line split across the first two members, the 10 MB line
        # across the last two (members over a 1 MiB read block, followed by another).
        s3.put_object(
            Bucket=BUCKET, Key="2026-12-01/zipped.jsonl.gz", Body=b"".join(gzip.compress(text[a:b]) for a, b in zip(cuts, cuts[1:]))
        )

        plain = stack.fire_schedule("plain", SLOT)
        zipped = stack.fire_schedule("zipped", SLOT)
        plain_alert = only_alert(stack, plain["batch_id"])
        zipped_alert = only_alert(stack, zipped["batch_id"])
    finally:
        stack.stop()

    assert plain["segments"] > 2 and zipped["segments"] == 1
    assert all(faults.injected[fault] >= 1 for fault in THROTTLE_FAULTS), dict(faults.injected)
    assert plain_alert["totals"] == {"items": 1500, "succeeded": 1500, "failed": 0}
    assert zipped_alert["status"] == model.COMPLETED_WITH_FAILURES
    assert zipped_alert["totals"] == {"items": 601, "succeeded": 600, "failed": 1}
    (sample,) = zipped_alert["sample_errors"]
    assert "is over 262,144 bytes, more than a message holds" in sample["error"]
    assert sorted(RUNS) == [*range(1500), *range(10_000, 10_600)]  # every item, each once
    assert set(RUNS.values()) == {1}


def test_objects_changed_or_deleted_after_planning_fail_their_rebuilt_items_and_nothing_runs_on_new_data(tmp_path: Path):
    """Invariant 14 on the stack: every work message is lost after planning, one object is then
    replaced and the other deleted; the sweeper's re-send rebuilds each chunk from its row's span
    with If-Match on the planned ETag (sources.rebuild), so every item fails saying why, once,
    and the task never sees the new data. Without the pin, the replaced object's new lines would
    run under the old indices."""
    stack = start(
        tmp_path,
        [
            definition("changed", {"type": "s3-jsonl", "uri": f"s3://{BUCKET}/changed.jsonl"}),
            definition("vanished", {"type": "s3-jsonl", "uri": f"s3://{BUCKET}/vanished.jsonl"}),
        ],
        paused=frozenset({"process_work"}),
        # No sweeper running: the one sweep that re-sends is fired by hand, after the change.
        extra_environment={"RESEND_AFTER_SECONDS": "1", "SEGMENT_BYTES": "4096"},
    )
    try:
        s3 = stack.client("s3")
        s3.put_object(Bucket=BUCKET, Key="changed.jsonl", Body=jsonl(range(400)))
        s3.put_object(Bucket=BUCKET, Key="vanished.jsonl", Body=jsonl(range(1000, 1300)))
        batch_ids = [stack.fire_schedule(name, SLOT)["batch_id"] for name in ("changed", "vanished")]
        wait_for(lambda: all(stack.header(b)["status"] == model.SEALED for b in batch_ids), 20, "both batches sealed")

        stack.client("sqs").purge_queue(QueueUrl=stack.resources.work_queue_url)  # every message lost
        s3.put_object(Bucket=BUCKET, Key="changed.jsonl", Body=jsonl(range(400), version=2))
        s3.delete_object(Bucket=BUCKET, Key="vanished.jsonl")
        stack.resume("process_work")
        time.sleep(1.5)  # quiet for longer than RESEND_AFTER_SECONDS
        stack.sweep()
        changed, vanished = (only_alert(stack, batch_id) for batch_id in batch_ids)
    finally:
        stack.stop()

    assert changed["totals"] == {"items": 400, "succeeded": 0, "failed": 400}
    assert vanished["totals"] == {"items": 300, "succeeded": 0, "failed": 300}
    assert all(f"s3://{BUCKET}/changed.jsonl changed since the batch was created" in s["error"] for s in changed["sample_errors"])
    assert all(f"s3://{BUCKET}/vanished.jsonl: not found" in s["error"] for s in vanished["sample_errors"])
    assert RUNS == Counter()  # nothing ran: not the old data (lost), never the new


def put_inventory(s3: Any, name: str) -> list[str]:
    """An S3 Inventory (CSV, gzip) of 4 files x 30 objects at inv/manifest.json; the keys it lists."""
    files, keys = [], []
    for part in range(4):
        listed = [f"{name}/{part}/{n:03d}.bin" for n in range(30)]
        keys += listed
        text = "".join(f'"{BUCKET}","{key}","7"\n' for key in listed).encode()
        data_key = f"inv/data/{name}-{part}.csv.gz"
        s3.put_object(Bucket=BUCKET, Key=data_key, Body=gzip.compress(text))
        files.append({"key": data_key, "size": len(text), "MD5checksum": "-"})
    manifest = {"sourceBucket": BUCKET, "destinationBucket": f"arn:aws:s3:::{BUCKET}", "fileFormat": "CSV", "fileSchema": "Bucket, Key, Size", "files": files}
    s3.put_object(Bucket=BUCKET, Key="inv/manifest.json", Body=json.dumps(manifest).encode())
    return keys


def test_an_inventory_manifest_replaced_mid_batch_changes_nothing_planned_under_concurrent_duplicate_deliveries(tmp_path: Path):
    """The manifest is read once, at planning: its files become segment rows, and every planner
    reads its segment's file from the row, never the manifest again. Replacing the manifest
    while the planning messages wait (and with every SQS batch, planning included, delivered to
    two invocations at once) leaves the batch to exactly the objects it planned. Re-read the
    manifest per segment and the new inventory's objects run in the old batch."""
    faults = FaultInjector(seed=7, rates={"sqs_concurrent_duplicate": 1.0})
    stack = start(
        tmp_path,
        [definition("inventory", {"type": "s3-inventory", "uri": f"s3://{BUCKET}/inv/manifest.json"}, task_name="object-faults-key", k=10)],
        faults=faults,
        paused=frozenset({"plan_segments"}),
    )
    try:
        s3 = stack.client("s3")
        planned = put_inventory(s3, "old")
        header = stack.fire_schedule("inventory", SLOT)
        put_inventory(s3, "new")  # tomorrow's inventory, written over the same manifest key
        stack.resume("plan_segments")
        alert = only_alert(stack, header["batch_id"])
    finally:
        stack.stop()

    assert header["segments"] == 4 and faults.injected["sqs_concurrent_duplicate"] >= 4
    assert alert["status"] == model.COMPLETED and alert["totals"] == {"items": 120, "succeeded": 120, "failed": 0}
    assert sorted(KEYS) == sorted(planned)  # every planned object, and only those (some twice: duplicates)
