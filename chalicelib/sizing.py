"""How many items one message (and one chunk row) carries: K, chosen from what batchdrain knows.

Cost falls as K grows (a chunk costs one row write, one send share, one read and one
delete whatever its size), so batchdrain takes the largest K that every limit allows:

- processing budget: one processor invocation gets up to PROCESSOR_BATCH_SIZE messages
  of K items of up to `item_seconds` each, and must finish them the safety margin
  before PROCESSOR_TIMEOUT_SECONDS (invariant 9 retries what does not fit, but a batch
  that never fits would only ever finish its first items);
- chunk row size: a fresh row (its key, span and the set of K pending indices, each
  as wide as the source's largest index) stays within one 1 KB write unit, so its
  write and its delete cost one unit each;
- message size: K of the source's largest items fit one message (generated items; an
  object's lines are cut by bytes as they are read, whatever K says).

A definition that sets `items_per_message` pins K; absent or "auto", K is chosen here,
for each batch, from the definition's `item_seconds` or, once a batch of the definition
has run, the item time it observed (its p99: chalicelib.itemstats).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

from chalicelib import model, sources
from chalicelib.chunks import new_chunk_row
from chalicelib.config import MAX_ITEMS_PER_MESSAGE, Definition, EventSourceSettings, items_within_budget
from chalicelib.pricing import item_bytes

# One DynamoDB write unit: a fresh chunk row stays within it.
WRITE_UNIT_BYTES = 1024
# Batch ids are the definition's name and a suffix: a slot (-2026-11-23T06:00Z, 18 characters)
# or a submission's (-k + 20 hex, or -20261207T034404-f1a3b36d, 25); rows are sized for 32.
BATCH_ID_SUFFIX = 32
# An object source's index is file * 10^13 + byte offset (chalicelib.sources.FILE_STRIDE): 13
# digits for one object of up to S3's 5 TB; an inventory's files add digits in front.
LINE_INDEX_DIGITS = {"s3-jsonl": 13, "s3-csv": 13, "s3-inventory": 17, "s3-prefix": 10}
# What an object source's row keeps of where its items lie (chalicelib.planner): placeholders of the
# longest values S3 gives (a multipart ETag, a version id) and the range numbers at their widest.
_SPAN_FIELDS = {"kind": "lines", "etag": '"' + "f" * 32 + '-10000"', "version": "v" * 32, "gzip": False, "file": 10**5,
                "s": 10**13 - 1, "x": 10**13 - 1, "i": 10**17 - 1, "n": MAX_ITEMS_PER_MESSAGE, "d": "f" * 16}
# An S3 URI placeholder ({date}, {hour}...) expands to at most this many characters.
_PLACEHOLDER_CHARS = 10

LIMIT_BUDGET = "processing budget"
LIMIT_ROW = "chunk row size"
LIMIT_MESSAGE = "message size"
LIMIT_CAP = "the most a message may carry"
PINNED = "pinned"
_CHOSEN = "(auto: "  # how `describe` marks a K batchdrain chose (was_chosen reads it back)
_SHORT = {LIMIT_BUDGET: "budget", LIMIT_ROW: "row", LIMIT_MESSAGE: "message", LIMIT_CAP: "cap"}


class Budget(NamedTuple):
    """What one processor invocation may do: up to `batch_size` messages within `timeout_seconds`."""

    batch_size: int
    timeout_seconds: int

    @classmethod
    def of(cls, event_sources: EventSourceSettings) -> "Budget":
        return cls(event_sources.processor_batch_size, event_sources.processor_timeout_seconds)


@dataclass(frozen=True)
class KChoice:
    """The K a batch runs with, the limit that chose it, and each limit's figure (None: no such limit)."""

    k: int
    rule: str
    item_seconds: float
    by_limit: dict[str, int | None]
    observed_from: str | None = None  # the batch whose observed item time was used

    def describe(self) -> str:
        """One line: `K=161 (auto: chunk row size; budget 191, row 161, message 3,890 at item_seconds 0.2)`."""
        if self.rule == PINNED:
            return f"K={self.k:,} (pinned by items_per_message)"
        figures = ", ".join(f"{_SHORT[name]} {value:,}" for name, value in self.by_limit.items() if value is not None)
        seconds = f"item_seconds {self.item_seconds:g}"
        if self.observed_from:
            seconds += f" observed (p99 of {self.observed_from})"
        return f"K={self.k:,} {_CHOSEN}{self.rule}; {figures} at {seconds})"


