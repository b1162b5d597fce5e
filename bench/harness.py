"""`make bench`: batchdrain and the origin design's baseline, side by side, in one run.

    python -m bench.harness [--items 10000 100000] [--baseline-max 10000] [--out bench/results]
    python -m bench.harness --system batchdrain --items 1000000 --json out.json   (one run; make bench-1m)

Each run gets a fresh local stack (moto server, pollers, the app imported afresh) in
this process, fires one cron event and waits for the alert:

- batchdrain: the shipped `nightly` definition with the `random` source and the `noop`
  task, declared at `item_seconds` 0.2 (the documented fast task; `--item-seconds`), with
  K left to batchdrain as shipped (chalicelib/sizing.py: the batch header's
  `items_per_message` and `k_rule` say which K it chose and which limit chose it; `--k`
  pins one) and the deployed mapping settings (infra/event-sources.json, .chalice/config.json);
- baseline (bench/baseline): one row and one message per item, the same random items,
  the same pollers and settings (see bench/baseline/handlers.py).

Per run: wall time from cron event to alert, items/s, completion latency (the last
item's task returning -> the alert read from the alert topic's queue), the AWS requests
the handlers made by service and operation (counted on their boto3 sessions), the
Lambda pollers' requests (the work queue's receives and deletes, the stream's reads),
modelled $ per 1M items, and CPU by owner (moto vs the app; bench/measure.py).

Results: bench/results/latest.json (one record per run), latest.md (a table) and
latest.png (matplotlib, from requirements-bench.txt; skipped with a note without it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from batchdrain_local.stack import PROJECT_DIR, LocalStack, StackOptions
from bench.measure import CpuLedger, RequestLedger, by_service, peak_rss_bytes, rss_bytes

RESULTS_DIR = PROJECT_DIR / "bench" / "results"
SHIPPED_DEFINITIONS = PROJECT_DIR / "chalicelib" / "batches.json"
DEFINITION = "nightly"
TASK = "noop"
# One slot per run: batch ids differ, so no run can see another's rows or alerts.
FIRST_SLOT = datetime(2026, 12, 1, 0, 0, tzinfo=timezone.utc)
# The event sources whose requests scale with items: the work queue's and the stream's.
# The planning queue carries one message per segment (1,048,576 generated items; its
# planners' own requests are the app's, counted above) and the dead-letter queue none: their
# pollers idle through a noop batch (a cost per hour, not per item: README "What an idle
# deployment costs").
BATCHDRAIN_ITEM_POLLERS = ("process_work", "finalize")


class ItemClock:
    """When the last item's task returned, and how many task runs returned (thread-safe)."""

    def __init__(self) -> None:
        self.runs = 0
        self.last = 0.0
        self._lock = threading.Lock()

    def tick(self) -> None:
        now = time.monotonic()
        with self._lock:
            self.runs += 1
            self.last = now


# What the bench's definition declares of its task: the documented fast task (200 ms), so that
# K is chosen as for a real task of that size (noop itself takes microseconds; README "Run your own job").
BENCH_ITEM_SECONDS = 0.2
# The stage the local stack runs (its PROCESSOR_BATCH_SIZE and PROCESSOR_TIMEOUT_SECONDS size K).
STAGE = "local"


def _nightly(document: dict[str, Any]) -> dict[str, Any]:
    return next(entry for entry in document["definitions"] if entry["name"] == DEFINITION)


def _stage_setting(name: str, stage: str = STAGE) -> str | None:
    """One of the stage's settings as the local stack sets it (.chalice/config.json), or None."""
    from batchdrain_local.stack import stage_environment

    return stage_environment(stage).get(name)


def _budget(stage: str = STAGE) -> Any:
    """The processing budget the stage gives one processor invocation (its settings, else the defaults)."""
    from chalicelib import config, sizing

    return sizing.Budget(
        int(_stage_setting("PROCESSOR_BATCH_SIZE", stage) or 10),
        int(_stage_setting("PROCESSOR_TIMEOUT_SECONDS", stage) or config.DEFAULT_PROCESSOR_TIMEOUT_SECONDS),
    )


