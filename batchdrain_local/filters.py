"""Lambda event filtering (FilterCriteria), for the local stack's pollers.

An event source mapping with FilterCriteria drops every record that matches none of its
filters before the function is invoked, so the function never pays for (or sees) them.
The local stack must drop the same records, or a handler that relies on the filter
would pass locally and misbehave on AWS, or the other way round.

Rule syntax supported, as the AWS Lambda guide ("Lambda event filtering") documents it:

- nested objects: every key of a pattern must match (AND);
- a list of exact values, strings or numbers (and true/false/null): the field equals one
  of them (OR); when the field holds an array, one of its elements must match;
- `{"prefix": "C#"}`: a string field starting with the prefix;
- `{"exists": true}`: the (leaf) field is present; `{"exists": false}`: it is absent,
  which includes every parent object being absent;
- `{"anything-but": [...]}` (or one value): a present field equal to none of them;
- several filters: a record matching any one of them is kept (OR).

Anything else (numeric ranges, suffix, wildcard, $or, ...) raises FilterPatternError
rather than being guessed at: a filter we cannot evaluate must not silently pass.

    keep = EventFilter.from_criteria({"Filters": [{"Pattern": '{"eventName": ["REMOVE"]}'}]})
    keep({"eventName": "REMOVE"})   # True
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

_MISSING = object()  # a field the record does not have (distinct from a JSON null)
_OPERATORS = ("prefix", "exists", "anything-but")


class FilterPatternError(ValueError):
    """A FilterCriteria pattern the local stack cannot evaluate, with the offending path."""


@dataclass(frozen=True)
class EventFilter:
    """The decoded patterns of one mapping's FilterCriteria; call it with a record."""

    patterns: tuple[Mapping[str, Any], ...]

    @classmethod
    def from_criteria(cls, criteria: Mapping[str, Any]) -> "EventFilter":
        """Decode `{"Filters": [{"Pattern": "<json>"}, ...]}` and check every rule up front."""
        filters = criteria.get("Filters")
        if not isinstance(filters, list) or not filters:
            raise FilterPatternError("FilterCriteria.Filters: must be a non-empty list")
        patterns = []
        for number, entry in enumerate(filters):
            where = f"FilterCriteria.Filters[{number}].Pattern"
            text = entry.get("Pattern") if isinstance(entry, Mapping) else None
            if not isinstance(text, str):
                raise FilterPatternError(f"{where}: must be a JSON string")
            try:
                pattern = json.loads(text)
            except json.JSONDecodeError as error:
                raise FilterPatternError(f"{where}: not valid JSON ({error})") from None
            check_pattern(pattern, where)
            patterns.append(pattern)
        return cls(tuple(patterns))

    def __call__(self, record: Mapping[str, Any]) -> bool:
        return any(matches(pattern, record) for pattern in self.patterns)


def check_pattern(pattern: Any, where: str = "pattern") -> None:
    """Raise FilterPatternError unless `pattern` uses only the supported rule syntax."""
    if not isinstance(pattern, Mapping) or not pattern:
        raise FilterPatternError(f"{where}: must be a non-empty JSON object")
    for key, rule in pattern.items():
        path = f"{where}.{key}"
        if isinstance(rule, Mapping):
            check_pattern(rule, path)
        elif isinstance(rule, list) and rule:
            for value in rule:
                _check_value_rule(value, path)
        else:
            raise FilterPatternError(f"{path}: must be an object or a non-empty list of rules")


def _check_value_rule(rule: Any, path: str) -> None:
    if not isinstance(rule, Mapping):
        if isinstance(rule, (str, int, float, bool)) or rule is None:
            return
        raise FilterPatternError(f"{path}: {rule!r} is not a string, number, boolean or null")
    if len(rule) != 1 or next(iter(rule)) not in _OPERATORS:
        raise FilterPatternError(f"{path}: unsupported rule {json.dumps(rule)} (supported: exact values, {', '.join(_OPERATORS)})")
    operator, operand = next(iter(rule.items()))
    if operator == "prefix" and not isinstance(operand, str):
        raise FilterPatternError(f"{path}: prefix must be a string, got {operand!r}")
    if operator == "exists" and not isinstance(operand, bool):
        raise FilterPatternError(f"{path}: exists must be true or false, got {operand!r}")
    if operator == "anything-but":
        values = operand if isinstance(operand, list) else [operand]
        if not values or any(isinstance(value, (Mapping, list)) for value in values):
            raise FilterPatternError(f"{path}: anything-but takes a value or a list of values, got {operand!r}")


def matches(pattern: Mapping[str, Any], record: Any) -> bool:
    """Whether `record` matches one pattern: every key of the pattern, recursively."""
    for key, rule in pattern.items():
        value = record.get(key, _MISSING) if isinstance(record, Mapping) else _MISSING
        if isinstance(rule, Mapping):
            if not _matches_object(rule, value):
                return False
        elif not any(_matches_value(value_rule, value) for value_rule in rule):
            return False
    return True


def _matches_object(rule: Mapping[str, Any], value: Any) -> bool:
    if isinstance(value, list):
        return any(_matches_object(rule, element) for element in value)
    # An absent parent is matched like an empty object, so a nested {"exists": false}
    # holds when the parent itself is missing (a REMOVE record has no NewImage at all).
    return matches(rule, value if isinstance(value, Mapping) else {})


def _matches_value(rule: Any, value: Any) -> bool:
    if isinstance(rule, Mapping):
        operator, operand = next(iter(rule.items()))
        if operator == "exists":
            present = value is not _MISSING and not isinstance(value, Mapping)  # a leaf, as AWS documents
            return present if operand else value is _MISSING
        if value is _MISSING:
            return False
        if isinstance(value, list):
            return any(_matches_value(rule, element) for element in value)
        if operator == "prefix":
            return isinstance(value, str) and value.startswith(operand)
        excluded = operand if isinstance(operand, list) else [operand]
        return not any(_equal(candidate, value) for candidate in excluded)
    if isinstance(value, list):
        return any(_equal(rule, element) for element in value)
    return value is not _MISSING and _equal(rule, value)


def _equal(rule: Any, value: Any) -> bool:
    """JSON equality: 1 == 1.0, but "1" != 1 and true != 1 (Python's bool is an int)."""
    if isinstance(rule, bool) or isinstance(value, bool):
        return type(rule) is type(value) and rule == value
    if isinstance(rule, (int, float)) and isinstance(value, (int, float)):
        return rule == value
    return type(rule) is type(value) and rule == value


def matching(records: Sequence[Mapping[str, Any]], keep: EventFilter | None) -> list[Mapping[str, Any]]:
    """The records a mapping with filter `keep` (None: no FilterCriteria) would deliver."""
    return list(records) if keep is None else [record for record in records if keep(record)]
