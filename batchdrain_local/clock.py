"""EventBridge schedule expressions evaluated locally, and an accelerated clock that fires them.

`next_fire("cron(0 0/6 * * ? *)", after)` gives the next slot after `after` (UTC), so
the local stack can fire each definition's schedule at its real slots, with simulated
time running N times faster than the wall clock. Supported cron syntax: numbers, `*`,
`?`, ranges `a-b`, lists `a,b`, steps `*/n` `a/n` `a-b/n`, month names JAN-DEC and day
names SUN-SAT (1 = SUN). `L`, `W` and `#` raise ValueError: not needed by the shipped
definitions, and a clear error beats a wrong slot.
"""

from __future__ import annotations

import re
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Callable

_MONTHS = {name: number for number, name in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split(), 1)}
_DAYS = {name: number for number, name in enumerate("SUN MON TUE WED THU FRI SAT".split(), 1)}
_RATE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")
_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


def _field(text: str, low: int, high: int, names: dict[str, int] | None = None) -> set[int] | None:
    """The values a cron field allows; None for `*` or `?` (anything)."""
    if text in ("*", "?"):
        return None
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if body == "*":
            start, end = low, high
        elif "-" in body:
            first, last = body.split("-", 1)
            start, end = _value(first, names), _value(last, names)
        else:
            start = _value(body, names)
            end = high if step_text else start
        values.update(range(start, end + 1, step))
    if not values or min(values) < low or max(values) > high:
        raise ValueError(f"cron field {text!r} is outside {low}-{high}")
    return values


def _value(text: str, names: dict[str, int] | None) -> int:
    if names and text.upper() in names:
        return names[text.upper()]
    if any(mark in text for mark in ("L", "W", "#")):
        raise ValueError(f"cron value {text!r}: L, W and # are not supported by the local clock")
    return int(text)


def next_fire(expression: str, after: datetime) -> datetime:
    """The first slot of `expression` strictly after `after` (UTC, whole minutes)."""
    start = after.astimezone(timezone.utc).replace(second=0, microsecond=0) + timedelta(minutes=1)
    rate = _RATE.match(expression)
    if rate:
        return after.astimezone(timezone.utc) + timedelta(seconds=int(rate.group(1)) * _UNIT_SECONDS[rate.group(2).rstrip("s")])
    if not (expression.startswith("cron(") and expression.endswith(")")):
        raise ValueError(f"{expression!r} is not a cron() or rate() expression")
    fields = expression[5:-1].split()
    if len(fields) != 6:
        raise ValueError(f"{expression!r}: cron needs 6 fields")
    minutes = _field(fields[0], 0, 59) or set(range(60))
    hours = _field(fields[1], 0, 23) or set(range(24))
    days = _field(fields[2], 1, 31)
    months = _field(fields[3], 1, 12, _MONTHS)
    weekdays = _field(fields[4], 1, 7, _DAYS)
    years = _field(fields[5], 1970, 2199)
    day = start.replace(hour=0, minute=0)
    for _ in range(366 * 5):
        day_matches = (
            (months is None or day.month in months)
            and (years is None or day.year in years)
            and (days is None or day.day in days)
            and (weekdays is None or (day.isoweekday() % 7) + 1 in weekdays)
        )
        if day_matches:
            for hour in sorted(hours):
                for minute in sorted(minutes):
                    slot = day.replace(hour=hour, minute=minute)
                    if slot >= start:
                        return slot
        day += timedelta(days=1)
    raise ValueError(f"{expression!r} never fires in the next 5 years")


class AcceleratedClock:
    """Simulated UTC time running `speed` times faster than the wall clock, firing schedules at their slots.

    `fire(name, slot)` is called for each definition whose expression has a slot
    between the previous tick and now, in slot order.
    """

    def __init__(
        self,
        schedules: dict[str, str],
        fire: Callable[[str, datetime], None],
        speed: float,
        start: datetime | None = None,
        tick: float = 0.2,
    ) -> None:
        self.schedules = schedules
        self.fire = fire
        self.speed = speed
        self.tick = tick
        self._origin = (start or datetime.now(timezone.utc)).astimezone(timezone.utc)
        self._wall_origin: float | None = None
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.fired: list[tuple[str, datetime]] = []

    def now(self) -> datetime:
        elapsed = 0.0 if self._wall_origin is None else time.monotonic() - self._wall_origin
        return self._origin + timedelta(seconds=elapsed * self.speed)

    def start(self) -> None:
        self._wall_origin = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="accelerated-clock", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        due = {name: next_fire(expression, self._origin) for name, expression in self.schedules.items()}
        while not self.stopping.wait(self.tick):
            now = self.now()
            for name, slot in sorted(due.items(), key=lambda entry: entry[1]):
                while slot <= now and not self.stopping.is_set():
                    self.fired.append((name, slot))
                    self.fire(name, slot)
                    slot = next_fire(self.schedules[name], slot)
                due[name] = slot
