"""`make chaos`: many randomized batches under a seeded fault mix, checked against ground truth.

Every item's kind is a pure function of its value (values are drawn from 0..2^50, so
they are unique across a run), and so is what batchdrain must report for it:

| kind | the `chaos` task | expected final state |
|---|---|---|
| ok | returns | succeeded |
| fails always (1 in 200) | raises | failed, after ITEM_MAX_ATTEMPTS starts |
| fails once (1 in 20 of the rest) | raises on its first start, then returns | succeeded (ITEM_MAX_ATTEMPTS >= 2) |
| slow always (1 in 2,000 of the rest) | sleeps past the local Lambda timeout | failed (each start is a timed-out attempt) |
| slow once (1 in 1,000 of the rest) | sleeps past the timeout on its first start, then returns at once | succeeded (ITEM_MAX_ATTEMPTS >= 2) |
| succeeds once (1 in 50 of the rest) | returns on its first start, raises on every later one (a task that is not idempotent) | either: succeeded if its first start was recorded, else failed (a crash before the row update re-runs it) |

The task also records, per item value, every start and the time of the first start
that returned in time (a sleep past the timeout is never a success: the processor must
have given up on it). A redriven batch re-runs its failed items: after it, items that
always fail (or always run late) are failed, every other item succeeded (but a "succeeds
once" item failed before fails again).

One shape in three reads its items from an object (`s3-jsonl`) instead of generating them:
before its batch fires, the run uploads to the stack's moto S3 the JSON Lines object the
definition's uri names for that slot, one line `{"id": n, "value": v}` per item the random
source would have generated (the same values). Such an item's index is the byte offset of
its line (file 0), not n, so the ground truth of every batch is a mapping index -> value.
With SEGMENT_BYTES at 2 KiB these batches fan out over up to 20 segments, expanded by
planners on the planning queue, which the faults strike too (`planner_crash_*`, the SQS
faults on the planning queue's poller).

One shape in RESULTS_SHAPE_EVERY (of either source) declares `"results"`: its processor writes
one JSON Lines object per chunk to the run's results bucket, and the completion a manifest
(chalicelib/results.py). `crash_before_row_update` strikes those deliveries after their results
are written, so a "succeeds once" item re-run after it fails for good with a result line
already written: the result figure below must still be 0.

An object-source batch may have its object overwritten (same key, other lines) before it is
redriven (`object_overwritten_before_redrive`): every item the redrive re-runs must then fail
with an error that says the object changed, and none may run on the new lines.

Figures, per run:

- alerts_expected / alerts_received: one per batch, and one more per redrive (`/2`).
- missed: expected alerts (a batch's first, a redrive's) that did not come within
  `alert_timeout` seconds.
- duplicate: alerts beyond the first with the same alert_id.
- premature: an alert after which an item it did not list as failed first succeeded
  (first successful start later than `completed_at`). Successes are stamped when the
  task returns, before the processor records them: a lower bound, so this never
  flags a correct completion.
- items_lost: items that never succeeded, yet the batch's failure listing
  (`redrive.list_failures`, read after its last alert) does not list them.
- items_double_counted: items that succeeded, yet the listing also lists them failed (not
  "succeeds once" items: their success may have died unrecorded).
- items_misreported: items whose state in the listing (failed or not) differs from
  the expected one, for the last alert, and for a redriven batch also for its first
  alert (the listing read before the redrive), each item counted once; plus, per alert,
  every item the alert's totals and that listing disagree on (`items` against the
  batch size, `failed` / `succeeded` against the items listed failed), and any index
  listed twice or not one of the batch's indices.
  For a redrive after its object was overwritten, the items it re-ran must be listed
  failed, with an error (where the listing samples one) that says "changed"; every line of
  the new object that ran counts one more.
- items_falsely_failed: items listed failed that were started fewer than
  ITEM_MAX_ATTEMPTS times (before the redrive, for a redriven batch's first alert), or
  not started again after the redrive that should have re-run them (but for a redrive
  of an overwritten object, which must not run them).
- result_lines_wrong: for a batch with results, read after its last alert as a user reads
  them (the manifest the alert names, its `results.prefix` and `earlier_attempts`, every
  `<shard>/<chunk>.jsonl` object under them; a line counts if it is a JSON object with a
  `"result"` key): items with a line they should not have (listed failed), with no line
  (not listed failed), or with two or more lines across attempts; plus every line whose
  index is not one of the batch's; plus, where the alert's `succeeded` is off from the
  items with a line by more than that found, the difference. The rule (invariant 15):
  exactly one result line per item the alert counts as succeeded, none for failed items.

Every fault figure is 0 on a correct system; `Figures.FAULTS` lists them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from batchdrain_local.faults import DEFAULT_RATES, FaultInjector, InjectedCrash, StreamReplay
from batchdrain_local.runtime import InvocationCrashed
from chalicelib import model, planning
from chalicelib.config import Definition, Source
from chalicelib.sources import item_at, resolve_uri, split_uri
from chalicelib.tasks import task

VALUE_SPACE = 2**50
POISON_ONE_IN = 200
TRANSIENT_ONE_IN = 20
SLOW_ALWAYS_ONE_IN = 2_000
SLOW_ONCE_ONE_IN = 1_000
ONCE_ONLY_ONE_IN = 50

# The run's processor: 1 s invocations (a quarter of it is the processor's safety margin).
LAMBDA_TIMEOUT = 1.0
# A slow start outlives any invocation it runs in.
SLOW_SECONDS = LAMBDA_TIMEOUT + 0.25
# What the definitions declare one item takes (when the product reads `item_seconds`).
ITEM_SECONDS = 0.02
ITEM_MAX_ATTEMPTS = 3
# Longer than any batcher here runs (at most 40 chunks), as 960 s is longer than a Lambda
# lives on AWS: the sweeper must resume a batcher only once it cannot still be running.
STUCK_CREATING_SECONDS = 6
# A stalled redrive (redrive_slow) waits this long before its first restore: the 1 s
# sweeper sees it CREATING for longer than STUCK_CREATING_SECONDS and resumes it meanwhile.
REDRIVE_STALL_SECONDS = STUCK_CREATING_SECONDS + 1.5
# A planner's hold on its segment (chalicelib.planning.LEASE_SECONDS, 960 s: longer than a Lambda
# lives), shortened for the run the same way: longer than any planner here runs. A planner that
# dies keeps its segment this long; then the sweeper re-sends it.
PLANNER_LEASE_SECONDS = STUCK_CREATING_SECONDS

RANDOM = "random"
OBJECT = "s3-jsonl"
# Shapes number % OBJECT_SHAPE_EVERY == OBJECT_SHAPE_EVERY - 1 read their items from an object.
OBJECT_SHAPE_EVERY = 3
SOURCE_BUCKET = "batchdrain-chaos"
# Shapes number % RESULTS_SHAPE_EVERY == RESULTS_SHAPE_EVERY - 1 write results (both source types have some).
RESULTS_SHAPE_EVERY = 2
RESULTS_BUCKET = "batchdrain-chaos-results"
# A result object's key below an attempt's prefix (chalicelib.results.chunk_key): the chunk number is
# written with at least 8 digits, more from segment 1 on (chunk numbers start at segment * SEGMENT_CHUNKS, 10^8).
RESULT_OBJECT = re.compile(r"\d+/\d{8,}\.jsonl")
# Bytes of an object per segment: a 1,000-item object (about 38 KB) is cut into about 20.
SEGMENT_BYTES = 2048
SIZES = (1, 2, 7, 25, 60, 100, 250, 400, 700, 1000)
# The longest line an object can hold: the largest id, the largest value, the newline.
MAX_LINE_BYTES = len(json.dumps({"id": max(SIZES) - 1, "value": VALUE_SPACE})) + 1

OK = "ok"
FAILS_ALWAYS = "fails always"
FAILS_ONCE = "fails once"
SLOW_ALWAYS = "slow always"
SLOW_ONCE = "slow once"
ONCE_ONLY = "succeeds once"
KINDS = (OK, FAILS_ALWAYS, FAILS_ONCE, SLOW_ALWAYS, SLOW_ONCE, ONCE_ONLY)
ALWAYS = frozenset({FAILS_ALWAYS, SLOW_ALWAYS})


def kind_of(value: int) -> str:
    """The item's kind, from its value alone (see the module docstring for the odds)."""
    if value % POISON_ONE_IN == 0:
        return FAILS_ALWAYS
    rest = value // POISON_ONE_IN
    if rest % TRANSIENT_ONE_IN == 0:
        return FAILS_ONCE
    rest //= TRANSIENT_ONE_IN
    if rest % SLOW_ALWAYS_ONE_IN == 0:
        return SLOW_ALWAYS
    rest //= SLOW_ALWAYS_ONE_IN
    if rest % SLOW_ONCE_ONE_IN == 0:
        return SLOW_ONCE
    rest //= SLOW_ONCE_ONE_IN
    if rest % ONCE_ONLY_ONE_IN == 0:
        return ONCE_ONLY
    return OK


