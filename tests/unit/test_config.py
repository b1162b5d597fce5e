"""Batch definitions: the shipped file loads, and every bad field is named in the error."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from batchdrain_deploy.project import Project
from chalicelib.config import (
    DEFAULT_DEFINITIONS_FILE,
    MAX_TASK_OPTIONS_BYTES,
    MIN_MAX_MESSAGE_BYTES,
    PROCESSOR_SAFETY_MARGIN_SECONDS,
    Definition,
    EventSourceSettings,
    Settings,
    Source,
    check_processing_budget,
    load_definitions,
    parse_definitions,
)
from chalicelib import config as config_module
from chalicelib import sizing
from chalicelib.errors import ConfigError, TaskOptionsError
from chalicelib.tasks import task

from .conftest import cut_generated


KNOWN_TASKS = {"sleep", "noop"}
VALID = {
    "name": "nightly",
    "description": "test",
    "schedule": "cron(0 0/6 * * ? *)",
    "source": {"type": "random", "count": 1000, "max_value": 1000},
    "task": "sleep",
    "task_options": {"scale": 0},
    "items_per_message": 100,
    "alert": {"subject_prefix": "[test] ", "sample_errors": 5},
}


def definition(**changes: Any) -> dict[str, Any]:
    """A valid definition with `changes` applied; a value of ... removes the field."""
    raw = copy.deepcopy(VALID)
    for key, value in changes.items():
        if value is ...:
            raw.pop(key)
        else:
            raw[key] = value
    return raw


def parse(*definitions: dict[str, Any], tasks: set[str] = frozenset()) -> dict:
    return parse_definitions({"definitions": list(definitions)}, "batches.json", KNOWN_TASKS | tasks)


def config_error(*definitions: dict[str, Any], tasks: set[str] = frozenset()) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(*definitions, tasks=tasks)
    return str(caught.value)


# -- the shipped file ----------------------------------------------------------------


def test_shipped_definitions_file_loads_the_nightly_batch():
    definitions = load_definitions()

    nightly = definitions["nightly"]
    assert nightly.schedule == "cron(0 0/6 * * ? *)"
    assert nightly.task == "sleep"
    assert nightly.source.type == "random"
    assert nightly.source.count == 10_000
    assert nightly.items_per_message is None  # auto: chosen for each batch
    assert nightly.handler_name == "batch_nightly"


def test_definitions_file_can_be_chosen_with_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"definitions": [definition(name="hourly-report", schedule="rate(1 hour)")]}))
    monkeypatch.setenv("BATCHDRAIN_DEFINITIONS", str(path))

    definitions = load_definitions()

    assert list(definitions) == ["hourly-report"]
    assert definitions["hourly-report"].handler_name == "batch_hourly_report"


def test_valid_definition_parses_every_field():
    parsed = parse(definition())["nightly"]

    assert parsed.description == "test"
    assert parsed.source.count == 1000 and parsed.source.max_value == 1000
    assert dict(parsed.task_options) == {"scale": 0}
    assert parsed.alert.subject_prefix == "[test] "
    assert parsed.alert.sample_errors == 5


def test_optional_fields_take_their_defaults():
    parsed = parse(definition(description=..., task_options=..., alert=...))["nightly"]

    assert parsed.description == ""
    assert dict(parsed.task_options) == {}
    assert parsed.alert.subject_prefix == "" and parsed.alert.sample_errors == 5


# -- each bad field is named ------------------------------------------------------------


def test_missing_name_is_named():
    assert "definitions[0].name: missing" in config_error(definition(name=...))


def test_invalid_name_is_named():
    assert "definitions[0].name: 'Nightly Run'" in config_error(definition(name="Nightly Run"))


@pytest.mark.parametrize("schedule", ["every 6 hours", "cron(0 6 * *)", "rate(6 weeks)", ""])
def test_bad_schedule_is_named(schedule: str):
    message = config_error(definition(schedule=schedule))

    assert "definitions[0].schedule" in message
    assert "EventBridge" in message


def test_unknown_task_is_named_and_registered_tasks_listed():
    message = config_error(definition(task="resize"))

    assert "definitions[0].task: unknown task 'resize'" in message
    assert "noop, sleep" in message


@pytest.mark.parametrize("value", [0, 10_001])
def test_items_per_message_out_of_range_is_named(value: int):
    message = config_error(definition(items_per_message=value))

    assert "definitions[0].items_per_message: must be between 1 and 10,000" in message
    assert f"got {value:,}" in message


def test_items_per_message_left_out_or_auto_is_chosen_for_each_batch():
    assert parse(definition(items_per_message=...))["nightly"].items_per_message is None
    assert parse(definition(items_per_message="auto"))["nightly"].items_per_message is None


def test_items_per_message_neither_auto_nor_a_number_is_named():
    assert 'definitions[0].items_per_message: must be "auto" or a whole number, got \'fast\'' in config_error(
        definition(items_per_message="fast")
    )


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"items_per_message": True}, "definitions[0].items_per_message"),
        ({"source": {"type": "random", "count": True}}, "definitions[0].source.count"),
        ({"source": {"type": "random", "count": 10, "max_value": False}}, "definitions[0].source.max_value"),
        ({"alert": {"sample_errors": True}}, "definitions[0].alert.sample_errors"),
    ],
)
def test_bool_where_an_int_is_expected_is_named(changes: dict[str, Any], field: str):
    message = config_error(definition(**changes))

    assert f"{field}: must be int, got True" in message or f"{field}: must be int, got False" in message


def test_count_given_as_a_string_is_named():
    assert "definitions[0].source.count: must be int, got '1000'" in config_error(
        definition(source={"type": "random", "count": "1000"})
    )


def test_unknown_field_is_named_with_the_allowed_ones():
    message = config_error(definition(retries=3))

    assert "definitions[0]: unknown field(s) retries" in message
    assert "items_per_message" in message


def test_unknown_field_in_source_is_named():
    assert "definitions[0].source: unknown field(s) bucket" in config_error(
        definition(source={"type": "random", "count": 10, "bucket": "b"})
    )


def test_unknown_source_type_is_named():
    assert "definitions[0].source.type: unknown source type 's3'" in config_error(
        definition(source={"type": "s3", "count": 10})
    )


def test_missing_source_is_named():
    assert "definitions[0].source: must be an object" in config_error(definition(source=...))


def test_task_options_must_be_an_object():
    assert "definitions[0].task_options: must be an object" in config_error(definition(task_options=[1]))


@pytest.mark.parametrize("number", [float("nan"), float("inf")])
def test_task_options_must_be_strict_json(number: float):
    """json.loads accepts NaN and Infinity; DynamoDB and other JSON readers do not."""
    assert "definitions[0].task_options: NaN and Infinity" in config_error(definition(task_options={"scale": number}))


def test_long_subject_prefix_is_named():
    assert "definitions[0].alert.subject_prefix" in config_error(definition(alert={"subject_prefix": "x" * 21}))


def test_duplicate_name_is_named_at_the_second_definition():
    message = config_error(definition(), definition(schedule="rate(1 day)"))

    assert "definitions[1].name: 'nightly' is defined twice" in message


def test_error_in_a_later_definition_names_its_position():
    assert "definitions[1].task: unknown task" in config_error(definition(), definition(name="other", task="x"))


@pytest.mark.parametrize("document", [[], {"definitions": {}}, {"defs": []}, {"definitions": [], "extra": 1}])
def test_document_must_be_an_object_with_a_definitions_list(document: Any):
    with pytest.raises(ConfigError, match="batches.json"):
        parse_definitions(document, "batches.json", KNOWN_TASKS)


# -- the file itself -----------------------------------------------------------------------


def test_invalid_json_file_reports_its_line_number(tmp_path: Path):
    path = tmp_path / "batches.json"
    path.write_text('{\n  "definitions": [\n    {"name": "nightly",}\n  ]\n}\n')

    with pytest.raises(ConfigError) as caught:
        load_definitions(path)

    # The trailing comma is on line 3; json reports the token after it (a user looks at the comma).
    assert str(caught.value) == f"{path}:3: a comma before the closing bracket (JSON allows no trailing comma)"


def test_unreadable_path_is_named(tmp_path: Path):
    path = tmp_path / "missing.json"

    with pytest.raises(ConfigError) as caught:
        load_definitions(path)

    assert str(path) in str(caught.value)
    assert "cannot be read" in str(caught.value)


def test_directory_instead_of_a_file_is_named(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_definitions(tmp_path)


def test_valid_file_on_disk_loads(tmp_path: Path):
    path = tmp_path / "batches.json"
    path.write_text(json.dumps({"definitions": [definition(), definition(name="weekly", schedule="rate(7 days)")]}))

    assert sorted(load_definitions(path)) == ["nightly", "weekly"]


def test_error_from_a_file_names_the_file_and_the_field(tmp_path: Path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"definitions": [definition(items_per_message=0)]}))

    with pytest.raises(ConfigError, match=r"mine\.json:\d+: definitions\[0\]\.items_per_message"):
        load_definitions(path)


def test_file_that_is_not_utf8_gives_a_config_error(tmp_path: Path):
    path = tmp_path / "batches.json"
    path.write_bytes(b'{"definitions": [{"name": "caf\xe9"}]}')

    with pytest.raises(ConfigError) as caught:
        load_definitions(path)

    assert str(path) in str(caught.value)
    assert "not UTF-8" in str(caught.value)


@pytest.mark.parametrize(
    ("schedule", "hint"),
    [
        ("rate(1 hours)", "rate(1 hour)"),  # a value of 1 takes the singular unit
        ("rate(5 minute)", "rate(5 minutes)"),  # any other value the plural
        ("rate(0 minutes)", "at least 1"),
    ],
)
def test_rate_expressions_eventbridge_rejects_are_config_errors(schedule: str, hint: str):
    message = config_error(definition(schedule=schedule))

    assert "definitions[0].schedule" in message
    assert hint in message


@pytest.mark.parametrize("schedule", ["rate(1 minute)", "rate(1 day)", "rate(15 minutes)", "cron(30 6 ? * MON-FRI *)"])
def test_rate_and_cron_expressions_eventbridge_accepts_are_valid(schedule: str):
    assert parse(definition(schedule=schedule))["nightly"].schedule == schedule


@pytest.mark.parametrize("schedule", ["cron(0 6 * * * *)", "cron(0 6 ? * ? *)"])
def test_cron_needs_exactly_one_of_day_of_month_and_day_of_week_as_question_mark(schedule: str):
    assert "definitions[0].schedule" in config_error(definition(schedule=schedule))


@pytest.mark.parametrize("prefix", ["[ops]\n", "tab\there", "Zürich "])
def test_subject_prefix_must_be_printable_ascii(prefix: str):
    # SNS rejects a subject with line breaks or control characters; the alert would be lost after completion.
    assert "definitions[0].alert.subject_prefix" in config_error(definition(alert={"subject_prefix": prefix}))


# -- settings from the environment -----------------------------------------------------------


def test_settings_come_from_the_environment_with_defaults(settings: Settings):
    assert settings.table_name == "batchdrain-test"
    assert settings.work_queue_name == "batchdrain-test-work"
    assert settings.max_message_bytes == 256 * 1024
    assert settings.shard_chunk_target == 10_000
    assert settings.row_ttl_days == 30


def test_missing_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("TABLE_NAME")

    with pytest.raises(ConfigError, match="environment variable TABLE_NAME is not set"):
        Settings.from_env()


def test_non_integer_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SHARD_CHUNK_TARGET", "many")

    with pytest.raises(ConfigError, match="SHARD_CHUNK_TARGET must be an integer, got 'many'"):
        Settings.from_env()


def test_shipped_file_is_the_default_path():
    assert DEFAULT_DEFINITIONS_FILE.name == "batches.json" and DEFAULT_DEFINITIONS_FILE.exists()


# -- processing budget: one processor invocation must finish its batch of messages -----------


def event_sources(**environment: str) -> EventSourceSettings:
    """EventSourceSettings from the test environment plus `environment`."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        return EventSourceSettings.from_env()


