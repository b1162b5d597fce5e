"""`make chaos`: many randomized batches under a seeded fault mix, checked against ground truth.

Ground truth comes from the `chaos` task, which records the first *recorded* success of
every item, keyed by the item's value: a success counts once the processor's row update
took it (ChunkOutcome.recorded). A Lambda that dies between the task and that update
(an injected crash) leaves the item pending, and batchdrain rightly runs it again or,
once its message is dead-lettered, counts it failed. Values are drawn from 0..2^50, so they are unique
across a run. Which items are poison (they always fail and end in the dead-letter queue)
and which fail only their first attempt is a function of the value. So the expected
totals of every batch are known before it runs.

Figures, per run:

- alerts_expected / alerts_received: one per batch.
- missed: batches with no alert within `alert_timeout` seconds of being fired.
- duplicate: alerts beyond the first with the same alert_id.
- premature: an alert whose batch still had an item succeed for the first time after
  `completed_at`.
- items_lost: items that never succeeded, yet the alert did not count them as failed.
- items_double_counted: items that succeeded, yet the alert also counted them as failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from batchdrain_local.faults import DEFAULT_RATES, FaultInjector
from batchdrain_local.runtime import InvocationCrashed
from chalicelib import model
from chalicelib.config import Source
from chalicelib.sources import item_at
from chalicelib.tasks import task

VALUE_SPACE = 2**50
POISON_ONE_IN = 200
TRANSIENT_ONE_IN = 20


def is_poison(value: int) -> bool:
    return value % POISON_ONE_IN == 0


def fails_first_attempt(value: int) -> bool:
    return (value // POISON_ONE_IN) % TRANSIENT_ONE_IN == 0


class GroundTruth:
    """What really ran: first recorded success time and attempts per item value (thread-safe)."""

    def __init__(self) -> None:
        self.first_success: dict[int, float] = {}
        self.attempts: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._unrecorded = threading.local()  # successes of the message this thread is processing

    def run(self, value: int) -> None:
        with self._lock:
            self.attempts[value] += 1
            first_attempt = self.attempts[value] == 1
        if is_poison(value):
            raise RuntimeError(f"poison item {value}")
        if first_attempt and fails_first_attempt(value):
            raise RuntimeError(f"transient failure of item {value}")
        self._unrecorded.values.append((value, time.time()))  # when it ran, not when it was recorded

    @contextlib.contextmanager
    def watching_the_processor(self) -> Iterator[None]:
        """Wrap processor.process_message: a message's successes count only if its row update took them."""
        from chalicelib import processor

        process_message = processor.process_message

        def watched(*args: Any, **kwargs: Any) -> Any:
            self._unrecorded.values = []
            try:
                outcome = process_message(*args, **kwargs)
                if outcome.recorded:
                    with self._lock:
                        for value, ran_at in self._unrecorded.values:
                            self.first_success.setdefault(value, ran_at)
                return outcome
            finally:
                self._unrecorded.values = []

        processor.process_message = watched
        try:
            yield
        finally:
            processor.process_message = process_message


TRUTH = GroundTruth()


@task("chaos")
def chaos(item: dict, options: Mapping[str, Any]) -> None:
    """Chaos runs only: poison and transient failures by item value, recorded as ground truth."""
    TRUTH.run(item["value"])


@dataclass
class Shape:
    name: str
    items: int
    k: int


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
    seed: int = 0
    injected: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    FAULTS = ("missed", "duplicate", "premature", "items_lost", "items_double_counted")

    def faulty(self) -> bool:
        return any(getattr(self, name) for name in self.FAULTS)

    def as_json(self) -> str:
        keys = (
            "batches",
            "alerts_expected",
            "alerts_received",
            "missed",
            "duplicate",
            "premature",
            "items_lost",
            "items_double_counted",
            "seed",
        )
        return json.dumps({key: getattr(self, key) for key in keys})


# Per-chunk work (message, row, stream records) is what costs time locally, so a batch has
# at most 40 chunks: with SHARD_CHUNK_TARGET=10 that is still up to 4 shards.
MAX_CHUNKS = 40