def bench_item_seconds(k: int | None, item_seconds: float = BENCH_ITEM_SECONDS, stage: str = STAGE) -> float:
    """The `item_seconds` the bench declares: as given, or, for a pinned K the budget would refuse at
    that time (the import's check), the most that lets it fit (noop takes microseconds)."""
    from chalicelib import config, sizing

    if k is None:
        return item_seconds
    budget = _budget(stage)
    if sizing.budget_k(item_seconds, budget) >= k:
        return item_seconds
    return round((budget.timeout_seconds - config.PROCESSOR_SAFETY_MARGIN_SECONDS) / (budget.batch_size * k) * 0.999, 6)


def k_choice(items: int, k: int | None = None, item_seconds: float = BENCH_ITEM_SECONDS,
             stage: str = STAGE, path: Path = SHIPPED_DEFINITIONS) -> Any:
    """The K batchdrain takes for the bench's batch of `items`, and why (a `chalicelib.sizing.KChoice`:
    `.k`, `.rule`, `.describe()` is the header's `k_rule`), worked out as the batcher does from the
    shipped definition and the stage's settings, apart from any run: a test holds the run's header to it.

    The shipped definition leaves `items_per_message` out (auto); `k` pins one, as `--k` does.
    No batch has run before a bench's (each run starts a fresh stack), so the declared
    `item_seconds` sizes K, not an observed one.
    """
    from chalicelib import config, sizing

    definitions = bench_definitions(items, k, item_seconds, path=path)
    try:
        definition = config.load_definitions(definitions)[DEFINITION]
    finally:
        definitions.unlink(missing_ok=True)
    max_message_bytes = int(_stage_setting("MAX_MESSAGE_BYTES", stage) or config.max_message_bytes())
    return sizing.choose_k(definition, _budget(stage), max_message_bytes)


def deployed_k(items: int, k: int | None = None, item_seconds: float = BENCH_ITEM_SECONDS) -> int:
    """The K a bench batch of `items` runs at with the shipped definition (see `k_choice`)."""
    return int(k_choice(items, k, item_seconds).k)


def bench_definitions(items: int, k: int | None, item_seconds: float = BENCH_ITEM_SECONDS,
                      path: Path = SHIPPED_DEFINITIONS) -> Path:
    """The shipped definitions file with `nightly` sized to `items`, task noop, `item_seconds` declared,
    and K left to batchdrain as shipped (or pinned to `k`)."""
    document = json.loads(path.read_text())
    entry = _nightly(document)
    entry["source"]["count"] = items
    entry["task"] = TASK
    entry.pop("task_options", None)  # noop takes none
    entry["item_seconds"] = bench_item_seconds(k, item_seconds)
    if k is not None:
        entry["items_per_message"] = k
    handle, name = tempfile.mkstemp(prefix="batchdrain-bench-", suffix=".json")
    with os.fdopen(handle, "w") as file:
        json.dump(document, file)
    return Path(name)


def _timed_task(clock: ItemClock) -> Callable[[], None]:
    """Wrap the registered noop task so each run stamps the clock; returns the undo."""
    from chalicelib import tasks

    original = tasks._REGISTRY[TASK]  # the registry refuses a second @task("noop"), so wrap in place

    def noop(item: dict, options: Any) -> Any:
        result = original(item, options)
        clock.tick()
        return result

    tasks._REGISTRY[TASK] = noop
    return lambda: tasks._REGISTRY.__setitem__(TASK, original)


def _stack_options(definitions: Path, paused: frozenset[str] = frozenset()) -> StackOptions:
    return StackOptions(definitions_file=definitions, paused=paused)


