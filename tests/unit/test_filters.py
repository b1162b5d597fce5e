"""The local stack's Lambda event filter, against the finalizer's FilterCriteria in infra/event-sources.json.

The finalizer must see a chunk row's REMOVE and the header's CREATING -> SEALED change,
and nothing else: every chunk INSERT and MODIFY, and every later header change, would
be an invocation for nothing (or, for a REMOVE lost to the filter, a batch that never
ends). The records here have the shapes Lambda delivers (Keys, images, eventName).
"""

from __future__ import annotations

import json

import pytest

from batchdrain_local.eventsources import DYNAMODB, EventSourceSettingsError, MappingSettings, load_mapping_settings
from batchdrain_local.filters import EventFilter, FilterPatternError, matches

FINALIZER = load_mapping_settings("finalize", DYNAMODB)
assert FINALIZER.event_filter is not None
FINALIZER_FILTER: EventFilter = FINALIZER.event_filter

CHUNK_KEYS = {"pk": {"S": "B#x#0"}, "sk": {"S": "C#00000001"}}
CHUNK_IMAGE = {**CHUNK_KEYS, "pending": {"NS": ["1", "2"]}, "expires_at": {"N": "1900000000"}}
HEADER_KEYS = {"pk": {"S": "B#x"}, "sk": {"S": "META"}}


def stream_record(event_name: str, keys: dict, old: dict | None = None, new: dict | None = None) -> dict:
    change: dict = {"ApproximateCreationDateTime": 1_795_000_000, "Keys": keys, "SequenceNumber": "100", "SizeBytes": 64}
    if old is not None:
        change["OldImage"] = old
    if new is not None:
        change["NewImage"] = new
    change["StreamViewType"] = "NEW_AND_OLD_IMAGES"
    return {
        "eventID": "1",
        "eventName": event_name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": change,
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/2026-01-01T00:00:00.000",
    }


def header(status: str) -> dict:
    return {**HEADER_KEYS, "status": {"S": status}, "total_items": {"N": "100"}}


def test_the_finalizer_mapping_has_three_filters():
    """Chunk REMOVEs, segment REMOVEs (an object source's seal trigger) and the seal."""
    assert len(FINALIZER_FILTER.patterns) == 3


def test_a_chunk_remove_matches():
    assert FINALIZER_FILTER(stream_record("REMOVE", CHUNK_KEYS, old=CHUNK_IMAGE))


