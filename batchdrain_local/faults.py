"""Fault injection for the local stack: seeded, switchable per run, at the points where AWS fails.

Each fault has a probability per opportunity. `FaultInjector.install()` patches the app's
own functions (the app runs in this process) and the pollers ask `chance(name)` at their
own fault points. A crash is `InjectedCrash`, a BaseException: it is not caught by the
handlers' `except Exception`, so it escapes the invocation exactly as a Lambda that dies
mid-way, and the event source mapping redelivers.

| fault | where | what AWS does that it imitates |
|---|---|---|
| sqs_duplicate | SQS poller | a batch of messages delivered twice, one invocation after the other (at-least-once) |
| sqs_concurrent_duplicate | SQS poller | a batch of messages delivered twice, to two invocations running at once |
| sqs_lost_delete | SQS poller | messages processed but not deleted: redelivered after the visibility timeout (also: crash after the row delete, before the message delete) |
| crash_before_row_update | processor | Lambda dies after running the tasks (and writing their results, for a definition with results), before the chunk row update; `details` says whether results were written |
| lost_delete_after_emptying | processor (any DeleteItem of a chunk row) | Lambda dies right after an update emptied a chunk row's pending set, before its DeleteItem: the row is left behind, empty |
| finalizer_crash_before_publish | finalizer | Lambda dies after winning completion, before publishing |
| sns_failure | alerts | SNS Publish fails |
| stream_redelivery | stream poller | a whole stream batch delivered again |
| concurrent_finalizers | stream poller | the same stream batch handled by two or three invocations at once |
| stream_replay | StreamReplay (beside the stream poller) | older records handed to the finalizer again: a window re-read from TRIM_HORIZON or from an earlier position (a mapping recreated, a poller restarted from an old checkpoint), every half second by chance |
| stream_replay_redrive | StreamReplay, as a redrive begins | right after a redrive's new attempt is CREATING, the batch's records of the earlier attempt (its segment `P#` REMOVEs, chunk REMOVEs, the seal MODIFY) re-read from the stream and handed to the finalizer again |
| sweep_concurrent | sweeper schedule | a second invocation of the same sweep runs at once (EventBridge delivers at least once; a timed-out sweep is retried while the next one runs) |
| sweep_stale_resume | sweeper, resuming a batch that is not planned | another sweep read the same header (not planned) and stalls; it resumes the batch with that header only once the first sweep's planners finished a segment (or the batch left CREATING) |
| batcher_crash_before_send | batcher | the batcher dies after writing its segment rows and marking the batch planned, before sending the planning messages |
| batcher_crash_before_planned | batcher | the batcher dies after writing its segment rows, before marking the batch planned: the sweeper resumes a batch whose segments exist but that is not planned |
| batcher_crash_before_seal | whoever seals: the finalizer or sweeper (after the last segment), a redrive | the process dies before sealing |
| planner_crash_before_checkpoint | planner | a planner dies after writing a group's chunk rows, before its checkpoint (the rows are written again, identical, by the planner that takes the segment after the lease) |
| planner_crash_before_send | planner | a planner dies after its checkpoint listed a group unsent, before sending its messages (the next planner sends them from the rows) |
| planner_crash_before_finish | planner | a planner dies after its segment's last message, before the transaction that deletes the segment row and adds its totals |
| redrive | chaos runner | a batch that ended COMPLETED_WITH_FAILURES is redriven as soon as its alert arrives |
| redrive_concurrent | chaos runner | ... and a second `restoring.restore_failures` runs beside the first, as a sweeper resuming it would |
| redrive_slow | chaos runner | ... and (independently) the redrive stalls before its first restore for longer than STUCK_CREATING_SECONDS, so the sweeper resumes it while it still runs |
| object_overwritten_before_redrive | chaos runner | ... and, for an object-source batch, its object is overwritten (same key, other lines) before the redrive: the rebuilt chunks must fail as changed, never run the new data |

The redrive faults are decided by the chaos runner (batchdrain_local.chaos), which asks
`chance` for them; they are listed here so a run's counts and `ensure_every_fault` cover them.
The stream replays need the stack's stream and finalizer: `StreamReplay.installed` (the
chaos runner calls it once the stack runs) installs them; `install()` does the rest.
The SQS faults strike every queue's poller (work, planning and dead-letter queue); `details`
counts them per function. A planner that dies keeps its segment's lease
(`chalicelib.planning.LEASE_SECONDS`, longer than a Lambda lives): the segment waits for it
to run out, then the sweeper re-sends it.

AWS telling the app to slow down (THROTTLE_FAULTS), at the app's own DynamoDB and SQS
requests, each on a request's first attempt only (its retry goes through):

| fault | where | what AWS does that it imitates |
|---|---|---|
| dynamodb_throttle | any DynamoDB write (BatchWriteItem, PutItem, UpdateItem, DeleteItem, TransactWriteItems) | HTTP 400 ProvisionedThroughputExceededException: botocore's standard retry mode backs off and retries |
| sqs_throttle | SendMessageBatch | HTTP 400 ThrottlingException, retried the same way |
| unprocessed_items | BatchWriteItem | the first half of the rows written, the rest returned as UnprocessedItems |
| send_batch_failures | SendMessageBatch | every entry but the last sent, the last reported in `Failed` (not a sender fault) |

They are not in FAULTS, so `make chaos` does not inject them (and a chaos run's figures
and seeded choices are unchanged): the local stack's tests do
(tests/integration/test_object_faults.py). Their hooks are installed only when one of
them has a rate.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

FAULTS = (
    "sqs_duplicate",
    "sqs_concurrent_duplicate",
    "sqs_lost_delete",
    "crash_before_row_update",
    "lost_delete_after_emptying",
    "finalizer_crash_before_publish",
    "sns_failure",
    "stream_redelivery",
    "concurrent_finalizers",
    "stream_replay",
    "stream_replay_redrive",
    "sweep_concurrent",
    "sweep_stale_resume",
    "batcher_crash_before_send",
    "batcher_crash_before_planned",
    "batcher_crash_before_seal",
    "planner_crash_before_checkpoint",
    "planner_crash_before_send",
    "planner_crash_before_finish",
    "redrive",
    "redrive_concurrent",
    "redrive_slow",
    "object_overwritten_before_redrive",
)

# The mix `make chaos` uses: every fault often enough to hit many batches of a run.
DEFAULT_RATES = {
    "sqs_duplicate": 0.10,
    "sqs_concurrent_duplicate": 0.10,
    "sqs_lost_delete": 0.05,
    "crash_before_row_update": 0.03,
    "lost_delete_after_emptying": 0.05,
    "finalizer_crash_before_publish": 0.05,
    "sns_failure": 0.05,
    "stream_redelivery": 0.10,
    "concurrent_finalizers": 0.10,
    # Per half second (a window of older records), and per redrive begun (the batch's earlier records).
    "stream_replay": 0.1,
    "stream_replay_redrive": 0.5,
    # Per sweep (one a second in a chaos run), and per sweeper resume of a batch not yet planned.
    "sweep_concurrent": 0.1,
    "sweep_stale_resume": 0.7,
    "batcher_crash_before_send": 0.02,
    # Per batch planned by the batcher; each strike stalls its batch for STUCK_CREATING_SECONDS.
    "batcher_crash_before_planned": 0.03,
    "batcher_crash_before_seal": 0.05,
    # Per planner group (checkpoint, send) or segment (finish); each strike stalls its batch for a lease.
    "planner_crash_before_checkpoint": 0.02,
    "planner_crash_before_send": 0.02,
    "planner_crash_before_finish": 0.02,
    # Per batch that ends COMPLETED_WITH_FAILURES; the other two per redrive.
    "redrive": 0.25,
    "redrive_concurrent": 0.5,
    "redrive_slow": 0.3,
    # Per redrive of an object-source batch.
    "object_overwritten_before_redrive": 0.5,
}


THROTTLE_FAULTS = (
    "dynamodb_throttle",
    "sqs_throttle",
    "unprocessed_items",
    "send_batch_failures",
)
_DYNAMODB_WRITES = ("BatchWriteItem", "PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems")


class InjectedCrash(BaseException):
    """The invocation dies here (not an Exception: nothing in the app may catch it)."""


class InjectedServiceError(Exception):
    """An AWS call failed (an Exception: the app is expected to handle it)."""


@dataclass
class FaultInjector:
    """Seeded fault decisions, and the patches that act on them."""

    seed: int
    rates: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_RATES))
    # How many finalizer invocations handle one stream batch when concurrent_finalizers strikes.
    finalizer_copies: tuple[int, ...] = (2, 3)
    # At most this many injections of a fault in the run (focused tests: "the batcher dies once").
    limits: dict[str, int] = field(default_factory=dict)
    # The first opportunity of every fault with a rate strikes (and of each place it strikes at,
    # where `chance` is told one), so a run exercises each one whatever its seed and thread
    # timing (make chaos); then the rates decide.
    ensure_every_fault: bool = False
    injected: Counter[str] = field(default_factory=Counter)
    # Which case a strike met, where one fault covers several ("lost_delete_after_emptying: emptied").
    details: Counter[str] = field(default_factory=Counter)
    # sweep_stale_resume: the longest the stalled sweep waits for the other one's planners to finish a segment.
    stale_resume_seconds: float = 10.0

    def __post_init__(self) -> None:
        known = (*FAULTS, *THROTTLE_FAULTS)
        unknown = (set(self.rates) | set(self.limits)) - set(known)
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))} (known: {', '.join(known)})")
        self._random = random.Random(self.seed)
        self._lock = threading.Lock()
        self._undo: list[Callable[[], None]] = []
        self._dynamodb: Any = None
        self._sqs: Any = None
        self._local = threading.local()  # per thread: the chunk whose results the processor just wrote
        self._copies: list[threading.Thread] = []  # second sweeps still running (joined at uninstall)

    def armed(self, fault: str) -> bool:
        """Whether `fault` has a rate. The faults added for issue 16 ask `chance` only then, so a
        run without them draws the same seeded sequence as before they existed."""
        return self.rates.get(fault, 0.0) > 0

    def note(self, key: str) -> None:
        """Count one case in `details`."""
        with self._lock:
            self.details[key] += 1

    def chance(self, fault: str, where: str | None = None) -> bool:
        """Whether `fault` happens at this opportunity (counted when it does; with `where`, also in `details`).

        `where` names the place among several a fault strikes (a queue's poller, a caller): with
        `ensure_every_fault`, the first opportunity at each place strikes too.
        """
        with self._lock:
            place = f"{fault}: {where}"
            first = (
                self.ensure_every_fault
                and self.rates.get(fault, 0.0) > 0
                and (not self.injected[fault] or (where is not None and not self.details[place]))
            )
            happens = first or self._random.random() < self.rates.get(fault, 0.0)
            happens = happens and self.injected[fault] < self.limits.get(fault, float("inf"))
            if happens:
                self.injected[fault] += 1
                if where is not None:
                    self.details[place] += 1
            return happens

    def copies(self) -> int:
        """How many finalizer invocations handle the next stream batch (1, or one of finalizer_copies)."""
        if not self.chance("concurrent_finalizers"):
            return 1
        with self._lock:
            return self._random.choice(self.finalizer_copies)

    # -- patches on the app's code ---------------------------------------------------

    def install(self) -> None:
        from chalicelib import alerts, aws, planning, results, sweeper, work
        from chalicelib.store import BatchStore

        def crash_before(fault: str, real: Callable[..., Any]) -> Callable[..., Any]:
            """Crash before `real` runs."""

            def patched(*args: Any, **kwargs: Any) -> Any:
                if self.chance(fault):
                    raise InjectedCrash(fault)
                return real(*args, **kwargs)

            return patched

        def crash_before_by_caller(faults: dict[str, str], real: Callable[..., Any], where: bool = False) -> Any:
            """Crash before `real` runs with the fault named for its caller: "module.function" first, then "module".

            With `where`, a strike is also counted in `details` under the caller it matched.
            """

            def patched(*args: Any, **kwargs: Any) -> Any:
                module, function = _caller()
                caller = f"{module}.{function}" if f"{module}.{function}" in faults else module
                fault = faults.get(caller)
                if fault is not None and self.chance(fault, f"from {caller}" if where else None):
                    raise InjectedCrash(fault)
                return real(*args, **kwargs)

            return patched

        def failing_publish(real: Callable[..., Any]) -> Callable[..., Any]:
            def patched(*args: Any, **kwargs: Any) -> Any:
                if self.chance("sns_failure"):
                    raise InjectedServiceError("SNS Publish failed (injected)")
                return real(*args, **kwargs)

            return patched

        # The processor's one row update, `record` (the dead-letter handler and the sweeper call it too;
        # only the processor's call counts).
        self._patch(BatchStore, "record", self._crash_before_row_update(BatchStore.record))
        # Which chunk's results the processor wrote last, in this thread: a row update of that chunk
        # struck by crash_before_row_update leaves result lines its items may never be counted for.
        self._patch(results, "save", self._noting_results(results.save))
        # Whoever seals: the finalizer or the sweeper after the last segment (chalicelib.planning.seal_when_planned),
        # and a redrive. `details` says which.
        sealers = ("chalicelib.restoring", "chalicelib.planning")
        seal = crash_before_by_caller(dict.fromkeys(sealers, "batcher_crash_before_seal"), BatchStore.seal, where=True)
        self._patch(BatchStore, "seal", seal)
        # A planner's sends of a group; re-sends of a listed group from its rows (send_listed, for a planner or
        # a redrive resuming) and of lost messages (resend_rows, the sweeper); the processor, the dead-letter
        # handler and a redrive's first sends are not struck.
        senders = {
            "chalicelib.planner": "planner_crash_before_send",
            "chalicelib.work.send_listed": "batcher_crash_before_send",
            "chalicelib.work.resend_rows": "batcher_crash_before_send",
        }
        self._patch(work, "send_work", crash_before_by_caller(senders, work.send_work))
        # The batcher: segment rows written and the batch marked planned, its planning
        # messages not sent yet (also a sweeper resuming it; a planner re-queueing its segment is not struck).
        planning_batcher = {"chalicelib.planning._write_segments": "batcher_crash_before_send"}
        self._patch(work, "send_segments", crash_before_by_caller(planning_batcher, work.send_segments, where=True))
        # A planner's own steps (only the planner checkpoints and finishes segments).
        for name, fault in (("checkpoint_segment", "planner_crash_before_checkpoint"), ("finish_segment", "planner_crash_before_finish")):
            self._patch(BatchStore, name, crash_before(fault, getattr(BatchStore, name)))
        self._patch(alerts, "notify", crash_before("finalizer_crash_before_publish", alerts.notify))
        self._install_planning_and_sweeps(planning, sweeper, BatchStore)
        self._patch(alerts, "publish", failing_publish(alerts.publish))
        # At the DeleteItem request itself, so it holds whichever store method deletes chunk rows
        # (BatchStore._delete_chunk before the per-item attempts rewrite, BatchStore._apply since).
        events = aws.client("dynamodb").meta.events
        events.register("before-parameter-build.dynamodb.DeleteItem", self._lost_delete_after_emptying, unique_id=_HOOK_ID)
        self._undo.append(lambda: events.unregister("before-parameter-build.dynamodb.DeleteItem", unique_id=_HOOK_ID))
        # Only with a rate: every `chance` draws from the seeded sequence, which chaos runs replay.
        if any(self.rates.get(fault, 0.0) > 0 for fault in THROTTLE_FAULTS):
            self._install_throttles(aws)

    def _crash_before_row_update(self, real: Callable[..., Any]) -> Callable[..., Any]:
        """crash_before_row_update, at the processor's row update only; `details` says whether the
        delivery had written its items' results first (a definition with results)."""

        def patched(store: Any, batch_id: str, shard: int, chunk_no: int, *args: Any, **kwargs: Any) -> Any:
            saved, self._local.saved = getattr(self._local, "saved", None), None
            if _caller_module() == "chalicelib.processor":
                written = saved == (batch_id, int(shard), int(chunk_no))
                where = "after its results were written" if written else "no results written"
                if self.chance("crash_before_row_update", where):
                    raise InjectedCrash("crash_before_row_update")
            return real(store, batch_id, shard, chunk_no, *args, **kwargs)

        return patched

    def _noting_results(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def patched(message: Any, *args: Any, **kwargs: Any) -> Any:
            self._local.saved = None
            written = real(message, *args, **kwargs)
            self._local.saved = (message.batch_id, int(message.shard), int(message.chunk_no))
            return written

        return patched

    def _install_planning_and_sweeps(self, planning: Any, sweeper: Any, store_class: Any) -> None:
        """batcher_crash_before_planned, sweep_concurrent and sweep_stale_resume (issue 16, defect 2).

        Each only with a rate: see `armed`.
        """
        if self.armed("batcher_crash_before_planned"):
            real_mark_planned = store_class.mark_planned

            def mark_planned(*args: Any, **kwargs: Any) -> Any:
                # The batcher's plan (planning.plan_batch -> _write_segments), never a sweeper resuming it.
                if _caller(1) == ("chalicelib.planning", "plan_batch") and self.chance("batcher_crash_before_planned"):
                    raise InjectedCrash("batcher_crash_before_planned")
                return real_mark_planned(*args, **kwargs)

            self._patch(store_class, "mark_planned", mark_planned)
        if self.armed("sweep_concurrent"):
            real_sweep = sweeper.sweep

            def sweep(*args: Any, **kwargs: Any) -> Any:
                if self.chance("sweep_concurrent"):
                    self._beside("sweep_concurrent: second sweep", lambda: real_sweep(*args, **kwargs))
                return real_sweep(*args, **kwargs)

            self._patch(sweeper, "sweep", sweep)
        if self.armed("sweep_stale_resume"):
            real_resume = planning.resume

            def resume(store: Any, header: Any, settings: Any, *args: Any, **kwargs: Any) -> Any:
                stale = dict(header)
                if not stale.get("planned") and _caller_module() == "chalicelib.sweeper" and self.chance("sweep_stale_resume"):

                    def late() -> Any:
                        self.note(f"sweep_stale_resume: resumed {self._wait_for_planning(store.table_name, stale)}")
                        return real_resume(store, stale, settings, *args, **kwargs)

                    self._beside("sweep_stale_resume: stale sweep", late)
                return real_resume(store, header, settings, *args, **kwargs)

            self._patch(planning, "resume", resume)

    def _beside(self, what: str, call: Callable[[], Any]) -> None:
        """Run `call` in a thread of its own (another invocation), counting how it ended in `details`."""

        def run() -> None:
            try:
                call()
                self.note(f"{what} ran")
            except InjectedCrash:
                self.note(f"{what} crashed (an injected fault)")
            except Exception:  # the product's error: shown, and counted
                traceback.print_exc()
                self.note(f"{what} raised")

        thread = threading.Thread(target=run, name=what.replace(" ", "-"), daemon=True)
        with self._lock:
            self._copies = [copy for copy in self._copies if copy.is_alive()] + [thread]
        thread.start()

    def _wait_for_planning(self, table_name: str, header: Mapping[str, Any]) -> str:
        """Until a segment of the batch is finished (its row gone), or the batch left CREATING, at most
        `stale_resume_seconds`; what happened first."""
        from chalicelib import model

        batch_id, segments = header["batch_id"], int(header.get("segments", 0))
        deadline = time.monotonic() + self.stale_resume_seconds
        dynamodb = self._own_dynamodb()
        while time.monotonic() < deadline:
            now = dynamodb.get_item(TableName=table_name, Key={"pk": {"S": f"B#{batch_id}"}, "sk": {"S": model.HEADER_SK}},
                                    ConsistentRead=True).get("Item", {})
            if (now.get("status") or {}).get("S") != model.CREATING or (now.get("attempt") or {}).get("N") != str(header["attempt"]):
                return "after the batch left CREATING"
            left = dynamodb.query(
                TableName=table_name,
                KeyConditionExpression="pk = :pk AND begins_with(sk, :segment)",
                ExpressionAttributeValues={":pk": {"S": f"B#{batch_id}"}, ":segment": {"S": model.SEGMENT_PREFIX}},
                Select="COUNT",
                ConsistentRead=True,
            )["Count"]
            if left < segments:
                return "after a segment finished"
            time.sleep(0.02)
        return "after the wait ran out"

    def _install_throttles(self, aws: Any) -> None:
        """before-send hooks on the app's own clients: an answer returned there is the response
        botocore parses (and retries on), and the request never reaches the server."""
        hooks = [(aws.client("dynamodb").meta.events, f"before-send.dynamodb.{name}", self._dynamodb_request) for name in _DYNAMODB_WRITES]
        hooks.append((aws.client("sqs").meta.events, "before-send.sqs.SendMessageBatch", self._sqs_request))
        for events, event_name, handler in hooks:
            unique_id = f"{_THROTTLE_HOOK_ID}-{event_name}"
            events.register(event_name, handler, unique_id=unique_id)
            self._undo.append(lambda events=events, event_name=event_name, unique_id=unique_id: events.unregister(event_name, unique_id=unique_id))

    def _dynamodb_request(self, request: Any, event_name: str, **_: Any) -> Any:
        if not _first_attempt(request):
            return None
        if event_name.endswith(".BatchWriteItem") and self.chance("unprocessed_items"):
            body = json.loads(request.body)
            ((table, writes),) = body["RequestItems"].items()
            taken, left = writes[: len(writes) // 2], writes[len(writes) // 2 :]
            if taken:
                self._own("dynamodb").batch_write_item(RequestItems={table: taken})
            return _json_response(request, 200, {"UnprocessedItems": {table: left}})
        if self.chance("dynamodb_throttle"):
            error = "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException"
            return _json_response(request, 400, {"__type": error, "message": "Rate of requests exceeds the allowed throughput (injected)"})
        return None

    def _sqs_request(self, request: Any, **_: Any) -> Any:
        if not _first_attempt(request):
            return None
        if self.chance("sqs_throttle"):
            return _json_response(request, 400, {"__type": "com.amazonaws.sqs#ThrottlingException", "message": "Rate exceeded (injected)"})
        if self.chance("send_batch_failures"):
            body = json.loads(request.body)
            sent, failed = body["Entries"][:-1], body["Entries"][-1:]
            successful = self._own("sqs").send_message_batch(QueueUrl=body["QueueUrl"], Entries=sent)["Successful"] if sent else []
            failures = [{"Id": entry["Id"], "SenderFault": False, "Code": "InternalError", "Message": "injected"} for entry in failed]
            return _json_response(request, 200, {"Successful": successful, "Failed": failures})
        return None

    def _own(self, service: str) -> Any:
        """The injector's own client of `service` (its requests are not the app's, and pass no hook)."""
        if service == "dynamodb":
            return self._own_dynamodb()
        with self._lock:
            if self._sqs is None:
                import boto3

                self._sqs = boto3.session.Session().client("sqs")
            return self._sqs

    def _lost_delete_after_emptying(self, params: dict[str, Any], **_: Any) -> None:
        """A chunk row's DeleteItem: maybe leave the row behind with its pending set emptied, and die.

        That is what a crash between "the update that emptied the set" and "the delete"
        leaves. Code that deletes in one step never makes that state itself, so it is made
        here: REMOVE pending, under the delete's own condition (if that fails, the delete
        would have failed too, and nothing is injected).
        """
        from chalicelib import model

        key = params.get("Key") or {}
        if not (key.get("sk") or {}).get("S", "").startswith(model.CHUNK_PREFIX):
            return
        if not self.chance("lost_delete_after_emptying"):
            return
        condition = "attribute_exists(pk)"  # an UpdateItem would create a missing row; a DeleteItem never does
        if params.get("ConditionExpression"):
            condition += f" AND ({params['ConditionExpression']})"
        update: dict[str, Any] = {
            "TableName": params["TableName"],
            "Key": key,
            "UpdateExpression": "REMOVE pending",
            "ConditionExpression": condition,
            "ReturnValues": "ALL_OLD",
        }
        for name in ("ExpressionAttributeValues", "ExpressionAttributeNames"):
            if name in params:
                update[name] = params[name]
        try:
            old = self._own_dynamodb().update_item(**update).get("Attributes", {})
        except Exception as error:  # noqa: BLE001 - the delete's condition failed: its own call reports that
            with self._lock:
                self.injected["lost_delete_after_emptying"] -= 1
                if not self.injected["lost_delete_after_emptying"]:
                    del self.injected["lost_delete_after_emptying"]
                self.details[f"lost_delete_after_emptying: not injected ({type(error).__name__})"] += 1
            return
        case = "after an emptying update" if "pending" not in old else "row emptied by the fault"
        with self._lock:
            self.details[f"lost_delete_after_emptying: {case}"] += 1
        raise InjectedCrash("lost_delete_after_emptying")

    def _own_dynamodb(self) -> Any:
        """A DynamoDB client of the injector's own (its requests are not the app's, and pass no hook)."""
        with self._lock:
            if self._dynamodb is None:
                import boto3

                self._dynamodb = boto3.session.Session().client("dynamodb")
            return self._dynamodb

    def _patch(self, owner: Any, name: str, replacement: Any) -> None:
        """Replace `owner.name` until `uninstall`: a module's function, or a method (maybe inherited) of a class."""
        if name in owner.__dict__:
            original = owner.__dict__[name]
            self._undo.append(lambda: setattr(owner, name, original))
        else:  # inherited: removing the replacement shows the base class's method again
            self._undo.append(lambda: delattr(owner, name))
        setattr(owner, name, replacement)

    def uninstall(self) -> None:
        with self._lock:
            copies, self._copies = self._copies, []
        for copy in copies:
            copy.join(timeout=self.stale_resume_seconds + 10)
        while self._undo:
            self._undo.pop()()
        self._dynamodb = self._sqs = None  # the next stack has another endpoint



class StreamReplay:
    """stream_replay and stream_replay_redrive: stream records the finalizer already had, handed to it again.

    A stream keeps its records for 24 hours, and a mapping recreated at TRIM_HORIZON, or a
    poller restarted from an old checkpoint, delivers them all again, days or seconds later
    (README: the finalizer is idempotent, so that is harmless). The records are re-read
    from the stream itself (GetShardIterator AT_SEQUENCE_NUMBER, GetRecords), shaped and
    filtered exactly as the mapping delivers them (events.stream_record, its
    FilterCriteria), and handed to the finalizer's handler through the stack's invoker.
    Which positions exist is learnt from what the mapping delivered (`note`).

    - stream_replay: every `tick` seconds, by chance, one batch of records (the mapping's
      batch size, of those its filter keeps, within `reads` GetRecords) from an earlier
      position: TRIM_HORIZON, or a record delivered before. In a thread of its own, beside
      the mapping's poller.
    - stream_replay_redrive: as a redrive's new attempt is CREATING (right after
      `BatchStore.begin_redrive`, before its first restore), the batch's records of the
      earlier attempt: its segment REMOVEs, chunk REMOVEs (at most `chunk_records` of
      them) and the seal MODIFY, in stream order.

    A replayed batch that fails is delivered again, up to `retries` times, as the mapping
    would; `details` counts what was replayed and how it ended.

        with StreamReplay.for_stack(stack, injector, seed).installed():
            ...
    """

    def __init__(
        self,
        injector: FaultInjector,
        streams: Any,
        stream_arn: str,
        deliver: Callable[[dict[str, Any]], Any],
        *,
        region: str,
        event_filter: Any = None,
        batch_size: int = 100,
        seed: int = 0,
        tick: float = 0.5,
        chunk_records: int = 8,
        retries: int = 3,
        reads: int = 10,
    ) -> None:
        self.injector = injector
        self.streams = streams
        self.stream_arn = stream_arn
        self.deliver = deliver
        self.region = region
        self.event_filter = event_filter
        self.batch_size = batch_size
        self.tick = tick
        self.chunk_records = chunk_records
        self.retries = retries
        self.reads = reads  # GetRecords calls at most per replayed batch
        self.replayed = 0  # records handed to the finalizer again
        self._random = random.Random(f"{seed}/stream_replay")
        self._lock = threading.Lock()
        self._positions: list[int] = []  # sequence numbers of every record the mapping delivered
        self._by_batch: dict[str, dict[int, str]] = {}  # batch id -> sequence number -> what the record is
        self._shards: list[tuple[int, str]] | None = None
        self._poller: Any = None  # the mapping's poller whose deliveries are noted (for_stack)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_stack(cls, stack: Any, injector: FaultInjector, seed: int = 0, **options: Any) -> "StreamReplay":
        """The replay of a running LocalStack's table stream, into its finalizer (the stream mapping's function)."""
        from batchdrain_local.pollers import StreamPoller

        (poller,) = [poller for poller in stack.pollers.values() if isinstance(poller, StreamPoller)]
        invoke, name, handler = poller.invoke, poller.name, poller.handler
        replay = cls(
            injector,
            stack.client("dynamodbstreams"),
            poller.stream_arn,
            lambda event: invoke(name, handler, event),
            region=poller.region,
            event_filter=poller.settings.event_filter,
            batch_size=poller.batch_size,
            seed=seed,
            **options,
        )
        replay._poller = poller
        return replay

    @contextlib.contextmanager
    def installed(self) -> Iterator["StreamReplay"]:
        """Learn from the mapping's deliveries, replay beside it, and after every redrive begins."""
        from chalicelib.store import BatchStore

        poller = self._poller
        undo: list[Callable[[], None]] = []
        if poller is not None:
            invoke = poller.invoke

            def noting(name: str, handler: Any, event: dict[str, Any]) -> Any:
                self.note(event)
                return invoke(name, handler, event)

            poller.invoke = noting
            undo.append(lambda: setattr(poller, "invoke", invoke))
        if self.injector.armed("stream_replay_redrive"):
            begin = BatchStore.begin_redrive

            def begin_redrive(store: Any, batch_id: str, *args: Any, **kwargs: Any) -> Any:
                started = begin(store, batch_id, *args, **kwargs)
                if started is not None and self.injector.chance("stream_replay_redrive"):
                    self.replay_batch(batch_id)
                    # CREATING: the replay changed nothing. Later states are either a second continuation beside
                    # this one (redrive_concurrent) finishing a small batch meanwhile, or issue 16's defect 1
                    # (the figures tell which: a redrive sealed early reports items it never re-ran).
                    after = store.get_header(batch_id) or {}
                    self.injector.note(f"stream_replay_redrive: the new attempt {after.get('status')} after the replay")
                return started

            BatchStore.begin_redrive = begin_redrive
            undo.append(lambda: delattr(BatchStore, "begin_redrive"))  # the headers store's own again
        if self.injector.armed("stream_replay"):
            self._thread = threading.Thread(target=self._loop, name="stream-replay", daemon=True)
            self._thread.start()
        try:
            yield self
        finally:
            self._stopping.set()
            if self._thread is not None:
                self._thread.join(timeout=30)
            while undo:
                undo.pop()()

    def note(self, event: Mapping[str, Any]) -> None:
        """Remember where the records of a delivered stream batch are, by batch."""
        from chalicelib import model

        with self._lock:
            for record in event.get("Records", ()):
                change = record.get("dynamodb") or {}
                sequence = int(change.get("SequenceNumber", -1))
                if sequence < 0:
                    continue
                keys = change.get("Keys") or {}
                ref = model.parse_key((keys.get("pk") or {}).get("S", ""), (keys.get("sk") or {}).get("S", ""))
                if ref is None:
                    continue
                known = self._by_batch.setdefault(ref.batch_id, {})
                if sequence in known:
                    continue  # delivered again (a retry, a duplicate, a replay)
                known[sequence] = (
                    "segment REMOVE" if ref.segment is not None else "chunk REMOVE" if ref.shard is not None else "seal MODIFY"
                )
                self._positions.append(sequence)

    def replay_window(self) -> int:
        """One batch of older records (from TRIM_HORIZON or a position delivered before) handed to the finalizer;
        how many records it held (0: nothing to replay yet, and nothing asked)."""
        with self._lock:
            if not self._positions:
                return 0
            from_start = self._random.random() < 0.1
            position = None if from_start else self._random.choice(self._positions)
        where = "from TRIM_HORIZON" if from_start else "from an earlier position"
        if not self.injector.chance("stream_replay", where):
            return 0
        records = self._read(position, self.batch_size)
        delivered = self._deliver(records, "stream_replay")
        self.injector.note(f"stream_replay: records replayed {where}" if delivered else f"stream_replay: nothing matched {where}")
        return delivered

    def replay_batch(self, batch_id: str) -> int:
        """The batch's records delivered so far (segment and chunk REMOVEs, its seal) handed to the finalizer again."""
        with self._lock:
            known = dict(self._by_batch.get(batch_id, {}))
            chunks = sorted(sequence for sequence, kind in known.items() if kind == "chunk REMOVE")
            keep = set(self._random.sample(chunks, min(len(chunks), self.chunk_records)))
        wanted = sorted(sequence for sequence, kind in known.items() if kind != "chunk REMOVE" or sequence in keep)
        records = [record for sequence in wanted for record in self._read(sequence, 1)]
        for kind in sorted({known[sequence] for sequence in wanted}):
            self.injector.note(f"stream_replay_redrive: {kind}s replayed")
        if not records:
            self.injector.note("stream_replay_redrive: no records of the batch known")
        return self._deliver(records, "stream_replay_redrive")

    def _loop(self) -> None:
        while not self._stopping.wait(self.tick):
            try:
                self.replay_window()
            except Exception:  # the run goes on, as the mapping's poller does
                traceback.print_exc()

    def _read(self, sequence: int | None, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` records from `sequence` on (None: TRIM_HORIZON), shaped and filtered as the mapping delivers them."""
        from batchdrain_local import events
        from batchdrain_local.filters import matching

        shard_id, first = self._shard_of(sequence)
        position = {"ShardIteratorType": "TRIM_HORIZON"}
        if sequence is not None:
            position = {"ShardIteratorType": "AT_SEQUENCE_NUMBER", "SequenceNumber": str(max(sequence, first))}
        iterator = self.streams.get_shard_iterator(StreamArn=self.stream_arn, ShardId=shard_id, **position)["ShardIterator"]
        kept: list[dict[str, Any]] = []
        # As the mapping does, records its filter drops do not count: read on (a few reads at most)
        # until the batch is full or the shard has no more.
        for _ in range(self.reads):
            response = self.streams.get_records(ShardIterator=iterator, Limit=limit)
            raw = response.get("Records", [])
            kept += matching([events.stream_record(record, self.stream_arn, self.region) for record in raw], self.event_filter)
            iterator = response.get("NextShardIterator")
            if len(kept) >= limit or not raw or not iterator:
                break
        return kept[:limit]

    def _shard_of(self, sequence: int | None) -> tuple[str, int]:
        """The shard holding `sequence` (None: the first), and its first sequence number."""
        if self._shards is None:
            shards = self.streams.describe_stream(StreamArn=self.stream_arn)["StreamDescription"]["Shards"]
            self._shards = sorted((int(shard["SequenceNumberRange"]["StartingSequenceNumber"]), shard["ShardId"]) for shard in shards)
        holding = [(first, shard_id) for first, shard_id in self._shards if sequence is None or first <= sequence]
        first, shard_id = holding[-1] if sequence is not None else holding[0]
        return shard_id, first

    def _deliver(self, records: list[dict[str, Any]], fault: str) -> int:
        """Hand `records` to the finalizer in batches of the mapping's size, each retried as the mapping would."""
        from batchdrain_local import events

        for start in range(0, len(records), self.batch_size):
            batch = records[start : start + self.batch_size]
            for attempt in range(self.retries + 1):
                try:
                    self.deliver(events.stream_event(batch))
                    break
                except Exception as error:  # noqa: BLE001 - an injected crash, or the product's error
                    crashed = type(error).__name__ == "InvocationCrashed"
                    if not crashed:
                        traceback.print_exception(error)
                    self.injector.note(f"{fault}: invocation {'crashed (an injected fault)' if crashed else 'raised'}")
                    if attempt == self.retries:
                        self.injector.note(f"{fault}: given up after {attempt + 1} invocations")
        with self._lock:
            self.replayed += len(records)
        return len(records)


_HOOK_ID = "batchdrain-fault-lost-delete-after-emptying"
_THROTTLE_HOOK_ID = "batchdrain-fault-throttle"


class _Body(io.BytesIO):
    """What botocore reads a response body from (urllib3's stream())."""

    def stream(self, **_: Any) -> Any:
        yield self.read()


def _json_response(request: Any, status: int, body: dict[str, Any]) -> Any:
    """An AWS JSON-protocol response to `request` (DynamoDB and SQS both speak it)."""
    from botocore.awsrequest import AWSResponse

    headers = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-RequestId": "injected"}
    return AWSResponse(request.url, status, headers, _Body(json.dumps(body).encode()))


def _first_attempt(request: Any) -> bool:
    """botocore numbers attempts in the amz-sdk-request header ("attempt=1; max=6")."""
    value = request.headers.get("amz-sdk-request", b"")
    return "attempt=1;" in (value.decode() if isinstance(value, bytes) else str(value))


def _caller_module() -> str:
    """The module of the code that called the patched function (two frames up from here)."""
    return sys._getframe(2).f_globals.get("__name__", "")


def _caller(depth: int = 0) -> tuple[str, str]:
    """The module and function of the code that called the patched function (two frames up from here);
    with `depth`, of its caller's caller and so on."""
    frame = sys._getframe(2 + depth)
    return frame.f_globals.get("__name__", ""), frame.f_code.co_name
