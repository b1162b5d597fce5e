"""app.py: the entry points it registers, their settings, and the HTTP API, via Chalice's test client."""

from __future__ import annotations

import importlib
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from chalice.app import DynamoDBEventConfig, ScheduledEventConfig, SQSEventConfig
from chalice.test import Client

from chalicelib import model
from chalicelib.config import DEFAULT_DEFINITIONS_FILE, load_definitions

from .conftest import PLANNING_QUEUE_NAME, MockedAws, sqs_event

BATCH_ID = "nightly-2026-11-23T06:00Z"


def import_app() -> ModuleType:
    """A fresh import of app.py, so it reads the environment of this test."""
    sys.modules.pop("app", None)
    return importlib.import_module("app")


@pytest.fixture
def definitions_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two definitions: a small nightly batch and one whose name has a hyphen."""
    shipped = json.loads((Path(__file__).resolve().parents[2] / "chalicelib" / "batches.json").read_text())
    nightly = shipped["definitions"][0]
    nightly["source"]["count"] = 1000
    nightly["task_options"] = {"scale": 0}
    nightly["item_seconds"] = 0.01  # scale 0: the sleep task returns at once
    hourly = {**nightly, "name": "hourly-report", "schedule": "rate(1 hour)", "task": "noop", "description": "hourly"}
    hourly["task_options"] = {}  # noop takes none
    path = tmp_path / "batches.json"
    path.write_text(json.dumps({"definitions": [nightly, hourly]}))
    monkeypatch.setenv("BATCHDRAIN_DEFINITIONS", str(path))
    return path


@pytest.fixture
def dev_processor(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dev stage's processor settings, which the shipped definitions are sized for."""
    monkeypatch.setenv("PROCESSOR_BATCH_SIZE", "5")
    monkeypatch.setenv("PROCESSOR_TIMEOUT_SECONDS", "120")


@pytest.fixture
def app_module(aws_env: None, dev_processor: None) -> Iterator[ModuleType]:
    module = import_app()
    yield module
    sys.modules.pop("app", None)


@pytest.fixture
def client(app_module: ModuleType, tmp_path: Path) -> Iterator[Client]:
    # An empty project dir: stage config from .chalice/ must not override the test environment.
    with Client(app_module.app, project_dir=str(tmp_path)) as test_client:
        yield test_client


def scheduled_event(time: str) -> dict[str, Any]:
    """What EventBridge sends a schedule's target."""
    return {
        "version": "0",
        "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": time,
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/batchdrain-dev-batch_nightly-event"],
        "detail": {},
    }


def sources_of(app_module: ModuleType, kind: type) -> list[Any]:
    return [source for source in app_module.app.event_sources if isinstance(source, kind)]


# -- registration --------------------------------------------------------------------------------


def test_shipped_definitions_register_one_schedule_each_nightly_as_batch_nightly(app_module: ModuleType):
    schedules = {source.name: source for source in sources_of(app_module, ScheduledEventConfig)}

    assert sorted(schedules) == sorted([d.handler_name for d in load_definitions().values()] + ["sweep"])
    assert schedules["sweep"].schedule_expression.to_string() == "rate(5 minutes)"
    schedule = schedules["batch_nightly"]
    assert schedule.schedule_expression == "cron(0 0/6 * * ? *)"
    assert schedule.handler_string == "app.batch_nightly"
    assert callable(app_module.batch_nightly)  # Lambda resolves the handler string to this attribute


def create_and_seal(client: Client, aws: MockedAws) -> None:
    """The 06:00 cron, the planner on its planning message, and the finalizer sealing on the segment's REMOVE."""
    client.lambda_.invoke("batch_nightly", scheduled_event("2026-11-23T06:00:00Z"))
    plan(client, aws)
    client.lambda_.invoke("finalize", {"Records": aws.stream_records()})


def plan(client: Client, aws: MockedAws) -> None:
    """Invoke the planner on each planning message until none is left (it continues in a new one when short of time)."""
    while messages := aws.planning_messages():
        planned = client.lambda_.invoke("plan_segments", sqs_event(messages, PLANNING_QUEUE_NAME))
        assert planned.payload == {"batchItemFailures": []}


