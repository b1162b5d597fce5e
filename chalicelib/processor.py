"""The processor: runs the task on each still-pending item of each work message.

At-least-once delivery is made exact here (invariants 5 and 9):

- items no longer pending are skipped; each item's result is recorded by one
  conditional write on its chunk row (`BatchStore.record`), so concurrent copies of
  one message cannot both take the same item;
- an item that raises, or is still running when the invocation's time runs low, has
  used one attempt of its own; after `ITEM_MAX_ATTEMPTS` it fails for good (F row),
  and the message goes back to the queue (`batchItemFailures`) only for items that
  were attempted and may still succeed, visible again after the retry delay
  (chalicelib.retries), not after the queue's whole visibility timeout;
- an item whose error no retry can mend fails for good at its first attempt: a bad
  line, a result that is not JSON, an unwritable results bucket, a `PermanentItemError`
  or a type its task declares permanent (`@task(..., permanent=...)`);
- items this invocation never started (its time ran out first) are sent again in a
  fresh message and the old one is acknowledged: a message returned untouched would
  use up a receive, and receives are not attempts.

Each item that fails for good is logged once, by the delivery whose record failed it
(a concurrent copy that lost the write logs nothing), with its traceback
(chalicelib.itemerrors); a message going back for a retry logs one short line.

After its messages' records, an invocation ADDs what it saw of each batch to one of the
batch's stats rows (chalicelib.itemstats): messages handled, given back and re-sent, the
items' own durations and its busy time. One write per batch, slot the shard of the batch's
first message here, never read first; a failed write is a warning. They are observations
for the batch's item times and cost (chalicelib.batchcost): an invocation that crashes
writes none, which is why nothing ever decides on them.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from chalicelib import itemerrors, itemstats, log, model, results, retries, work
from chalicelib.config import Settings
from chalicelib.deadline import DEFAULT_SAFETY_MARGIN_MS, Deadline
from chalicelib.errors import BatchdrainError
from chalicelib.store import BatchStore, ItemOutcome
from chalicelib.tasks import Task, get_task, is_permanent

# Items of one delivery logged with their traceback when they fail for good; the rest get one line.
MAX_TRACEBACKS_LOGGED = 10
# Item indices named in one log line.
MAX_INDICES_LOGGED = 10


@dataclass
class ChunkOutcome:
    """What one message came to.

    done/errors: items finished and items that raised (or timed out) in this delivery and
    may succeed later; failed: items that failed for good in this delivery's write (their
    attempts ran out, or their error is permanent); untouched: pending items this delivery
    never started; left: what stays pending after it; resent: whether the untouched ones
    went out again in a fresh message; retry_in: seconds until a returned message is
    visible again (chalicelib.retries); seconds: how long each item this delivery ran
    took (finished, raised or timed out: then until the invocation gave up on it),
    measured on the thread that ran it (time.perf_counter).
    """

    done: set[int] = field(default_factory=set)
    errors: dict[int, str] = field(default_factory=dict)
    failed: set[int] = field(default_factory=set)
    untouched: set[int] = field(default_factory=set)
    left: set[int] = field(default_factory=set)
    resent: bool = False
    retry_in: int = 0
    seconds: dict[int, float] = field(default_factory=dict)
    no_batch: bool = False  # the message names a batch that does not exist: deleted, and no stats kept for it

    @property
    def retry(self) -> bool:
        """Back to the queue: items attempted in this delivery that may still succeed, and nothing to re-send."""
        return bool(self.left) and not self.resent


class ItemTimeout(Exception):
    """An item was still running when the invocation had to stop; counted as one failed attempt."""


@dataclass
class ItemRuns:
    """What a TaskRunner did with one message's items.

    values: each finished item's result; errors: what each item raised (ItemTimeout for
    the one still running when the time was up); seconds: how long each item it started
    ran (for a timed-out one, until the caller gave up); untouched: items it never
    started, in order (no time for them, or an earlier item ended the run).
    """

    values: dict[int, Any] = field(default_factory=dict)
    errors: dict[int, BaseException] = field(default_factory=dict)
    seconds: dict[int, float] = field(default_factory=dict)
    untouched: list[int] = field(default_factory=list)


class _Handoff:
    """One message's items handed to a worker at once: the worker runs them, the caller waits once.

    Everything both sides touch is read and written under `lock`, so the caller giving
    up and the worker starting or finishing an item never overlap: once `abandoned` is
    set the worker starts nothing and drops what it was running; once `finished` is set
    the caller takes every result as it is.
    """

    __slots__ = ("task", "items", "options", "item_seconds", "deadline", "runs", "lock", "done",
                 "abandoned", "finished", "running", "started")

    def __init__(self, task: Task, items: Sequence[tuple[int, Any]], options: Any, item_seconds: float,
                 deadline: Deadline | None) -> None:
        self.task, self.items, self.options = task, items, options
        self.item_seconds, self.deadline = item_seconds, deadline  # no deadline: every item starts (TaskRunner.run)
        self.runs = ItemRuns()
        self.lock = threading.Lock()
        self.done = threading.Event()  # set once `finished` is
        self.abandoned = False  # the caller gave up: start nothing, record nothing
        self.finished = False  # the worker is through: its results are whole
        self.running: int | None = None  # the item started and not yet recorded
        self.started = 0.0  # when it started (time.perf_counter)

    def work(self) -> bool:
        """Run the items in order; False if the caller gave up first (what was running is left behind)."""
        runs, lock, task, options, deadline = self.runs, self.lock, self.task, self.options, self.deadline
        for index, item in self.items:
            with lock:
                if self.abandoned:
                    return False
                if deadline is not None and not deadline.allows(self.item_seconds):
                    break  # out of time: it and the rest stay untouched, keeping their attempts
                self.running, self.started = index, time.perf_counter()
                started = self.started
            try:
                value, error = task(item, options), None
            except BaseException as raised:  # handed to the caller, who decides
                value, error = None, raised
            seconds = time.perf_counter() - started
            with lock:
                if self.abandoned:
                    return False  # late: the caller counted it a timeout already
                self.running = None
                runs.seconds[index] = seconds
                if error is None:
                    runs.values[index] = value
                    continue
                runs.errors[index] = error
            if isinstance(error, ItemTimeout) or not isinstance(error, Exception):
                break  # out of time, or not a task's failure (KeyboardInterrupt...): start nothing more
        with lock:
            if self.abandoned:
                return False
            self.finished = True
        self.done.set()
        return True

    def give_up(self) -> bool:
        """The caller's time is up: False if the worker finished first (use its results), else True.

        The item still running, if any, gets ItemTimeout and the time it ran so far.
        """
        with self.lock:
            if self.finished:
                return False
            self.abandoned = True
            if self.running is not None:
                seconds = time.perf_counter() - self.started
                self.runs.seconds[self.running] = seconds
                self.runs.errors[self.running] = ItemTimeout(
                    f"still running after {seconds:.1f} s, when the invocation had to stop"
                )
            return True

    def result(self) -> ItemRuns:
        """What was run, with the untouched items filled in; raises a non-task error (KeyboardInterrupt...)."""
        runs = self.runs
        runs.untouched = [index for index, _ in self.items if index not in runs.seconds]
        for error in runs.errors.values():
            if not isinstance(error, Exception):
                raise error
        return runs


class TaskRunner:
    """Runs a message's task calls on a worker thread, so an item that overruns the deadline can be left behind.

    One handoff per message (`run_all`): the worker gets the message's pending items,
    checks the deadline before starting each, and reports every item's outcome and
    duration; the caller waits once, for the time the invocation has left. If the time
    runs out first, the item still running gets ItemTimeout and that worker is
    abandoned: it keeps running the call in the background (Python cannot stop a
    thread), starts nothing more, its late result is ignored, and it exits when the
    call returns; the next message gets a fresh worker. Tasks are already required to
    tolerate running more than once (README 'Adding a task'). Without a deadline
    (Deadline(None): tests, scripts) items run inline on the calling thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inbox: queue.SimpleQueue | None = None
        self.handoffs = 0  # messages (or single calls) handed to a worker thread

    def run_all(
        self, task: Task, items: Sequence[tuple[int, Any]], options: Any, item_seconds: float, deadline: Deadline
    ) -> ItemRuns:
        """Run `items` ((index, item), in order) while `deadline` allows each to start (invariant 9).

        The first item of an invocation always starts (Deadline.allows); an item that
        raises fails only itself; one still running when the time is up ends the run.
        """
        job = _Handoff(task, items, options, item_seconds, deadline)
        if not items:
            return job.result()
        timeout = deadline.seconds_left()
        if timeout is None:
            job.work()  # no limit: inline, on this thread
        elif timeout > 0:
            self._hand_off(job, timeout)
        # else: no time at all, nothing starts (Deadline.allows would refuse the first item too)
        return job.result()

    def run(self, task: Task, item: Any, options: Any, timeout: float | None) -> Any:
        """One call, bounded by `timeout` seconds (None: inline): its value; raises what it raised, or ItemTimeout."""
        if timeout is None:
            return task(item, options)
        job = _Handoff(task, ((0, item),), options, 0.0, None)
        self._hand_off(job, timeout)
        runs = job.result()
        if 0 in runs.values:
            return runs.values[0]
        if 0 in runs.errors:
            raise runs.errors[0]
        raise ItemTimeout(f"not started within {timeout:.1f} s, when the invocation had to stop")

    def _hand_off(self, job: _Handoff, timeout: float) -> None:
        """Give `job` to the worker and wait once; on time out, abandon the job and its worker."""
        self._worker().put(job)
        self.handoffs += 1
        if job.done.wait(timeout) or not job.give_up():
            return
        with self._lock:
            self._inbox = None  # that worker is busy for good: the next call starts another

    def _worker(self) -> queue.SimpleQueue:
        with self._lock:
            if self._inbox is None:
                self._inbox = queue.SimpleQueue()
                threading.Thread(target=_serve, args=(self._inbox,), name="batchdrain-task", daemon=True).start()
            return self._inbox