def run_batchdrain(items: int, k: int | None = None, *, slot: datetime = FIRST_SLOT, timeout: float = 3 * 3600.0,
                   cpu: CpuLedger | None = None, progress: Callable[[str], None] = print,
                   item_seconds: float = BENCH_ITEM_SECONDS) -> dict[str, Any]:
    """One batchdrain batch of `items` noop items on a fresh local stack; its record, with the K the
    batch ran at and why (its header's `items_per_message` and `k_rule`)."""
    definitions = bench_definitions(items, k, item_seconds)
    clock = ItemClock()
    undo = _timed_task(clock)
    stack = LocalStack(_stack_options(definitions))
    try:
        stack.start()
        from chalicelib import aws, model

        declared = stack.app_module.DEFINITIONS[DEFINITION]
        app_ledger = RequestLedger().attach(aws.session())
        poller_ledger = RequestLedger()
        for name in BATCHDRAIN_ITEM_POLLERS:
            poller = stack.pollers[name]
            poller_ledger.attach(getattr(poller, "sqs", None) or poller.streams)
        batch_id = model.batch_id_for(DEFINITION, slot)
        progress(f"batchdrain: {items:,} items, K={'auto' if k is None else k}, task {TASK} "
                 f"(item_seconds {declared.item_seconds:g})")
        measured = _drive(
            stack, batch_id, lambda: stack.fire_schedule(DEFINITION, slot), clock, timeout, cpu,
            [app_ledger, poller_ledger], progress,
        )
        header = stack.header(batch_id) or {}
        record = _record(
            "batchdrain", items, int(header["items_per_message"]), measured, clock, app_ledger, poller_ledger, stack,
            extra={
                "k_rule": header.get("k_rule", ""),
                "item_seconds": declared.item_seconds,
                "processor_batch_size": stack.pollers["process_work"].batch_size,
                "chunks": int(header.get("total_chunks", 0)),
                "shards": int(header.get("shards", 0)),
                "segments": int(header.get("segments", 0)),
            },
        )
        record["emulator_retained"] = emulator_retained()
    finally:
        stack.stop()
        undo()
        definitions.unlink(missing_ok=True)
    record["rss_after_moto_reset_mb"] = _rss_after_reset()
    return record


def run_baseline(items: int, *, slot: datetime = FIRST_SLOT, timeout: float = 3 * 3600.0, cpu: CpuLedger | None = None,
                 progress: Callable[[str], None] = print, batch_size: int | None = None) -> dict[str, Any]:
    """One baseline batch of `items` noop items on a fresh local stack (batchdrain's item pollers paused).

    Its processor's poller takes batchdrain's deployed PROCESSOR_BATCH_SIZE, or `batch_size`
    (messages per invocation: a per-item design would take up to 10, as it has no K to fill).
    """
    from bench.baseline.wiring import BaselineRun

    definitions = bench_definitions(items, None)  # the app is imported as always; its item pollers stay paused
    clock = ItemClock()
    options = _stack_options(definitions, paused=frozenset(BATCHDRAIN_ITEM_POLLERS))
    if batch_size is not None:
        options.event_source_overrides = {"process_work": {"BatchSize": batch_size}}
    stack = LocalStack(options)
    baseline = None
    try:
        stack.start()
        from chalicelib import sources

        definition = stack.app_module.DEFINITIONS[DEFINITION]
        # The same items batchdrain's batch of this slot would carry.
        from chalicelib import model

        the_items = list(sources.items_from(definition.source, model.batch_id_for(DEFINITION, slot)))
        baseline = BaselineRun(stack, on_item_done=clock.tick).start()
        batch_id = f"baseline-{slot:%Y-%m-%dT%H:%MZ}"
        used = stack.mapping_settings("process_work", "sqs").batch_size or stack.app_module.EVENT_SOURCES.processor_batch_size
        progress(f"baseline: {items:,} items, one row and one message per item, {used} messages per invocation, task {TASK}")
        measured = _drive(
            stack, batch_id, lambda: baseline.fire(slot, the_items), clock, timeout, cpu,
            [baseline.requests, baseline.poller_requests], progress,
        )
        record = _record("baseline", items, 1, measured, clock, baseline.requests, baseline.poller_requests, stack,
                         extra={"k_rule": "one item per message (the per-item design)", "processor_batch_size": used})
    finally:
        if baseline is not None:
            baseline.stop()
        stack.stop()
        definitions.unlink(missing_ok=True)
    return record


