"""What a benchmark run measures besides wall time: requests, CPU by owner, memory.

Everything the local stack runs shares one Python process (moto's server is a thread
in it), so on 2 cores the GIL makes CPU time the currency: the CPU spent inside moto's
request handling is the emulator's share of the run, the CPU spent in the app's
handlers (less their boto3 client work) is batchdrain's, and what is left is the local
stack's pollers and the harness. `CpuLedger` keeps those accounts per thread with
`time.thread_time()`, which counts only the CPU a thread used, never its waits.

- `RequestLedger` counts requests by service and operation on a boto3 session or
  client (as `batchdrain_local.metrics.RequestCounter` does), plus the entries of
  batched calls (rows in a BatchWriteItem, messages in a SendMessageBatch), because
  DynamoDB bills per row written and SQS per 64 KiB of payload, not per call.
- `CpuLedger.install()` wraps moto's request handler, botocore's `_make_api_call` and
  the local stack's `Invoker`; `uninstall()` puts them back.
- `rss_bytes(pid)` / `peak_rss_bytes(pid)` read /proc, so no package is needed.

    ledger = CpuLedger()
    ledger.install()
    before = ledger.snapshot()
    ...  # run a batch
    spent = ledger.since(before)   # {"emulator_s": ..., "app_s": ..., ...}
"""

from __future__ import annotations

import resource
import threading
import time
from collections import Counter
from typing import Any, Callable

SQS_BILLING_CHUNK = 64 * 1024  # SQS bills one request per 64 KiB of a request's payload