def _serve(inbox: queue.SimpleQueue) -> None:
    """A worker: runs handed-off jobs until one is abandoned, then exits (its runner has a new worker)."""
    while inbox.get().work():
        pass


_RUNNERS = threading.local()


def task_runner() -> TaskRunner:
    """The calling thread's TaskRunner.

    One per thread, because one invocation must never wait behind another's item: on
    AWS an environment runs one invocation at a time, but the local stack (and any
    caller that runs handlers on threads) runs several at once in one process.
    """
    runner = getattr(_RUNNERS, "runner", None)
    if runner is None:
        runner = _RUNNERS.runner = TaskRunner()
    return runner


def process_message(
    body: str | model.WorkMessage,
    store: BatchStore,
    settings: Settings,
    deadline: Deadline | None = None,
    runner: TaskRunner | None = None,
    retry_delay: int | None = None,
) -> ChunkOutcome:
    """Process one work message (its body, or the body parsed); raises BadMessageError / UnknownTaskError for bad input.

    `retry_delay`: RETRY_DELAY_SECONDS (read from the environment if not given).
    """
    runner = runner or task_runner()
    message = body if isinstance(body, model.WorkMessage) else model.parse_message(body)
    task = get_task(message.task)
    deadline = deadline or Deadline(None)
    row = store.get_chunk(message.batch_id, message.shard, message.chunk_no)
    if row is None:
        return ChunkOutcome(no_batch=not _log_missing_row(store, message))
    if row.get("attempt", 1) != message.attempt:
        # A message of an earlier attempt, late: the restored row has messages of its own.
        log.info("message of another attempt skipped", batch_id=message.batch_id, chunk=message.chunk_no,
                 attempt=message.attempt, row_attempt=row.get("attempt", 1))
        return ChunkOutcome()
    outcome = ChunkOutcome()
    todo = [(index, item) for index, item in message.items if index in row["pending"]]  # skip what is no longer pending
    runs = runner.run_all(task, todo, message.options, message.item_seconds, deadline)
    values = runs.values
    raised: dict[int, BaseException] = dict(runs.errors)  # a task's failure fails its item only; a timeout too
    outcome.done = set(values)
    outcome.untouched = set(runs.untouched)  # not started: they keep their attempts
    outcome.seconds = runs.seconds
    invalid = {index: error for index, error in message.bad if index in row["pending"]}
    if message.results and values:
        # Written before the row records them, so a finished item always has its result.
        refused, unwritable = results.save(message, {index: values[index] for index in outcome.done})
        for index, error in unwritable.items():
            outcome.done.discard(index)
            if isinstance(error, (results.ResultsUnwritable, results.ResultNotJson)):
                invalid[index] = str(error)  # no retry mends a missing bucket or a result that is not JSON
            else:
                raised[index] = error
        for index, why in refused.items():
            outcome.done.discard(index)
            invalid[index] = why
    errors: dict[int, str] = {}
    for index, error in raised.items():
        if isinstance(error, ItemTimeout):
            errors[index] = model.bounded_error(f"{type(error).__name__}: {error}")  # batchdrain's, not the task's
        elif is_permanent(message.task, error):
            invalid[index] = itemerrors.describe(error)  # fails now: one attempt, no retry
        else:
            errors[index] = itemerrors.describe(error)
    outcome.errors = errors
    recorded = store.record(
        message.batch_id,
        message.shard,
        message.chunk_no,
        ItemOutcome(
            done=frozenset(outcome.done),
            errors=errors,
            reason=_failure_reason(settings.item_max_attempts, bool(errors), bool(invalid)),
            invalid=invalid,
        ),
        max_attempts=settings.item_max_attempts,
        failed_at=model.iso(model.utc_now()),
        row=row,
        settle=results.settler(message.results, message.batch_id, message.attempt, message.shard, message.chunk_no),
    )
    if recorded is None:
        log.info(
            "chunk gone before its items were recorded (drained by a duplicate, or dead-lettered)",
            batch_id=message.batch_id,
            chunk=message.chunk_no,
            items=len(outcome.done),
        )
        return outcome
    outcome.failed = set(recorded.failed)
    outcome.left = set(recorded.pending)
    if outcome.failed:
        _log_failed_for_good(message, outcome.failed, {**errors, **invalid}, raised, row)
    if outcome.untouched & outcome.left:
        # Not started for lack of time: a fresh message, so no receive is spent on them.
        work.send_work([message.rest(outcome.left)], settings)
        outcome.resent = True
    if outcome.retry:
        retrying = sorted(set(errors) & outcome.left)
        # The items' own attempts (invariant 9) set the wait, never the message's receives.
        attempts = max((int(row["tries"].get(str(index), 0)) + 1 for index in retrying), default=1)
        base = retries.retry_delay_seconds() if retry_delay is None else retry_delay
        outcome.retry_in = retries.delay_for(attempts, base)
        log.warning(
            "items will be retried",
            **_items_of(message, retrying),
            attempts=attempts,
            retry_in=outcome.retry_in,
            error=errors[retrying[0]] if retrying else None,
        )
    return outcome