def _drive(stack: LocalStack, batch_id: str, fire: Callable[[], Any], clock: ItemClock, timeout: float,
           cpu: CpuLedger | None, ledgers: list[RequestLedger], progress: Callable[[str], None]) -> dict[str, Any]:
    """Fire the cron event, wait for the alert, and say what it took."""
    alerted: dict[str, float] = {}
    stack.on_alert = lambda alert: alerted.setdefault(alert["message"]["batch_id"], time.monotonic())
    before = [ledger.snapshot() for ledger in ledgers]
    cpu_before = cpu.snapshot() if cpu else None
    rss_before = rss_bytes()
    load_before = os.getloadavg()
    failure: list[BaseException] = []

    def create() -> None:
        try:
            fire()
        except BaseException as error:  # reported below, not lost in the thread
            failure.append(error)

    fired = time.monotonic()
    creator = threading.Thread(target=create, name="cron-event", daemon=True)
    creator.start()
    deadline = fired + timeout
    while batch_id not in alerted:
        if failure:
            raise RuntimeError(f"the batcher failed: {failure[0]!r}") from failure[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"no alert for {batch_id} after {timeout:.0f} s; header: {stack.header(batch_id)}")
        try:
            stack.wait_for_alert(batch_id, timeout=min(10.0, max(0.1, deadline - time.monotonic())))
        except TimeoutError:
            progress(f"  {time.monotonic() - fired:7.1f} s  {clock.runs:,} task runs so far")
    alert_at = alerted[batch_id]
    load_after = os.getloadavg()
    cpu_spent = cpu.since(cpu_before) if cpu and cpu_before else None  # from the cron event to the alert
    creator.join(timeout=60)
    # Count what the batch cost in all: records still on the stream after the alert (the
    # baseline's REMOVEs of its last rows, say) invoke the finalizer after it.
    _wait_until_quiet(stack, ledgers[0])
    spent = [ledger.since(snapshot) for ledger, snapshot in zip(ledgers, before)]
    return {
        "fired": fired,
        "alert_at": alert_at,
        "alerts": len(stack.alerts_for(batch_id)),
        "alert": stack.alerts_for(batch_id)[0],
        "spent": spent,
        "cpu": cpu_spent,
        "rss_at_fire_mb": round(rss_before / 2**20, 1),
        "rss_growth_mb": round((rss_bytes() - rss_before) / 2**20, 1),
        # The machine's load (1, 5, 15 min) when the cron event fired and when the alert came: a run alone
        # keeps the 1-minute figure near 1; above that, other work shared the cores.
        "load_average": {"at_fire": [round(x, 2) for x in load_before], "at_alert": [round(x, 2) for x in load_after]},
    }


def emulator_retained() -> dict[str, int]:
    """What moto still holds after a run: stream records (kept forever; DynamoDB trims at 24 h),
    shard iterators (stock moto keeps one per GetRecords; none with batchdrain_local/emulator.py),
    SQS receipt handles of deleted messages.

    Memory the emulator keeps is not batchdrain's: this says how much of a run's RSS growth is moto's.
    """
    from moto.dynamodb.models import dynamodb_backends
    from moto.dynamodbstreams.models import dynamodbstreams_backends
    from moto.sqs.models import sqs_backends

    from batchdrain_local.server import ACCOUNT_ID
    from batchdrain_local.stack import REGION

    shards = [table.stream_shard.items for table in dynamodb_backends[ACCOUNT_ID][REGION].tables.values() if table.stream_shard]
    # One record at a time: batchdrain_local/emulator.py keeps all but a shard's newest records pickled
    # and compressed, and a list of them all unpacked would be the largest thing this process ever held.
    return {
        "stream_records": sum(len(records) for records in shards),
        "stream_record_json_bytes": sum(len(json.dumps(record.record, default=str)) for records in shards for record in records),
        "stream_record_compressed_bytes": sum(getattr(records, "compressed_bytes", 0) for records in shards),
        "shard_iterators": len(dynamodbstreams_backends[ACCOUNT_ID][REGION].shard_iterators),
        "sqs_deleted_receipt_handles": sum(len(queue.deleted_messages) for queue in sqs_backends[ACCOUNT_ID][REGION].queues.values()),
    }