def test_item_seconds_is_optional_and_defaults_to_one_second():
    assert parse(definition())["nightly"].item_seconds == 1.0
    assert parse(definition(item_seconds=0.25))["nightly"].item_seconds == 0.25
    assert parse(definition(item_seconds=900))["nightly"].item_seconds == 900


@pytest.mark.parametrize("value", [0, -1, 900.5, True, "1", None])
def test_item_seconds_must_be_a_number_above_zero_and_at_most_900(value: Any):
    message = config_error(definition(item_seconds=value))

    assert "definitions[0].item_seconds: must be a number above 0 and at most 900" in message
    assert f"got {value!r}" in message


def test_processor_timeout_seconds_comes_from_the_environment_with_chalices_default():
    assert event_sources().processor_timeout_seconds == 60
    assert event_sources(PROCESSOR_TIMEOUT_SECONDS="120").processor_timeout_seconds == 120


@pytest.mark.parametrize("value", ["2", "901"])
def test_processor_timeout_seconds_is_within_lambdas_limits(value: str):
    with pytest.raises(ConfigError, match=f"PROCESSOR_TIMEOUT_SECONDS must be between 3 and 900, got {value}"):
        event_sources(PROCESSOR_TIMEOUT_SECONDS=value)


def test_a_definition_that_fits_the_processor_timeout_passes():
    # 5 messages x 20 items x 1.0 s = 100 s <= 120 s - 5 s margin
    definitions = parse(definition(items_per_message=20, item_seconds=1.0))
    check_processing_budget(definitions, event_sources(PROCESSOR_BATCH_SIZE="5", PROCESSOR_TIMEOUT_SECONDS="120"))
    # exactly the budget: 5 x 23 x 1.0 = 115 s
    definitions = parse(definition(items_per_message=23, item_seconds=1.0))
    check_processing_budget(definitions, event_sources(PROCESSOR_BATCH_SIZE="5", PROCESSOR_TIMEOUT_SECONDS="120"))


