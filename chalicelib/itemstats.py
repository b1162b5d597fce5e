"""Item-time statistics: how long a batch's items took, kept as counters anyone may add to.

A batch's stats are a few table rows (`model.stats_key`) of numbers that processors ADD to,
one UpdateItem per batch per invocation (`BatchStore.add_stats`), never read first: so
concurrent processors, retries and duplicates simply add up. They hold

- counters (COUNTERS): messages handled, given back, re-sent; items run and raised; the
  task's own time and the processor's busy time, in ms; invocations; dead letters; and
- a histogram of item durations on a log scale: bucket 0 counts items under 1 ms, bucket
  b >= 1 items from 1 ms x 2^((b-1)/8) to 1 ms x 2^(b/8) (8 buckets per doubling), up to
  900 s (the longest a Lambda runs) in bucket LAST_BUCKET. Each bucket is a top-level
  numeric attribute, `h000` to `h159`, so ADD reaches it; only buckets that hold items exist.

Reading them back (`summary`) gives count, p50, p99 and max, each the *upper bound of its
bucket*: an overestimate by at most one bucket width, 2^(1/8) - 1, about 9 %. That is the
resolution: a p50 of 0.218 s means the middle item took between 0.2 and 0.218 s.

They are observations, never decisions: an invocation that crashes before writing them
(Lambda killed, the write throttled away) leaves its messages out of the counts. Nothing
in batchdrain reads them to decide anything; the completion copies them onto the header
for the alert (chalicelib.completion), and the cost of a batch (chalicelib.batchcost) is
estimated from them.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

# Below this an item counts in bucket 0.
FLOOR_SECONDS = 0.001
BUCKETS_PER_DOUBLING = 8
# The longest an item can take: a Lambda invocation's limit.
CEILING_SECONDS = 900.0
# The bucket whose upper bound first reaches CEILING_SECONDS (159: up to 1 ms x 2^(159/8) = 960 s).
LAST_BUCKET = math.ceil(BUCKETS_PER_DOUBLING * math.log2(CEILING_SECONDS / FLOOR_SECONDS))
BUCKET_PREFIX = "h"
# A stats row's size for its write units: its key, a dozen counters and the few buckets its items fill.
STATS_ROW_BYTES = 300

# The counters, by name (all whole numbers; times in ms).
COUNTERS = (
    "deliveries",  # messages of the batch a processor invocation handled: duplicates and no-ops included
    "returned",  # messages given back to the queue for a retry (batchItemFailures)
    "resent",  # messages re-sent for items an invocation had no time to start
    "items_run",  # items the task ran (finished, raised or timed out)
    "items_raised",  # items that ran and did not succeed: raised, timed out, or their result refused
    "task_ms",  # the items' own durations, summed
    "busy_ms",  # wall time the processor spent on the batch's messages: the row read, the tasks, the writes
    "body_bytes",  # bytes of the message bodies handled (what SQS bills by)
    "invocations",  # processor invocations that handled the batch (one per add_stats call)
    "visibility_changes",  # of those, the ones that gave back messages of the batch with a retry delay (one request each)
    "message_deletes",  # of those, the ones that finished messages of the batch, which Lambda then deletes (one request each)
    "dead_letters",  # dead letters of the batch the dead-letter handler acted on (sent again, or failed)
    "dead_letter_invocations",  # its invocations that did
    "redrives",  # redrives begun (each a new attempt)
    "earlier_attempts_ms",  # how long the attempts a redrive replaced ran, created (or redriven) to completed
    "restored_chunks",  # failed rows a redrive turned back into chunks
    "restore_groups",  # the transactions that restored them
)


def bucket_of(seconds: float) -> int:
    """The bucket an item of `seconds` counts in (0 below 1 ms, LAST_BUCKET at and beyond 900 s)."""
    if not seconds >= FLOOR_SECONDS:  # also NaN
        return 0
    bucket = math.floor(BUCKETS_PER_DOUBLING * math.log2(seconds / FLOOR_SECONDS)) + 1
    return min(LAST_BUCKET, bucket)


def upper_bound(bucket: int) -> float:
    """The largest duration bucket `bucket` holds, in seconds (bucket 0: 1 ms)."""
    return FLOOR_SECONDS * 2 ** (bucket / BUCKETS_PER_DOUBLING)


def bucket_name(bucket: int) -> str:
    return f"{BUCKET_PREFIX}{bucket:03d}"


def is_bucket(name: str) -> bool:
    return len(name) == 4 and name.startswith(BUCKET_PREFIX) and name[1:].isdigit()


def histogram(seconds: Iterable[float]) -> dict[str, int]:
    """Durations counted by bucket: `{"h042": 3, ...}`, only the buckets that hold some."""
    counts: dict[str, int] = {}
    for value in seconds:
        name = bucket_name(bucket_of(value))
        counts[name] = counts.get(name, 0) + 1
    return counts


def observe(seconds: Mapping[Any, float]) -> dict[str, int]:
    """What items of these durations add: `items_run`, `task_ms` and their buckets (items by any key)."""
    if not seconds:
        return {}
    return {"items_run": len(seconds), "task_ms": round(1000 * sum(seconds.values())), **histogram(seconds.values())}


def add(total: dict[str, int], counts: Mapping[str, int]) -> dict[str, int]:
    """Add `counts` into `total` (in place), and return it."""
    for name, value in counts.items():
        if value:
            total[name] = total.get(name, 0) + int(value)
    return total


def summed(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """The counters and buckets of several stats rows, added up (keys and other attributes left out)."""
    total: dict[str, int] = {}
    for row in rows:
        add(total, {name: value for name, value in row.items() if name in COUNTERS or is_bucket(name)})
    return total


def summary(stats: Mapping[str, Any]) -> dict[str, Any]:
    """Item times from summed stats: `{count, p50, p99, max}` in seconds, each its bucket's upper bound (~9 %).

    A percentile is the bucket holding the item of that rank (nearest rank: the
    ceil(p x count)-th shortest). None for each figure when no item was timed.
    """
    buckets = sorted((int(name[1:]), int(value)) for name, value in stats.items() if is_bucket(name) and value)
    count = sum(value for _, value in buckets)
    if not count:
        return {"count": 0, "p50": None, "p99": None, "max": None}

    def percentile(fraction: float) -> float:
        rank = max(1, math.ceil(fraction * count))
        seen = 0
        for bucket, value in buckets:
            seen += value
            if seen >= rank:
                return _seconds(upper_bound(bucket))
        return _seconds(upper_bound(buckets[-1][0]))

    return {"count": count, "p50": percentile(0.50), "p99": percentile(0.99), "max": _seconds(upper_bound(buckets[-1][0]))}


def _seconds(value: float) -> float:
    """Four significant digits: the figures are good to ~9 % anyway."""
    return float(f"{value:.4g}")