def _rss_after_reset() -> dict[str, float]:
    """RSS with everything moto holds (its server stopped, its backends kept), and after moto drops
    them as its reset does: the difference is the emulator's."""
    import gc

    from moto.moto_api._internal.models import moto_api_backend

    gc.collect()
    before = rss_bytes()
    moto_api_backend.reset()
    gc.collect()
    return {"before_mb": round(before / 2**20, 1), "after_mb": round(rss_bytes() / 2**20, 1)}


def _wait_until_quiet(stack: LocalStack, ledger: RequestLedger, quiet: float = 2.5, longest: float = 900.0) -> None:
    """Return once neither the handlers' requests nor any invocation changed for `quiet` seconds.

    `quiet` outlasts the finalizer's 1 s batching window, so a last stream batch still pending is seen.
    """
    def state() -> tuple[int, int]:
        return sum(ledger.snapshot()["requests"].values()), sum(stack.invoker.invocations.values())

    deadline, last, since = time.monotonic() + longest, state(), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet:
        time.sleep(0.25)
        now = state()
        if now != last:
            last, since = now, time.monotonic()


def _record(system: str, items: int, k: int, measured: dict[str, Any], clock: ItemClock, app: RequestLedger,
            pollers: RequestLedger, stack: LocalStack, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    app_spent, poller_spent = measured["spent"]
    wall = measured["alert_at"] - measured["fired"]
    requests = by_service(app_spent["requests"])
    poller_requests = by_service(poller_spent["requests"])
    invocations = {name: count for name, count in sorted(stack.invoker.invocations.items()) if count}
    counts = {f"{service}:{operation}": n for service, ops in requests.items() for operation, n in ops.items()}
    poller_counts = {f"{service}:{operation}": n for service, ops in poller_requests.items() for operation, n in ops.items()}
    entries = {f"{service}:{operation}": n for (service, operation), n in sorted(app_spent["entries"].items()) if n}
    usd = usd_for_run(counts, poller_counts, entries, invocations, items,
                      sqs_billed=app_spent["sqs_billed"] + poller_spent["sqs_billed"])
    totals = measured["alert"]["message"].get("totals", {})
    return {
        "system": system,
        "items": items,
        "k": k,
        "task": TASK,
        **(extra or {}),
        "wall_s": round(wall, 2),
        "items_per_s": round(items / wall, 1),
        "completion_latency_s": round(measured["alert_at"] - clock.last, 3) if clock.runs else None,
        "last_item_done_s": round(clock.last - measured["fired"], 2) if clock.runs else None,
        "task_runs": clock.runs,
        "alerts": measured["alerts"],
        "alert_totals": totals,
        "requests": requests,
        "requests_total": sum(counts.values()),
        "requests_per_item": _per_item(requests, items),
        "lambda_poller_requests": poller_requests,
        "lambda_poller_requests_per_item": _per_item(poller_requests, items),
        "entries": entries,
        "invocations": invocations,
        "usd_per_1m_items": usd["usd_per_1m_items"],
        "usd_by_service_per_1m_items": usd["by_service"],
        "pricing": usd["pricing"],
        "cpu_s": measured["cpu"],
        "rss_at_fire_mb": measured["rss_at_fire_mb"],
        "rss_growth_mb": measured["rss_growth_mb"],
        "load_average": measured["load_average"],
        "processor_concurrency": stack.options.processor_concurrency,
    }


def _per_item(requests: dict[str, dict[str, int]], items: int) -> dict[str, dict[str, float]]:
    return {service: {op: round(n / items, 5) for op, n in ops.items()} for service, ops in requests.items()}


# -- $ ------------------------------------------------------------------------------

_DYNAMODB_WRITES = ("PutItem", "UpdateItem", "DeleteItem")
_DYNAMODB_READS = ("GetItem", "Query", "Scan")


def usd_for_run(counts: dict[str, int], poller_counts: dict[str, int], entries: dict[str, int],
                invocations: dict[str, int], items: int, sqs_billed: int | None = None) -> dict[str, Any]:
    """$ per 1M items for one run's counted requests, at chalicelib/prices.json's prices.

    `batchdrain_cli.costmodel.usd_for_requests(counts, ...)` prices them if it exists (issue 11's
    cost model); until then this prices what was counted with the same price table and
    the cost model's stated assumptions: every row here is under 1 KB and every read a
    strongly consistent read of one small item or a Limit=1 page (1 WRU / 1 RRU),
    BatchWriteItem costs a unit per row, TransactWriteItems 2, the stream reads of
    Lambda's trigger are free, SQS bills each 64 KiB of a request, and a function's
    billed duration is its requests' latency (pricing.REQUEST_MS) at the deployed
    memory. The noop task adds no compute.
    """
    from batchdrain_cli import costmodel
    from chalicelib import pricing

    merged = dict(counts)
    for name, n in poller_counts.items():
        merged[name] = merged.get(name, 0) + n
    if hasattr(costmodel, "usd_for_requests"):
        priced = costmodel.usd_for_requests(merged, entries=entries, invocations=invocations)
        total = priced["total_usd"] if isinstance(priced, dict) else float(priced)
        by_service = priced.get("by_service", {}) if isinstance(priced, dict) else {}
        return {
            "usd_per_1m_items": round(total * 1e6 / items, 4),
            "by_service": {name: round(float(value) * 1e6 / items, 4) for name, value in by_service.items()},
            "pricing": "batchdrain_cli.costmodel.usd_for_requests",
        }
    prices, defaults = costmodel.load_prices(), costmodel.deployed_defaults()
    writes = reads = sqs = sns = 0.0
    for name, n in merged.items():
        service, _, operation = name.partition(":")
        if service == "dynamodb":
            if operation == "BatchWriteItem":
                writes += entries.get(name, 0)
            elif operation == "TransactWriteItems":
                writes += 2 * entries.get(name, 0)
            elif operation in _DYNAMODB_WRITES:
                writes += n
            elif operation in _DYNAMODB_READS:
                reads += n
        elif service == "sqs":
            sqs += n
        elif service == "sns" and operation == "Publish":
            sns += n
    handler_requests = {tuple(name.split(":", 1)): n for name, n in counts.items()}
    handler_ms = pricing.request_ms(handler_requests, defaults.memory_mb)
    gb_s = handler_ms / 1000 * defaults.memory_mb / 1024
    by_service = {
        "dynamodb": writes * prices.wru + reads * prices.rru,
        "sqs": (sqs_billed if sqs_billed is not None else sqs) * prices.sqs_request,
        "sns": sns * prices.sns_publish,
        "lambda": sum(invocations.values()) * prices.lambda_request + gb_s * prices.lambda_gb_s[defaults.arch],
    }
    return {
        "usd_per_1m_items": round(sum(by_service.values()) * 1e6 / items, 4),
        "by_service": {name: round(value * 1e6 / items, 4) for name, value in by_service.items()},
        "pricing": f"chalicelib/prices.json (checked {prices.checked}); Lambda duration = the handlers' counted requests "
                   f"x pricing.REQUEST_MS at {defaults.memory_mb} MB",
    }


# -- the whole benchmark ----------------------------------------------------------------


def prepare_emulator(stock: bool) -> tuple[str, Callable[[], None]]:
    """moto for the run: the emulator's name for the results, and the undo. `stock`: without
    batchdrain_local/emulator.py's fixes (the local stack's correctness patches stay)."""
    import moto

    from batchdrain_local import emulator

    name = f"moto {moto.__version__} as the local stack patches it"
    if stock:
        return name + ", without batchdrain_local/emulator.py", emulator.without_fixes()
    return name, lambda: None


def run_all(sizes: list[int], baseline_max: int, k: int | None = None, progress: Callable[[str], None] = print,
            stock_moto: bool = False, item_seconds: float = BENCH_ITEM_SECONDS,
            baseline_batch_size: int | None = None) -> dict[str, Any]:
    """Baseline and batchdrain at each size (baseline only up to `baseline_max`), one process, one after another."""
    emulator, undo = prepare_emulator(stock_moto)
    cpu = CpuLedger().install()
    runs = []
    slot = FIRST_SLOT
    try:
        for items in sizes:
            if items <= baseline_max:
                runs.append(run_baseline(items, slot=slot, cpu=cpu, progress=progress, batch_size=baseline_batch_size))
                progress(_line(runs[-1]))
                slot += timedelta(minutes=1)
            runs.append(run_batchdrain(items, k, slot=slot, cpu=cpu, progress=progress, item_seconds=item_seconds))
            progress(_line(runs[-1]))
            slot += timedelta(minutes=1)
    finally:
        cpu.uninstall()
        undo()
    document = summarize(runs)
    document["emulator"] = emulator
    return document


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The results document: the runs, the speedup at 10,000 items (or the smallest shared size), the latency median."""
    speedups = {}
    for run in runs:
        if run["system"] != "batchdrain":
            continue
        base = next((other for other in runs if other["system"] == "baseline" and other["items"] == run["items"]), None)
        if base is not None:
            speedups[run["items"]] = round(run["items_per_s"] / base["items_per_s"], 1)
    shared = 10_000 if 10_000 in speedups else min(speedups, default=None)
    latencies = [run["completion_latency_s"] for run in runs if run["system"] == "batchdrain" and run["completion_latency_s"] is not None]
    return {
        "generated_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]},
        "speedup_vs_baseline": speedups.get(shared) if shared is not None else None,
        "speedup_at_items": shared,
        "speedups": {str(items): value for items, value in speedups.items()},
        "batchdrain_completion_latency_median_s": round(statistics.median(latencies), 3) if latencies else None,
        "runs": runs,
    }


def _line(run: dict[str, Any]) -> str:
    return (
        f"{run['system']:>10} {run['items']:>9,} items K={run['k']:<3} {run['wall_s']:8.1f} s  {run['items_per_s']:9,.0f} items/s  "
        f"latency {run['completion_latency_s']} s  {run['requests_total'] / run['items']:.3f} requests/item  "
        f"${run['usd_per_1m_items']:.3f}/1M items"
        + (f"\n{'':>11}{run['k_rule']}" if run["system"] == "batchdrain" and run.get("k_rule") else "")
    )


def markdown_table(document: dict[str, Any]) -> str:
    """The runs as a markdown table, with the speedup under it."""
    lines = [
        "| system | items | K | wall s | items/s | completion latency s | requests/item (app) | SQS receives+deletes/item (Lambda pollers) | $ per 1M items |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in document["runs"]:
        sqs_pollers = sum(run["lambda_poller_requests"].get("sqs", {}).values())
        lines.append(
            f"| {run['system']} | {run['items']:,} | {run['k']} | {run['wall_s']:.1f} | {run['items_per_s']:,.0f} | "
            f"{run['completion_latency_s']:.2f} | {run['requests_total'] / run['items']:.3f} | "
            f"{sqs_pollers / run['items']:.3f} | {run['usd_per_1m_items']:.3f} |"
        )
    loads = [
        f"{run['system']} {run['items']:,}: {run['load_average']['at_fire'][0]} -> {run['load_average']['at_alert'][0]}"
        for run in document["runs"] if run.get("load_average")
    ]
    if loads:
        lines.append("")
        lines.append(f"Load average (1 min), cron event -> alert, on {document['machine']['cores']} cores: " + "; ".join(loads) + ".")
    rules = [run for run in document["runs"] if run.get("k_rule")]
    if rules:
        lines.append("")
        lines.extend(
            f"{run['system']} at {run['items']:,} items: {run['k_rule']}"
            + (f"; {run['processor_batch_size']} messages per processor invocation" if run.get("processor_batch_size") else "")
            for run in rules
        )
    if document.get("speedup_vs_baseline") is not None:
        lines.append("")
        lines.append(
            f"batchdrain's items/s over the baseline's at {document['speedup_at_items']:,} items, same run: "
            f"**{document['speedup_vs_baseline']}x**. Median batchdrain completion latency: "
            f"{document['batchdrain_completion_latency_median_s']} s."
        )
    return "\n".join(lines) + "\n"


def write_results(document: dict[str, Any], out: Path, plot: bool = True) -> list[Path]:
    """latest.json, latest.md and (with matplotlib) latest.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "latest.json", out / "latest.md"]
    written[0].write_text(json.dumps(document, indent=2) + "\n")
    written[1].write_text(markdown_table(document))
    if plot:
        try:
            from bench.plot import plot_results
        except ImportError as error:
            print(f"no plot ({error}); `make bench` installs requirements-bench.txt", file=sys.stderr)
        else:
            written.append(plot_results(document, out / "latest.png"))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.harness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000], help="batch sizes (default 10000 100000)")
    parser.add_argument("--baseline-max", type=int, default=int(os.environ.get("BASELINE_MAX") or 10_000),
                        help="largest size the baseline runs at (default 10000, or $BASELINE_MAX)")
    parser.add_argument("--k", type=int, default=None, help="pin batchdrain's K (default: batchdrain chooses, chalicelib/sizing.py)")
    parser.add_argument("--item-seconds", type=float, default=BENCH_ITEM_SECONDS,
                        help=f"the item_seconds the bench's definition declares (default {BENCH_ITEM_SECONDS}: the fast task)")
    parser.add_argument("--baseline-batch-size", type=int, default=None,
                        help="messages per baseline processor invocation (default: the deployed PROCESSOR_BATCH_SIZE)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder (default bench/results)")
    parser.add_argument("--system", choices=("batchdrain", "baseline"), help="one run of one system only (bench-1m)")
    parser.add_argument("--json", type=Path, help="with --system: write that run's record here")
    parser.add_argument("--stock-moto", action="store_true", help="moto without batchdrain_local/emulator.py's fixes")
    arguments = parser.parse_args(argv)
    if arguments.system:
        emulator, _ = prepare_emulator(arguments.stock_moto)
        cpu = CpuLedger().install()
        run = run_batchdrain if arguments.system == "batchdrain" else run_baseline
        kwargs = ({"k": arguments.k, "item_seconds": arguments.item_seconds} if arguments.system == "batchdrain"
                  else {"batch_size": arguments.baseline_batch_size})
        record = run(arguments.items[0], cpu=cpu, **kwargs)
        record["peak_rss_mb"] = round(peak_rss_bytes() / 2**20, 1)
        record["emulator"] = emulator
        print(_line(record))
        if arguments.json:
            arguments.json.write_text(json.dumps(record, indent=2) + "\n")
        return 0
    started = time.monotonic()
    document = run_all(sorted(arguments.items), arguments.baseline_max, arguments.k, stock_moto=arguments.stock_moto,
                       item_seconds=arguments.item_seconds, baseline_batch_size=arguments.baseline_batch_size)
    for path in write_results(document, arguments.out):
        print(f"wrote {path.relative_to(PROJECT_DIR) if path.is_relative_to(PROJECT_DIR) else path}")
    print(markdown_table(document))
    print(f"make bench took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