def test_a_definition_too_slow_for_the_processor_timeout_names_it_with_the_arithmetic_and_the_fixes():
    definitions = parse(definition(), definition(name="huge", schedule="rate(1 day)", items_per_message=100))

    with pytest.raises(ConfigError) as caught:
        check_processing_budget(definitions, event_sources(PROCESSOR_BATCH_SIZE="10", PROCESSOR_TIMEOUT_SECONDS="60"))

    message = str(caught.value)
    assert message.startswith("definition 'nightly': ")
    assert "PROCESSOR_BATCH_SIZE 10 x items_per_message 100 x item_seconds 1 = 1,000 s" in message
    assert "PROCESSOR_TIMEOUT_SECONDS 60 - 5 s safety margin = 55 s" in message
    assert "lower items_per_message or PROCESSOR_BATCH_SIZE, or raise the processor's lambda_timeout" in message


def test_the_safety_margin_is_the_processors():
    from chalicelib import deadline

    assert PROCESSOR_SAFETY_MARGIN_SECONDS == 5
    assert deadline.DEFAULT_SAFETY_MARGIN_MS == PROCESSOR_SAFETY_MARGIN_SECONDS * 1000


def test_the_shipped_definitions_fit_the_processor_timeout_in_every_stage():
    """What `chalice deploy --stage <stage>` and the local stack import: the shipped file with each stage's settings."""
    project = Project()
    for stage in project.config()["stages"]:
        sources = event_sources(API_TOKEN="made-by-the-local-stack", **project.stage_environment(stage))
        check_processing_budget(load_definitions(), sources)