class RequestLedger:
    """Requests by (service, operation), and the entries and payload bytes of batched calls.

    Attach it to a session (every client made from it afterwards) or to one client.
    """

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str]] = Counter()
        self.entries: Counter[tuple[str, str]] = Counter()
        # SQS requests as billed: a send of n bytes counts ceil(n / 64 KiB).
        self.sqs_billed = 0
        self._lock = threading.Lock()

    def attach(self, events_owner: Any) -> "RequestLedger":
        """`events_owner`: a boto3 session, or a client (its `meta.events`)."""
        events = getattr(events_owner, "events", None) or events_owner.meta.events
        events.register("before-parameter-build", self._count)
        return self

    def _count(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        service, operation = model.service_model.service_name, model.name
        entries = _entries(service, operation, params)
        payload = sum(len(entry.get("MessageBody", "").encode()) for entry in params.get("Entries", [])) or len(
            params.get("MessageBody", "").encode()
        )
        with self._lock:
            self.requests[(service, operation)] += 1
            if entries is not None:
                self.entries[(service, operation)] += entries
            if service == "sqs":
                self.sqs_billed += max(1, -(-payload // SQS_BILLING_CHUNK))

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": Counter(self.requests), "entries": Counter(self.entries), "sqs_billed": self.sqs_billed}

    def since(self, before: dict[str, Any]) -> dict[str, Any]:
        now = self.snapshot()
        return {
            "requests": now["requests"] - before["requests"],
            "entries": now["entries"] - before["entries"],
            "sqs_billed": now["sqs_billed"] - before["sqs_billed"],
        }


def _entries(service: str, operation: str, params: dict[str, Any]) -> int | None:
    """Rows or messages one batched call carries (None for a single-item call)."""
    if operation == "BatchWriteItem":
        return sum(len(requests) for requests in params.get("RequestItems", {}).values())
    if operation == "TransactWriteItems":
        return len(params.get("TransactItems", []))
    if operation == "BatchGetItem":
        return sum(len(table.get("Keys", [])) for table in params.get("RequestItems", {}).values())
    if service == "sqs" and operation in ("SendMessageBatch", "DeleteMessageBatch", "ChangeMessageVisibilityBatch"):
        return len(params.get("Entries", []))
    return None


def by_service(counts: Counter[tuple[str, str]] | dict[tuple[str, str], int]) -> dict[str, dict[str, int]]:
    """{(service, operation): n} as {service: {operation: n}}, sorted, zeros dropped."""
    nested: dict[str, dict[str, int]] = {}
    for (service, operation), count in sorted(counts.items()):
        if count:
            nested.setdefault(service, {})[operation] = count
    return nested


# -- CPU by owner -------------------------------------------------------------------

_local = threading.local()


class CpuLedger:
    """CPU seconds by owner, from `time.thread_time()` deltas at the boundaries that tell owners apart.

    - emulator: inside moto's HTTP request handler (parsing, the backend, the response),
      per service and operation (from the request's X-Amz-Target or credential scope);
    - app: inside an invocation of one of the app's (or the baseline's) handlers, less
      its boto3 client calls, which are `app_client`;
    - stack_client: boto3 calls made outside any handler (the local stack's pollers);
    - process: the whole process (getrusage), so `other` = process - the rest is the
      pollers' and the harness's own Python.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds: Counter[str] = Counter()
        self.emulator_by_operation: Counter[str] = Counter()
        self._restore: list[Callable[[], None]] = []

    def add(self, account: str, seconds: float, operation: str | None = None) -> None:
        with self._lock:
            self.seconds[account] += seconds
            if operation is not None:
                self.emulator_by_operation[operation] += seconds

    def install(self) -> "CpuLedger":
        from botocore.client import BaseClient
        from moto.moto_server.werkzeug_app import MotoRequestHandler

        from batchdrain_local.runtime import Invoker

        ledger = self
        handle, make_call, invoke = MotoRequestHandler.handle, BaseClient._make_api_call, Invoker.__call__

        def timed_handle(handler: Any) -> None:
            started = time.thread_time()
            try:
                handle(handler)
            finally:
                ledger.add("emulator", time.thread_time() - started, _operation_of(getattr(handler, "headers", None)))

        def timed_call(client: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
            if getattr(_local, "in_call", False):  # a retry inside a call: counted once, by the outer call
                return make_call(client, operation_name, api_params)
            _local.in_call = True
            started = time.thread_time()
            try:
                return make_call(client, operation_name, api_params)
            finally:
                _local.in_call = False
                spent = time.thread_time() - started
                ledger.add("app_client" if getattr(_local, "in_handler", False) else "stack_client", spent)
                if getattr(_local, "in_handler", False):
                    _local.client_in_handler += spent

        def timed_invoke(invoker: Any, name: str, handler: Callable[..., Any], event: dict[str, Any]) -> Any:
            if getattr(_local, "in_handler", False):
                return invoke(invoker, name, handler, event)
            _local.in_handler, _local.client_in_handler = True, 0.0
            started = time.thread_time()
            try:
                return invoke(invoker, name, handler, event)
            finally:
                _local.in_handler = False
                ledger.add("app", time.thread_time() - started - _local.client_in_handler)

        MotoRequestHandler.handle = timed_handle  # type: ignore[method-assign]
        BaseClient._make_api_call = timed_call  # type: ignore[method-assign]
        Invoker.__call__ = timed_invoke  # type: ignore[method-assign]

        def restore() -> None:
            MotoRequestHandler.handle = handle  # type: ignore[method-assign]
            BaseClient._make_api_call = make_call  # type: ignore[method-assign]
            Invoker.__call__ = invoke  # type: ignore[method-assign]

        self._restore.append(restore)
        return self

    def uninstall(self) -> None:
        while self._restore:
            self._restore.pop()()

    def snapshot(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        with self._lock:
            return {
                "process": usage.ru_utime + usage.ru_stime,
                "seconds": Counter(self.seconds),
                "operations": Counter(self.emulator_by_operation),
            }

    def since(self, before: dict[str, Any]) -> dict[str, Any]:
        """CPU seconds spent since `before`, by owner, with the emulator's top operations."""
        now = self.snapshot()
        seconds = now["seconds"] - before["seconds"]
        process = now["process"] - before["process"]
        known = sum(seconds.values())
        operations = now["operations"] - before["operations"]
        return {
            "process_s": round(process, 2),
            "emulator_s": round(seconds["emulator"], 2),
            "app_s": round(seconds["app"], 2),
            "app_client_s": round(seconds["app_client"], 2),
            "stack_client_s": round(seconds["stack_client"], 2),
            "other_s": round(max(0.0, process - known), 2),
            "emulator_top_operations_s": {name: round(value, 2) for name, value in operations.most_common(8)},
        }


def _operation_of(headers: Any) -> str:
    """`dynamodb:Query`, `sqs:ReceiveMessage`, or the service alone (query-protocol APIs such as SNS)."""
    if headers is None:
        return "unknown"
    target = headers.get("X-Amz-Target") or ""
    if target:
        prefix, _, operation = target.partition(".")
        service = {"DynamoDB_20120810": "dynamodb", "AmazonSQS": "sqs", "DynamoDBStreams_20120810": "dynamodbstreams"}.get(
            prefix, prefix
        )
        return f"{service}:{operation}"
    authorization = headers.get("Authorization") or ""
    scope = authorization.split("Credential=", 1)[-1].split(",", 1)[0].split("/")
    return scope[3] if len(scope) > 3 else "other"


# -- memory ---------------------------------------------------------------------------


def _status_field(pid: int | str, name: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    return 0


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size now (VmRSS)."""
    return _status_field(pid, "VmRSS")


def peak_rss_bytes(pid: int | str = "self") -> int:
    """The highest resident set size the process has had (VmHWM)."""
    return _status_field(pid, "VmHWM")


def _load_average() -> float:
    """The machine's 1-minute load average: above ~1 while a run is alone, another process shared the cores."""
    with open("/proc/loadavg") as loadavg:
        return float(loadavg.read().split()[0])


class RssSampler:
    """Samples the RSS of some processes every `interval` seconds in a daemon thread."""

    def __init__(self, pids: dict[str, int | str], interval: float = 1.0) -> None:
        self.pids = pids
        self.interval = interval
        self.samples: list[dict[str, float]] = []  # {"t": seconds since start, name: MB, ...}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._started = 0.0

    def start(self) -> "RssSampler":
        self._started = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> list[dict[str, float]]:
        self._stopping.set()
        self._thread.join(timeout=5)
        return self.samples

    def _run(self) -> None:
        while not self._stopping.is_set():
            sample: dict[str, float] = {"t": round(time.monotonic() - self._started, 1), "load": _load_average()}
            for name, pid in self.pids.items():
                try:
                    sample[name] = round(rss_bytes(pid) / 2**20, 1)
                except OSError:
                    pass  # the process ended
            self.samples.append(sample)
            self._stopping.wait(self.interval)
