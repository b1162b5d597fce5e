"""The completion alert: JSON body, a readable subject within SNS limits, filterable attributes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chalicelib import alerts, model

from .conftest import ALERT_TOPIC_ARN, MockedAws

HEADER = {
    "batch_id": "nightly-2026-11-23T06:00Z",
    "definition": "nightly",
    "status": model.COMPLETED,
    "attempt": 1,
    "total_items": 10_000,
    "succeeded": 10_000,
    "failed": 0,
    "created_at": "2026-11-23T06:00:01.000Z",
    "sealed_at": "2026-11-23T06:00:03.500Z",
    "completed_at": "2026-11-23T06:00:42.250Z",
}


def alert_with(**changes: Any) -> dict[str, Any]:
    alert = alerts.build_alert(HEADER)
    alert.update(changes)
    return alert


def test_build_alert_carries_ids_totals_timestamps_and_duration():
    assert alerts.build_alert(HEADER) == {
        "alert_id": "nightly-2026-11-23T06:00Z/1",
        "batch_id": "nightly-2026-11-23T06:00Z",
        "definition": "nightly",
        "status": "COMPLETED",
        "attempt": 1,
        "totals": {"items": 10_000, "succeeded": 10_000, "failed": 0},
        "sample_errors": [],
        "created_at": "2026-11-23T06:00:01.000Z",
        "sealed_at": "2026-11-23T06:00:03.500Z",
        "completed_at": "2026-11-23T06:00:42.250Z",
        "duration_seconds": 41.25,
    }


def test_alert_id_is_stable_per_batch_attempt():
    assert alerts.alert_id(HEADER) == alerts.alert_id(dict(HEADER)) == "nightly-2026-11-23T06:00Z/1"
    assert alerts.alert_id({**HEADER, "attempt": 2}) == "nightly-2026-11-23T06:00Z/2"


def test_build_alert_defaults_succeeded_to_every_item_and_failed_to_none():
    header = {key: value for key, value in HEADER.items() if key not in ("succeeded", "failed", "attempt")}

    alert = alerts.build_alert(header)

    assert alert["totals"] == {"items": 10_000, "succeeded": 10_000, "failed": 0}
    assert alert["attempt"] == 1


def test_subject_reads_as_a_sentence():
    assert alerts.subject_for(alert_with()) == "batch nightly-2026-11-23T06:00Z completed: 10,000 items in 41 s"


def test_subject_names_failures():
    alert = alert_with(status=model.COMPLETED_WITH_FAILURES, totals={"items": 1000, "succeeded": 997, "failed": 3})

    assert alerts.subject_for(alert) == (
        "batch nightly-2026-11-23T06:00Z completed with failures: 1,000 items, 3 failed in 41 s"
    )


def test_subject_starts_with_the_prefix():
    assert alerts.subject_for(alert_with(), "[prod] ").startswith("[prod] batch nightly-2026-11-23T06:00Z")


def test_long_subject_is_cut_to_one_hundred_characters():
    alert = alert_with(
        batch_id="a-very-long-definition-name-of-forty-chr-2026-11-23T06:00Z",
        status=model.COMPLETED_WITH_FAILURES,
        totals={"items": 100_000_000, "succeeded": 1, "failed": 99_999_999},
    )

    subject = alerts.subject_for(alert, "[production-eu-1] ")

    assert len(subject) == 100
    assert subject.endswith("...")
    assert subject.startswith("[production-eu-1] batch a-very-long-definition-name")


def test_subject_of_exactly_one_hundred_characters_is_not_cut():
    subject = alerts.subject_for(alert_with())
    prefix = "p" * (100 - len(subject))

    assert alerts.subject_for(alert_with(), prefix) == prefix + subject


def test_subject_is_ascii_only():
    subject = alerts.subject_for(alert_with(), "✓ Zürich ")

    assert subject.isascii()
    assert subject == "? Z?rich batch nightly-2026-11-23T06:00Z completed: 10,000 items in 41 s"


def test_subject_has_no_line_breaks_or_control_characters():
    # SNS rejects such a subject; the publish would fail after the batch was completed.
    subject = alerts.subject_for(alert_with(), "[ops]\n\t")

    assert subject.isascii() and subject.isprintable()
    assert subject.startswith("[ops]??batch ")


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.4, "0 s"),
        (41.25, "41 s"),
        (119, "119 s"),
        (120, "2 min"),
        (3599, "60 min"),
        (7200, "2.0 h"),
        (9000, "2.5 h"),
        (86400 * 2, "48.0 h"),
    ],
)
def test_duration_is_shown_in_seconds_minutes_or_hours(seconds: float, shown: str):
    assert alerts.subject_for(alert_with(duration_seconds=seconds)).endswith(f" items in {shown}")


def test_publish_sends_the_alert_with_subject_and_filterable_attributes(aws: MockedAws):
    alert = alerts.publish(ALERT_TOPIC_ARN, HEADER, "[test] ")

    (received,) = aws.alerts()
    assert received["TopicArn"] == ALERT_TOPIC_ARN
    assert received["Subject"] == "[test] batch nightly-2026-11-23T06:00Z completed: 10,000 items in 41 s"
    assert json.loads(received["Message"]) == alert == alerts.build_alert(HEADER)
    assert received["MessageAttributes"] == {
        "status": {"Type": "String", "Value": "COMPLETED"},
        "definition": {"Type": "String", "Value": "nightly"},
    }


def test_publish_without_a_definition_sends_a_placeholder_attribute(aws: MockedAws):
    # SNS rejects an empty attribute value, so a header without a definition still needs one.
    alerts.publish(ALERT_TOPIC_ARN, {**HEADER, "definition": ""})

    (received,) = aws.alerts()
    assert received["MessageAttributes"]["definition"] == {"Type": "String", "Value": "-"}
