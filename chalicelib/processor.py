"""The processor: runs the task on each still-pending item of each work message.

At-least-once delivery is made exact here (invariants 5 and 9):

- items no longer pending are skipped; each item's result is recorded by one
  conditional write on its chunk row (`BatchStore.record`), so concurrent copies of
  one message cannot both take the same item;
- an item that raises, or is still running when the invocation's time runs low, has
  used one attempt of its own; after `ITEM_MAX_ATTEMPTS` it fails for good (F row),
  and the message goes back to the queue (`batchItemFailures`) only for items that
  were attempted and may still succeed;
- items this invocation never started (its time ran out first) are sent again in a
  fresh message and the old one is acknowledged: a message returned untouched would
  use up a receive, and receives are not attempts.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from chalicelib import aws, batcher, log, model, results
from chalicelib.config import PROCESSOR_SAFETY_MARGIN_SECONDS, Settings
from chalicelib.errors import BatchdrainError
from chalicelib.store import BatchStore, ItemOutcome
from chalicelib.tasks import Task, get_task

# What Lambda must have left when starting another item: enough for the row update
# and the response, so the function is never killed between a task and its checkpoint.
DEFAULT_SAFETY_MARGIN_MS = PROCESSOR_SAFETY_MARGIN_SECONDS * 1000
_ERROR_TEXT = 500


@dataclass
class ChunkOutcome:
    """What one message came to.

    done/errors: items finished and items that raised (or timed out) in this delivery;
    failed: items whose attempts ran out and failed for good in this delivery's write;
    untouched: pending items this delivery never started; recorded: whether the chunk
    row took this delivery's results (False if the row was gone).
    """

    skipped: bool = False
    done: set[int] = field(default_factory=set)
    errors: dict[int, str] = field(default_factory=dict)
    failed: set[int] = field(default_factory=set)
    untouched: set[int] = field(default_factory=set)
    left: set[int] = field(default_factory=set)
    recorded: bool = False
    resent: bool = False

    @property
    def interrupted(self) -> bool:
        return bool(self.untouched)

    @property
    def retry(self) -> bool:
        """Back to the queue: items attempted in this delivery that may still succeed, and nothing to re-send."""
        return bool(self.left) and not self.resent


class Deadline:
    """How much of the invocation is left, with the margin kept for recording results."""

    def __init__(self, context: Any, margin_ms: int = DEFAULT_SAFETY_MARGIN_MS) -> None:
        self._remaining = getattr(context, "get_remaining_time_in_millis", None)
        self.margin_ms = min(margin_ms, self._remaining() / 4) if self._remaining else 0
        self._started = False

    def seconds_left(self) -> float | None:
        """Seconds an item may still run; None without a context (no limit: tests, scripts)."""
        if self._remaining is None:
            return None
        return max(0.0, (self._remaining() - self.margin_ms) / 1000)

    def allows(self, item_seconds: float) -> bool:
        """Whether an item expected to take `item_seconds` may start now.

        The first item of an invocation starts whenever any time is left: a later
        invocation would have no more, and a message that never starts never ends.
        """
        left = self.seconds_left()
        if left is None:
            return True
        allowed = left > 0 and (left >= item_seconds or not self._started)
        self._started = self._started or allowed
        return allowed

    def expired(self) -> bool:
        """No time left at all (past the margin): not even a row can be read."""
        left = self.seconds_left()
        return left is not None and left <= 0


class ItemTimeout(Exception):
    """An item was still running when the invocation had to stop; counted as one failed attempt."""


class TaskRunner:
    """Runs task calls on a worker thread, so an item that overruns the deadline can be left behind.

    The abandoned call keeps running in the background (Python cannot stop a thread);
    its result is ignored and the item is retried like any failure. Tasks are already
    required to tolerate running more than once (README 'Adding a task').
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inbox: queue.Queue | None = None

    def run(self, task: Task, item: Any, options: Any, timeout: float | None) -> Any:
        """The task's return value (its result); raises what the task raised, or ItemTimeout."""
        if timeout is None:
            return task(item, options)
        inbox = self._worker()
        reply: queue.Queue = queue.Queue(maxsize=1)
        inbox.put((task, item, options, reply))
        try:
            error, value = reply.get(timeout=timeout)
        except queue.Empty:
            with self._lock:
                self._inbox = None  # that worker is busy for good: the next call starts another
            raise ItemTimeout(f"still running after {timeout:.1f} s, when the invocation had to stop") from None
        if error is not None:
            raise error
        return value

    def _worker(self) -> queue.Queue:
        with self._lock:
            if self._inbox is None:
                self._inbox = queue.Queue()
                threading.Thread(target=_serve, args=(self._inbox,), name="batchdrain-task", daemon=True).start()
            return self._inbox


