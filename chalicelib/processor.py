"""The processor: runs the task on each still-pending item of each work message.

At-least-once delivery is made exact here (invariant 5): items no longer pending are
skipped, finished items leave the chunk row's pending set, the row is deleted when the
set empties, and a message with failed items goes back to the queue through
`batchItemFailures` (ReportBatchItemFailures), alone, not with its whole batch. A
failed item keeps its error and the row counts the attempt, so when the message is
finally dead-lettered the failure can be reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from chalicelib import log, model
from chalicelib.config import Settings
from chalicelib.errors import BatchdrainError
from chalicelib.store import BatchStore
from chalicelib.tasks import get_task

# What Lambda must have left when starting another item: enough for the row update
# and the response, so the function is never killed between a task and its checkpoint.
DEFAULT_SAFETY_MARGIN_MS = 5_000


@dataclass
class ChunkOutcome:
    """What one message came to: items finished, items that raised, whether time ran out,
    and whether the chunk row took the result (False if it was gone: see BatchStore.drain)."""

    skipped: bool = False
    done: set[int] = field(default_factory=set)
    errors: dict[int, str] = field(default_factory=dict)
    interrupted: bool = False
    recorded: bool = False

    @property
    def retry(self) -> bool:
        return bool(self.errors) or self.interrupted


def process_message(body: str, store: BatchStore, out_of_time: Callable[[], bool] = lambda: False) -> ChunkOutcome:
    """Process one work message; raises BadMessageError / UnknownTaskError for bad input."""
    message = model.parse_message(body)
    task = get_task(message.task)
    pending = store.get_pending(message.batch_id, message.shard, message.chunk_no)
    if pending is None:
        # Drained by an earlier delivery, or a message whose row was never written
        # (invariant 1): nothing to run, and nothing that could complete the batch.
        return ChunkOutcome(skipped=True)
    outcome = ChunkOutcome()
    for index, item in message.items:
        if index not in pending:
            continue
        if out_of_time():
            outcome.interrupted = True
            break
        try:
            task(item, message.options)
        except Exception as error:  # a task's failure fails its item only
            outcome.errors[index] = f"{type(error).__name__}: {error}"[:500]
        else:
            outcome.done.add(index)
    if outcome.done or outcome.errors:
        outcome.recorded = store.drain(
            message.batch_id, message.shard, message.chunk_no, outcome.done, pending, outcome.errors
        )
        if not outcome.recorded and outcome.done:
            log.info(
                "chunk gone before its items were recorded (drained by a duplicate, or dead-lettered)",
                batch_id=message.batch_id,
                chunk=message.chunk_no,
                items=len(outcome.done),
            )
    return outcome


def _deadline(context: Any, margin_ms: int) -> Callable[[], bool]:
    """True once less than the margin is left: at most `margin_ms`, at most a quarter of the start budget."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is None:
        return lambda: False
    margin = min(margin_ms, remaining() / 4)
    return lambda: remaining() < margin


def handle_sqs_event(
    event: dict[str, Any], settings: Settings, context: Any = None, margin_ms: int = DEFAULT_SAFETY_MARGIN_MS
) -> dict[str, Any]:
    """The Lambda handler's work: the partial batch response for one SQS event."""
    store = BatchStore(settings.table_name)
    out_of_time = _deadline(context, margin_ms)
    failures: list[dict[str, str]] = []
    for record in event["Records"]:
        message_id = record["messageId"]
        if out_of_time():
            failures.append({"itemIdentifier": message_id})  # not started: back to the queue untouched
            continue
        try:
            outcome = process_message(record["body"], store, out_of_time)
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
                interrupted=outcome.interrupted,
                sample=next(iter(outcome.errors.values()), None),
            )
            failures.append({"itemIdentifier": message_id})
    return {"batchItemFailures": failures}
