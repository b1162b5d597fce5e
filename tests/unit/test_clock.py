"""The local clock fires EventBridge expressions at the slots EventBridge would."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from batchdrain_local.clock import AcceleratedClock
from chalicelib.schedules import next_fire

UTC = timezone.utc


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("cron(0 0/6 * * ? *)", datetime(2026, 11, 23, 5, 59, tzinfo=UTC), datetime(2026, 11, 23, 6, 0, tzinfo=UTC)),
        ("cron(0 0/6 * * ? *)", datetime(2026, 11, 23, 6, 0, tzinfo=UTC), datetime(2026, 11, 23, 12, 0, tzinfo=UTC)),
        ("cron(0 0/6 * * ? *)", datetime(2026, 11, 23, 18, 30, tzinfo=UTC), datetime(2026, 11, 24, 0, 0, tzinfo=UTC)),
        ("cron(15 10 ? * MON-FRI *)", datetime(2026, 11, 27, 11, 0, tzinfo=UTC), datetime(2026, 11, 30, 10, 15, tzinfo=UTC)),
        ("cron(0 8 1 JAN,JUL ? *)", datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 7, 1, 8, 0, tzinfo=UTC)),
        ("cron(*/20 * * * ? 2027)", datetime(2026, 11, 23, tzinfo=UTC), datetime(2027, 1, 1, 0, 0, tzinfo=UTC)),
        ("cron(0 12 ? * 1 *)", datetime(2026, 11, 23, tzinfo=UTC), datetime(2026, 11, 29, 12, 0, tzinfo=UTC)),  # 1 = Sunday
        ("rate(6 hours)", datetime(2026, 11, 23, 1, 2, 3, tzinfo=UTC), datetime(2026, 11, 23, 7, 2, 3, tzinfo=UTC)),
    ],
)
def test_next_fire_matches_eventbridge_slots(expression, after, expected):
    assert next_fire(expression, after) == expected


@pytest.mark.parametrize("expression", ["cron(0 0 L * ? *)", "cron(0 0 ? * 2#1 *)", "cron(0 0 * *)", "every day"])
def test_unsupported_or_malformed_expressions_are_rejected(expression):
    with pytest.raises(ValueError):
        next_fire(expression, datetime(2026, 11, 23, tzinfo=UTC))


def test_accelerated_clock_fires_each_slot_once_in_order():
    fired = []
    # 2 simulated hours per wall second from 23:59: slots 00:00 and 06:00 need ~3 s.
    clock = AcceleratedClock(
        {"nightly": "cron(0 0/6 * * ? *)"},
        lambda name, slot: fired.append((name, slot)),
        speed=7200,
        start=datetime(2026, 11, 22, 23, 59, tzinfo=UTC),
        tick=0.05,
    )
    clock.start()
    deadline = time.monotonic() + 10
    while len(fired) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    clock.stop()

    assert fired[:2] == [
        ("nightly", datetime(2026, 11, 23, 0, 0, tzinfo=UTC)),
        ("nightly", datetime(2026, 11, 23, 6, 0, tzinfo=UTC)),
    ]