def test_a_ttl_chunk_remove_matches_too_the_code_check_rejects_it():
    record = stream_record("REMOVE", CHUNK_KEYS, old=CHUNK_IMAGE)
    record["userIdentity"] = {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
    assert FINALIZER_FILTER(record)


@pytest.mark.parametrize(
    "record",
    [
        stream_record("INSERT", CHUNK_KEYS, new=CHUNK_IMAGE),
        stream_record("MODIFY", CHUNK_KEYS, old=CHUNK_IMAGE, new={**CHUNK_IMAGE, "pending": {"NS": ["2"]}}),
    ],
    ids=["insert", "modify"],
)
def test_a_chunk_write_does_not_match(record):
    assert not FINALIZER_FILTER(record)


def test_the_seal_matches():
    assert FINALIZER_FILTER(stream_record("MODIFY", HEADER_KEYS, old=header("CREATING"), new=header("SEALED")))


@pytest.mark.parametrize(
    ("old", "new"),
    [("SEALED", "SEALED"), ("SEALED", "COMPLETED"), ("SEALED", "COMPLETED_WITH_FAILURES"), ("CREATING", "CREATING")],
)
def test_other_header_changes_do_not_match(old, new):
    assert not FINALIZER_FILTER(stream_record("MODIFY", HEADER_KEYS, old=header(old), new=header(new)))


def test_a_header_insert_does_not_match():
    assert not FINALIZER_FILTER(stream_record("INSERT", HEADER_KEYS, new=header("CREATING")))


def test_a_failed_row_remove_does_not_match():
    keys = {"pk": {"S": "B#x#0"}, "sk": {"S": "F#00000001"}}
    assert not FINALIZER_FILTER(stream_record("REMOVE", keys, old=keys))


# -- the rule syntax itself -------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "record", "expected"),
    [
        ({"a": ["x", "y"]}, {"a": "y"}, True),
        ({"a": ["x", "y"]}, {"a": "z"}, False),
        ({"a": ["x"]}, {}, False),
        ({"a": ["x"]}, {"a": ["q", "x"]}, True),  # an array field: one element must match
        ({"n": [1]}, {"n": 1.0}, True),
        ({"n": [1]}, {"n": "1"}, False),  # no string/number coercion
        ({"n": [1]}, {"n": True}, False),
        ({"b": [True]}, {"b": True}, True),
        ({"a": [{"prefix": "C#"}]}, {"a": "C#1"}, True),
        ({"a": [{"prefix": "C#"}]}, {"a": "F#1"}, False),
        ({"a": [{"prefix": "C#"}]}, {"a": 3}, False),
        ({"a": [{"exists": True}]}, {"a": "v"}, True),
        ({"a": [{"exists": True}]}, {}, False),
        ({"a": [{"exists": True}]}, {"a": {"b": 1}}, False),  # exists matches leaves only
        ({"a": [{"exists": False}]}, {}, True),
        ({"a": [{"exists": False}]}, {"a": "v"}, False),
        ({"p": {"a": [{"exists": False}]}}, {}, True),  # a missing parent: the leaf is missing too
        ({"p": {"a": [{"exists": False}]}}, {"p": {"b": 1}}, True),
        ({"p": {"a": [{"exists": False}]}}, {"p": {"a": 1}}, False),
        ({"a": [{"anything-but": ["x", "y"]}]}, {"a": "z"}, True),
        ({"a": [{"anything-but": ["x", "y"]}]}, {"a": "x"}, False),
        ({"a": [{"anything-but": "x"}]}, {"a": "z"}, True),
        ({"a": [{"anything-but": ["x"]}]}, {}, False),  # anything-but needs the field
        ({"a": ["x", {"prefix": "q"}]}, {"a": "qq"}, True),  # rules in one list are ORed
        ({"a": ["x"], "b": ["y"]}, {"a": "x", "b": "n"}, False),  # keys are ANDed
        ({"a": ["x"], "b": ["y"]}, {"a": "x", "b": "y"}, True),
        ({"p": {"a": ["x"]}}, {"p": [{"a": "q"}, {"a": "x"}]}, True),
    ],
)
def test_rule_syntax(pattern, record, expected):
    assert matches(pattern, record) is expected


def test_several_filters_are_ored():
    keep = EventFilter.from_criteria(
        {"Filters": [{"Pattern": json.dumps({"a": ["x"]})}, {"Pattern": json.dumps({"b": ["y"]})}]}
    )
    assert keep({"a": "x"}) and keep({"b": "y"}) and not keep({"a": "y", "b": "x"})


@pytest.mark.parametrize(
    ("criteria", "message"),
    [
        ({"Filters": []}, "non-empty list"),
        ({"Filters": [{"Pattern": "{not json"}]}, r"Filters\[0\]\.Pattern: not valid JSON"),
        ({"Filters": [{"Pattern": json.dumps({"a": "x"})}]}, r"Pattern\.a: must be an object or a non-empty list"),
        ({"Filters": [{"Pattern": json.dumps({"a": [{"numeric": [">", 1]}]})}]}, r"Pattern\.a: unsupported rule"),
        ({"Filters": [{"Pattern": json.dumps({"a": [{"suffix": "x"}]})}]}, "unsupported rule"),
        ({"Filters": [{"Pattern": json.dumps({"a": [{"exists": "yes"}]})}]}, "exists must be true or false"),
    ],
)
def test_a_rule_the_stack_cannot_evaluate_is_an_error_not_a_pass(criteria, message):
    with pytest.raises(FilterPatternError, match=message):
        EventFilter.from_criteria(criteria)


# -- settings read from the merge template -------------------------------------------


def test_settings_come_from_the_merge_template():
    assert FINALIZER.bisect_batch_on_function_error is True
    assert FINALIZER.maximum_retry_attempts == 8
    assert FINALIZER.report_batch_item_failures is False
    assert load_mapping_settings("process_work", "sqs").report_batch_item_failures is True


def test_a_function_absent_from_the_file_gets_lambdas_defaults():
    assert load_mapping_settings("no_such_function", "sqs") == MappingSettings()


def test_an_override_of_none_removes_a_setting():
    settings = load_mapping_settings("process_work", "sqs", {"FunctionResponseTypes": None})
    assert settings.report_batch_item_failures is False


def test_an_unknown_setting_is_an_error_naming_it():
    with pytest.raises(EventSourceSettingsError, match="does not emulate ParallelizationFactor"):
        load_mapping_settings("finalize", DYNAMODB, {"ParallelizationFactor": 2})