def test_every_stage_tells_the_app_its_processor_timeout():
    """PROCESSOR_TIMEOUT_SECONDS must be the processor's real timeout, as Chalice resolves lambda_timeout."""
    project = Project()
    for stage in project.config()["stages"]:
        environment = project.stage_environment(stage)
        assert "PROCESSOR_TIMEOUT_SECONDS" in environment, stage
        assert int(environment["PROCESSOR_TIMEOUT_SECONDS"]) == project.lambda_timeout(stage, "process_work"), stage


def test_the_shipped_nightly_definition_leaves_k_to_batchdrain_and_gets_the_budget_of_its_1_s_items():
    nightly = load_definitions()["nightly"]
    environment = Project().stage_environment("dev")

    assert (nightly.items_per_message, nightly.item_seconds) == (None, 1.0)
    assert (environment["PROCESSOR_BATCH_SIZE"], Project().lambda_timeout("dev", "process_work")) == ("2", 120)
    with mock.patch.dict(os.environ, {**environment, "API_TOKEN": "x" * 32}):
        chosen = sizing.choose_k(nightly, EventSourceSettings.from_env(), 262_144)
    # 2 messages x K x 1 s within 120 - 5 s
    assert (chosen.k, chosen.rule) == (57, sizing.LIMIT_BUDGET)


