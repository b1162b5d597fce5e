"""Items sent inline to POST /batches: kept in the inbox as a JSON Lines object, run as an s3-jsonl source.

The batch then runs like any object source (the same planner, rebuild and failures.jsonl
with line numbers) to one alert with exact totals; a retry with its Idempotency-Key
writes no second object and no second batch; a refused request writes nothing at all.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from chalice.test import Client

from chalicelib import api as api_module
from chalicelib.config import Settings

from . import test_api as api_tests
from .test_api import fresh_failures  # noqa: F401 (autouse: no test's failing items leak into the next)
from .conftest import MockedAws, plan_batches

AUTH = api_tests.AUTH
INBOX_BUCKET = "batchdrain-test-inbox"
INBOX_URI = f"s3://{INBOX_BUCKET}/inbox/"
OUT = "inline-results"


@pytest.fixture
def definitions_file(tmp_path: Path) -> Path:
    path = tmp_path / "definitions.json"
    definition = {
        "name": "inline",
        "schedule": "cron(0 6 * * ? *)",
        "source": {"type": "random", "count": 10, "max_value": 1},
        "task": "api-flaky",
        "items_per_message": 4,
        "results": {"bucket": OUT, "prefix": "out"},
    }
    path.write_text(json.dumps({"definitions": [definition]}))
    return path


def app_with(monkeypatch: pytest.MonkeyPatch, definitions_file: Path, inbox_uri: str | None) -> ModuleType:
    monkeypatch.setenv("API_AUTH", "token")
    monkeypatch.setenv("API_TOKEN", api_tests.TOKEN)
    monkeypatch.setenv("BATCHDRAIN_DEFINITIONS", str(definitions_file))
    if inbox_uri is not None:
        monkeypatch.setenv("INBOX_URI", inbox_uri)
    sys.modules.pop("app", None)
    return importlib.import_module("app")


@pytest.fixture
def client(aws: MockedAws, monkeypatch: pytest.MonkeyPatch, definitions_file: Path, tmp_path: Path) -> Iterator[Client]:
    aws.s3.create_bucket(Bucket=INBOX_BUCKET)
    aws.s3.create_bucket(Bucket=OUT)
    module = app_with(monkeypatch, definitions_file, INBOX_URI)
    with Client(module.app, project_dir=str(tmp_path)) as test_client:
        yield test_client
    sys.modules.pop("app", None)


@pytest.fixture
def inbox_settings(settings: Settings) -> Settings:
    import dataclasses

    return dataclasses.replace(settings, inbox_uri=INBOX_URI)


def inbox_objects(aws: MockedAws) -> dict[str, bytes]:
    listed = aws.s3.list_objects_v2(Bucket=INBOX_BUCKET).get("Contents", [])
    return {obj["Key"]: aws.s3.get_object(Bucket=INBOX_BUCKET, Key=obj["Key"])["Body"].read() for obj in listed}


def test_inline_items_run_to_one_alert_with_exact_totals_results_and_failed_lines(
    client: Client, aws: MockedAws, inbox_settings: Settings
):
    items = [{"id": n, "name": f"item {n}"} for n in range(10)]
    api_tests.FAILING.update({3, 7})
    status, made = api_tests.post(client, "/batches", {"definition": "inline", "items": items})
    assert status == 202, made
    batch_id = made["batch_id"]

    objects = inbox_objects(aws)
    assert list(objects) == [f"inbox/{batch_id}.jsonl"]
    assert [json.loads(line) for line in objects[f"inbox/{batch_id}.jsonl"].splitlines()] == items
    (header,) = plan_batches(inbox_settings)
    assert header["source"] == {"type": "s3-jsonl", "uri": f"{INBOX_URI}{batch_id}.jsonl", "compression": "none"}
    assert header["total_items"] == 10

    (alert,) = api_tests.run_to_the_end(aws, inbox_settings)
    assert alert["batch_id"] == batch_id
    assert (alert["totals"]["items"], alert["totals"]["succeeded"], alert["totals"]["failed"]) == (10, 8, 2)
    manifest = json.loads(aws.s3.get_object(Bucket=OUT, Key=alert["manifest"].split("/", 3)[3])["Body"].read())
    failures_key = manifest["failures"]["uri"].split("/", 3)[3]
    failures = [json.loads(line) for line in aws.s3.get_object(Bucket=OUT, Key=failures_key)["Body"].read().splitlines()]
    assert sorted(failure["line"] for failure in failures) == [4, 8]  # 1-based lines of items 3 and 7
    result_lines = 0
    for obj in aws.s3.list_objects_v2(Bucket=OUT, Prefix=f"out/{batch_id}/").get("Contents", []):
        if obj["Key"].endswith(".jsonl") and not obj["Key"].endswith("failures.jsonl"):
            body = aws.s3.get_object(Bucket=OUT, Key=obj["Key"])["Body"].read()
            result_lines += sum(1 for line in body.splitlines() if "result" in json.loads(line))
    assert result_lines == 8


def test_a_retry_with_the_same_key_writes_no_second_object_and_no_second_batch(
    client: Client, aws: MockedAws, inbox_settings: Settings
):
    body = {"definition": "inline", "items": [{"id": n} for n in range(5)]}
    key = {**AUTH, "Idempotency-Key": "inline-4711"}
    status, made = api_tests.post(client, "/batches", body, key)
    assert status == 202, made
    objects, rows = inbox_objects(aws), aws.rows()

    status, again = api_tests.post(client, "/batches", body, key)
    assert (status, again["batch_id"]) == (202, made["batch_id"])
    assert inbox_objects(aws) == objects and aws.rows() == rows
    status, refused = api_tests.post(client, "/batches", {**body, "items": [{"id": 99}]}, key)
    assert (status, refused["error"]["field"]) == (409, "Idempotency-Key")
    assert inbox_objects(aws) == objects

    plan_batches(inbox_settings)
    (alert,) = api_tests.run_to_the_end(aws, inbox_settings)
    assert alert["totals"]["items"] == 5


def test_a_retry_after_the_object_was_written_but_before_the_batch_was_finds_the_object_and_makes_one_batch(
    client: Client, aws: MockedAws, inbox_settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """The first call wrote the object and died before the header: the retry keeps the object and makes the batch."""
    from chalicelib import batcher

    body = {"definition": "inline", "items": [{"id": n} for n in range(3)]}
    key = {**AUTH, "Idempotency-Key": "crash-after-the-object"}

    def dies(*args: Any, **kwargs: Any) -> None:
        raise api_module.ApiError(400, "test", "the batcher died")

    with monkeypatch.context() as patched:
        patched.setattr(batcher, "create_batch", dies)
        assert api_tests.post(client, "/batches", body, key)[0] == 400
    objects = inbox_objects(aws)
    assert len(objects) == 1 and aws.rows() == []

    status, made = api_tests.post(client, "/batches", body, key)
    assert status == 202, made
    assert inbox_objects(aws) == objects
    plan_batches(inbox_settings)
    (alert,) = api_tests.run_to_the_end(aws, inbox_settings)
    assert alert["totals"]["items"] == 3


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"definition": "inline", "items": [{"id": n} for n in range(api_module.MAX_INLINE_ITEMS + 1)]}, 400, "items"),
        ({"definition": "inline", "items": []}, 400, "items"),
        ({"definition": "inline", "items": {"id": 1}}, 400, "items"),
        ({"definition": "inline", "items": ["x" * 1000] * 70}, 413, "body"),
        (
            {"definition": "inline", "items": [{"id": 1}], "source": {"type": "s3-jsonl", "uri": f"{INBOX_URI}x.jsonl"}},
            400,
            "items",
        ),
    ],
)
def test_refused_inline_items_name_the_field_and_write_nothing(client: Client, aws: MockedAws, body: Any, status: int, field: str):
    answer = api_tests.post(client, "/batches", body)
    assert (answer[0], answer[1]["error"]["field"]) == (status, field), answer
    assert inbox_objects(aws) == {} and aws.rows() == []


def test_without_an_inbox_inline_items_are_refused_naming_the_setting(
    aws: MockedAws, monkeypatch: pytest.MonkeyPatch, definitions_file: Path, tmp_path: Path
):
    aws.s3.create_bucket(Bucket=INBOX_BUCKET)
    module = app_with(monkeypatch, definitions_file, None)
    try:
        with Client(module.app, project_dir=str(tmp_path)) as test_client:
            status, answer = api_tests.post(test_client, "/batches", {"definition": "inline", "items": [{"id": 1}]})
    finally:
        sys.modules.pop("app", None)
    assert (status, answer["error"]["field"]) == (400, "items")
    assert "INBOX_URI" in answer["error"]["message"]
    assert inbox_objects(aws) == {} and aws.rows() == []


@pytest.mark.parametrize("value", ["inbox/", "s3://bucket-only", "s3://Bad_Bucket/inbox/", "s3://bucket/inbox", "s3://bucket/{date}/"])
def test_a_bad_inbox_uri_fails_at_import_naming_the_setting(monkeypatch: pytest.MonkeyPatch, value: str):
    from chalicelib.config import ConfigError, Settings

    monkeypatch.setenv("INBOX_URI", value)
    with pytest.raises(ConfigError, match="INBOX_URI"):
        Settings.from_env()


def test_a_submission_naming_a_task_runs_its_items_with_a_k_that_fits_the_processors_budget(
    client: Client, aws: MockedAws, inbox_settings: Settings
):
    """No definition needed: a registered task, its items, and its item_seconds; K is the largest up to 100 whose
    messages fit one processor invocation (PROCESSOR_BATCH_SIZE x K x item_seconds within the timeout's margin)."""
    items = [{"id": n} for n in range(30)]
    status, made = api_tests.post(client, "/batches", {"task": "api-flaky", "items": items, "item_seconds": 2})
    assert status == 202, made
    assert made["batch_id"].startswith("api-flaky-")

    (header,) = plan_batches(inbox_settings)
    event_sources = api_tests.app_module_event_sources()
    budget = event_sources.processor_timeout_seconds - 5
    assert header["items_per_message"] == min(100, int(budget / (event_sources.processor_batch_size * 2)))
    (alert,) = api_tests.run_to_the_end(aws, inbox_settings)
    assert (alert["batch_id"], alert["totals"]) == (made["batch_id"], {"items": 30, "succeeded": 30, "failed": 0})


@pytest.mark.parametrize(
    "body, field",
    [
        ({"task": "nosuch-task", "items": [1]}, "task"),
        ({"task": "api-flaky"}, "task"),
        ({"task": "api-flaky", "definition": "inline", "items": [1]}, "definition"),
        ({"task": "api-flaky", "items": [1], "item_seconds": -1}, "item_seconds"),
        ({"definition": "inline", "items": [1], "items_per_message": 10_000}, "items_per_message"),
    ],
)
def test_a_task_submission_or_a_k_that_cannot_run_is_a_400_naming_the_field(client: Client, aws: MockedAws, body: Any, field: str):
    status, answer = api_tests.post(client, "/batches", body)

    assert (status, answer["error"]["field"]) == (400, field), answer
    assert inbox_objects(aws) == {} and aws.rows() == []