def shapes_for(seed: int, count: int = 12) -> list[Shape]:
    """Batch shapes of a run: sizes from 1 to 1,000 items, K from 1 to 250, at most MAX_CHUNKS chunks."""
    rng = random.Random(seed)
    shapes = []
    for number in range(count):
        items = rng.choice((1, 2, 7, 25, 60, 100, 250, 400, 700, 1000))
        k = max(rng.choice((1, 3, 10, 25, 50, 100, 250)), -(-items // MAX_CHUNKS))
        shapes.append(Shape(f"chaos-{number}", items, k))
    return shapes


def write_definitions(shapes: list[Shape], directory: Path) -> Path:
    document = {
        "definitions": [
            {
                "name": shape.name,
                "schedule": "rate(1 day)",
                "source": {"type": "random", "count": shape.items, "max_value": VALUE_SPACE},
                "task": "chaos",
                "items_per_message": shape.k,
                "alert": {"sample_errors": 3},
            }
            for shape in shapes
        ]
    }
    path = directory / "chaos-batches.json"
    path.write_text(json.dumps(document))
    return path


def run(
    batches: int,
    seed: int,
    in_flight: int = 12,
    alert_timeout: float = 300,
    rates: dict[str, float] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Figures:
    """Run `batches` randomized batches under faults; the figures of the run.

    `progress(ended, missed)` is called as each batch ends (alerted or missed), from the
    thread that waited for it.
    """
    from batchdrain_local.stack import LocalStack, StackOptions

    TRUTH.__init__()
    rng = random.Random(seed)
    shapes = shapes_for(seed)
    injector = FaultInjector(seed=seed, rates=dict(DEFAULT_RATES if rates is None else rates), ensure_every_fault=True)
    start = datetime(2030, 1, 1, tzinfo=timezone.utc)
    plan = [(rng.choice(shapes), start + timedelta(minutes=number)) for number in range(batches)]
    figures = Figures(batches=batches, alerts_expected=batches, seed=seed)
    with tempfile.TemporaryDirectory() as directory:
        options = StackOptions(
            definitions_file=write_definitions(shapes, Path(directory)),
            processor_concurrency=4,
            # Invocations end well inside the visibility timeout, as AWS's 6x rule ensures:
            # the processor checkpoints and returns when its (short, local) time runs low.
            lambda_timeout=1.0,
            visibility_timeout=3,
            max_receive_count=4,
            faults=injector,
            sweep_speed=300,  # rate(5 minutes) -> a sweep every second
            app_log_level="CRITICAL",  # injected failures are counted below, not logged
            extra_environment={
                "NOTIFY_LEASE_SECONDS": "3",
                "STUCK_CREATING_SECONDS": "5",
                "RESEND_AFTER_SECONDS": "8",
                "SHARD_CHUNK_TARGET": "10",
            },
        )
        with LocalStack(options) as stack, TRUTH.watching_the_processor():
            batch_ids = [model.batch_id_for(shape.name, slot) for shape, slot in plan]
            ended = {"ended": 0, "missed": 0}
            ended_lock = threading.Lock()

            def fire(entry: tuple[Shape, datetime]) -> BaseException | None:
                """Fire one batch and wait for its alert; the error that kept it from coming, if any."""
                shape, slot = entry
                outcome = None
                try:
                    try:
                        stack.fire_schedule(shape.name, slot)
                    except InvocationCrashed:
                        pass  # the batcher died: the sweeper resumes the batch
                    stack.wait_for_alert(model.batch_id_for(shape.name, slot), timeout=alert_timeout)
                except BaseException as error:  # noqa: BLE001 - a missed alert is a figure, not a crash of the run
                    outcome = error
                with ended_lock:
                    ended["ended"] += 1
                    ended["missed"] += outcome is not None
                    if progress:
                        progress(ended["ended"], ended["missed"])
                return outcome

            with ThreadPoolExecutor(max_workers=in_flight) as pool:
                outcomes = list(pool.map(fire, plan))
            figures.missed = sum(1 for outcome in outcomes if isinstance(outcome, BaseException))
            time.sleep(5)  # late duplicates (after a lease expires) would arrive now
            alerts = list(stack.alerts)
            figures.problems += [f"{batch_id}: {outcome!r}" for batch_id, outcome in zip(batch_ids, outcomes) if outcome]
            figures.alerts_received = len(alerts)
            _check(figures, plan, alerts)
            figures.injected = dict(injector.injected)
    return figures


def _check(figures: Figures, plan: list[tuple[Shape, datetime]], alerts: list[dict[str, Any]]) -> None:
    by_id = Counter(alert["message"]["alert_id"] for alert in alerts)
    figures.duplicate = sum(count - 1 for count in by_id.values() if count > 1)
    first_alert = {}
    for alert in alerts:
        first_alert.setdefault(alert["message"]["batch_id"], alert["message"])
    for shape, slot in plan:
        batch_id = model.batch_id_for(shape.name, slot)
        message = first_alert.get(batch_id)
        if message is None:
            continue
        source = Source("random", shape.items, VALUE_SPACE)
        values = [item_at(source, batch_id, index)["value"] for index in range(shape.items)]
        never_succeeded = sum(1 for value in values if value not in TRUTH.first_success)
        reported_failed = message["totals"]["failed"]
        figures.items_lost += max(0, never_succeeded - reported_failed)
        figures.items_double_counted += max(0, reported_failed - never_succeeded)
        completed = model.parse_iso(message["completed_at"]).timestamp()
        late = [value for value in values if TRUTH.first_success.get(value, 0) > completed]
        if late:
            figures.premature += 1
            figures.problems.append(f"{batch_id}: {len(late)} items first succeeded after completion")


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
    ]
    print(f"chaos run, seed {figures.seed}, {seconds:.0f} s")
    for name, value in rows:
        print(f"  {name:<22} {value:>8,}")
    print(f"  faults injected: {', '.join(f'{name} {count:,}' for name, count in sorted(figures.injected.items()))}")
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