def budget_k(item_seconds: float, budget: Budget) -> int:
    """The most items a message may hold so one invocation's messages finish in time (0: not even one)."""
    return items_within_budget(item_seconds, budget.batch_size, budget.timeout_seconds)


def index_digits(definition: Definition) -> int:
    """How many digits the source's largest item index has (chunk rows keep indices, not items)."""
    if definition.source.type == "random":
        return len(str(max(0, definition.source.count - 1)))
    return LINE_INDEX_DIGITS.get(definition.source.type, max(LINE_INDEX_DIGITS.values()))


def fresh_row_bytes(definition: Definition, k: int) -> int:
    """A new chunk row's size as DynamoDB bills it, for K indices of the source's widest."""
    batch_id = definition.name + "-" + "x" * (BATCH_ID_SUFFIX - 1)
    widest = 10 ** index_digits(definition) - 1  # every digit significant: the most bytes a number takes
    indices = range(widest, widest - k, -1)
    span = None
    if definition.source.type != "random":
        key = definition.source.key_template
        for name in ("date", "year", "month", "day", "hour", "minute"):
            key = key.replace("{" + name + "}", "x" * _PLACEHOLDER_CHARS)
        span = {**_SPAN_FIELDS, "bucket": definition.source.bucket, "key": key, "prefix": key}
    return item_bytes(new_chunk_row(batch_id, model.MAX_SHARDS - 1, model.SEGMENT_CHUNKS - 1, indices, 1, span))


def row_k(definition: Definition) -> int:
    """The most indices a fresh chunk row holds within one write unit (at least 1)."""
    empty, one = fresh_row_bytes(definition, 0), fresh_row_bytes(definition, 1)
    per_index = one - empty
    return max(1, (WRITE_UNIT_BYTES - empty) // per_index)


def message_k(definition: Definition, max_message_bytes: int) -> int | None:
    """The most of the source's largest items one message carries; None for objects (cut by bytes as read)."""
    if definition.source.type != "random":
        return None
    options = len(model.encode_options(definition.task_options))
    entry = model.entry_size(sources.largest_item(definition.source))
    return max(1, model.item_budget(max_message_bytes, options) // entry)


def choose_k(
    definition: Definition,
    budget: Budget | EventSourceSettings | None,
    max_message_bytes: int,
    observed_seconds: float | None = None,
    observed_from: str | None = None,
) -> KChoice:
    """The K a batch of `definition` runs with: its pinned `items_per_message`, or the largest every limit allows.

    `observed_seconds` (the p99 item time a previous batch of the definition observed)
    replaces the declared `item_seconds`; the limits bound it as they bound the declared.
    `budget` (the processor's batch size and timeout) is needed only to choose.
    """
    if definition.items_per_message is not None:
        return KChoice(definition.items_per_message, PINNED, definition.item_seconds, {})
    if budget is None:
        raise ValueError("choosing K needs the processor's batch size and timeout")
    if isinstance(budget, EventSourceSettings):
        budget = Budget.of(budget)
    seconds = observed_seconds if observed_seconds is not None else definition.item_seconds
    limits = {
        LIMIT_BUDGET: budget_k(seconds, budget),
        LIMIT_ROW: row_k(definition),
        LIMIT_MESSAGE: message_k(definition, max_message_bytes),
        LIMIT_CAP: MAX_ITEMS_PER_MESSAGE,
    }
    rule, k = min(((name, value) for name, value in limits.items() if value is not None), key=lambda pair: pair[1])
    return KChoice(max(1, k), rule, seconds, limits, observed_from if observed_seconds is not None else None)


def was_chosen(header: Mapping[str, Any]) -> bool:
    """Whether batchdrain chose the batch's K (its `k_rule` says so), rather than its definition."""
    return _CHOSEN in str(header.get("k_rule", ""))


def header_fields(choice: KChoice) -> dict[str, Any]:
    """What a batch header keeps of its K: the value, and the line that says why."""
    return {"items_per_message": choice.k, "k_rule": choice.describe()}


def seconds_of(value: float) -> float:
    """Observed seconds as used for K: never below a millisecond (a no-op task would ask for an unbounded K)."""
    return max(0.001, float(value)) if math.isfinite(float(value)) else 0.001