def _log_failed_for_good(
    message: model.WorkMessage,
    failed: set[int],
    texts: dict[int, str],
    raised: dict[int, BaseException],
    row: dict[str, Any],
) -> None:
    """One line per item this delivery failed for good, with its traceback; a bounded number, then one line for the rest."""
    ordered = sorted(failed)
    for index in ordered[:MAX_TRACEBACKS_LOGGED]:
        cause = raised.get(index)
        log.error(
            "item failed for good",
            batch_id=message.batch_id,
            chunk=message.chunk_no,
            item=index,
            attempts=int(row["tries"].get(str(index), 0)) + (1 if cause is not None else 0),
            error=texts.get(index, ""),
            traceback=itemerrors.traceback_text(cause, caller=__file__) if cause is not None else None,
        )
    rest = ordered[MAX_TRACEBACKS_LOGGED:]
    if rest:
        log.error("more items failed for good (their errors are in the batch's failures)", **_items_of(message, rest))


def _items_of(message: model.WorkMessage, indices: list[int]) -> dict[str, Any]:
    """A log line's fields naming some of a message's items: its batch and chunk, the first few indices, how many."""
    return {"batch_id": message.batch_id, "chunk": message.chunk_no, "items": indices[:MAX_INDICES_LOGGED], "count": len(indices)}


