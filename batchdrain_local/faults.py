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
| crash_before_row_update | processor | Lambda dies after running the tasks, before the chunk row update |
| lost_delete_after_emptying | processor (any DeleteItem of a chunk row) | Lambda dies right after an update emptied a chunk row's pending set, before its DeleteItem: the row is left behind, empty |
| finalizer_crash_before_publish | finalizer | Lambda dies after winning completion, before publishing |
| sns_failure | alerts | SNS Publish fails |
| stream_redelivery | stream poller | a whole stream batch delivered again |
| concurrent_finalizers | stream poller | the same stream batch handled by two or three invocations at once |
| batcher_crash_before_send | batcher | the batcher dies after writing its segment rows and marking the batch planned, before sending the planning messages |
| batcher_crash_before_seal | whoever seals: the finalizer or sweeper (after the last segment), a redrive | the process dies before sealing |
| planner_crash_before_checkpoint | planner | a planner dies after writing a group's chunk rows, before its checkpoint (the rows are written again, identical, by the planner that takes the segment after the lease) |
| planner_crash_before_send | planner | a planner dies after its checkpoint listed a group unsent, before sending its messages (the next planner sends them from the rows) |
| planner_crash_before_finish | planner | a planner dies after its segment's last message, before the transaction that deletes the segment row and adds its totals |
| redrive | chaos runner | a batch that ended COMPLETED_WITH_FAILURES is redriven as soon as its alert arrives |
| redrive_concurrent | chaos runner | ... and a second `continue_redrive` runs beside the first, as a sweeper resuming it would |
| redrive_slow | chaos runner | ... and (independently) the redrive stalls before its first restore for longer than STUCK_CREATING_SECONDS, so the sweeper resumes it while it still runs |

The last three are decided by the chaos runner (batchdrain_local.chaos), which asks
`chance` for them; they are listed here so a run's counts and `ensure_every_fault` cover them.
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

import io
import json
import random
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

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
    "batcher_crash_before_send",
    "batcher_crash_before_seal",
    "planner_crash_before_checkpoint",
    "planner_crash_before_send",
    "planner_crash_before_finish",
    "redrive",
    "redrive_concurrent",
    "redrive_slow",
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
    "batcher_crash_before_send": 0.02,
    "batcher_crash_before_seal": 0.05,
    # Per planner group (checkpoint, send) or segment (finish); each strike stalls its batch for a lease.
    "planner_crash_before_checkpoint": 0.02,
    "planner_crash_before_send": 0.02,
    "planner_crash_before_finish": 0.02,
    # Per batch that ends COMPLETED_WITH_FAILURES; the other two per redrive.
    "redrive": 0.25,
    "redrive_concurrent": 0.5,
    "redrive_slow": 0.3,
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
        from chalicelib import alerts, aws, work
        from chalicelib.store import BatchStore

        def crash_before(fault: str, real: Callable[..., Any], only_from: str | None = None) -> Callable[..., Any]:
            """Crash before `real` runs; with `only_from`, only when called from that module's code."""

            def patched(*args: Any, **kwargs: Any) -> Any:
                if (only_from is None or _caller_module() == only_from) and self.chance(fault):
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

        # The processor's one row update: `drain` before the per-item attempts rewrite, `record` since
        # (the dead-letter handler and the sweeper call `record` too; only the processor's call counts).
        row_update = "drain" if "drain" in BatchStore.__dict__ else "record"
        self._patch(
            BatchStore,
            row_update,
            crash_before("crash_before_row_update", getattr(BatchStore, row_update), only_from="chalicelib.processor"),
        )
        # Whoever seals: the finalizer or the sweeper after the last segment (chalicelib.planning.seal_when_planned),
        # and a redrive. `details` says which.
        sealers = ("chalicelib.redrive", "chalicelib.planner")
        seal = crash_before_by_caller(dict.fromkeys(sealers, "batcher_crash_before_seal"), BatchStore.seal, where=True)
        self._patch(BatchStore, "seal", seal)
        # A planner's sends of a group, and re-sends of a listed group from its rows (chalicelib.batcher's
        # send_listed, for a planner or a redrive resuming); the processor and dead-letter handler are not struck.
        self._patch(work, "send_chunks",
            crash_before_by_caller(
                {"chalicelib.batcher": "batcher_crash_before_send", "chalicelib.planner": "planner_crash_before_send"},
                work.send_chunks,
            ),
        )
        # The batcher: segment rows written and the batch marked planned, its planning
        # messages not sent yet (also a sweeper resuming it; a planner re-queueing its segment is not struck).
        planning_batcher = {"chalicelib.planning._write_segments": "batcher_crash_before_send"}
        self._patch(work, "send_segments", crash_before_by_caller(planning_batcher, work.send_segments, where=True))
        # A planner's own steps (only the planner checkpoints and finishes segments).
        for name, fault in (("checkpoint_segment", "planner_crash_before_checkpoint"), ("finish_segment", "planner_crash_before_finish")):
            self._patch(BatchStore, name, crash_before(fault, getattr(BatchStore, name)))
        self._patch(alerts, "notify", crash_before("finalizer_crash_before_publish", alerts.notify))
        self._patch(alerts, "publish", failing_publish(alerts.publish))
        # At the DeleteItem request itself, so it holds whichever store method deletes chunk rows
        # (BatchStore._delete_chunk before the per-item attempts rewrite, BatchStore._apply since).
        events = aws.client("dynamodb").meta.events
        events.register("before-parameter-build.dynamodb.DeleteItem", self._lost_delete_after_emptying, unique_id=_HOOK_ID)
        self._undo.append(lambda: events.unregister("before-parameter-build.dynamodb.DeleteItem", unique_id=_HOOK_ID))
        # Only with a rate: every `chance` draws from the seeded sequence, which chaos runs replay.
        if any(self.rates.get(fault, 0.0) > 0 for fault in THROTTLE_FAULTS):
            self._install_throttles(aws)

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
        original = owner.__dict__[name]
        setattr(owner, name, replacement)
        self._undo.append(lambda: setattr(owner, name, original))

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()
        self._dynamodb = self._sqs = None  # the next stack has another endpoint



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


def _caller() -> tuple[str, str]:
    """The module and function of the code that called the patched function (two frames up from here)."""
    frame = sys._getframe(2)
    return frame.f_globals.get("__name__", ""), frame.f_code.co_name