def test_the_shipped_definition_creates_its_batch_unchanged(aws: MockedAws, client: Client):
    """The shipped file as it is (10,000 items, "scale": 1.0, a float): what the 06:00 cron really runs."""
    create_and_seal(client, aws)

    header = client.http.get(f"/batches/{BATCH_ID}").json_body
    assert header["status"] == model.SEALED
    # K left to batchdrain: the most 1 s items PROCESSOR_BATCH_SIZE messages may hold within the timeout's budget.
    k = header["items_per_message"]
    assert header["k_rule"].startswith(f"K={k} (auto: processing budget;")
    assert header["total_items"] == 10_000 and header["total_chunks"] == math.ceil(10_000 / k)
    assert header["task_options"] == {"scale": 1.0}
    assert {model.parse_message(m["Body"]).options["scale"] for m in aws.work_messages()} == {1.0}


def test_one_schedule_per_definition(definitions_file: Path, app_module: ModuleType):
    schedules = {source.name: source for source in sources_of(app_module, ScheduledEventConfig)}

    assert sorted(schedules) == ["batch_hourly_report", "batch_nightly", "sweep"]
    assert schedules["batch_hourly_report"].schedule_expression == "rate(1 hour)"
    assert schedules["batch_hourly_report"].description == "hourly"
    assert schedules["batch_hourly_report"].handler_string == "app.batch_hourly_report"
    assert callable(app_module.batch_hourly_report)


def test_event_sources_take_their_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    for name, value in {
        "PROCESSOR_BATCH_SIZE": "7",
        "PROCESSOR_BATCHING_WINDOW": "2",
        "PROCESSOR_MAX_CONCURRENCY": "5",
        "FINALIZER_BATCH_SIZE": "50",
        "FINALIZER_BATCHING_WINDOW": "3",
        "PROCESSOR_TIMEOUT_SECONDS": "300",  # 7 messages x 20 items x 1 s of the shipped nightly fit in 295 s
    }.items():
        monkeypatch.setenv(name, value)
    try:
        app_module = import_app()
        queues = {source.name: source for source in sources_of(app_module, SQSEventConfig)}
        work, dead_letters = queues["process_work"], queues["drain_dead_letters"]
        (stream,) = sources_of(app_module, DynamoDBEventConfig)
    finally:
        sys.modules.pop("app", None)

    assert (work.name, work.queue, work.batch_size) == ("process_work", "batchdrain-test-work", 7)
    assert work.maximum_batching_window_in_seconds == 2
    assert work.maximum_concurrency == 5
    assert (dead_letters.queue, dead_letters.batch_size) == ("batchdrain-test-dead-letters", 10)
    assert stream.name == "finalize"
    assert stream.stream_arn.startswith("arn:aws:dynamodb:us-east-1:123456789012:table/batchdrain-test/stream/")
    assert (stream.batch_size, stream.maximum_batching_window_in_seconds) == (50, 3)
    assert stream.starting_position == "TRIM_HORIZON"
    assert app_module.EVENT_SOURCES.processor_timeout_seconds == 300


def test_event_source_defaults(definitions_file: Path, monkeypatch: pytest.MonkeyPatch):
    # Small definitions (item_seconds 0.01), so Lambda's defaults fit them; no stage settings.
    monkeypatch.delenv("PROCESSOR_BATCH_SIZE", raising=False)
    monkeypatch.delenv("PROCESSOR_TIMEOUT_SECONDS", raising=False)
    try:
        app_module = import_app()
    finally:
        sys.modules.pop("app", None)
    work = next(source for source in sources_of(app_module, SQSEventConfig) if source.name == "process_work")
    (stream,) = sources_of(app_module, DynamoDBEventConfig)

    assert (work.batch_size, work.maximum_batching_window_in_seconds, work.maximum_concurrency) == (10, 0, None)
    assert (stream.batch_size, stream.maximum_batching_window_in_seconds) == (100, 1)
    assert app_module.EVENT_SOURCES.processor_timeout_seconds == 60


def _nightly_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **changes: Any) -> None:
    """The shipped nightly definition with `changes`, as the app's definitions file."""
    document = json.loads(DEFAULT_DEFINITIONS_FILE.read_text())
    document["definitions"][0].update(changes)
    path = tmp_path / "batches.json"
    path.write_text(json.dumps(document, indent=2))
    monkeypatch.setenv("BATCHDRAIN_DEFINITIONS", str(path))


