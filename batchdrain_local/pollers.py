"""Event source pollers with Lambda's semantics, driving the app's real handlers.

SqsPoller is Lambda's SQS event source mapping: receive up to `batch_size` messages
within the batching window, invoke, delete what succeeded, leave the rest to come back
after the visibility timeout; `concurrency` pollers run at once (maximum concurrency).
Only a mapping with ReportBatchItemFailures reads the function's `batchItemFailures`;
without it a successful invocation deletes the whole batch, as on AWS.

StreamPoller is the DynamoDB Streams mapping: per shard, in order, batch size and
window, FilterCriteria applied before invoking, a failed batch bisected
(BisectBatchOnFunctionError) and retried (MaximumRetryAttempts) before the shard moves
on, and a batch given up reported to an on-failure destination.

Both take their settings from batchdrain_local.eventsources (infra/event-sources.json),
and ask a FaultInjector (if any) at the points where AWS's own pollers misbehave:
duplicate (one after the other, or at once) and undeleted SQS messages, redelivered
and concurrently handled stream batches.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from batchdrain_local import events
from batchdrain_local.eventsources import MappingSettings
from batchdrain_local.faults import FaultInjector
from batchdrain_local.filters import matching
from batchdrain_local.runtime import InvocationCrashed
from batchdrain_local.server import ACCOUNT_ID

Invoke = Callable[[str, Callable[[dict, Any], Any], dict], Any]


def _happens(faults: FaultInjector | None, fault: str, where: str | None = None) -> bool:
    return faults is not None and faults.chance(fault, where)


def _invoke_at_once(invoke: Invoke, name: str, handler: Callable[[dict, Any], Any], event: dict, copies: int) -> list[Any]:
    """Invoke once, or (fault injection) `copies` invocations of the same event started together.

    Used for stream batches (concurrent finalizers) and SQS batches (a concurrent duplicate
    delivery). Returns their results; raises the first error, as any failed copy fails the
    delivery (every message then comes back, the safe reading of it).
    """
    if copies == 1:
        return [invoke(name, handler, event)]
    start = threading.Barrier(copies)
    results: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        start.wait()
        try:
            results.append(invoke(name, handler, event))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(copies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def failed_message_ids(result: Any, message_ids: list[str]) -> set[str]:
    """Which messages go back to the queue, read the way Lambda reads a partial batch response.

    No response, or an empty/null batchItemFailures, is full success; a malformed
    response or an identifier not in the batch fails the whole batch.
    """
    if result is None or result == {}:
        return set()
    if not isinstance(result, dict):
        return set(message_ids)
    failures = result.get("batchItemFailures")
    if not failures:
        return set()
    failed = set()
    for failure in failures:
        identifier = failure.get("itemIdentifier") if isinstance(failure, dict) else None
        if not identifier or identifier not in message_ids:
            return set(message_ids)
        failed.add(identifier)
    return failed


class _Worker:
    """A named loop in a daemon thread that stops when asked."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, count: int = 1) -> None:
        for number in range(count):
            thread = threading.Thread(target=self._loop, name=f"{self.name}-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.poll_once()
            except Exception:  # the stack keeps running, as Lambda's pollers do
                if not self.stopping.is_set():
                    traceback.print_exc()
                    time.sleep(0.5)

    def poll_once(self) -> None:
        raise NotImplementedError


class SqsPoller(_Worker):
    """Lambda's SQS event source mapping for one queue and one handler.

    `settings.report_batch_item_failures` decides how a successful invocation's result is
    read. With it, messages named in `batchItemFailures` stay on the queue and come back
    after the visibility timeout. Without it, Lambda ignores the result and deletes every
    message of the batch: a handler's partial failures are lost, which is exactly what
    the setting exists to prevent. A raised error keeps every message, either way.
    """

    def __init__(
        self,
        sqs: Any,
        *,
        function_name: str,
        handler: Callable[[dict, Any], Any],
        invoke: Invoke,
        queue_url: str,
        queue_arn: str,
        region: str,
        batch_size: int,
        batching_window: float,
        settings: MappingSettings = MappingSettings(),
        faults: FaultInjector | None = None,
    ) -> None:
        super().__init__(function_name)
        self.faults = faults
        self.sqs = sqs
        self.handler = handler
        self.invoke = invoke
        self.queue_url = queue_url
        self.queue_arn = queue_arn
        self.region = region
        self.batch_size = batch_size
        self.batching_window = batching_window
        self.settings = settings
        self.failures_ignored = 0  # batchItemFailures dropped because the mapping does not report them

    def poll_once(self) -> None:
        messages = self._collect()
        if not messages:
            return
        event = events.sqs_event([events.sqs_record(message, self.queue_arn, self.region) for message in messages])
        message_ids = [message["MessageId"] for message in messages]
        try:
            # SQS delivers at least once: the same messages can reach two invocations at the
            # same time (two pollers received them), or arrive again after the first. On every
            # queue: work, planning (concurrent planners of one segment) and dead letters.
            copies = 2 if _happens(self.faults, "sqs_concurrent_duplicate", self.name) else 1
            results = _invoke_at_once(self.invoke, self.name, self.handler, event, copies)
            if _happens(self.faults, "sqs_duplicate", self.name):
                results.append(self.invoke(self.name, self.handler, event))
        except InvocationCrashed:
            return  # every message comes back after the visibility timeout
        except Exception:
            traceback.print_exc()
            return  # as above
        if _happens(self.faults, "sqs_lost_delete", self.name):
            return  # processed, never deleted (the poller died first): redelivered after the visibility timeout
        failed = set().union(*(failed_message_ids(result, message_ids) for result in results))
        if not self.settings.report_batch_item_failures:
            self.failures_ignored += len(failed)
            failed = set()
        done = [message for message in messages if message["MessageId"] not in failed]
        for start in range(0, len(done), 10):
            self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(number), "ReceiptHandle": message["ReceiptHandle"]}
                    for number, message in enumerate(done[start : start + 10])
                ],
            )

    def _collect(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.batching_window
        while len(messages) < self.batch_size and not self.stopping.is_set():
            response = self.sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(10, self.batch_size - len(messages)),
                WaitTimeSeconds=0 if messages else 1,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            received = response.get("Messages", [])
            messages.extend(received)
            if not received or time.monotonic() >= deadline:
                break
        return messages


@dataclass
class _Shard:
    """One stream shard's position: its iterator and the filtered records read but not yet settled."""

    shard_id: str
    iterator: str | None
    pending: list[dict[str, Any]] = field(default_factory=list)
    pending_since: float = 0.0


class StreamPoller(_Worker):
    """Lambda's DynamoDB Streams event source mapping: each shard in order, one batch at a time.

    With `settings` from infra/event-sources.json:

    - FilterCriteria: records matching no filter are dropped as they are read, so they
      never count toward a batch and never invoke; a read that keeps nothing still
      advances the shard (`records_filtered` counts them).
    - BisectBatchOnFunctionError: a batch of more than one record whose invocation raises
      is split in two and each half is run on its own, first half first, recursively
      down to single records. Splitting does not use up retries (AWS Lambda guide,
      "Retain discarded batch records for a DynamoDB event source").
    - MaximumRetryAttempts: a batch that cannot be split further (one record, or any
      batch without bisection) is retried that many times after its first failure; then
      its records are skipped and `on_failure` gets Lambda's on-failure invocation
      record (`events.stream_failure_record`). -1 retries forever, as Lambda's default.

    The shard never moves past a batch until it succeeded or was given up, so records
    of one shard reach the function in stream order. MaximumRecordAgeInSeconds is not
    emulated: a local stack's records are seconds old, far below the 86,400 s we set,
    so the age limit can never be what ends a retry loop here.
    """

    def __init__(
        self,
        streams: Any,
        *,
        function_name: str,
        handler: Callable[[dict, Any], Any],
        invoke: Invoke,
        stream_arn: str,
        region: str,
        batch_size: int,
        batching_window: float,
        starting_position: str = "TRIM_HORIZON",
        settings: MappingSettings = MappingSettings(),
        on_failure: Callable[[dict[str, Any]], None] | None = None,
        poll_interval: float = 0.05,
        retry_delay: float = 0.2,
        faults: FaultInjector | None = None,
    ) -> None:
        super().__init__(function_name)
        self.faults = faults
        self.streams = streams
        self.handler = handler
        self.invoke = invoke
        self.stream_arn = stream_arn
        self.region = region
        self.batch_size = batch_size
        self.batching_window = batching_window
        self.starting_position = starting_position
        self.settings = settings
        self.on_failure = on_failure
        self.poll_interval = poll_interval
        self.retry_delay = retry_delay
        self.function_arn = f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{function_name}"
        self._shards: dict[str, _Shard] = {}
        self.records_delivered = 0  # records in invocations that succeeded
        self.records_filtered = 0  # records dropped by FilterCriteria, never delivered
        self.records_given_up = 0  # records skipped after MaximumRetryAttempts
        self.batches_retried = 0  # failed invocations followed by a retry of the same batch
        self.batches_bisected = 0  # failed invocations followed by a split
        self.batches_given_up = 0  # batches whose records were skipped (one on-failure record each)

    def poll_once(self) -> None:
        if not self._shards:
            self._open_shards()
        read_any = False
        for shard in self._shards.values():
            read_any |= self._read(shard)
            window_over = shard.pending and time.monotonic() - shard.pending_since >= self.batching_window
            if len(shard.pending) >= self.batch_size or window_over:
                self._deliver(shard)
        if not read_any:
            time.sleep(self.poll_interval)

    def _open_shards(self) -> None:
        description = self.streams.describe_stream(StreamArn=self.stream_arn)["StreamDescription"]
        for shard in description["Shards"]:
            iterator = self.streams.get_shard_iterator(
                StreamArn=self.stream_arn, ShardId=shard["ShardId"], ShardIteratorType=self.starting_position
            )["ShardIterator"]
            self._shards[shard["ShardId"]] = _Shard(shard["ShardId"], iterator)

    def _read(self, shard: _Shard) -> bool:
        """Read the shard's next records into its pending batch; whether any record was read."""
        if shard.iterator is None or len(shard.pending) >= self.batch_size:
            return False
        response = self.streams.get_records(ShardIterator=shard.iterator, Limit=self.batch_size - len(shard.pending))
        shard.iterator = response.get("NextShardIterator")
        records = [events.stream_record(record, self.stream_arn, self.region) for record in response.get("Records", [])]
        kept = matching(records, self.settings.event_filter)
        self.records_filtered += len(records) - len(kept)
        if kept and not shard.pending:
            shard.pending_since = time.monotonic()
        shard.pending.extend(kept)
        return bool(records)

    def _deliver(self, shard: _Shard) -> None:
        batch = shard.pending[: self.batch_size]
        if not self._settle(shard.shard_id, batch, whole=True):
            return  # stopping: the batch stays pending, as a mapping being disabled keeps its position
        if _happens(self.faults, "stream_redelivery") and not self._settle(shard.shard_id, batch, whole=True):
            return  # the whole batch again, as after a poller restart from its last checkpoint
        shard.pending = shard.pending[len(batch) :]
        shard.pending_since = time.monotonic()

    def _settle(self, shard_id: str, batch: list[dict[str, Any]], whole: bool = False) -> bool:
        """Invoke until the batch succeeded, was split and its halves settled, or was given up.

        Returns False only when the poller is stopping before that.
        """
        failures = 0
        while not self.stopping.is_set():
            try:
                self._invoke_copies(events.stream_event(batch))
            except Exception as error:
                failures += 1
                if self.settings.bisect_batch_on_function_error and len(batch) > 1:
                    self._report(error, batch, "bisecting", first=whole and failures == 1)
                    self.batches_bisected += 1
                    middle = (len(batch) + 1) // 2
                    return self._settle(shard_id, batch[:middle]) and self._settle(shard_id, batch[middle:])
                retries = self.settings.maximum_retry_attempts
                if 0 <= retries < failures:
                    self._report(error, batch, f"giving up after {failures} attempts", first=False)
                    self._give_up(shard_id, batch, invoke_count=failures)
                    return True
                self._report(error, batch, f"retry {failures} of {'unlimited' if retries < 0 else retries}", first=whole and failures == 1)
                self.batches_retried += 1
                self.stopping.wait(self.retry_delay)  # the shard is blocked until the batch is settled
                continue
            self.records_delivered += len(batch)
            return True
        return False

    def _give_up(self, shard_id: str, batch: list[dict[str, Any]], invoke_count: int) -> None:
        self.batches_given_up += 1
        self.records_given_up += len(batch)
        if self.on_failure is not None:
            self.on_failure(
                events.stream_failure_record(
                    batch,
                    shard_id=shard_id,
                    stream_arn=self.stream_arn,
                    function_arn=self.function_arn,
                    invoke_count=invoke_count,
                )
            )

    def _report(self, error: BaseException, batch: list[dict[str, Any]], action: str, first: bool) -> None:
        """A traceback for a batch's first failure, one line for each repeat: readable test output."""
        if isinstance(error, InvocationCrashed):
            return  # injected: the run's fault counts report it
        if first:
            traceback.print_exception(error)
        print(f"{self.name}: stream batch of {len(batch)} records failed ({type(error).__name__}: {error}); {action}", file=sys.stderr)

    def _invoke_copies(self, event: dict[str, Any]) -> None:
        """Invoke once, or (fault injection) several invocations of the same batch at once."""
        copies = self.faults.copies() if self.faults is not None else 1
        _invoke_at_once(self.invoke, self.name, self.handler, event, copies)


class AlertInbox(_Worker):
    """Reads completion alerts from the SQS queue subscribed to the alert topic."""

    def __init__(self, sqs: Any, queue_url: str, on_alert: Callable[[dict[str, Any]], None]) -> None:
        super().__init__("alert-inbox")
        self.sqs = sqs
        self.queue_url = queue_url
        self.on_alert = on_alert

    def poll_once(self) -> None:
        response = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for message in response.get("Messages", []):
            self.on_alert(events.sns_envelope_to_alert(message["Body"]))
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