def is_poison(value: int) -> bool:
    return kind_of(value) == FAILS_ALWAYS


def fails_first_attempt(value: int) -> bool:
    return kind_of(value) == FAILS_ONCE


def expected_failed(kind: str, max_attempts: int, redriven: bool = False) -> bool | None:
    """Whether an item of `kind` must end failed; None where either answer is right.

    A "once" item fails only with a single attempt allowed, and then only if its bad
    start was the one recorded (a crash can discard it): either state is right there.
    A redrive re-runs it after its bad start, so it then succeeds. A "succeeds once" item
    ends failed exactly when its one good start was not recorded (a crash before the row
    update): either state is right, before and after a redrive.
    """
    if kind == ONCE_ONLY:
        return None
    if kind in ALWAYS:
        return True
    if kind == OK or redriven or max_attempts >= 2:
        return False
    return None


class GroundTruth:
    """What really ran, per item value: every start, and the first start that succeeded (thread-safe)."""

    def __init__(self) -> None:
        self.starts: Counter[int] = Counter()
        self.first_success: dict[int, float] = {}
        self._lock = threading.Lock()

    def run(self, value: int) -> None:
        """One start of the item's task (called from whatever thread the processor runs tasks on)."""
        with self._lock:
            self.starts[value] += 1
            start = self.starts[value]
        kind = kind_of(value)
        if kind == FAILS_ALWAYS:
            raise RuntimeError(f"poison item {value}")
        if kind == FAILS_ONCE and start == 1:
            raise RuntimeError(f"transient failure of item {value}")
        if kind == ONCE_ONLY and start > 1:
            raise RuntimeError(f"item {value} ran before (its task is not idempotent)")
        if kind == SLOW_ALWAYS or (kind == SLOW_ONCE and start == 1):
            time.sleep(SLOW_SECONDS)
            return  # past any invocation's deadline: a timed-out attempt, whatever it returns
        finished = time.time()
        with self._lock:
            self.first_success.setdefault(value, finished)

    def starts_of(self, values: Iterable[int]) -> dict[int, int]:
        with self._lock:
            return {value: self.starts[value] for value in values}


TRUTH = GroundTruth()


@task("chaos")
def chaos(item: dict, options: Mapping[str, Any]) -> None:
    """Chaos runs only: failures and overruns by item value, recorded as ground truth."""
    TRUTH.run(item["value"])


@dataclass
class Shape:
    name: str
    items: int
    k: int
    source: str = RANDOM  # or OBJECT: the same items, read from a JSON Lines object in S3
    results: bool = False  # whether its definition writes results (to RESULTS_BUCKET)

    @property
    def uri(self) -> str:
        """An object source's uri: one object per slot (and so per batch) of the shape."""
        return f"s3://{SOURCE_BUCKET}/{self.name}/{{date}}/{{hour}}{{minute}}.jsonl"

    @property
    def results_location(self) -> dict[str, str]:
        """Where a shape with results writes them: the definition's `results`."""
        return {"bucket": RESULTS_BUCKET, "prefix": f"results/{self.name}"}