def _failure_reason(max_attempts: int, retried: bool, at_once: bool) -> str:
    """Why the items a record fails for good failed (a chunk keeps only its first errors; the rest show this)."""
    used_up = f"failed {max_attempts} attempts (ITEM_MAX_ATTEMPTS)"
    if at_once and not retried:
        return "failed at once: no retry can succeed"
    return f"{used_up}, or at once: no retry can succeed" if at_once else used_up


def _log_missing_row(store: BatchStore, message: model.WorkMessage) -> bool:
    """A message without a row is a no-op (invariant 1); say which kind, never drop it silently. Whether its batch exists."""
    if store.get_header(message.batch_id) is None:
        log.error("message for an unknown batch deleted", batch_id=message.batch_id, chunk=message.chunk_no)
        return False
    log.info("chunk already finished; duplicate delivery skipped", batch_id=message.batch_id, chunk=message.chunk_no)
    return True


@dataclass
class _Seen:
    """What one invocation saw of one batch: the counters it ADDs to the batch's stats row `slot` (chalicelib.itemstats)."""

    slot: int
    tally: dict[str, int] = field(default_factory=dict)
    busy: float = 0.0  # seconds on the batch's messages: the row read, the tasks, the writes
    delayed: bool = False  # a message of the batch went back with a retry delay (ChangeMessageVisibilityBatch)
    deleted: bool = False  # a message of the batch is done: Lambda deletes it (DeleteMessageBatch)
    unknown: bool = False  # no such batch (its header is not there): no stats row for it

    def add(self, record: dict[str, Any], outcome: ChunkOutcome | None, returned: bool, started: float) -> None:
        """One message: handled (a duplicate or a no-op too), given back, re-sent (`outcome` None: not started)."""
        counts: dict[str, int] = {"deliveries": 1, "body_bytes": len(record.get("body", "").encode()), "returned": int(returned)}
        if outcome is None:
            counts["resent"] = int(not returned)
        else:
            counts["resent"] = int(outcome.resent)
            counts["items_raised"] = len(set(outcome.seconds) - outcome.done)
            counts.update(itemstats.observe(outcome.seconds))
        itemstats.add(self.tally, counts)
        self.busy += time.perf_counter() - started
        self.delayed = self.delayed or (returned and outcome is not None and bool(record.get("receiptHandle")))
        self.deleted = self.deleted or not returned
        self.unknown = self.unknown or (outcome is not None and outcome.no_batch)

    def counts(self) -> dict[str, int]:
        return {**self.tally, "busy_ms": round(1000 * self.busy), "invocations": 1,
                "visibility_changes": int(self.delayed), "message_deletes": int(self.deleted)}