def test_the_defaults_let_a_200_ms_task_fill_a_chunk_row():
    """At PROCESSOR_BATCH_SIZE 2 and a 120 s processor, a message may hold 57.5 s of work: a 0.2 s task's K is
    limited by the row's one write unit, not by time (the cost target: README "What a batch costs")."""
    environment = Project().stage_environment("dev")
    task = Definition(name="fast", schedule="", source=Source(type="random", count=1_000_000), task="noop", item_seconds=0.2)
    with mock.patch.dict(os.environ, {**environment, "API_TOKEN": "x" * 32}):
        chosen = sizing.choose_k(task, EventSourceSettings.from_env(), 262_144)

    assert chosen.rule == sizing.LIMIT_ROW
    assert chosen.by_limit[sizing.LIMIT_BUDGET] == 287 > chosen.k
    assert sizing.fresh_row_bytes(task, chosen.k) <= 1024 < sizing.fresh_row_bytes(task, chosen.k + 1)


# -- task options: small enough for every message, and meaningful to their task ----------------


def options_of_size(size: int) -> dict[str, str]:
    """Options whose compact JSON is exactly `size` bytes: {"pad":"xxx..."}."""
    return {"pad": "x" * (size - len('{"pad":""}'))}


def test_task_options_up_to_the_limit_are_accepted():
    assert len(json.dumps(options_of_size(MAX_TASK_OPTIONS_BYTES), separators=(",", ":"))) == MAX_TASK_OPTIONS_BYTES

    largest = options_of_size(MAX_TASK_OPTIONS_BYTES)
    parsed = parse(definition(task="unvalidated", task_options=largest), tasks={"unvalidated"})

    assert parsed["nightly"].task_options == options_of_size(MAX_TASK_OPTIONS_BYTES)


def test_task_options_too_large_for_every_message_are_named_with_the_limit():
    too_large = options_of_size(MAX_TASK_OPTIONS_BYTES + 1)
    message = config_error(definition(task="unvalidated", task_options=too_large), tasks={"unvalidated"})

    assert f"definitions[0].task_options: {MAX_TASK_OPTIONS_BYTES + 1:,} bytes as JSON" in message
    assert f"at most {MAX_TASK_OPTIONS_BYTES:,}" in message


