"""Each batch's own cost, as its alert says, is within 10 % of every request the local stack counted for it.

Four batches run one after another on one local stack, each alone on it: a clean one, one
whose task fails some items once (retries), one whose poisoned items go back until their
messages are dead-lettered and their items fail for good (dead letters), and one redriven
(its items failed at once in attempt 1, and succeed in attempt 2). For each, the alert's
`cost.infrastructure_usd` (chalicelib.batchcost, from the batch's own header and stats) is
compared with what this file counts while the batch runs, priced with chalicelib.pricing:

- every request the app made (hooks on its boto3 session), billed as AWS bills it: DynamoDB
  by the size of each item written or read, before and after (the after image read from
  the local moto server's memory, in this process, so the app waits no longer for it),
  transactions twice, header writes again for the
  `open-batches` index (while the header is in it) and for `batch-history` (when a field it
  lists changes); SQS per 64 KiB of payload; SNS per publish; S3 per request;
- Lambda's own requests on the queues (the pollers' receives that brought messages, and
  their deletes), counted on the pollers' clients;
- Lambda: each invocation, and each invocation's wall time as the stack timed it (the
  redrive, an API call on AWS, as one invocation), less the task's own time, which the
  tasks here time themselves; at 256 MB, x86.

Attribution: a batch runs alone, so whatever was counted between its cron event and the
recorded alert (and its last processor's stats) is its own, the finalizer's invocations
included: the finalizer is shared across batches on AWS, so the alert can only estimate
its stream batches from the batch's chunks and run time (the model's rule); here the
stack's one stream shard serves one batch at a time, and these batches have one shard of
chunk rows each, as that rule then assumes. Left out on both sides: GetQueueUrl (cached
per process: the first batch would pay for all), empty receives (idle polling, a 1 s long
poll here and 20 s on AWS), cold starts and logs (none locally). The sweeper is off.

Lambda time is the one figure the stack cannot reproduce: its requests (moto, threads
sharing two cores) take several times AWS's, so its invocations outlast the alert's
estimate for the work it does not time itself (the stats write, the planners, the
finalizer). It is 5 to 15 % of these batches' cost; the printed report shows each
service side by side.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import pytest
from moto.dynamodb.models import dynamodb_backends
from moto.dynamodb.models.dynamo_type import DynamoType

from batchdrain_local import LocalStack, StackOptions
from batchdrain_local.runtime import Invoker
from batchdrain_local.server import ACCOUNT_ID
from batchdrain_local.stack import REGION
from chalicelib import aws, batchcost, model, pricing, redrive
from chalicelib.config import Settings
from chalicelib.errors import PermanentItemError
from chalicelib.store import BatchStore, from_item
from chalicelib.tasks import task

SLOT = datetime(2026, 11, 23, 6, 0, tzinfo=timezone.utc)
ITEMS, K = 300, 10
MEMORY_MB = 256
TOLERANCE = 0.10

# The tasks' own time and runs, by batch kind and item (the tasks below record them).
TASK_SECONDS: Counter[str] = Counter()
RUNS: Counter[tuple[str, int]] = Counter()
_LOCK = threading.Lock()


def _run(kind: str, item: Mapping[str, Any], fails: bool, error: type[Exception] = RuntimeError) -> dict[str, int]:
    started = time.perf_counter()
    with _LOCK:
        RUNS[(kind, item["id"])] += 1
        runs = RUNS[(kind, item["id"])]
    time.sleep(0.002)  # a task that takes a little time, so items have durations to time
    with _LOCK:
        TASK_SECONDS[kind] += time.perf_counter() - started
    if fails(runs) if callable(fails) else fails:
        raise error(f"item {item['id']} fails (run {runs})")
    return {"id": item["id"]}


@task("cost-clean")
def clean(item: dict, options: Mapping[str, Any]) -> dict[str, int]:
    return _run("clean", item, False)


@task("cost-retries")
def retries(item: dict, options: Mapping[str, Any]) -> dict[str, int]:
    """Every 7th item fails its first run, and succeeds when retried."""
    return _run("retries", item, lambda runs: item["id"] % 7 == 3 and runs == 1)


@task("cost-dead-letters")
def dead_letters(item: dict, options: Mapping[str, Any]) -> dict[str, int]:
    """Items 0, 100 and 200 fail every run: their messages go back until SQS dead-letters them."""
    return _run("dead-letters", item, item["id"] % 100 == 0)


@task("cost-redrive")
def redriven(item: dict, options: Mapping[str, Any]) -> dict[str, int]:
    """Every 40th item fails at once (a permanent error) on its first run; a redrive runs it again and it succeeds."""
    return _run("redrive", item, lambda runs: item["id"] % 40 == 0 and runs == 1, PermanentItemError)


KINDS = ("clean", "retries", "dead-letters", "redrive")


def definitions_file(directory: Path) -> Path:
    document = {
        "definitions": [
            {
                "name": f"cost-{kind}",
                "schedule": "cron(0 6 * * ? *)",
                "source": {"type": "random", "count": ITEMS, "max_value": 1000},
                "task": f"cost-{kind}",
                "items_per_message": K,
                "item_seconds": 0.05,
            }
            for kind in KINDS
        ]
    }
    path = directory / "definitions.json"
    path.write_text(json.dumps(document))
    return path


# -- what the stack counted, priced ----------------------------------------------------------------------


def _key(key: Mapping[str, Any]) -> tuple[str, str]:
    return key["pk"]["S"], key["sk"]["S"]


def _size(item: Mapping[str, Any] | None) -> int:
    return pricing.item_bytes(from_item(item)) if item else 0


class Bill:
    """The units every counted request is billed, by service (see the module docstring), and Lambda's invocations and time."""

    def __init__(self, stack: LocalStack) -> None:
        self.units: Counter[str] = Counter()
        self.invocations: Counter[str] = Counter()
        self.milliseconds: Counter[str] = Counter()
        self._items: dict[tuple[str, str], dict[str, Any]] = {}  # the last image seen of each row
        self._lock = threading.Lock()
        self._own = stack.client("dynamodb")
        self._table = stack.resources.table_name
        events = aws.session().events
        events.register("before-parameter-build", self._before)
        events.register("after-call", self._after)
        for name in ("process_work", "plan_segments", "drain_dead_letters"):
            client = stack.pollers[name].sqs
            client.meta.events.register("after-call.sqs.ReceiveMessage", self._received)
            client.meta.events.register("after-call.sqs.DeleteMessageBatch", self._deleted)
        invoker = stack.invoker
        real = Invoker.__call__
        bill = self

        class Timed(Invoker):
            def __call__(self, name: str, handler: Any, event: dict) -> Any:
                started = time.perf_counter()
                try:
                    return real(self, name, handler, event)
                finally:
                    bill.lambda_ran(name, time.perf_counter() - started)

        invoker.__class__ = Timed

    def snapshot(self) -> tuple[Counter[str], Counter[str], Counter[str]]:
        with self._lock:
            return Counter(self.units), Counter(self.invocations), Counter(self.milliseconds)

    def lambda_ran(self, name: str, seconds: float) -> None:
        with self._lock:
            self.invocations[name] += 1
            self.milliseconds[name] += 1000 * seconds

    # -- SQS (the pollers') --

    def _received(self, parsed: Mapping[str, Any], **_: Any) -> None:
        messages = parsed.get("Messages") or []
        if messages:
            self._add("sqs", self._sqs_billed(sum(len(message["Body"].encode()) for message in messages)))
            self._add("sqs:ReceiveMessage (Lambda)", 1)

    def _deleted(self, **_: Any) -> None:
        self._add("sqs", 1)
        self._add("sqs:DeleteMessageBatch (Lambda)", 1)

    # -- the app's requests --

    def _before(self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        service, operation = model.service_model.service_name, model.name
        self._add(f"{service}:{operation}", 1)  # requests by operation: to read a failure
        context["consistent"] = bool(params.get("ConsistentRead"))
        if service == "dynamodb" and operation in ("PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"):
            context["billed_writes"] = self._writes(operation, params)
        elif service == "sqs" and operation != "GetQueueUrl":
            payload = sum(len(entry.get("MessageBody", "").encode()) for entry in params.get("Entries", []))
            self._add("sqs", self._sqs_billed(payload + len(params.get("MessageBody", "").encode())))
        elif service == "sns":
            self._add("sns", 1)
        elif service == "s3":
            self._add("s3_get" if operation in ("GetObject", "HeadObject") else "s3_put", 1)

    def _after(self, parsed: Mapping[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        service, operation = model.service_model.service_name, model.name
        if service != "dynamodb":
            return
        if "billed_writes" in context:
            for key, before, factor, kind in context["billed_writes"]:
                after = None if kind == "delete" else self._read(key)
                self._bill_write(key, before, after, factor, operation)
        elif operation == "GetItem":
            self._add("rru", pricing.read_units(_size(parsed.get("Item"))) * (1 if context.get("consistent") else 0.5))
        elif operation == "Query":
            size = sum(self._known_size(item) for item in parsed.get("Items", []))
            self._add("rru", pricing.read_units(size) * (1 if context.get("consistent") else 0.5))

    def _writes(self, operation: str, params: Mapping[str, Any]) -> list[tuple[tuple[str, str], Any, int, str]]:
        """(key, item before, units factor, kind) of each item the request writes."""
        actions: list[tuple[str, Mapping[str, Any]]] = []
        if operation == "BatchWriteItem":
            for requests in params["RequestItems"].values():
                for request in requests:
                    kind = "PutRequest" if "PutRequest" in request else "DeleteRequest"
                    actions.append(("Put" if kind == "PutRequest" else "Delete", request[kind]))
            factor = 1
        elif operation == "TransactWriteItems":
            for action in params["TransactItems"]:
                (kind, body), = action.items()
                actions.append((kind, body))
            factor = 2
        else:
            actions.append((operation.removesuffix("Item"), params))
            factor = 1
        writes = []
        for kind, body in actions:
            key = _key(body["Item"] if kind == "Put" else body["Key"])
            with self._lock:
                before = self._items.get(key)
            writes.append((key, before, factor, kind.lower()))
        return writes

    def _read(self, key: tuple[str, str]) -> dict[str, Any] | None:
        """The row as it is now, from moto's own memory (this process's server): no request, so it adds no time to the app's."""
        for _ in range(3):
            try:
                table = dynamodb_backends[ACCOUNT_ID][REGION].get_table(self._table)
                item = table.get_item(DynamoType({"S": key[0]}), DynamoType({"S": key[1]}))
                return item.to_json()["Attributes"] if item is not None else None
            except RuntimeError:  # changed while read (a concurrent write): read again
                continue
        response = self._own.get_item(TableName=self._table, Key={"pk": {"S": key[0]}, "sk": {"S": key[1]}}, ConsistentRead=True)
        return response.get("Item")

    def _known_size(self, item: Mapping[str, Any]) -> int:
        """A row a Query returned, at its whole size (a projection returns less than DynamoDB reads)."""
        with self._lock:
            known = self._items.get(_key(item)) if "sk" in item else None
        return _size(known or item)

    def _bill_write(self, key: tuple[str, str], before: Any, after: Any, factor: int, operation: str = "") -> None:
        units = factor * pricing.write_units(max(_size(before), _size(after)))
        if key[1] == model.HEADER_SK and before != after:  # an index is written only when the item changed
            images = [image for image in (after, before) if image]
            if any("open_pk" in image for image in images):
                units += pricing.write_units(max(_size(before), _size(after)))  # open-batches (projection ALL)
            listed = ("pk", "sk", "history_pk", "history_sk", *model.HISTORY_FIELDS)
            if {name: (before or {}).get(name) for name in listed} != {name: (after or {}).get(name) for name in listed}:
                units += 1  # batch-history (a few attributes projected)
        with self._lock:
            if after is None:
                self._items.pop(key, None)
            else:
                self._items[key] = after
            self.units["wru"] += units
            self.units[f"wru:{key[1][:2]}:{operation}"] += units  # by row kind and request: to read a failure

    def _add(self, unit: str, amount: float) -> None:
        with self._lock:
            self.units[unit] += amount

    @staticmethod
    def _sqs_billed(payload: int) -> int:
        return max(1, -(-payload // (64 * 1024)))


def priced(units: Mapping[str, float], invocations: Mapping[str, int], milliseconds: Mapping[str, float], task_seconds: float) -> dict[str, float]:
    prices = pricing.load_prices()
    lambda_ms = sum(milliseconds.values()) - 1000 * task_seconds
    by_service = {
        "dynamodb": units["wru"] * prices.wru + units["rru"] * prices.rru,
        "sqs": units["sqs"] * prices.sqs_request,
        "sns": units["sns"] * prices.sns_publish,
        "s3": units["s3_put"] * prices.s3_put + units["s3_get"] * prices.s3_get,
        "lambda_requests": sum(invocations.values()) * prices.lambda_request,
        "lambda_time": lambda_ms / 1000 * MEMORY_MB / 1024 * prices.lambda_gb_s["x86_64"],
    }
    return {**by_service, "infrastructure_usd": sum(by_service.values())}


# -- running them ----------------------------------------------------------------------------------------


@dataclass
class Measured:
    kind: str
    alert: dict[str, Any]
    counted: dict[str, float]
    invocations: dict[str, int]
    milliseconds: dict[str, float]
    requests: dict[str, float]
    estimated: dict[str, dict[str, float]]  # the alert's units by role (chalicelib.batchcost.usage), to read a failure


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def settled(stack: LocalStack, batch_id: str, attempt: int) -> None:
    """The alert recorded, and nothing more happening for the batch (the last processor's stats written)."""
    wait_for(lambda: (stack.header(batch_id) or {}).get("notified_at") and stack.header(batch_id)["attempt"] == attempt, 20, "alert recorded")
    time.sleep(1.0)


def run_batch(stack: LocalStack, bill: Bill, kind: str) -> Measured:
    units, invocations, milliseconds = bill.snapshot()
    task_before = TASK_SECONDS[kind]
    header = stack.fire_schedule(f"cost-{kind}", SLOT)
    batch_id = header["batch_id"]
    alert = stack.wait_for_alert(batch_id, timeout=60)["message"]
    settled(stack, batch_id, 1)
    if kind == "redrive":
        assert alert["status"] == model.COMPLETED_WITH_FAILURES
        started = time.perf_counter()
        redrive.redrive(batch_id, Settings.from_env())
        bill.lambda_ran("api (redrive)", time.perf_counter() - started)
        wait_for(lambda: len(stack.alerts_for(batch_id)) == 2, 60, "the redrive's alert")
        alert = stack.alerts_for(batch_id)[1]["message"]
        settled(stack, batch_id, 2)
    after_units, after_invocations, after_ms = bill.snapshot()
    counted = priced(after_units - units, after_invocations - invocations, after_ms - milliseconds, TASK_SECONDS[kind] - task_before)
    own = BatchStore(stack.resources.table_name, stack.client("dynamodb"))  # the stack's client: not counted
    final = own.get_header(batch_id)
    estimated = batchcost.usage(final, own.batch_stats(batch_id), MEMORY_MB).units
    estimated["header"] = {"bytes": pricing.item_bytes(final)}
    return Measured(
        kind, alert, counted, dict(after_invocations - invocations),
        {name: round(ms) for name, ms in (after_ms - milliseconds).items()},
        {name: count for name, count in (after_units - units).items() if ":" in name or name in ("wru", "rru", "sqs")},
        {role: {unit: round(value, 1) for unit, value in units.items()} for role, units in estimated.items()},
    )


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Measured]:
    directory = tmp_path_factory.mktemp("batch-cost")
    stack = LocalStack(
        StackOptions(
            definitions_file=definitions_file(directory),
            visibility_timeout=5,
            max_receive_count=2,
            processor_concurrency=2,
            extra_environment={"SHARD_CHUNK_TARGET": "1000", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(MEMORY_MB)},
        )
    )
    stack.start()
    try:
        bill = Bill(stack)
        aws.client.cache_clear()  # a client copies its session's hooks when made: the app's are made after these
        return {kind: run_batch(stack, bill, kind) for kind in KINDS}
    finally:
        stack.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_the_alerts_cost_is_within_10_percent_of_what_the_stack_counted(measured: dict[str, Measured], kind: str):
    batch = measured[kind]
    cost = batch.alert["cost"]
    counted = batch.counted["infrastructure_usd"]
    report = {
        "alert": cost,
        "counted": {name: float(f"{value:.4g}") for name, value in batch.counted.items()},
        "invocations": batch.invocations,
        "requests": batch.requests,
        "milliseconds": batch.milliseconds,
        "estimated": batch.estimated,
    }
    print(f"\n{kind}: {json.dumps(report)}")
    assert abs(cost["infrastructure_usd"] - counted) <= TOLERANCE * counted, report


def test_each_kind_did_what_it_is_named_for(measured: dict[str, Measured]):
    """The batches are what their names say: their totals, retries, dead letters and a second attempt."""
    clean, retried, dead, redriven_ = (measured[kind] for kind in KINDS)
    assert clean.alert["totals"] == {"items": ITEMS, "succeeded": ITEMS, "failed": 0}
    assert retried.alert["totals"]["failed"] == 0 and sum(1 for (kind, _), runs in RUNS.items() if kind == "retries" and runs > 1) == 43
    assert dead.alert["status"] == model.COMPLETED_WITH_FAILURES and dead.alert["totals"]["failed"] == 3
    assert dead.invocations.get("drain_dead_letters", 0) >= 1
    assert (redriven_.alert["attempt"], redriven_.alert["status"], redriven_.alert["totals"]["failed"]) == (2, model.COMPLETED, 0)
    for batch in measured.values():
        observed = batch.alert["item_seconds_observed"]
        assert observed["count"] >= ITEMS and 0.002 <= observed["p50"] <= observed["p99"] <= observed["max"]
        assert batch.alert["cost"]["task_compute_usd"] > 0
