"""`make demo SOURCE=s3` and `make local DEFINITIONS=... SAMPLE_DATA=1`: the S3 examples on the local stack.

The definitions are examples/s3-digest.json as shipped: an s3-prefix source digested by
the s3-object-digest task, and a JSON Lines export read in segments; both with results.
"""

from __future__ import annotations

import hashlib
import json
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import pytest
from moto import mock_aws

from batchdrain_local import LocalStack, StackOptions
from batchdrain_local.data import broken_lines, create_buckets, order_lines, upload_sample_data
from batchdrain_local.demo import EXAMPLES_FILE
from batchdrain_local.runs import read_object, result_lines, run_batch
from batchdrain_local.stack import PROJECT_DIR
from chalicelib import aws, tasks

SLOT = datetime(2026, 12, 1, 5, 0, tzinfo=UTC)
INPUT = "batchdrain-demo-input"


def quiet(_: str) -> None:
    pass


def test_the_s3_examples_alert_once_with_exact_totals_a_manifest_and_the_sha256_of_every_uploaded_object():
    options = StackOptions(
        definitions_file=EXAMPLES_FILE,
        visibility_timeout=5,
        extra_environment={"SEGMENT_BYTES": "16384"},  # the 3,000-line export: about 15 segments
        app_log_level="ERROR",
    )
    with LocalStack(options) as stack:
        s3 = stack.client("s3")
        definitions = stack.app_module.DEFINITIONS
        assert create_buckets(s3, definitions) == [INPUT, "batchdrain-demo-results"]
        upload_sample_data(s3, definitions, SLOT, objects=60, lines=3000, bad_lines=2, out=quiet)

        photos = run_batch(stack, "photo-digests", SLOT, timeout=60, out=quiet)
        message = photos.alert["message"]
        assert message["status"] == "COMPLETED" and message["totals"] == {"items": 60, "succeeded": 60, "failed": 0}
        manifest = json.loads(read_object(s3, message["manifest"]))
        assert manifest["totals"] == message["totals"] and manifest["status"] == "COMPLETED"
        # The truth, read back from the input bucket: every object's own bytes, hashed here.
        listed = s3.list_objects_v2(Bucket=INPUT, Prefix="photos/")["Contents"]
        expected = {}
        for obj in listed:
            body = s3.get_object(Bucket=INPUT, Key=obj["Key"])["Body"].read()
            expected[obj["Key"]] = {"key": obj["Key"], "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        results = [line["result"] for line in result_lines(s3, manifest["results"]["prefix"])]
        assert len(results) == len(expected) == 60  # one line per object, none twice
        assert {result["key"]: result for result in results} == expected
        assert read_object(s3, manifest["failures"]["uri"]) == b""

        orders = run_batch(stack, "orders-export", SLOT, timeout=60, out=quiet)
        message = orders.alert["message"]
        assert message["status"] == "COMPLETED_WITH_FAILURES"
        assert message["totals"] == {"items": 3000, "succeeded": 2998, "failed": 2}
        assert orders.header["segments"] > 5 and orders.invocations["plan_segments"] >= orders.header["segments"]
        assert len(stack.alerts_for(orders.batch_id)) == 1
        offsets, position = [], 0
        for line in order_lines(3000, 2):
            offsets.append(position)
            position += len(line)
        broken = {offsets[number] for number in broken_lines(3000, 2)}
        manifest = json.loads(read_object(s3, message["manifest"]))
        results = list(result_lines(s3, manifest["results"]["prefix"]))
        assert sorted(line["index"] for line in results) == sorted(set(offsets) - broken)  # the index is the byte offset
        failures = [json.loads(line) for line in read_object(s3, manifest["failures"]["uri"]).splitlines()]
        assert {failure["index"] for failure in failures} == broken
        assert all(failure["error"].startswith("line at byte") and "not JSON" in failure["error"] for failure in failures)


def test_make_demo_source_s3_prints_both_alerts_the_manifests_the_checked_digests_and_the_figures():
    result = subprocess.run(
        [sys.executable, "-m", "batchdrain_local", "demo", "--source", "s3", "--items", "500", "--objects", "20",
         "--segment-bytes", "8192", "--timeout", "60"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"subject: +\[photos\] batch photo-digests-\S+ completed: 20 items in \d+ s", out)
    assert re.search(r"subject: +\[orders\] batch orders-export-\S+ completed with failures: 500 items, 1 failed", out)
    assert "digests checked against the uploaded bytes: 20 of 20 match" in out
    assert re.search(r"^s3://batchdrain-demo-results/digests/photo-digests-\S+/1/manifest.json:$", out, re.M)
    assert re.search(r"failures.jsonl \(first 1 of 1 lines\):\n  \{\"index\":\d+,\"chunk\":\d+,\"error\":\"line at byte", out)
    assert re.search(r"batch orders-export-\S+: 500 items in [\d.]+ s \(wall time from cron event to alert\); alerts for this batch: 1$", out, re.M)
    assert re.search(r"^  segments [2-9]\d* \(SEGMENT_BYTES 0.0078125 MiB\), chunks \d+ \(K 82\), shards 1$", out, re.M)
    assert re.search(r"^  K=82 \(auto: chunk row size; budget 5,750, row 82, cap 10,000 at item_seconds 0.01\)$", out, re.M)
    assert re.search(r"^  invocations: \{.*'plan_segments': \d+.*\}$", out, re.M)
    assert re.search(r"^peak RSS of this process \(moto server, pollers and handlers\): \d[\d,]* MB$", out, re.M)
    assert out.rstrip().splitlines()[-1].startswith("local stack stopped; demo took")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_make_local_with_the_s3_definitions_fills_the_buckets_and_fires_the_named_definition():
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "batchdrain_local", "up", "--definitions", "examples/s3-digest.json", "--sample-data",
         "--objects", "10", "--items", "100", "--fire", "photo-digests", "--port", str(free_port())],
        cwd=PROJECT_DIR,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while not (len(seen) > 1 and seen[-2].startswith("ALERT  ")):
            try:
                seen.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError("no alert within 60 s:\n" + "".join(seen)) from None
        out = "".join(seen)
        assert re.search(r"^buckets: +batchdrain-demo-input, batchdrain-demo-results$", out, re.M)
        assert re.search(r"sample data: +uploaded 10 objects .* under s3://batchdrain-demo-input/photos/", out)
        assert re.search(r"batch photo-digests-\S+ created: s3://batchdrain-demo-input/photos/, 1 segment\(s\)", out)
        assert re.search(r"^ALERT  \[photos\] batch photo-digests-\S+ completed: 10 items", out, re.M), out
        alert = json.loads(seen[-1])
        assert alert["totals"] == {"items": 10, "succeeded": 10, "failed": 0} and alert["manifest"].endswith("/manifest.json")
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def mocked_s3(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        aws.reset_clients()
        s3 = aws.client("s3")
        s3.create_bucket(Bucket=INPUT)
        yield s3
    aws.reset_clients()


def test_the_digest_task_fails_an_item_whose_object_was_overwritten_or_deleted_after_the_listing(mocked_s3):
    mocked_s3.put_object(Bucket=INPUT, Key="photos/a.jpg", Body=b"listed")
    (obj,) = mocked_s3.list_objects_v2(Bucket=INPUT)["Contents"]
    item = {"bucket": INPUT, "key": obj["Key"], "size": obj["Size"], "etag": obj["ETag"].strip('"'), "last_modified": "x"}
    assert tasks.s3_object_digest(item, {}) == {"key": "photos/a.jpg", "size": 6, "sha256": hashlib.sha256(b"listed").hexdigest()}

    mocked_s3.put_object(Bucket=INPUT, Key="photos/a.jpg", Body=b"overwritten")
    with pytest.raises(tasks.ObjectChangedError, match="s3://batchdrain-demo-input/photos/a.jpg was overwritten after it was listed"):
        tasks.s3_object_digest(item, {})
    mocked_s3.delete_object(Bucket=INPUT, Key="photos/a.jpg")
    with pytest.raises(tasks.ObjectChangedError, match="was deleted after it was listed"):
        tasks.s3_object_digest(item, {})