def test_the_largest_options_leave_room_for_an_item_in_the_smallest_message():
    """MAX_TASK_OPTIONS_BYTES is chosen so that any allowed MAX_MESSAGE_BYTES still carries items."""
    item = {"id": 0, "value": "v" * 900}
    (chunk,) = cut_generated(
        [item],
        batch_id="nightly-2026-11-23T06:00Z",
        task="unvalidated",
        options=options_of_size(MAX_TASK_OPTIONS_BYTES),
        items_per_message=10,
        max_message_bytes=MIN_MAX_MESSAGE_BYTES,
        shards=1,
    )
    assert len(chunk.body()) <= MIN_MAX_MESSAGE_BYTES


@pytest.mark.parametrize("scale", [-1, -0.5, "2", True, None, [1]])
def test_sleep_rejects_a_scale_that_is_not_a_number_at_least_zero(scale: Any):
    message = config_error(definition(task="sleep", task_options={"scale": scale}))

    assert f"definitions[0].task_options.scale: must be a number >= 0, got {scale!r}" in message


def test_sleep_rejects_unknown_options_and_names_the_one_it_takes():
    message = config_error(definition(task="sleep", task_options={"scale": 1, "jitter": 2}))

    assert "definitions[0].task_options: task 'sleep': unknown option(s) jitter (allowed: scale)" in message


@pytest.mark.parametrize("options", [{}, {"scale": 0}, {"scale": 2.5}])
def test_sleep_accepts_no_scale_or_a_scale_at_least_zero(options: dict[str, Any]):
    assert parse(definition(task="sleep", task_options=options))["nightly"].task_options == options


def test_noop_takes_no_options():
    assert parse(definition(task="noop", task_options={}))["nightly"].task_options == {}
    message = config_error(definition(task="noop", task_options={"scale": 0}))

    assert "definitions[0].task_options: task 'noop': unknown option(s) scale (allowed: none)" in message


def colour_only(options: Any) -> None:
    if set(options) - {"colour"}:
        raise TaskOptionsError(None, "only a colour, please")


@task("unit-config-painter", options=colour_only)
def painter(item: dict, options: Any) -> None:
    """A task with its own options validator."""


def test_a_task_can_register_its_own_options_validator():
    registered = {"unit-config-painter"}
    assert parse(definition(task="unit-config-painter", task_options={"colour": "red"}), tasks=registered)
    message = config_error(definition(task="unit-config-painter", task_options={"size": 3}), tasks=registered)
    assert "definitions[0].task_options: only a colour, please" in message


def test_bad_task_options_in_a_file_name_the_file_and_the_option(tmp_path: Path):
    path = tmp_path / "batches.json"
    path.write_text(json.dumps({"definitions": [definition(task_options={"scale": -1})]}))

    expected = r"batches\.json:\d+: definitions\[0\]\.task_options\.scale: must be a number >= 0, got -1"
    with pytest.raises(ConfigError, match=expected):
        load_definitions(path)


# -- cron fields: each value within EventBridge's rules --------------------------------------------