def handle_sqs_event(
    event: dict[str, Any], settings: Settings, context: Any = None, margin_ms: int = DEFAULT_SAFETY_MARGIN_MS
) -> dict[str, Any]:
    """The Lambda handler's work: the partial batch response for one SQS event.

    Messages returned because items raised are made visible again after their retry
    delay (chalicelib.retries); a message that failed as a whole (bad input, an AWS
    error) keeps the queue's visibility timeout. Each batch's stats get one ADD, after
    the messages' records and before the retry delays (see the module docstring).
    """
    store = BatchStore(settings.table_name)
    deadline = Deadline(context, margin_ms)
    retry_delay = retries.retry_delay_seconds()
    failures: list[dict[str, str]] = []
    delays: list[tuple[str, str, int]] = []
    not_started: list[model.Chunk] = []
    seen: dict[str, _Seen] = {}  # what this invocation saw of each batch, for its stats
    queue_name = settings.work_queue_name
    for record in event["Records"]:
        message_id = record["messageId"]
        queue_name = record.get("eventSourceARN", "").rpartition(":")[2] or queue_name
        started = time.perf_counter()
        message: model.WorkMessage | None = None
        outcome: ChunkOutcome | None = None
        try:
            message = model.parse_message(record["body"])
            if deadline.expired():
                # No time to read its row even: the same message again, fresh, costs no receive.
                not_started.append(message.rest(index for index, _ in message.items))
            else:
                outcome = process_message(message, store, settings, deadline, retry_delay=retry_delay)
        except Exception as error:
            # Retried until maxReceiveCount moves it to the dead-letter queue, whose
            # handler records it: never dropped. Bad input is expected; anything else
            # gets its traceback.
            expected = isinstance(error, BatchdrainError)
            log.error("message failed", exc_info=not expected, message_id=message_id, error=str(error))
            failures.append({"itemIdentifier": message_id})
            if message is not None:
                seen.setdefault(message.batch_id, _Seen(message.shard)).add(record, None, returned=True, started=started)
            continue
        seen.setdefault(message.batch_id, _Seen(message.shard)).add(record, outcome, returned=bool(outcome and outcome.retry),
                                                                    started=started)
        if outcome is not None and outcome.retry:
            failures.append({"itemIdentifier": message_id})
            if record.get("receiptHandle"):
                delays.append((message_id, record["receiptHandle"], outcome.retry_in))
    if not_started:
        work.send_work(not_started, settings)
    for batch_id, batch in seen.items():  # after the records: observations, never in the way of a message
        if not batch.unknown:
            store.note_stats(batch_id, batch.slot, batch.counts(), settings.row_ttl_days)
    if delays:
        # Last, just before Lambda reads the response: a message never shows again while this invocation still runs.
        retries.delay_messages(queue_name, delays)
    return {"batchItemFailures": failures}