def test_definitions_too_slow_for_the_processor_timeout_fail_the_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The nightly pinned at K=20 (item_seconds 1) with Lambda's defaults: 10 x 20 x 1 s > 60 s - 5 s."""
    _nightly_with(tmp_path, monkeypatch, items_per_message=20)
    monkeypatch.setenv("PROCESSOR_BATCH_SIZE", "10")
    monkeypatch.delenv("PROCESSOR_TIMEOUT_SECONDS", raising=False)

    from chalicelib.errors import ConfigError

    with pytest.raises(ConfigError, match=r"batches\.json:\d+: definitions\[0\]\.items_per_message: .* = 200 s, more than PROCESSOR_TIMEOUT_SECONDS 60"):
        import_app()
    sys.modules.pop("app", None)


def test_an_auto_k_definition_whose_one_item_is_too_slow_fails_the_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """K auto cannot go below 1: 10 messages x 1 item x 30 s > 60 s - 5 s is refused as a pinned K would be."""
    _nightly_with(tmp_path, monkeypatch, item_seconds=30)
    monkeypatch.setenv("PROCESSOR_BATCH_SIZE", "10")
    monkeypatch.delenv("PROCESSOR_TIMEOUT_SECONDS", raising=False)

    from chalicelib.errors import ConfigError

    with pytest.raises(ConfigError, match=r"items_per_message auto \(even K=1\) x item_seconds 30 = 300 s, more than .* lower PROCESSOR_BATCH_SIZE"):
        import_app()
    sys.modules.pop("app", None)


def test_bad_definitions_file_fails_the_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "batches.json"
    path.write_text(json.dumps({"definitions": [{"name": "nightly"}]}))
    monkeypatch.setenv("BATCHDRAIN_DEFINITIONS", str(path))

    from chalicelib.errors import ConfigError

    with pytest.raises(ConfigError, match=r"definitions\[0\]\.schedule: missing"):
        import_app()
    sys.modules.pop("app", None)


# -- the HTTP API -----------------------------------------------------------------------------------


def test_get_batch_returns_the_header_without_table_keys(aws: MockedAws, definitions_file: Path, client: Client):
    create_and_seal(client, aws)

    response = client.http.get(f"/batches/{BATCH_ID}")

    assert response.status_code == 200
    body = response.json_body
    assert "pk" not in body and "sk" not in body
    assert body["batch_id"] == BATCH_ID
    assert body["status"] == model.SEALED
    assert body["total_items"] == 1000
    assert body["open_shards"] == [0]


def test_logs_are_json_lines_with_the_batch_id_even_after_chalice_configured_its_logger(app_module: ModuleType):
    """A cold start, as Lambda does it: import app (Chalice sets up the logger named after the app), then log."""
    import subprocess

    cold_start = "import app; from chalicelib import log; log.warning('batch sealed', batch_id='b-1', chunks=10)"
    result = subprocess.run(
        [sys.executable, "-c", cold_start], cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [json.loads(line) for line in lines] == [
        {"level": "WARNING", "message": "batch sealed", "batch_id": "b-1", "chunks": 10}
    ]


def test_a_bad_log_level_fails_the_import_naming_the_setting(app_module: ModuleType):
    import subprocess

    result = subprocess.run(
        [sys.executable, "-c", "import app"],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "LOG_LEVEL": "verbose"},
    )

    assert result.returncode != 0
    assert "LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'VERBOSE'" in result.stderr


# -- the handlers, wired end to end -------------------------------------------------------------------


def test_handlers_run_a_batch_from_schedule_to_alert(aws: MockedAws, definitions_file: Path, client: Client):
    client.lambda_.invoke("batch_nightly", scheduled_event("2026-11-23T06:00:00Z"))
    plan(client, aws)

    processed = client.lambda_.invoke("process_work", sqs_event(aws.work_messages()))
    assert processed.payload == {"batchItemFailures": []}

    client.lambda_.invoke("finalize", {"Records": aws.stream_records()})  # the segment's REMOVE seals
    client.lambda_.invoke("finalize", {"Records": aws.stream_records()})  # the seal's MODIFY completes

    (alert,) = aws.alerts()
    assert alert["Subject"].startswith(f"batch {BATCH_ID} completed: 1,000 items in ")
    assert client.http.get(f"/batches/{BATCH_ID}").json_body["status"] == model.COMPLETED
