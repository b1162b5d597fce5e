"""The HTTP API through Chalice's test client: reading batches, waiting for them, repairing them.

Every bad request is a 4xx with a JSON error naming the field and the rule, never a 500,
and never an echo of what was sent; reading is cheap (the requests one call makes are
counted). The local stage's token is checked by the app (deployed stages: IAM, checked by
API Gateway; the packaged template's methods carry it, see test_packaging).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

import pytest
from chalice.test import Client

from chalicelib import aws as aws_clients
from chalicelib import finalizer, model, processor
from chalicelib.config import Definition, Settings
from chalicelib.tasks import task

from .conftest import MockedAws, create_sealed_batch, plan_batches, sqs_event

TOKEN = "local-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SLOT = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
FAILING: set[int] = set()


@task("api-flaky")
def flaky(item: dict, options: Mapping[str, Any]) -> None:
    if item["id"] in FAILING:
        raise ValueError(f"item {item['id']} fails on purpose")


@pytest.fixture(autouse=True)
def fresh_failures():
    FAILING.clear()
    yield
    FAILING.clear()


@pytest.fixture
def app_module(aws: MockedAws, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.setenv("API_AUTH", "token")
    monkeypatch.setenv("API_TOKEN", TOKEN)
    monkeypatch.setenv("PROCESSOR_BATCH_SIZE", "5")
    monkeypatch.setenv("PROCESSOR_TIMEOUT_SECONDS", "120")
    sys.modules.pop("app", None)
    module = importlib.import_module("app")
    yield module
    sys.modules.pop("app", None)


@pytest.fixture
def client(app_module: ModuleType, tmp_path: Path) -> Iterator[Client]:
    with Client(app_module.app, project_dir=str(tmp_path)) as test_client:
        yield test_client


@pytest.fixture
def definition(nightly: Definition) -> Definition:
    return dataclasses.replace(nightly, task="api-flaky")


def get(client: Client, path: str, headers: Mapping[str, str] = AUTH) -> tuple[int, Any]:
    response = client.http.get(path, headers=dict(headers))
    return response.status_code, json.loads(response.body)


def post(client: Client, path: str, body: Any = None, headers: Mapping[str, str] = AUTH) -> tuple[int, Any]:
    response = client.http.post(
        path, headers={"Content-Type": "application/json", **headers}, body=json.dumps(body) if body is not None else ""
    )
    return response.status_code, json.loads(response.body)


def run_to_the_end(aws: MockedAws, settings: Settings) -> list[dict[str, Any]]:
    """Deliver every work message, again while it comes back (its items' attempts), then finalize; the alerts."""
    messages = aws.work_messages()
    for _ in range(settings.item_max_attempts + 1):
        if not messages:
            break
        returned = {f["itemIdentifier"] for f in processor.handle_sqs_event(sqs_event(messages), settings)["batchItemFailures"]}
        messages = [message for message in messages if message["MessageId"] in returned] + aws.work_messages()
    finalizer.handle_stream_event({"Records": aws.stream_records()}, settings, {})
    return [json.loads(alert["Message"]) for alert in aws.alerts()]


def dynamodb_calls(call: Any) -> tuple[Counter, Any]:
    """The DynamoDB operations the app makes while `call` runs (by name), and what it returned."""
    counted: Counter = Counter()

    def count(event_name: str, **kwargs: Any) -> None:
        counted[event_name.rsplit(".", 1)[-1]] += 1

    aws_clients.client("dynamodb").meta.events.register("before-call.dynamodb", count)
    try:
        return counted, call()
    finally:
        aws_clients.client("dynamodb").meta.events.unregister("before-call.dynamodb", count)


def app_module_event_sources() -> Any:
    """The event-source settings the app under test reads (its processor's batch size and timeout)."""
    from chalicelib.config import EventSourceSettings

    return EventSourceSettings.from_env()


# -- who may call --------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}])
def test_a_call_without_the_token_or_with_another_is_refused_with_401(client: Client, headers):
    status, body = get(client, "/batches", headers)

    assert status == 401
    assert body == {"error": {"field": "authorization", "message": "must be 'Bearer <API_TOKEN>' with the local stack's token"}}


def test_without_a_token_the_local_stage_does_not_start(aws: MockedAws, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("API_AUTH", "token")
    monkeypatch.delenv("API_TOKEN", raising=False)
    sys.modules.pop("app", None)
    with pytest.raises(Exception, match="API_AUTH=token needs API_TOKEN"):
        importlib.import_module("app")
    sys.modules.pop("app", None)


# -- bad input ------------------------------------------------------------------------------------


def test_a_bad_batch_id_is_a_400_naming_the_rule_and_never_echoed(client: Client):
    long_id = "x" * 20_000

    for path in (f"/batches/{long_id}", "/batches/bad%20id", f"/batches/{long_id}/wait", "/batches/%00/failures"):
        status, body = get(client, path)
        assert status == 400, path
        assert body["error"]["field"] == "batch_id"
        assert "x" * 100 not in json.dumps(body) and "bad id" not in json.dumps(body)


@pytest.mark.parametrize(
    ("query", "field"),
    [("limit=0", "limit"), ("limit=abc", "limit"), ("status=DONE", "status"), ("definition=Bad_Name", "definition"), ("cursor=%25%25", "cursor")],
)
def test_a_bad_query_parameter_is_a_400_naming_it(client: Client, query: str, field: str):
    status, body = get(client, f"/batches?{query}")

    assert status == 400
    assert body["error"]["field"] == field


def test_an_unknown_batch_is_a_404(client: Client):
    assert get(client, "/batches/nightly-2026-01-01T00:00Z") == (404, {"error": {"field": "batch_id", "message": "no batch has this id"}})


# -- reading --------------------------------------------------------------------------------------


def test_a_batch_shows_its_status_totals_and_progress_and_one_call_is_cheap(
    client: Client, aws: MockedAws, definition: Definition, settings: Settings
):
    header = create_sealed_batch(definition, SLOT, settings)
    messages = aws.work_messages()
    processor.handle_sqs_event(sqs_event(messages[:4]), settings)  # 4 of 10 chunks done
    counted, (status, body) = dynamodb_calls(lambda: get(client, f"/batches/{header['batch_id']}"))

    assert status == 200
    assert (body["batch_id"], body["status"], body["total_items"], body["items_per_message"]) == (header["batch_id"], "SEALED", 1000, 100)
    assert "pk" not in body and "open_pk" not in body
    assert 0 < body["progress"]["percent"] <= 40  # a lower bound: chunks 0-3 ran (SQS order), the estimate never overshoots
    # One header read, one Query per shard, one of its stats rows (item times and cost so far).
    assert counted == Counter({"GetItem": 1, "Query": header["shards"] + 1})
    assert body["item_seconds_observed"]["count"] == 400 and body["cost"]["infrastructure_usd"] > 0

    processor.handle_sqs_event(sqs_event(messages[4:]), settings)
    finalizer.handle_stream_event({"Records": aws.stream_records()}, settings, {})
    status, body = get(client, f"/batches/{header['batch_id']}")
    assert (body["status"], body["progress"]["percent"], body["succeeded"]) == ("COMPLETED", 100.0, 1000)


def test_the_status_of_a_million_item_batch_costs_one_read_one_query_per_open_shard_and_one_for_its_stats(
    client: Client, aws: MockedAws, definition: Definition, settings: Settings
):
    """What one GET /batches/{id} asks DynamoDB for a batch of 1,000,000 items at K=10 (100,000
    chunks in 10 shards of SHARD_CHUNK_TARGET 10,000), as the planner leaves its header: one GetItem,
    one Query (Limit 1) per open shard, whatever the number of rows, and one Query of its stats rows."""
    header = create_sealed_batch(definition, SLOT, settings)
    aws.dynamodb.update_item(
        TableName=aws.table_name,
        Key={"pk": {"S": f"B#{header['batch_id']}"}, "sk": {"S": model.HEADER_SK}},
        UpdateExpression="SET total_items = :items, total_chunks = :chunks, shards = :shards, open_shards = :open",
        ExpressionAttributeValues={
            ":items": {"N": "1000000"}, ":chunks": {"N": "100000"}, ":shards": {"N": "10"},
            ":open": {"NS": [str(shard) for shard in range(10)]},
        },
    )
    counted, (status, body) = dynamodb_calls(lambda: get(client, f"/batches/{header['batch_id']}"))

    assert (status, body["total_items"]) == (200, 1_000_000)
    assert counted == Counter({"GetItem": 1, "Query": 10 + 1})


def test_the_history_is_newest_first_filtered_and_paged_with_an_opaque_cursor(
    client: Client, aws: MockedAws, definition: Definition, settings: Settings, clock
):
    for hour in range(3):
        clock.at(3600 * hour)
        create_sealed_batch(definition, SLOT + timedelta(hours=hour), settings)
    run_to_the_end(aws, settings)
    clock.at(3600 * 3)
    create_sealed_batch(definition, SLOT + timedelta(hours=3), settings)  # still running

    status, first = get(client, "/batches?limit=2")
    assert status == 200
    assert [batch["batch_id"] for batch in first["batches"]] == ["nightly-2026-11-23T09:00Z", "nightly-2026-11-23T08:00Z"]
    status, second = get(client, f"/batches?limit=2&cursor={first['cursor']}")
    assert [batch["batch_id"] for batch in second["batches"]] == ["nightly-2026-11-23T07:00Z", "nightly-2026-11-23T06:00Z"]
    _, sealed = get(client, "/batches?status=SEALED")
    assert [batch["batch_id"] for batch in sealed["batches"]] == ["nightly-2026-11-23T09:00Z"]
    _, other = get(client, "/batches?definition=other")
    assert other == {"batches": [], "cursor": None}


def test_wait_answers_as_soon_as_the_batch_is_done_and_otherwise_says_not_yet(
    client: Client, aws: MockedAws, definition: Definition, settings: Settings
):
    header = create_sealed_batch(definition, SLOT, settings)

    status, body = get(client, f"/batches/{header['batch_id']}/wait?timeout=0")
    assert (status, body["done"], body["batch"]["status"]) == (200, False, "SEALED")
    assert get(client, f"/batches/{header['batch_id']}/wait?timeout=26")[0] == 400  # API Gateway answers by 29 s

    run_to_the_end(aws, settings)
    status, body = get(client, f"/batches/{header['batch_id']}/wait?timeout=25")
    assert (status, body["done"], body["batch"]["status"]) == (200, True, "COMPLETED")


def test_failures_are_listed_a_page_at_a_time_and_a_redrive_runs_them_again(
    client: Client, aws: MockedAws, definition: Definition, settings: Settings
):
    header = create_sealed_batch(definition, SLOT, settings)
    FAILING.update({5, 250, 731})
    (alert,) = run_to_the_end(aws, settings)
    assert alert["status"] == model.COMPLETED_WITH_FAILURES

    _, page = get(client, f"/batches/{header['batch_id']}/failures?limit=2")
    _, rest = get(client, f"/batches/{header['batch_id']}/failures?limit=2&cursor={page['cursor']}")
    listed = [item for entry in page["failures"] + rest["failures"] for item in entry["items"]]
    assert sorted(listed) == [5, 250, 731] and rest["cursor"] is None
    assert "fails on purpose" in json.dumps(page["failures"][0]["errors"])

    FAILING.clear()
    status, started = post(client, f"/batches/{header['batch_id']}/redrive")
    assert status == 202
    assert (started["attempt"], started["status"], started["status_url"]) == (2, "SEALED", f"/batches/{header['batch_id']}")
    assert post(client, f"/batches/{header['batch_id']}/redrive")[0] == 409  # attempt 2 is running
    (again,) = run_to_the_end(aws, settings)
    assert (again["alert_id"], again["status"]) == (f"{header['batch_id']}/2", model.COMPLETED)
    assert post(client, "/batches/nightly-2026-01-01T00:00Z/redrive")[0] == 404


# -- submitting ------------------------------------------------------------------------------------


def test_a_submitted_batch_is_made_by_the_batcher_and_a_retry_with_its_key_finds_it(
    client: Client, aws: MockedAws, settings: Settings, app_module: ModuleType
):
    """POST /batches runs the definition now, through the batcher (as its cron would), with the
    overrides it names; the same Idempotency-Key again returns the same batch and writes nothing,
    and the key with another request is a 409."""
    name = next(iter(app_module.DEFINITIONS))
    body = {"definition": name, "source": {"type": "random", "count": 250, "max_value": 9}, "items_per_message": 20}
    key = {**AUTH, "Idempotency-Key": "order-4711"}

    status, made = post(client, "/batches", body, key)
    assert status == 202, made
    assert made["status_url"] == f"/batches/{made['batch_id']}" and made["batch_id"].startswith(f"{name}-k")
    plan_batches(settings)
    rows = aws.rows()
    header = aws.header(made["batch_id"])
    assert (header["total_items"], header["items_per_message"], header["definition"]) == (250, 20, name)

    status, again = post(client, "/batches", body, key)
    assert (status, again["batch_id"], again["status"]) == (202, made["batch_id"], "SEALED")  # as it is now
    assert aws.rows() == rows  # the retry wrote nothing
    status, refused = post(client, "/batches", {**body, "items_per_message": 10}, key)
    assert (status, refused["error"]["field"]) == (409, "Idempotency-Key")

    (alert,) = run_to_the_end(aws, settings)
    assert (alert["batch_id"], alert["totals"]["items"]) == (made["batch_id"], 250)
    other = post(client, "/batches", {"definition": name}, AUTH)[1]["batch_id"]
    assert other != made["batch_id"]  # without a key, each request is a batch of its own


def test_a_submission_may_leave_k_to_batchdrain_and_the_batch_says_which_it_got(
    client: Client, aws: MockedAws, settings: Settings, app_module: ModuleType
):
    name = next(iter(app_module.DEFINITIONS))
    body = {"definition": name, "source": {"type": "random", "count": 250, "max_value": 9}, "items_per_message": "auto"}

    status, made = post(client, "/batches", body)
    plan_batches(settings)
    status, batch = get(client, f"/batches/{made['batch_id']}")

    assert status == 200
    assert batch["k_rule"].startswith(f"K={batch['items_per_message']} (auto: ")
    assert batch["total_chunks"] == -(-250 // batch["items_per_message"])


@pytest.mark.parametrize(
    "body, field",
    [
        (None, "body"),
        ([1, 2], "body"),
        ({"definition": "nosuch"}, "definition"),
        ({"definition": "nightly", "colour": "red"}, "body"),
        ({"definition": "nightly", "items_per_message": 0}, "items_per_message"),
        ({"definition": "nightly", "items_per_message": "fast"}, "items_per_message"),
        ({"definition": "nightly", "source": {"type": "s3-jsonl", "uri": "s3://someone-elses-bucket/x.jsonl"}}, "source.uri"),
        ({"definition": "nightly", "source": {"type": "nosuch-type-of-source"}}, "source.type"),
    ],
)
def test_a_bad_submission_is_a_400_naming_the_field_and_writes_nothing(client: Client, aws: MockedAws, body: Any, field: str):
    status, answer = post(client, "/batches", body)

    assert (status, answer["error"]["field"]) == (400, field), answer
    assert "someone-elses-bucket" not in json.dumps(answer) and "nosuch-type-of-source" not in json.dumps(answer)
    assert aws.rows() == []