def _serve(inbox: queue.Queue) -> None:
    while True:
        task, item, options, reply = inbox.get()
        try:
            value = task(item, options)
        except BaseException as error:  # handed to the caller, who decides
            reply.put((error, None))
        else:
            reply.put((None, value))


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
    body: str,
    store: BatchStore,
    settings: Settings,
    deadline: Deadline | None = None,
    runner: TaskRunner | None = None,
) -> ChunkOutcome:
    """Process one work message; raises BadMessageError / UnknownTaskError for bad input."""
    runner = runner or task_runner()
    message = model.parse_message(body)
    task = get_task(message.task)
    deadline = deadline or Deadline(None)
    row = store.get_chunk(message.batch_id, message.shard, message.chunk_no)
    if row is None:
        _log_missing_row(store, message)
        return ChunkOutcome(skipped=True)
    if row.get("attempt", 1) != message.attempt:
        # A message of an earlier attempt, late: the restored row has messages of its own.
        log.info("message of another attempt skipped", batch_id=message.batch_id, chunk=message.chunk_no,
                 attempt=message.attempt, row_attempt=row.get("attempt", 1))
        return ChunkOutcome(skipped=True)
    outcome = ChunkOutcome()
    raised: dict[int, BaseException] = {}
    values: dict[int, Any] = {}
    stopped = False  # out of time: start nothing more
    for index, item in message.items:
        if index not in row["pending"]:
            continue
        stopped = stopped or not deadline.allows(message.item_seconds)
        if stopped:
            outcome.untouched.add(index)  # not started: it keeps its attempts
            continue
        try:
            values[index] = runner.run(task, item, message.options, deadline.seconds_left())
        except ItemTimeout as error:
            raised[index] = error
            stopped = True
        except Exception as error:  # a task's failure fails its item only
            raised[index] = error
        else:
            outcome.done.add(index)
    invalid = {index: error for index, error in message.bad if index in row["pending"]}
    if message.results and values:
        # Written before the row records them, so a finished item always has its result.
        refused, unwritable = results.save(message, {index: values[index] for index in outcome.done})
        for index, error in unwritable.items():
            outcome.done.discard(index)
            if isinstance(error, results.ResultsUnwritable):
                invalid[index] = str(error)  # no retry mends a missing bucket: fail now, saying which
            else:
                raised[index] = error
        for index, why in refused.items():
            outcome.done.discard(index)
            invalid[index] = why
    errors = {index: f"{type(error).__name__}: {error}"[:_ERROR_TEXT] for index, error in raised.items()}
    outcome.errors = errors
    recorded = store.record(
        message.batch_id,
        message.shard,
        message.chunk_no,
        ItemOutcome(
            done=frozenset(outcome.done),
            errors=errors,
            reason=f"failed {settings.item_max_attempts} attempts (ITEM_MAX_ATTEMPTS)",
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
    outcome.recorded = recorded.wrote
    outcome.failed = set(recorded.failed)
    outcome.left = set(recorded.pending)
    if outcome.failed:
        log.warning("items failed for good", batch_id=message.batch_id, chunk=message.chunk_no, items=len(outcome.failed))
    if outcome.untouched & outcome.left:
        # Not started for lack of time: a fresh message, so no receive is spent on them.
        batcher.send_chunks(aws.client("sqs"), aws.queue_url(settings.work_queue_name), [message.rest(outcome.left)], settings.max_message_bytes)
        outcome.resent = True
    return outcome


def _log_missing_row(store: BatchStore, message: model.WorkMessage) -> None:
    """A message without a row is a no-op (invariant 1); say which kind, never drop it silently."""
    if store.get_header(message.batch_id) is None:
        log.error("message for an unknown batch deleted", batch_id=message.batch_id, chunk=message.chunk_no)
    else:
        log.info("chunk already finished; duplicate delivery skipped", batch_id=message.batch_id, chunk=message.chunk_no)


def handle_sqs_event(
    event: dict[str, Any], settings: Settings, context: Any = None, margin_ms: int = DEFAULT_SAFETY_MARGIN_MS
) -> dict[str, Any]:
    """The Lambda handler's work: the partial batch response for one SQS event."""
    store = BatchStore(settings.table_name)
    deadline = Deadline(context, margin_ms)
    failures: list[dict[str, str]] = []
    not_started: list[model.Chunk] = []
    for record in event["Records"]:
        message_id = record["messageId"]
        try:
            if deadline.expired():
                # No time to read its row even: the same message again, fresh, costs no receive.
                message = model.parse_message(record["body"])
                not_started.append(message.rest(index for index, _ in message.items))
                continue
            outcome = process_message(record["body"], store, settings, deadline)
        except Exception as error:
            # Retried until maxReceiveCount moves it to the dead-letter queue, whose
            # handler records it: never dropped. Bad input is expected; anything else
            # gets its traceback.
            expected = isinstance(error, BatchdrainError)
            log.error("message failed", exc_info=not expected, message_id=message_id, error=str(error))
            failures.append({"itemIdentifier": message_id})
            continue
        if outcome.retry:
            log.warning(
                "message returns to the queue",
                message_id=message_id,
                failed=len(outcome.errors),
                sample=next(iter(outcome.errors.values()), None),
            )
            failures.append({"itemIdentifier": message_id})
    if not_started:
        batcher.send_chunks(aws.client("sqs"), aws.queue_url(settings.work_queue_name), not_started, settings.max_message_bytes)
    return {"batchItemFailures": failures}