@dataclass
class Figures:
    batches: int = 0
    alerts_expected: int = 0
    alerts_received: int = 0
    missed: int = 0
    duplicate: int = 0
    premature: int = 0
    items_lost: int = 0
    items_double_counted: int = 0
    items_misreported: int = 0
    items_falsely_failed: int = 0
    result_lines_wrong: int = 0
    seed: int = 0
    injected: dict[str, int] = field(default_factory=dict)
    # Which case a fault met, where one fault covers several (FaultInjector.details), and redrive races.
    details: dict[str, int] = field(default_factory=dict)
    # Items of each kind in the run's batches.
    kinds: dict[str, int] = field(default_factory=dict)
    # Batches by source type, and the segments the object-source ones were planned in (their headers).
    sources: dict[str, int] = field(default_factory=dict)
    segments: int = 0
    with_results: int = 0  # batches whose definition writes results
    # The planning queue's depth (visible + in flight), sampled each second: a queue that feeds itself grows.
    planning_queue_depth: dict[str, int] = field(default_factory=dict)
    # The fault figures of each source type's batches (a duplicate counts for the batch its alert names).
    faults_by_source: dict[str, dict[str, int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    FAULTS = (
        "missed",
        "duplicate",
        "premature",
        "items_lost",
        "items_double_counted",
        "items_misreported",
        "items_falsely_failed",
        "result_lines_wrong",
    )

    def faulty(self) -> bool:
        return any(getattr(self, name) for name in self.FAULTS)

    def as_json(self) -> str:
        keys = ("batches", "alerts_expected", "alerts_received", *self.FAULTS, "seed")
        return json.dumps({key: getattr(self, key) for key in keys})


@dataclass
class BatchRun:
    """One batch of a run: its items, what the run did to it, and what batchdrain listed."""

    batch_id: str
    values: dict[int, int]  # index -> item value (index 0..n-1, or for an object source the byte offset of its line)
    source: str = RANDOM
    results: bool = False  # its definition writes results
    segments: int = 0  # an object source's segments, read from its header after the run
    redrive: str | None = None  # None, or how it was redriven: "redrive", then "+redrive_concurrent", "+redrive_slow"
    attempt: int = 1  # the attempt of its first alert
    failures_at_redrive: list[dict[str, Any]] | None = None  # list_failures after the first alert, before the redrive
    starts_at_redrive: dict[int, int] = field(default_factory=dict)  # value -> starts, when the redrive began
    failures: list[dict[str, Any]] | None = None  # list_failures after the last alert
    # object_overwritten_before_redrive: the values of the lines that replaced its object's (None: not overwritten).
    overwritten: set[int] | None = None
    # A batch with results: result lines by item index, read after its last alert (None: none could be read).
    result_lines: Counter[Any] | None = None
    missed: list[str] = field(default_factory=list)  # expected alert ids that did not come in time
    notes: list[str] = field(default_factory=list)

    def expected_alert_ids(self) -> list[str]:
        ids = [f"{self.batch_id}/{self.attempt}"]
        if self.redrive:
            ids.append(f"{self.batch_id}/{self.attempt + 1}")
        return ids


# Per-chunk work (message, row, stream records) is what costs time locally, so a batch has
# at most 40 chunks: with SHARD_CHUNK_TARGET=10 that is still up to 4 shards.
MAX_CHUNKS = 40


def shapes_for(seed: int, count: int = 12) -> list[Shape]:
    """Batch shapes of a run: sizes from 1 to 1,000 items, K from 1 to 250, at most MAX_CHUNKS chunks.

    One in OBJECT_SHAPE_EVERY reads its items from an object, one in RESULTS_SHAPE_EVERY writes
    results. A segment's chunks end at the
    segment's end, so such a shape has at most items / K + segments chunks: K is raised to keep
    that within MAX_CHUNKS too.
    """
    rng = random.Random(seed)
    shapes = []
    for number in range(count):
        items = rng.choice(SIZES)
        k = max(rng.choice((1, 3, 10, 25, 50, 100, 250)), -(-items // MAX_CHUNKS))
        source = OBJECT if number % OBJECT_SHAPE_EVERY == OBJECT_SHAPE_EVERY - 1 else RANDOM
        if source == OBJECT:
            segments = -(-items * MAX_LINE_BYTES // SEGMENT_BYTES)
            k = max(k, -(-items // (MAX_CHUNKS - segments)))
        results = number % RESULTS_SHAPE_EVERY == RESULTS_SHAPE_EVERY - 1  # decided by number: the seeded draws stay as they were
        shapes.append(Shape(f"chaos-{number}", items, k, source, results))
    return shapes


def write_definitions(shapes: list[Shape], directory: Path) -> Path:
    # Items take no time (but the slow ones, which must overrun): say so where the product asks.
    timing = {"item_seconds": ITEM_SECONDS} if "item_seconds" in getattr(Definition, "__dataclass_fields__", {}) else {}
    document = {
        "definitions": [
            {
                "name": shape.name,
                "schedule": "rate(1 day)",
                "source": (
                    {"type": OBJECT, "uri": shape.uri}
                    if shape.source == OBJECT
                    else {"type": RANDOM, "count": shape.items, "max_value": VALUE_SPACE}
                ),
                "task": "chaos",
                "items_per_message": shape.k,
                "alert": {"sample_errors": 3},
                **({"results": shape.results_location} if shape.results else {}),
                **timing,
            }
            for shape in shapes
        ]
    }
    path = directory / "chaos-batches.json"
    path.write_text(json.dumps(document))
    return path


def values_of(shape: Shape, batch_id: str) -> dict[int, int]:
    """The batch's items, index -> value (for an object source, from the object `object_of` makes)."""
    if shape.source == OBJECT:
        return object_of(shape, batch_id)[1]
    source = Source(RANDOM, shape.items, VALUE_SPACE)
    return {index: item_at(source, batch_id, index)["value"] for index in range(shape.items)}


def object_of(shape: Shape, batch_id: str) -> tuple[bytes, dict[int, int]]:
    """An object-source batch's JSON Lines object, and its items: index (its line's byte offset) -> value.

    The lines are the items the random source generates for the batch, `{"id": n, "value": v}`.
    The object is file 0, so an index (file * FILE_STRIDE + offset) is the offset itself.
    """
    source = Source(RANDOM, shape.items, VALUE_SPACE)
    body, values = bytearray(), {}
    for number in range(shape.items):
        item = item_at(source, batch_id, number)
        values[len(body)] = item["value"]
        body += json.dumps(item).encode() + b"\n"
    return bytes(body), values


def overwritten_object(shape: Shape, batch_id: str) -> tuple[bytes, set[int]]:
    """Other lines for the same key (object_overwritten_before_redrive), and the values they hold.

    The same ids, values drawn for `<batch>/overwritten` (so none is one of the batch's):
    an item that runs on them shows as a start of one of these values.
    """
    source = Source(RANDOM, shape.items, VALUE_SPACE)
    items = [item_at(source, f"{batch_id}/overwritten", number) for number in range(shape.items)]
    return b"".join(json.dumps(item).encode() + b"\n" for item in items), {item["value"] for item in items}


def object_key(shape: Shape, slot: datetime) -> tuple[str, str]:
    """Bucket and key of the object the shape's definition reads for `slot` (the product's own resolution)."""
    return split_uri(resolve_uri(Source(OBJECT, uri=shape.uri), slot))


@contextlib.contextmanager
def planner_lease(seconds: int) -> Iterator[None]:
    """Planners take their segments for `seconds` during the run (see PLANNER_LEASE_SECONDS)."""

    real = planning.LEASE_SECONDS
    planning.LEASE_SECONDS = seconds
    try:
        yield
    finally:
        planning.LEASE_SECONDS = real


class StalledRedrives:
    """redrive_slow: the redrive started from a marked thread waits before its first restore.

    Patches `BatchStore.restore_failed` (the redrive's restore step) for the run; only the
    thread inside `stalling()` waits, once, so the sweeper's resume runs at full speed.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.outcomes: Counter[str] = Counter()
        self._local = threading.local()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        from chalicelib.store import BatchStore

        real = BatchStore.restore_failed

        def restore_failed(store: Any, batch_id: str, *args: Any, **kwargs: Any) -> Any:
            if getattr(self._local, "stall", False):
                self._local.stall = False
                before = store.get_header(batch_id)
                time.sleep(self.seconds)
                resumed = store.get_header(batch_id) != before
                with self._lock:
                    self.outcomes[f"redrive_slow: {'resumed by the sweeper' if resumed else 'not resumed'} while stalled"] += 1
            return real(store, batch_id, *args, **kwargs)

        BatchStore.restore_failed = restore_failed
        try:
            yield
        finally:
            del BatchStore.restore_failed  # the store's own method again (defined on a base class)

    @contextlib.contextmanager
    def stalling(self) -> Iterator[None]:
        self._local.stall = True
        try:
            yield
        finally:
            self._local.stall = False


def read_result_lines(s3: Any, manifest_uri: str | None) -> tuple[Counter[Any] | None, list[str]]:
    """A batch's result lines by item index, read as a user reads them; and what was wrong on the way.

    From the manifest at `manifest_uri` (the alert's `manifest`): every `<shard>/<chunk>.jsonl`
    object under its `results.prefix` and each of its `results.earlier_attempts`. A line
    counts if it is a JSON object with a `"result"` key (other lines are the product's own
    bookkeeping); its `index` is the key (a non-integer index is kept as its repr, a line
    that is not JSON as "<not JSON>": neither is one of a batch's indices). None if the
    manifest cannot be read: then a user finds no result at all.
    """
    if not manifest_uri:
        return None, ["its last alert names no results manifest"]
    try:
        bucket, key = _s3_location(manifest_uri)
        manifest = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        found = manifest["results"]
        prefixes = [found["prefix"], *found.get("earlier_attempts", [])]
    except Exception as error:  # noqa: BLE001 - reported: the results cannot be found
        return None, [f"results manifest {manifest_uri} unreadable: {error!r}"]
    lines: Counter[Any] = Counter()
    notes = []
    for prefix in prefixes:
        try:
            bucket, key_prefix = _s3_location(prefix)
        except ValueError as error:
            notes.append(f"manifest {manifest_uri}: {error}")
            continue
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key_prefix):
            for listed in page.get("Contents", []):
                if not RESULT_OBJECT.fullmatch(listed["Key"][len(key_prefix) :]):
                    continue  # the manifest, failures.jsonl, another attempt's prefix
                body = s3.get_object(Bucket=bucket, Key=listed["Key"])["Body"].read()
                for text in body.splitlines():
                    if not text.strip():
                        continue
                    try:
                        line = json.loads(text)
                    except ValueError:
                        lines["<not JSON>"] += 1
                        notes.append(f"s3://{bucket}/{listed['Key']}: a line that is not JSON: {text[:80]!r}")
                        continue
                    if isinstance(line, dict) and "result" in line:
                        index = line.get("index")
                        lines[index if type(index) is int else repr(index)] += 1
    return lines, notes


def _s3_location(uri: str) -> tuple[str, str]:
    if not isinstance(uri, str) or not uri.startswith("s3://") or "/" not in uri[len("s3://") :]:
        raise ValueError(f"not an s3://bucket/key location: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


# What result_lines_wrong finds, one of these per item (or per stray line).
EXTRA, FOR_FAILED, MISSING, STRAY = "two or more lines", "a line for a failed item", "no line for a succeeded item", "a line of no item"


def result_lines_wrong(lines: Mapping[Any, int], indices: Iterable[int], failed: set[int]) -> dict[Any, str]:
    """What is wrong with a batch's result lines (see the module docstring): item index (or (stray index, n)) -> which fault.

    Each item counts once: EXTRA (two or more lines, whatever its state), FOR_FAILED (a
    line, yet listed failed), MISSING (no line, yet counted succeeded). Each line whose
    index is none of the batch's counts once (STRAY).
    """
    indices = set(indices)
    wrong: dict[Any, str] = {}
    for index in sorted(indices):
        count = lines.get(index, 0)
        if count >= 2:
            wrong[index] = EXTRA
        elif count and index in failed:
            wrong[index] = FOR_FAILED
        elif not count and index not in failed:
            wrong[index] = MISSING
    for index, count in lines.items():
        if index not in indices:
            wrong.update({(index, number): STRAY for number in range(count)})
    return wrong


def run(
    batches: int,
    seed: int,
    in_flight: int = 12,
    alert_timeout: float = 300,
    rates: dict[str, float] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Figures:
    """Run `batches` randomized batches under faults; the figures of the run.

    `progress(ended, missed)` is called as each batch ends (every expected alert came, or
    one was missed), from the thread that waited for it; `missed` counts such batches.
    """
    from batchdrain_local.stack import LocalStack, StackOptions

    TRUTH.__init__()
    rng = random.Random(seed)
    shapes = shapes_for(seed)
    injector = FaultInjector(seed=seed, rates=dict(DEFAULT_RATES if rates is None else rates), ensure_every_fault=True)
    start = datetime(2030, 1, 1, tzinfo=timezone.utc)
    plan = [(rng.choice(shapes), start + timedelta(minutes=number)) for number in range(batches)]
    figures = Figures(batches=batches, seed=seed)
    batch_ids = [model.batch_id_for(shape.name, slot) for shape, slot in plan]
    runs = [
        BatchRun(batch_id, values_of(shape, batch_id), shape.source, shape.results)
        for (shape, _), batch_id in zip(plan, batch_ids)
    ]
    figures.kinds = dict(Counter(kind_of(value) for batch in runs for value in batch.values.values()))
    figures.sources = dict(Counter(batch.source for batch in runs))
    figures.with_results = sum(batch.results for batch in runs)
    stalls = StalledRedrives(REDRIVE_STALL_SECONDS)
    details: Counter[str] = Counter()
    details_lock = threading.Lock()
    with tempfile.TemporaryDirectory() as directory:
        options = StackOptions(
            definitions_file=write_definitions(shapes, Path(directory)),
            processor_concurrency=4,
            # Invocations end well inside the visibility timeout, as AWS's 6x rule ensures:
            # the processor checkpoints and returns when its (short, local) time runs low.
            lambda_timeout=LAMBDA_TIMEOUT,
            visibility_timeout=3,
            max_receive_count=4,
            faults=injector,
            sweep_speed=300,  # rate(5 minutes) -> a sweep every second
            app_log_level="CRITICAL",  # injected failures are counted below, not logged
            extra_environment={
                "NOTIFY_LEASE_SECONDS": "3",
                "STUCK_CREATING_SECONDS": str(STUCK_CREATING_SECONDS),
                "RESEND_AFTER_SECONDS": "8",
                "SHARD_CHUNK_TARGET": "10",
                "ITEM_MAX_ATTEMPTS": str(ITEM_MAX_ATTEMPTS),
                "SEGMENT_BYTES": str(SEGMENT_BYTES),
            },
        )
        # Lambda never runs two invocations in one environment; the local stack's process does.
        with (
            LocalStack(options) as stack,
            stalls.installed(),
            planner_lease(PLANNER_LEASE_SECONDS),
            StreamReplay.for_stack(stack, injector, seed).installed() as replay,
        ):
            settings = stack.app_module.settings()
            s3 = stack.client("s3")  # the stack's own client: uploads are not the app's requests
            s3.create_bucket(Bucket=SOURCE_BUCKET)
            s3.create_bucket(Bucket=RESULTS_BUCKET)
            ended = {"ended": 0, "missed": 0}
            ended_lock = threading.Lock()

            def note(key: str) -> None:
                with details_lock:
                    details[key] += 1

            def wait_for(alert_id: str, since: float) -> dict[str, Any] | None:
                """The first alert with `alert_id`, waiting up to alert_timeout from `since`."""
                batch_id = alert_id.rsplit("/", 1)[0]
                while True:
                    for alert in stack.alerts_for(batch_id):
                        if alert["message"]["alert_id"] == alert_id:
                            return alert["message"]
                    if time.monotonic() - since > alert_timeout:
                        return None
                    time.sleep(0.2)

            def redrive(batch: BatchRun) -> None:
                """Redrive the batch as its fault says; the sweeper finishes whatever dies half way."""
                from chalicelib import redrive as redrives
                from chalicelib import restoring
                from chalicelib.store import BatchStore

                # The product refuses to redrive before the first attempt's alert is recorded as sent.
                waited = time.monotonic()
                while not (stack.header(batch.batch_id) or {}).get("notified_at") and time.monotonic() - waited < 30:
                    time.sleep(0.1)
                batch.failures_at_redrive = _listing(batch, settings)
                batch.starts_at_redrive = TRUTH.starts_of(batch.values.values())
                racer = None
                if "redrive_concurrent" in batch.redrive.split("+"):

                    def race() -> None:
                        """A second restore_failures, as soon as the new attempt is CREATING (a sweeper resuming it)."""
                        deadline = time.monotonic() + 10
                        while time.monotonic() < deadline:
                            header = stack.header(batch.batch_id) or {}
                            if header.get("attempt", 0) > batch.attempt:
                                if header.get("status") != model.CREATING:
                                    note("redrive_concurrent: sealed before the second continuation saw it")
                                    return
                                try:
                                    restoring.restore_failures(BatchStore(settings.table_name), header, settings)
                                    note("redrive_concurrent: second continuation ran")
                                except BaseException as error:  # noqa: BLE001 - an injected crash, or the product's error
                                    note(f"redrive_concurrent: second continuation raised {type(error).__name__}")
                                    if not isinstance(error, InjectedCrash):
                                        batch.notes.append(f"concurrent restore_failures raised {error!r}")
                                return
                            time.sleep(0.005)
                        note("redrive_concurrent: the new attempt never showed")

                    racer = threading.Thread(target=race, name=f"chaos-race-{batch.batch_id}", daemon=True)
                    racer.start()
                stall = stalls.stalling() if "redrive_slow" in batch.redrive.split("+") else contextlib.nullcontext()
                try:
                    with stall:
                        redrives.redrive(batch.batch_id, settings)
                except InjectedCrash:
                    note("redrive: the redrive process crashed (the sweeper resumes it)")
                except Exception as error:  # noqa: BLE001 - reported; the alert wait below decides the figure
                    batch.notes.append(f"redrive raised {error!r}")
                if racer is not None:
                    racer.join()

            def fire(entry: tuple[tuple[Shape, datetime], BatchRun]) -> None:
                """Fire one batch, wait for its alert, maybe redrive it and wait for that alert too."""
                (shape, slot), batch = entry
                bucket, key = object_key(shape, slot) if shape.source == OBJECT else ("", "")
                try:
                    if shape.source == OBJECT:
                        s3.put_object(Bucket=bucket, Key=key, Body=object_of(shape, batch.batch_id)[0])
                    try:
                        stack.fire_schedule(shape.name, slot)
                    except InvocationCrashed:
                        pass  # the batcher died: the sweeper resumes the batch
                    try:
                        first = stack.wait_for_alert(batch.batch_id, timeout=alert_timeout)["message"]
                    except TimeoutError as error:
                        batch.missed.append(f"{batch.batch_id}/{batch.attempt}")
                        batch.notes.append(str(error))
                        return
                    batch.attempt = int(first.get("attempt", 1))
                    # Per source type, so the first redrive of each type is ensured (ensure_every_fault).
                    if first["status"] == model.COMPLETED_WITH_FAILURES and injector.chance("redrive", f"of a {batch.source} batch"):
                        # Both asked every time, so the first redrive of a run has both (ensure_every_fault).
                        races = [name for name in ("redrive_concurrent", "redrive_slow") if injector.chance(name)]
                        batch.redrive = "+".join(["redrive", *races])
                        if shape.source == OBJECT and injector.chance("object_overwritten_before_redrive"):
                            body, batch.overwritten = overwritten_object(shape, batch.batch_id)
                            s3.put_object(Bucket=bucket, Key=key, Body=body)
                        redrive(batch)
                        redriven = time.monotonic()
                        if wait_for(f"{batch.batch_id}/{batch.attempt + 1}", redriven) is None:
                            batch.missed.append(f"{batch.batch_id}/{batch.attempt + 1}")
                            batch.notes.append(f"no alert of the redrive after {alert_timeout} s; header: {stack.header(batch.batch_id)}")
                except BaseException as error:  # noqa: BLE001 - the run goes on; the batch's alerts decide its figures
                    batch.notes.append(f"chaos runner error {error!r}")
                finally:
                    with ended_lock:
                        ended["ended"] += 1
                        ended["missed"] += bool(batch.missed)
                        if progress:
                            progress(ended["ended"], ended["missed"])

            with ThreadPoolExecutor(max_workers=in_flight) as pool:
                with QueueDepth(stack.client("sqs"), settings.planning_queue_name) as depth:
                    list(pool.map(fire, zip(plan, runs)))
                figures.planning_queue_depth = depth.summary()
            time.sleep(5)  # late duplicates (after a lease expires) would arrive now
            alerts = list(stack.alerts)
            dynamodb = stack.client("dynamodb")
            first_alerts: dict[str, dict[str, Any]] = {}
            for alert in alerts:
                first_alerts.setdefault(alert["message"]["alert_id"], alert["message"])
            for batch in runs:
                batch.failures = _listing(batch, settings)
                if batch.source == OBJECT:
                    batch.segments = int((stack.header(batch.batch_id) or {}).get("segments", 0))
                last = first_alerts.get(batch.expected_alert_ids()[-1])
                if batch.results and last is not None:
                    batch.result_lines, notes = read_result_lines(s3, last.get("manifest"))
                    batch.notes += notes
                # A batch seals only once its last segment row is gone: one left after its alert was
                # written again too late (issue 16, defect 2), and nothing ever removes it.
                orphans = _segment_rows(dynamodb, settings.table_name, batch.batch_id)
                if orphans:
                    details["segment rows left after the batch ended (batches)"] += 1
                    batch.notes.append(f"{orphans} segment rows left after its last alert")
            figures.segments = sum(batch.segments for batch in runs)
            figures.alerts_received = len(alerts)
            _check(figures, runs, alerts)
            figures.injected = dict(injector.injected)
            details["stream_replay: records handed to the finalizer again"] = replay.replayed
            figures.details = dict(sorted({**injector.details, **details, **stalls.outcomes}.items()))
    return figures


def _segment_rows(dynamodb: Any, table_name: str, batch_id: str) -> int:
    """How many segment rows (`P#`) the batch has (a strongly consistent count)."""
    return dynamodb.query(
        TableName=table_name,
        KeyConditionExpression="pk = :pk AND begins_with(sk, :segment)",
        ExpressionAttributeValues={":pk": {"S": f"B#{batch_id}"}, ":segment": {"S": model.SEGMENT_PREFIX}},
        Select="COUNT",
        ConsistentRead=True,
    )["Count"]


def _listing(batch: BatchRun, settings: Any) -> list[dict[str, Any]] | None:
    """The batch's failure listing (None, with a note, if it cannot be read)."""
    from chalicelib import redrive

    try:
        return redrive.list_failures(batch.batch_id, settings)
    except Exception as error:  # noqa: BLE001 - counted by _check as a listing that reports nothing right
        batch.notes.append(f"list_failures raised {error!r}")
        return None


def _listed(listing: list[dict[str, Any]], indices: Mapping[int, Any]) -> tuple[set[int], int]:
    """The item indices a listing says failed, and how many entries are wrong (listed twice, or not one of `indices`)."""
    listed = [int(index) for entry in listing for index in entry.get("items", ())]
    failed = {index for index in listed if index in indices}
    return failed, len(listed) - len(failed)


def _why_failed(listing: list[dict[str, Any]], index: int) -> str:
    """What the listing says about a failed item: its entry's reason, and its error if sampled."""
    for entry in listing:
        if index in {int(listed) for listed in entry.get("items", ())}:
            error = (entry.get("errors") or {}).get(index) or (entry.get("errors") or {}).get(str(index))
            return f" (reason {entry.get('reason')!r}" + (f", error {error!r})" if error else ")")
    return ""


def _error_of(listing: list[dict[str, Any]], index: int) -> str | None:
    """The error a listing samples for a failed item (None if it samples none for it)."""
    for entry in listing:
        if index in {int(listed) for listed in entry.get("items", ())}:
            errors = entry.get("errors") or {}
            return errors.get(index) or errors.get(str(index))
    return None


def _totals_off(totals: Mapping[str, Any], items: int, failed: int) -> int:
    """How many items an alert's totals misreport against the listing's `failed` count."""
    off_items = abs(int(totals.get("items", -1)) - items)
    off_failed = abs(int(totals.get("failed", -1)) - failed)
    off_succeeded = abs(int(totals.get("succeeded", -1)) - (items - failed))
    return off_items + max(off_failed, off_succeeded)


def _check(
    figures: Figures,
    runs: list[BatchRun],
    alerts: list[dict[str, Any]],
    truth: GroundTruth | None = None,
    max_attempts: int = ITEM_MAX_ATTEMPTS,
) -> None:
    """Fill the figures of `runs` from the alerts received and the ground truth (see the module docstring)."""
    truth = truth or TRUTH
    by_id = Counter(alert["message"]["alert_id"] for alert in alerts)
    figures.duplicate = sum(count - 1 for count in by_id.values() if count > 1)
    first: dict[str, dict[str, Any]] = {}
    for alert in alerts:
        first.setdefault(alert["message"]["alert_id"], alert["message"])
    figures.alerts_expected = sum(len(batch.expected_alert_ids()) for batch in runs)
    for batch in runs:
        before = {name: getattr(figures, name) for name in Figures.FAULTS}
        figures.problems += [f"{batch.batch_id}: {text}" for text in batch.notes]
        expected = batch.expected_alert_ids()
        received = [first.get(alert_id) for alert_id in expected]
        # Waited for in vain, or never waited for (the runner failed first): either way, missed.
        figures.missed += len(set(batch.missed) | {alert_id for alert_id, message in zip(expected, received) if message is None})
        mine = {alert_id: count for alert_id, count in by_id.items() if alert_id.rsplit("/", 1)[0] == batch.batch_id}
        unexpected = sorted(alert_id for alert_id in mine if alert_id not in expected)
        if unexpected:
            figures.problems.append(f"{batch.batch_id}: unexpected alerts {unexpected}")
        if not batch.missed and all(message is not None for message in received):
            _check_batch(figures, batch, received, truth, max_attempts)
        # else counted as missed: the item figures need every alert of the batch
        found = figures.faults_by_source.setdefault(batch.source, dict.fromkeys(Figures.FAULTS, 0))
        for name in Figures.FAULTS:
            found[name] += getattr(figures, name) - before[name]
        found["duplicate"] += sum(count - 1 for count in mine.values())


def _check_batch(
    figures: Figures, batch: BatchRun, received: list[dict[str, Any]], truth: GroundTruth, max_attempts: int
) -> None:
    values, items = batch.values, len(batch.values)
    listings = [batch.failures_at_redrive, batch.failures] if batch.redrive else [batch.failures]
    misreported: dict[int, str] = {}
    falsely: dict[int, str] = {}
    totals_off = 0
    final_failed: set[int] = set()
    # The items a redrive re-ran after their object was overwritten: each must fail as changed, none may run.
    changed: set[int] = set()
    if batch.overwritten is not None and batch.failures_at_redrive is not None:
        changed = _listed(batch.failures_at_redrive, values)[0]
    for number, (message, listing) in enumerate(zip(received, listings)):
        alert_id, last = message["alert_id"], number == len(received) - 1
        if listing is None:
            misreported.update({index: "no listing" for index in values})
            figures.problems.append(f"{batch.batch_id}: no failure listing for {alert_id}; every item counted misreported")
            continue
        failed, wrong_entries = _listed(listing, values)
        if last:
            final_failed = failed
        off = _totals_off(message["totals"], items, len(failed)) + wrong_entries
        if off:
            totals_off += off
            figures.problems.append(
                f"{alert_id}: totals {message['totals']} disagree with the listing ({len(failed)} of {items} items "
                f"failed, {wrong_entries} entries listed twice or not the batch's)"
            )
        starts = truth.starts_of(values.values()) if last else batch.starts_at_redrive
        for index, value in values.items():
            kind = kind_of(value)
            listed = index in failed
            why = _why_failed(listing, index) if listed else ""
            if number > 0 and index in changed:
                error = _error_of(listing, index)
                if not listed:
                    misreported.setdefault(index, f"{alert_id}: item {index} ({kind}) of an overwritten object listed not failed")
                elif error is not None and "changed" not in error:
                    misreported.setdefault(index, f"{alert_id}: item {index} ({kind}) of an overwritten object failed{why}, not as changed")
                continue  # not run again: the start counts say nothing here
            should_fail = expected_failed(kind, max_attempts, redriven=number > 0)
            if should_fail is not None and listed != should_fail:
                misreported.setdefault(
                    index,
                    f"{alert_id}: item {index} ({kind}, {starts[value]} starts) listed {'failed' + why if listed else 'not failed'}",
                )
            if listed and starts[value] < max_attempts:
                falsely.setdefault(index, f"{alert_id}: item {index} ({kind}) failed after {starts[value]} starts{why}")
            if listed and number > 0 and starts[value] <= batch.starts_at_redrive.get(value, 0):
                falsely.setdefault(index, f"{alert_id}: item {index} ({kind}) failed, not started again by the redrive{why}")
        completed = model.parse_iso(message["completed_at"]).timestamp()
        late = [index for index, value in values.items() if index not in failed and truth.first_success.get(value, 0) > completed]
        if late:
            figures.premature += 1
            figures.problems.append(f"{alert_id}: {len(late)} items first succeeded after completion, e.g. item {late[0]}")
    ran_on_new_lines = sorted(value for value, count in truth.starts_of(batch.overwritten or ()).items() if count)
    if ran_on_new_lines:
        figures.problems.append(
            f"{batch.batch_id}: {len(ran_on_new_lines)} lines of the object that overwrote its own ran in the redrive, "
            f"e.g. value {ran_on_new_lines[0]}"
        )
    if batch.failures is None:
        final_failed = set(values)  # unknown: not counted lost (misreported already)
    lost = [index for index, value in values.items() if value not in truth.first_success and index not in final_failed]
    # A "succeeds once" item's success may never have been recorded (a crash before the row update): then it fails.
    double = [index for index in sorted(final_failed) if values[index] in truth.first_success and kind_of(values[index]) != ONCE_ONLY]
    if batch.failures is None:
        double = []
    figures.items_lost += len(lost)
    figures.items_double_counted += len(double)
    figures.items_misreported += len(misreported) + totals_off + len(ran_on_new_lines)
    figures.items_falsely_failed += len(falsely)
    if batch.results:
        _check_result_lines(figures, batch, final_failed if batch.failures is not None else None, received[-1]["totals"])
    for label, found in (("lost", lost), ("double-counted", double)):
        if found:
            figures.problems.append(f"{batch.batch_id}: {len(found)} items {label}, e.g. item {found[0]} ({kind_of(values[found[0]])})")
    for label, found in (("misreported", misreported), ("falsely failed", falsely)):
        if found:
            figures.problems.append(f"{batch.batch_id}: {len(found)} items {label}, e.g. {found[min(found)]}")


def _check_result_lines(figures: Figures, batch: BatchRun, failed: set[int] | None, totals: Mapping[str, Any]) -> None:
    """result_lines_wrong for one batch with results, against the listing read after its last alert, and its totals.

    Item by item against the listing; where the alert's `succeeded` disagrees with the
    listing, the lines a reader of the alert finds missing (or too many) beyond that count too.
    """
    if failed is None:
        figures.problems.append(f"{batch.batch_id}: no failure listing; its result lines not checked")
        return
    if batch.result_lines is None:
        missing = len(batch.values) - len(failed)
        figures.result_lines_wrong += missing
        if missing:
            figures.problems.append(f"{batch.batch_id}: no results readable; {missing} succeeded items without a result line")
        return
    wrong = result_lines_wrong(batch.result_lines, batch.values, failed)
    faults = Counter(wrong.values())
    with_line = sum(1 for index in batch.values if batch.result_lines.get(index, 0))
    succeeded = totals.get("succeeded")
    if isinstance(succeeded, int):
        short, over = succeeded - with_line, with_line - succeeded
        for fault, beyond in ((MISSING, short - faults[MISSING]), (FOR_FAILED, over - faults[FOR_FAILED])):
            if beyond > 0:
                wrong.update({("alert", fault, number): fault for number in range(beyond)})
                figures.problems.append(
                    f"{batch.batch_id}: its last alert counts {succeeded} succeeded, {with_line} items have a result line: "
                    f"{beyond} more '{fault}' than the listing shows"
                )
    figures.result_lines_wrong += len(wrong)
    if wrong:
        index, fault = next(iter(wrong.items()))
        if not isinstance(index, tuple):
            example = f"item {index} ({kind_of(batch.values[index])})"
        else:
            example = "by the alert's count" if index[0] == "alert" else f"index {index[0]!r}"
        figures.problems.append(
            f"{batch.batch_id}: {len(wrong)} items' result lines wrong ({dict(Counter(wrong.values()))}), e.g. {example}: {fault}"
        )


class QueueDepth:
    """Samples a queue's depth (visible and in flight) once a second in a thread, with the stack's own client."""

    def __init__(self, sqs: Any, queue_name: str, every: float = 1.0) -> None:
        self.sqs, self.url, self.every = sqs, sqs.get_queue_url(QueueName=queue_name)["QueueUrl"], every
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-queue-depth", daemon=True)

    def __enter__(self) -> "QueueDepth":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        while not self._stop.wait(self.every):
            attributes = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=names)["Attributes"]
            self.samples.append(sum(int(attributes.get(name, 0)) for name in names))

    def summary(self) -> dict[str, int]:
        if not self.samples:
            return {}
        ordered = sorted(self.samples)
        return {"max": ordered[-1], "median": ordered[len(ordered) // 2], "last": self.samples[-1], "samples": len(ordered)}


def print_table(figures: Figures, seconds: float) -> None:
    rows = [
        ("batches", figures.batches),
        ("alerts expected", figures.alerts_expected),
        ("alerts received", figures.alerts_received),
        ("missed", figures.missed),
        ("duplicate", figures.duplicate),
        ("premature", figures.premature),
        ("items lost", figures.items_lost),
        ("items double-counted", figures.items_double_counted),
        ("items misreported", figures.items_misreported),
        ("items falsely failed", figures.items_falsely_failed),
        ("result lines wrong", figures.result_lines_wrong),
    ]
    print(f"chaos run, seed {figures.seed}, {seconds:.0f} s")
    for name, value in rows:
        print(f"  {name:<22} {value:>8,}")
    print(f"  items by kind: {', '.join(f'{kind} {figures.kinds.get(kind, 0):,}' for kind in KINDS)}")
    for source in (RANDOM, OBJECT):
        found = figures.faults_by_source.get(source, {})
        faults = ", ".join(f"{name} {count:,}" for name, count in found.items() if count) or "all 0"
        segments = f", {figures.segments:,} segments" if source == OBJECT else ""
        print(f"  {source} batches: {figures.sources.get(source, 0):,}{segments}; fault figures {faults}")
    print(f"  batches with results: {figures.with_results:,}")
    if figures.planning_queue_depth:
        depth = figures.planning_queue_depth
        print(f"  planning queue depth: max {depth['max']:,}, median {depth['median']:,}, at the end {depth['last']:,} ({depth['samples']:,} samples)")
    print(f"  faults injected: {', '.join(f'{name} {count:,}' for name, count in sorted(figures.injected.items()))}")
    for name, count in figures.details.items():
        print(f"    {name}: {count:,}")
    for problem in figures.problems:
        print(f"  note: {problem}")
    print(figures.as_json())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batchdrain_local.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--seed", type=int, default=None, help="default: random, printed")
    parser.add_argument("--in-flight", type=int, default=12, help="batches running at once")
    arguments = parser.parse_args(argv)
    seed = arguments.seed if arguments.seed is not None else random.SystemRandom().randrange(10**6)
    started = time.monotonic()
    every = max(1, arguments.batches // 20)

    def report(ended: int, missed: int) -> None:
        # stderr, so stdout stays the table and its last JSON line.
        if ended % every == 0 or ended == arguments.batches:
            elapsed = time.monotonic() - started
            print(f"chaos: {ended:,}/{arguments.batches:,} batches ended, {missed} missed, {elapsed:.0f} s",
                  file=sys.stderr, flush=True)

    figures = run(arguments.batches, seed, arguments.in_flight, progress=report)
    print_table(figures, time.monotonic() - started)
    return 1 if figures.faulty() else 0


if __name__ == "__main__":
    sys.exit(main())
