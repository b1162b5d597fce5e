"""What one delivery does to a chunk row, computed from the row as read: no I/O here.

`BatchStore.record` writes the plan conditioned on the row being exactly as read
(invariants 5, 9, 10), so the rules below decide every chunk's accounting:

- only items still pending count (a duplicate that took them first has recorded them);
- an item that raised uses one attempt of its own; at `max_attempts` it fails for good;
- items this delivery did not run keep their count (receives are not attempts);
- the row is gone when nothing is left pending: decided here, from the read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from chalicelib import model

# Errors kept per row: enough to diagnose, small enough that a row stays ~1 KB.
MAX_ROW_ERRORS = 5



@dataclass(frozen=True)
class ItemOutcome:
    """What one delivery did to a chunk's items: finished, raised (index -> error), or fail them all."""

    done: frozenset[int] = frozenset()
    errors: Mapping[int, str] = field(default_factory=dict)
    # The dead-letter handler's last resort: fail every pending item with `reason`.
    fail_all: bool = False
    reason: str = ""
    # Items that can never run (a bad line, data changed since): they fail for good now (index -> error).
    invalid: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Recorded:
    """What a `record` write took: items finished, items failed for good, and what stays pending."""

    done: frozenset[int]
    failed: frozenset[int]
    pending: frozenset[int]  # empty: the row is gone
    wrote: bool = True


@dataclass(frozen=True)
class Plan:
    recorded: Recorded
    tries: dict[str, int]
    errors: dict[str, str]
    failed_errors: dict[str, str]


def new_chunk_row(
    batch_id: str, shard: int, chunk_no: int, indices: Iterable[int], attempt: int, span: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    row = {**model.chunk_key(batch_id, shard, chunk_no), "pending": set(indices), "attempt": attempt, "tries": {}, "errors": {}}
    if span:
        row["span"] = dict(span)  # where an object source's items lie: rows still hold no payloads
    return row


def chunk_row(row: dict[str, Any]) -> dict[str, Any]:
    row["pending"] = set(row.get("pending", set()))
    row["tries"] = {str(key): int(value) for key, value in (row.get("tries") or {}).items()}
    row["errors"] = dict(row.get("errors") or {})
    return row


def plan_record(row: Mapping[str, Any], outcome: ItemOutcome, max_attempts: int) -> Plan | None:
    """The row after this delivery, computed from the row as read; None if there is nothing to write.

    Only items still pending count: a duplicate that finished or failed them first has
    recorded them already. An item fails for good once its own failed attempts reach
    `max_attempts` (invariant 9); items this delivery did not run keep their count.
    """
    pending = set(row["pending"])
    done = set(outcome.done) & pending
    invalid = {index: text for index, text in outcome.invalid.items() if index in pending and index not in done}
    raised = {index: text for index, text in outcome.errors.items() if index in pending and index not in done | set(invalid)}
    if pending and not done and not raised and not invalid and not outcome.fail_all:
        return None
    tries = dict(row["tries"])
    for index in raised:
        tries[str(index)] = tries.get(str(index), 0) + 1
    if outcome.fail_all:
        failed = pending - done
    else:
        failed = {index for index in raised if tries[str(index)] >= max_attempts} | set(invalid)
    left = pending - done - failed
    errors = {**row["errors"], **{str(index): text for index, text in {**raised, **invalid}.items()}}
    failed_errors = {
        str(index): errors.get(str(index)) or outcome.reason for index in sorted(failed)[:MAX_ROW_ERRORS]
    }
    return Plan(
        recorded=Recorded(frozenset(done), frozenset(failed), frozenset(left)),
        tries={key: count for key, count in tries.items() if int(key) in left},
        errors=dict(sorted(((key, text) for key, text in errors.items() if int(key) in left), key=lambda kv: int(kv[0]))[:MAX_ROW_ERRORS]),
        failed_errors=failed_errors,
    )


def with_done(plan: Plan, indices: set[int]) -> Plan:
    """The plan with `indices` (items it was to fail) counted done instead: their results turned out to be kept."""
    moved = set(plan.recorded.failed) & indices
    if not moved:
        return plan
    recorded = Recorded(plan.recorded.done | moved, plan.recorded.failed - moved, plan.recorded.pending, plan.recorded.wrote)
    failed_errors = {key: text for key, text in plan.failed_errors.items() if int(key) not in moved}
    return Plan(recorded, plan.tries, plan.errors, failed_errors)