@pytest.mark.parametrize(
    "schedule",
    [
        # EventBridge's documented examples
        "cron(0 10 * * ? *)",
        "cron(15 12 * * ? *)",
        "cron(0 18 ? * MON-FRI *)",
        "cron(0 8 1 * ? *)",
        "cron(0/15 * * * ? *)",
        "cron(0/10 * ? * MON-FRI *)",
        "cron(0/5 8-17 ? * MON-FRI *)",
        "cron(0 9 ? * 2#1 *)",
        # each wildcard where EventBridge allows it
        "cron(*/15 * * * ? *)",
        "cron(5,35 14 * * ? *)",
        "cron(0 12 L * ? *)",
        "cron(0 12 LW * ? *)",
        "cron(0 12 15W * ? *)",
        "cron(0 12 1-15/2 * ? *)",
        "cron(0 9 ? * L *)",
        "cron(0 9 ? * 6L *)",
        "cron(0 9 ? * SUN,sat *)",
        "cron(0 9 ? JAN,jul-DEC * *)",
        "cron(0 9 1 1/3 ? 2026-2030)",
        "cron(59 23 31 12 ? 2199)",
        "cron(0 0 1 1 ? 1970)",
    ],
)
def test_cron_expressions_within_eventbridges_rules_are_valid(schedule: str):
    assert parse(definition(schedule=schedule))["nightly"].schedule == schedule


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("cron(0 24 * * ? *)", "hours field '24' is out of range 0-23"),
        ("cron(60 0 * * ? *)", "minutes field '60' is out of range 0-59"),
        ("cron(0,61 0 * * ? *)", "minutes field '0,61': 61 is out of range 0-59"),
        ("cron(0 0 32 * ? *)", "day-of-month field '32' is out of range 1-31"),
        ("cron(0 0 0 * ? *)", "day-of-month field '0' is out of range 1-31"),
        ("cron(0 0 32W * ? *)", "day-of-month field '32W': 32 is out of range 1-31"),
        ("cron(0 0 * 13 ? *)", "month field '13' is out of range 1-12"),
        ("cron(0 0 * 0-3 ? *)", "month field '0-3': 0 is out of range 1-12"),
        ("cron(0 0 * FOO ? *)", "month field 'FOO' is not valid"),
        ("cron(0 0 ? * 8 *)", "day-of-week field '8' is out of range 1-7"),
        ("cron(0 0 ? * MON-FRX *)", "day-of-week field 'MON-FRX' is not valid"),
        ("cron(0 0 ? * 3#6 *)", "day-of-week field '3#6': the week of the month after # must be 1-5"),
        ("cron(0 0 ? * 3#1,6#3 *)", "day-of-week field '3#1,6#3': '#' allows only one expression"),
        ("cron(0 0 ? * 1/2 *)", "day-of-week field '1/2' is not valid"),
        ("cron(0 0 * * ? 1969)", "year field '1969' is out of range 1970-2199"),
        ("cron(0 0 * * ? 2200)", "year field '2200' is out of range 1970-2199"),
        ("cron(0 0 * * ? ?)", "year field '?' is not valid"),
        ("cron(0 L * * ? *)", "hours field 'L' is not valid"),
        ("cron(0 12W * * ? *)", "hours field '12W' is not valid"),
        ("cron(0/0 * * * ? *)", "minutes field '0/0': the increment after / must be 1-59"),
        ("cron(1-2-3 0 * * ? *)", "minutes field '1-2-3' is not valid"),
        ("cron(1,,2 0 * * ? *)", "minutes field '1,,2' is not valid"),
        ("cron(? 0 * * ? *)", "minutes field '?' is not valid"),
    ],
)
def test_cron_field_values_eventbridge_rejects_are_named(schedule: str, expected: str):
    message = config_error(definition(schedule=schedule))

    assert f"definitions[0].schedule: {schedule!r}: {expected}" in message


def test_an_invalid_cron_field_lists_what_the_field_allows():
    message = config_error(definition(schedule="cron(0 0 ? * MON-FRX *)"))

    assert "1-7 or SUN-SAT" in message and ", - * ? L #" in message


def test_every_setting_the_code_reads_is_listed_once_in_setting_names():
    """SETTING_NAMES is what `batchdrain validate --stage` replaces with the stage's values and what
    README "Settings" documents: a setting read with env()/env_int() but missing there would be
    checked with this shell's value instead of the deployed one."""
    import ast

    from chalicelib.config import SETTING_NAMES

    read = {
        node.args[0].value
        for node in ast.walk(ast.parse(Path(config_module.__file__).read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("env", "env_int")
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }
    assert read == set(SETTING_NAMES) and len(SETTING_NAMES) == len(set(SETTING_NAMES))
