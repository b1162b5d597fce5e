"""EventBridge schedule expressions: checked as EventBridge checks them, and evaluated to their slots.

`problem(expression)` says what EventBridge would reject (values, names and wildcards per
cron field, as AWS documents them), so a bad schedule fails at import, not at deploy.
`next_fire(expression, after)` gives the next slot after `after` (UTC), for the local
stack's clock. One table of cron fields serves both.

Evaluation supports numbers, `*`, `?`, ranges `a-b`, lists `a,b`, steps `*/n` `a/n`
`a-b/n`, month names JAN-DEC and day names SUN-SAT (1 = SUN). `L`, `W` and `#` (valid
for EventBridge) raise ValueError there: not needed by the shipped definitions, and a
clear error beats a wrong slot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

RATE_PATTERN = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")
CRON_PATTERN = re.compile(r"^cron\((\S+(?: \S+){5})\)$")
# One term of a cron field list: `*`, a value or a range, with an optional /increment.
_CRON_TERM = re.compile(r"^(\*|[0-9A-Za-z]+(?:-[0-9A-Za-z]+)?)(?:/([0-9]+))?$")
_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


@dataclass(frozen=True)
class CronField:
    """One field of an EventBridge cron expression: its values and wildcards, as AWS documents them."""

    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names for low, low + 1, ...
    wildcards: str = ", - * /"

    def describe(self) -> str:
        names = f" or {self.names[0]}-{self.names[-1]}" if self.names else ""
        return f"values {self.low}-{self.high}{names}, wildcards {self.wildcards}"


CRON_FIELDS = (
    CronField("minutes", 0, 59),
    CronField("hours", 0, 23),
    CronField("day-of-month", 1, 31, wildcards=", - * ? / L W"),
    CronField("month", 1, 12, tuple("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())),
    CronField("day-of-week", 1, 7, tuple("SUN MON TUE WED THU FRI SAT".split()), wildcards=", - * ? L #"),
    CronField("year", 1970, 2199),
)


def problem(schedule: str) -> str | None:
    """What EventBridge would reject in `schedule` (`rate(1 hour)`, `rate(6 hours)`, `cron(m h dom mon dow year)`), or None."""
    rate = RATE_PATTERN.match(schedule)
    if rate:
        value, unit = int(rate.group(1)), rate.group(2)
        if value == 0:
            return f"{schedule!r}: a rate must be at least 1"
        if (value == 1) != (not unit.endswith("s")):
            expected = unit.rstrip("s") if value == 1 else unit + ("" if unit.endswith("s") else "s")
            return f"{schedule!r}: EventBridge wants 'rate({value} {expected})'"
        return None
    cron = CRON_PATTERN.match(schedule)
    if cron:
        fields = cron.group(1).split()
        for spec, text in zip(CRON_FIELDS, fields):
            field_problem = _cron_field_problem(spec, text)
            if field_problem:
                return f"{schedule!r}: {field_problem}"
        if (fields[2] == "?") == (fields[4] == "?"):
            return f"{schedule!r}: exactly one of day-of-month and day-of-week must be '?'"
        return None
    return f"{schedule!r} is not an EventBridge expression like 'cron(0 0/6 * * ? *)' or 'rate(6 hours)'"


def _cron_field_problem(field: CronField, text: str) -> str | None:
    """What EventBridge would reject in one cron field, or None: values, names and wildcards per field."""
    invalid = f"{field.name} field {text!r} is not valid ({field.describe()})"
    allowed = set(field.wildcards.split())

    def out_of_range(token: str) -> str | None:
        value = int(token) if token.isdigit() else None
        if value is None and token.upper() in field.names:
            value = field.low + field.names.index(token.upper())
        if value is None:
            return invalid
        if not field.low <= value <= field.high:
            where = "" if token == text else f": {value}"
            return f"{field.name} field {text!r}{where} is out of range {field.low}-{field.high}"
        return None

    if text == "?":
        return None if "?" in allowed else invalid
    if "W" in allowed and text in ("L", "LW"):  # last day, last weekday of the month
        return None
    if "W" in allowed and text.endswith("W"):  # the weekday nearest that day
        return out_of_range(text[:-1])
    if "L" in allowed and "#" in allowed and text.endswith("L"):  # L: Saturday; 6L: the month's last Friday
        return out_of_range(text[:-1]) if text != "L" else None
    if "#" in allowed and "#" in text:
        if "," in text:
            return f"{field.name} field {text!r}: '#' allows only one expression"
        day, _, week = text.partition("#")
        if not week.isdigit() or not 1 <= int(week) <= 5:
            return f"{field.name} field {text!r}: the week of the month after # must be 1-5"
        return out_of_range(day)
    for term in text.split(","):
        match = _CRON_TERM.match(term)
        if not match or (match.group(2) is not None and "/" not in allowed):
            return invalid
        if match.group(2) is not None and not 1 <= int(match.group(2)) <= field.high:
            return f"{field.name} field {text!r}: the increment after / must be 1-{field.high}"
        if match.group(1) != "*":
            for token in match.group(1).split("-"):
                problem = out_of_range(token)
                if problem:
                    return problem
    return None


def next_fire(expression: str, after: datetime) -> datetime:
    """The first slot of `expression` strictly after `after` (UTC, whole minutes)."""
    start = after.astimezone(timezone.utc).replace(second=0, microsecond=0) + timedelta(minutes=1)
    rate = RATE_PATTERN.match(expression)
    if rate:
        return after.astimezone(timezone.utc) + timedelta(seconds=int(rate.group(1)) * _UNIT_SECONDS[rate.group(2).rstrip("s")])
    cron = CRON_PATTERN.match(expression)
    if not cron:
        raise ValueError(f"{expression!r} is not a cron() or rate() expression with 6 cron fields")
    minutes, hours, days, months, weekdays, years = (_values(spec, text) for spec, text in zip(CRON_FIELDS, cron.group(1).split()))
    day = start.replace(hour=0, minute=0)
    for _ in range(366 * 5):
        day_matches = (
            (months is None or day.month in months)
            and (years is None or day.year in years)
            and (days is None or day.day in days)
            and (weekdays is None or (day.isoweekday() % 7) + 1 in weekdays)
        )
        if day_matches:
            for hour in sorted(hours or range(24)):
                for minute in sorted(minutes or range(60)):
                    slot = day.replace(hour=hour, minute=minute)
                    if slot >= start:
                        return slot
        day += timedelta(days=1)
    raise ValueError(f"{expression!r} never fires in the next 5 years")


def _values(field: CronField, text: str) -> set[int] | None:
    """The values a cron field allows; None for `*` or `?` (anything)."""
    if text in ("*", "?"):
        return None
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if body == "*":
            start, end = field.low, field.high
        elif "-" in body:
            first, last = body.split("-", 1)
            start, end = _value(field, first), _value(field, last)
        else:
            start = _value(field, body)
            end = field.high if step_text else start
        values.update(range(start, end + 1, step))
    if not values or min(values) < field.low or max(values) > field.high:
        raise ValueError(f"cron field {text!r} is outside {field.low}-{field.high}")
    return values


def _value(field: CronField, text: str) -> int:
    if text.upper() in field.names:
        return field.low + field.names.index(text.upper())
    if any(mark in text for mark in ("L", "W", "#")):
        raise ValueError(f"cron value {text!r}: L, W and # are not supported by the local clock")
    return int(text)
