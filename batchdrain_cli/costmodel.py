"""What one batch costs on AWS: every request batchdrain makes, its billing units, and its price.

Why a model beside the benchmarks: the local stack counts requests but cannot bill
them, and cannot run 100 million items. This module predicts, for N items, the requests
each role makes, with the constants and functions the app itself uses
(`chalicelib.model.shard_count` and `item_budget`, `store.BATCH_WRITE_ROWS`,
`model.SQS_BATCH_ENTRIES`/`SQS_BATCH_BYTES`, `planner.PLAN_GROUP_CHUNKS` and `MARGIN_MS`,
`sources.RANDOM_ITEM_BYTES`, `chunks.new_chunk_row` and `model.Chunk.body` for sizes) and
the deployed settings, read through `chalicelib.config` from `.chalice/config.json`
(`deployed_defaults`). Every source is planned the same way: the batcher writes the
header and one `P#` row and planning message per segment, planners write the chunk rows
and messages in parallel, and the finalizer seals the batch when the last segment row goes.
`tests/integration/test_cost_model.py` runs small batches on the local stack and checks
the requests it counts against these same functions: the model cannot drift from the
code without a test failing.

Three kinds of figures, kept apart (README 'What a batch costs'):

- exact: the requests every batch makes whatever the timing (`deterministic_requests`:
  header, segment rows, rows, checkpoints, messages, one read and one delete per chunk,
  seal, shard closes, completion, alert). The integration test checks each one.
- modelled from timing: how many stream batches wake the finalizer and how many shards
  each one queries, Lambda's receives and deletes on the queues, progress stamps and
  sweeps while the batch runs, and the planners' continuations (a segment that outlasts
  one planner invocation goes on in a new message). On AWS they follow from the run's rate (below); the
  test checks the same formulas against the stream batches it observed.
- assumed: request latency and cold starts inside Lambda (`REQUEST_MS`, `INIT_MS`), the
  table's stream shards (`STREAM_SHARDS`), and log bytes. No AWS account is used here,
  so they are stated, not measured. The CPU figures (`*_CPU_MS`) were measured on this
  machine and scaled by Lambda's CPU share (memory / 1,769 MB of one vCPU).

Prices come from one file, `chalicelib/prices.json` (read by `chalicelib.pricing.load_prices`),
with its sources and date; so do item sizes and units, and the request latencies and CPU
figures (REQUEST_MS and the `*_CPU_MS`, named below), which each batch's own cost (chalicelib.batchcost)
uses as well.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import json
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping
from unittest import mock

from chalicelib import chunks as chunk_rows
from chalicelib import itemstats, model, planner, sizing
from chalicelib.pricing import (
    GENERATE_CPU_MS,
    ITEM_CPU_MS,
    LINE_CPU_MS,
    MESSAGE_CPU_MS,
    REQUEST_MS,
    STREAM_POLL_S,
    STREAM_SHARDS,
    Prices,
    cpu_scale,
    item_bytes,
    load_prices,
    read_units,
    request_ms,
    write_units,
)
from chalicelib.config import Definition, EventSourceSettings, Settings, Source, load_definitions
from chalicelib.planner import PLAN_GROUP_CHUNKS
from chalicelib.sources import RANDOM_ITEM_BYTES
from chalicelib.store import BATCH_WRITE_ROWS, SEGMENTS_PER_TRANSACTION

PROJECT_DIR = Path(__file__).resolve().parent.parent

# -- assumptions and measurements (see the module docstring) -----------------------------

# Assumed: INIT of a Python 3.11 environment importing boto3 and the app (billed since 2025-08-01).
INIT_MS = 500.0
# Lambda long-polls SQS for up to 20 s (WaitTimeSeconds); an idle queue costs one empty
# receive per poller per 20 s. While a batch runs the queue is not empty; when it drains,
# each poller makes about one empty receive before Lambda scales its pollers back down.
LONG_POLL_S = 20
# Assumed bytes CloudWatch Logs ingests per invocation: START, END and REPORT lines (~330 bytes).
LOG_BYTES_PER_INVOCATION = 400
# Largest per-partition throughput DynamoDB allows (AWS_FACTS.md): write units per second.
PARTITION_WRITE_LIMIT = 1000
# sources.plan sizes the shards of an object source at one item per 100 bytes.
OBJECT_BYTES_PER_ESTIMATED_ITEM = 100

SERVICES = ("sqs", "dynamodb", "lambda", "sns", "s3", "logs")


# -- the deployed defaults ---------------------------------------------------------------------


@dataclass(frozen=True)
class Defaults:
    """What a deployed stage runs with: settings, the Lambda configuration and the shipped definition.

    Read by `deployed_defaults` through the same `chalicelib.config` code the functions
    run at import, so a changed default changes the model.
    """

    items: int
    k: int  # the definition's pinned K, or the one batchdrain chooses at its declared item_seconds
    task: str
    task_options: Mapping[str, Any]
    item_seconds: float
    source: str
    results: bool
    memory_mb: int
    arch: str
    concurrency: int
    processor_batch_size: int
    processor_batching_window_s: int
    processor_timeout_s: int
    function_timeout_s: int
    finalizer_batch_size: int
    finalizer_window_s: int
    shard_chunk_target: int
    max_shards: int
    max_message_bytes: int
    segment_bytes: int
    random_item_bytes: int
    random_max_value: int
    planner_concurrency: int
    planner_timeout_s: int
    planner_margin_s: float
    plan_group_chunks: int
    batch_write_rows: int
    sqs_batch_entries: int
    sqs_batch_bytes: int
    sweep_minutes: int
    definition: str
    stage: str
    auto_k: bool = False  # the definition leaves K to batchdrain (chalicelib.sizing)


def _stage_config(stage: str, project_dir: Path) -> tuple[dict[str, str], dict[str, Any]]:
    config = json.loads((project_dir / ".chalice" / "config.json").read_text())
    if stage not in config.get("stages", {}):
        raise ValueError(f".chalice/config.json has no stage {stage!r} (stages: {', '.join(config.get('stages', {}))})")
    stage_config = config["stages"][stage]
    environment = {**config.get("environment_variables", {}), **stage_config.get("environment_variables", {})}
    return environment, {**{k: v for k, v in config.items() if k != "stages"}, **stage_config}


def deployed_defaults(
    stage: str = "dev",
    environ: Mapping[str, str] | None = None,
    definitions_file: Path | None = None,
    project_dir: Path = PROJECT_DIR,
) -> Defaults:
    """The stage's settings as its functions read them, and its first definition's K, items and source.

    `environ` adds or overrides environment variables (the local stack sets some, e.g.
    SHARD_CHUNK_TARGET=4 in the integration tests). Names the model does not use (table,
    queues, topic, stream) get placeholders when the stage leaves them to the deploy.
    """
    environment, config = _stage_config(stage, project_dir)
    placeholders = {
        name: "unused"
        for name in (
            "TABLE_NAME",
            "WORK_QUEUE_NAME",
            "ALERT_TOPIC_ARN",
            "TABLE_STREAM_ARN",
            "DEAD_LETTER_QUEUE_NAME",
            "PLANNING_QUEUE_NAME",
        )
    }
    # The local stage's API token is made by the stack when it starts (API_AUTH=token needs one).
    variables = {**placeholders, "API_TOKEN": "placeholder-api-token", **environment, **(environ or {})}
    with mock.patch.dict(os.environ, variables, clear=True):
        sources = EventSourceSettings.from_env()
        settings = Settings.from_env()
    definitions = load_definitions(definitions_file or project_dir / "chalicelib" / "batches.json")
    definition = next(iter(definitions.values()))
    return Defaults(
        items=definition.source.count or 0,
        k=sizing.choose_k(definition, sources, settings.max_message_bytes).k,
        auto_k=definition.items_per_message is None,
        task=definition.task,
        task_options=dict(definition.task_options),
        item_seconds=definition.item_seconds,
        source=definition.source.type,
        results=definition.results is not None,
        memory_mb=int(config.get("lambda_memory_size", 128)),  # Chalice's default is 128 MB
        arch="x86_64",  # Chalice deploys x86_64 unless told otherwise; no stage says otherwise
        concurrency=sources.processor_max_concurrency or 1000,
        processor_batch_size=sources.processor_batch_size,
        processor_batching_window_s=sources.processor_batching_window,
        processor_timeout_s=sources.processor_timeout_seconds,
        function_timeout_s=int(config.get("lambda_timeout", 60)),
        finalizer_batch_size=sources.finalizer_batch_size,
        finalizer_window_s=sources.finalizer_batching_window,
        shard_chunk_target=settings.shard_chunk_target,
        max_shards=model.MAX_SHARDS,
        max_message_bytes=settings.max_message_bytes,
        segment_bytes=settings.segment_bytes,
        random_item_bytes=RANDOM_ITEM_BYTES,
        random_max_value=definition.source.max_value,
        planner_concurrency=sources.planner_max_concurrency,
        planner_timeout_s=int(
            config.get("lambda_functions", {}).get("plan_segments", {}).get("lambda_timeout")
            or config.get("lambda_timeout", 60)
        ),
        planner_margin_s=planner.MARGIN_MS / 1000,
        plan_group_chunks=PLAN_GROUP_CHUNKS,
        batch_write_rows=BATCH_WRITE_ROWS,
        sqs_batch_entries=model.SQS_BATCH_ENTRIES,
        sqs_batch_bytes=model.SQS_BATCH_BYTES,
        sweep_minutes=sources.sweep_minutes,
        definition=definition.name,
        stage=stage,
    )


def default_task_ms(defaults: Defaults) -> float:
    """The shipped definition's mean task time: `sleep` sleeps value x scale ms, value uniform in 0..max_value (1,000)."""
    if defaults.task == "sleep":
        return 1000 / 2 * float(defaults.task_options.get("scale", 1.0))
    return 0.0


# -- sizes: DynamoDB items and message bodies -------------------------------------------------------


# -- the workload and its shape ---------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """What the user asks about: N items in chunks of K, a task, a concurrency, a source.

    `item_bytes`: bytes of one item as JSON; None takes the `random` source's real items
    ({"id", "value"}). For `s3-jsonl` a line is the item plus its newline.
    """

    items: int
    k: int
    task_ms: float
    memory_mb: int
    concurrency: int
    source: str = "random"
    results: bool = False
    item_bytes: int | None = None
    arch: str = "x86_64"
    batch_id: str = "nightly-2026-11-23T06:00Z"
    source_uri: str = "s3://my-exports/orders/2026-11-23/orders.jsonl"
    k_rule: str = ""  # why this K (chalicelib.sizing), when batchdrain chose it


def chosen_k(defaults: Defaults, items: int, source: str, item_seconds: float) -> sizing.KChoice:
    """The K batchdrain picks (chalicelib.sizing) for the definition with this many items, source and item time."""
    definition = Definition(
        name=defaults.definition,
        schedule="",
        source=Source(type=source, count=items if source == "random" else 0, max_value=defaults.random_max_value,
                      uri="" if source == "random" else Workload.source_uri),
        task=defaults.task,
        task_options=defaults.task_options,
        item_seconds=item_seconds,
    )
    budget = sizing.Budget(defaults.processor_batch_size, defaults.processor_timeout_s)
    return sizing.choose_k(definition, budget, defaults.max_message_bytes)


def workload_from_defaults(defaults: Defaults, item_seconds: float | None = None, **overrides: Any) -> Workload:
    """The deployed definition's workload, with any field overridden (CLI options).

    Without a K, a definition that leaves K to batchdrain gets the one it would choose for
    these items at `item_seconds` (default: the task's time given, else the definition's).
    """
    base = Workload(
        items=defaults.items,
        k=defaults.k,
        task_ms=default_task_ms(defaults),
        memory_mb=defaults.memory_mb,
        concurrency=defaults.concurrency,
        source=defaults.source if defaults.source in ("random", "s3-jsonl") else "s3-jsonl",
        results=defaults.results,
        arch=defaults.arch,
        batch_id=f"{defaults.definition}-2026-11-23T06:00Z",
    )
    workload = replace(base, **{key: value for key, value in overrides.items() if value is not None})
    if overrides.get("k") is None and defaults.auto_k:
        task_seconds = max(0.001, overrides["task_ms"] / 1000) if overrides.get("task_ms") is not None else None
        seconds = item_seconds or task_seconds or defaults.item_seconds
        choice = chosen_k(defaults, workload.items, workload.source, seconds)
        workload = replace(workload, k=choice.k, k_rule=choice.describe())
    return workload


@dataclass(frozen=True)
class Shape:
    """How a batch of this workload is cut: segments, chunks, shards, write groups and mean sizes."""

    items: int
    chunks: int
    items_per_chunk: float
    shards: int  # the header's `shards` (planning.plan_batch: estimated items // K + 1, by SHARD_CHUNK_TARGET)
    open_shards: int  # shards recorded at the seal: all of them (planning.seal_when_planned)
    segments: int  # P# rows and planning messages (sources.plan): index ranges for `random`, byte ranges for objects
    groups: tuple[int, ...]  # chunks per planner write group (at most PLAN_GROUP_CHUNKS, per segment)
    segment_chunks: tuple[int, ...]  # chunks per segment
    message_bytes: float  # mean body of a work message
    row_bytes: float  # mean chunk row
    row_write_units: float  # mean WRU to write (and to delete) one chunk row
    header_bytes: int  # the header as created
    sealed_header_bytes: int  # the header once sealed, with its `open_shards`
    final_header_bytes: int  # the header once completed and notified
    unsent_bytes: int  # what a segment checkpoint's `unsent` list adds to the segment row
    segment_row_bytes: int  # a segment row once claimed and checkpointed
    object_bytes: int  # object sources: the object's size; 0 for `random`
    auto_k: bool = False  # K chosen by batchdrain: the batcher reads the item times its definition last observed


def _entry_bytes(index: int, item_json_bytes: int) -> int:
    """model.entry_size for an item of that JSON size: `[index,item],`."""
    return item_json_bytes + len(str(index)) + 4


def _sample_positions(count: int, samples: int = 64) -> list[int]:
    if count <= samples:
        return list(range(count))
    return sorted({round(n * (count - 1) / (samples - 1)) for n in range(samples)})


def random_per_segment(defaults: Defaults) -> int:
    """Generated items per segment, as sources.plan cuts a `random` source: SEGMENT_BYTES // RANDOM_ITEM_BYTES."""
    return max(1, defaults.segment_bytes // defaults.random_item_bytes)


def _segment_items(workload: Workload, defaults: Defaults, line: int) -> list[tuple[int, int]]:
    """Each segment's items as item numbers [first, stop), cut as sources.plan cuts the source.

    `random`: index ranges of SEGMENT_BYTES // RANDOM_ITEM_BYTES items. An object: byte
    ranges of SEGMENT_BYTES, each holding the lines that begin in it.
    """
    if workload.source == "random":
        per_segment = random_per_segment(defaults)
        return [(first, min(first + per_segment, workload.items)) for first in range(0, workload.items, per_segment)]
    object_size = workload.items * line
    segments = max(1, math.ceil(object_size / defaults.segment_bytes))
    return [
        (
            math.ceil(segment * defaults.segment_bytes / line),
            math.ceil(min((segment + 1) * defaults.segment_bytes, object_size) / line),
        )
        for segment in range(segments)
    ]


def shape_of(workload: Workload, defaults: Defaults) -> Shape:
    """Cut the workload as the planners would, without writing anything.

    Segment, chunk and shard counts use the app's own rules (sources.plan's segments,
    planning.plan_batch's shards, chunk numbers `segment x SEGMENT_CHUNKS + n` on shard
    `(segment + n) % shards`). Sizes are exact for the chunks sampled (every chunk up to
    64, evenly spaced samples beyond), built by the app's own code, and averaged.
    """
    from chalicelib import sources
    from chalicelib.config import Source

    if workload.items < 1 or workload.k < 1:
        raise ValueError("items and k must be at least 1")
    generated = workload.source == "random"
    options = dict(defaults.task_options)
    options_bytes = len(json.dumps(options, separators=(",", ":")))
    budget = model.item_budget(defaults.max_message_bytes, options_bytes)
    random_source = Source(type="random", count=workload.items, max_value=defaults.random_max_value)

    def item_json_bytes(index: int) -> int:
        if workload.item_bytes is not None:
            return workload.item_bytes
        return len(json.dumps(sources.item_at(random_source, workload.batch_id, index), separators=(",", ":")))

    # Items per chunk: K, unless the message's byte budget cuts first (model.cut_entries).
    # An object source's item index is its line's byte offset; a generated item's, its number.
    line = (workload.item_bytes or 24) + 1
    scale = 1 if generated else line
    widest = _entry_bytes((workload.items - 1) * scale, item_json_bytes(workload.items - 1))
    per_chunk = max(1, min(workload.k, budget // widest))

    segment_items = _segment_items(workload, defaults, line)
    segments = len(segment_items)
    segment_chunks = tuple(math.ceil((stop - first) / per_chunk) for first, stop in segment_items)
    chunks = sum(segment_chunks)
    object_size = 0 if generated else workload.items * line
    # planning.plan_batch: shards for the estimated items (a generated source's exact count; an
    # object's at one item per OBJECT_BYTES_PER_ESTIMATED_ITEM bytes), sealed on every shard.
    estimated = workload.items if generated else max(1, object_size // OBJECT_BYTES_PER_ESTIMATED_ITEM)
    shards = model.shards_for_items(estimated, workload.k, defaults.shard_chunk_target)
    open_shards = shards

    # Sizes of sampled chunks, built by the app's own code (row and message body).
    results = {"bucket": "my-results", "prefix": "results"} if workload.results else None
    bucket, _, key = workload.source_uri[len("s3://") :].partition("/")
    # Where an object source's chunks and segments lie (the pinned object), as planner._chunks records it.
    location = {"kind": "lines", "bucket": bucket, "key": key, "etag": '"' + "0" * 32 + '"', "file": 0, "gzip": False}
    starts = list(itertools.accumulate(segment_chunks, initial=0))
    rows, bodies, units = [], [], []
    for position in _sample_positions(chunks):
        segment = bisect.bisect_right(starts, position) - 1
        local = position - starts[segment]
        first_item, stop_item = segment_items[segment]
        first = first_item + local * per_chunk
        numbers = range(first, min(first + per_chunk, stop_item))
        if generated:
            items = tuple((n, sources.item_at(random_source, workload.batch_id, n)) for n in numbers)
            span = None  # a generated chunk is rebuilt from its indices alone (planner._chunks)
        else:
            items = tuple((n * line, {"pad": "x" * max(0, item_json_bytes(n) - 10)}) for n in numbers)
            span = {
                **location,
                "s": items[0][0],
                "x": items[-1][0] + line,
                "i": items[0][0],
                "n": len(items),
                "d": "0" * 16,
            }
        chunk_no, shard = segment * model.SEGMENT_CHUNKS + local, (segment + local) % shards
        chunk = model.Chunk(
            workload.batch_id,
            shard,
            chunk_no,
            defaults.task,
            options,
            items,
            defaults.item_seconds,
            1,
            (),
            span,
            results,
        )
        row = chunk_rows.new_chunk_row(workload.batch_id, shard, chunk_no, chunk.indices, 1, span)
        rows.append(item_bytes(row))
        units.append(write_units(item_bytes(row)))
        bodies.append(len(chunk.body()))
    # A planner's group closes at PLAN_GROUP_CHUNKS chunks, or once its messages reach
    # PLAN_GROUP_BYTES (planner._groups; messages are held until sent).
    group_bytes = getattr(planner, "PLAN_GROUP_BYTES", None)
    chunk_item_bytes = max(1.0, sum(bodies) / len(bodies) - 200) if bodies else 1.0
    per_group = defaults.plan_group_chunks
    if group_bytes:
        per_group = max(1, min(per_group, math.ceil(group_bytes / chunk_item_bytes)))
    groups = tuple(
        size
        for count in segment_chunks
        for size in (per_group,) * (count // per_group) + ((count % per_group,) if count % per_group else ())
    )
    header, sealed, final = (
        header_item(workload, defaults, shards, chunks, phase, segments) for phase in ("created", "sealed", "final")
    )
    unsent_group = max(groups) if groups else 0
    last_chunk = (segments - 1) * model.SEGMENT_CHUNKS + max(segment_chunks)
    unsent = item_bytes({"unsent": [[shards - 1, last_chunk]] * unsent_group}) if chunks else 0
    # The last segment row as a planner leaves it between groups (claimed, checkpointed).
    first_item, stop_item = segment_items[-1]
    if generated:
        spec: dict[str, Any] = {"kind": "random", "pos": first_item, "end": stop_item}
        resume = stop_item
    else:
        spec = {
            **location,
            "pos": (segments - 1) * defaults.segment_bytes,
            "end": object_size,
        }
        resume = object_size
    segment_row = item_bytes(
        {
            **model.segment_key(workload.batch_id, segments - 1),
            "spec": spec,
            "chunks": segment_chunks[-1],
            "items": stop_item - first_item,
            "owner": "0" * 32,
            "lease_until": 1_800_000_000,
            "pos": resume,
            "next_index": resume,
        }
    )
    return Shape(
        items=workload.items,
        chunks=chunks,
        items_per_chunk=workload.items / chunks if chunks else 0,
        shards=shards,
        open_shards=open_shards,
        segments=segments,
        groups=groups,
        segment_chunks=segment_chunks,
        message_bytes=sum(bodies) / len(bodies) if bodies else 0,
        row_bytes=sum(rows) / len(rows) if rows else 0,
        row_write_units=sum(units) / len(units) if units else 0,
        header_bytes=item_bytes(header),
        sealed_header_bytes=item_bytes(sealed),
        final_header_bytes=item_bytes(final),
        unsent_bytes=unsent,
        segment_row_bytes=segment_row,
        object_bytes=object_size,
        auto_k=bool(workload.k_rule),
    )


def source_pin(workload: Workload, defaults: Defaults) -> dict[str, Any]:
    """The header's `source_pin` as sources.plan records it."""
    if workload.source == "random":
        return {
            "format": "random",
            "count": workload.items,
            "max_value": defaults.random_max_value,
            "seed": workload.batch_id,
        }
    return {"format": "jsonl", "uri": workload.source_uri, "etag": '"' + "0" * 32 + '"'}


def header_item(
    workload: Workload, defaults: Defaults, shards: int, chunks: int, phase: str = "created", segments: int = 0
) -> dict[str, Any]:
    """The batch header as the batcher writes it (planning.plan_batch), as sealed, or as it ends (`phase`).

    Created with no totals (each finished segment adds its own) and `planned` false
    until every segment row exists. The integration test compares the final one's size
    with the real header's.
    """
    batch_id = workload.batch_id
    created = "2026-11-23T06:00:01.234Z"
    header: dict[str, Any] = {
        **model.header_key(batch_id),
        "batch_id": batch_id,
        "definition": batch_id[: -len("-2026-11-23T06:00Z")],
        "task": defaults.task,
        "task_options": json.dumps(dict(defaults.task_options), separators=(",", ":")),
        "items_per_message": workload.k,
        "item_seconds": defaults.item_seconds,
        "max_message_bytes": defaults.max_message_bytes,
        "scheduled_at": "2026-11-23T06:00:00.000Z",
        "attempt": 1,
        "created_at": created,
        "source_pin": source_pin(workload, defaults),
        "segments": segments,
        "shards": shards,
        "total_items": 0,
        "total_chunks": 0,
        "planned": False,
        "status": model.CREATING,
        "open_pk": model.OPEN_PK,
        "open_sk": f"{created}#{batch_id}",
    }
    if workload.source == "random":
        header["source"] = {"type": "random", "count": workload.items, "max_value": defaults.random_max_value}
    else:
        header["source"] = {"type": workload.source, "uri": workload.source_uri, "compression": "auto"}
    if workload.results:
        header["results"] = {"bucket": "my-results", "prefix": "results"}
    if phase in ("sealed", "final"):
        # Planned, totalled by the planners' transactions (which stamp progress), sealed on every shard.
        header.update(
            planned=True,
            total_items=workload.items,
            total_chunks=chunks,
            status=model.SEALED,
            sealed_at=created,
            progress_at=created,
        )
        if phase == "sealed" and shards:
            header["open_shards"] = set(range(shards))
    if phase == "final":
        header.update(
            status=model.COMPLETED,
            completed_at=created,
            succeeded=workload.items,
            failed=0,
            sample_errors=[],
            notified_at=created,
            alert_id=f"{batch_id}/1",
            # What the completion records of the batch (chalicelib.batchcost): its item times and its cost.
            item_seconds_observed={"count": workload.items, "p50": 0.2181, "p99": 0.2378, "max": 0.2594},
            cost={
                "infrastructure_usd": 0.002691,
                "task_compute_usd": 0.08333,
                "by_service": dict.fromkeys(("dynamodb", "sqs", "sns", "s3", "lambda_requests", "lambda_time"), 0.0001234),
            },
        )
        del header["open_pk"], header["open_sk"]
    return header


# -- requests by role ----------------------------------------------------------------------------------

Requests = Counter  # Counter[(service, operation)] -> calls


def messages_per_send(message_bytes: float, defaults: Defaults) -> int:
    """Entries one SendMessageBatch carries: at most 10, and at most 1 MiB of bodies (batcher._send_requests)."""
    if message_bytes <= 0:
        return defaults.sqs_batch_entries
    return max(1, min(defaults.sqs_batch_entries, int(defaults.sqs_batch_bytes // message_bytes)))


def _sends(group: int, per_send: int) -> int:
    return math.ceil(group / per_send)


def segment_transactions(shape: Shape) -> int:
    """TransactWriteItems calls that write the segment rows (store.put_segments)."""
    return math.ceil(shape.segments / SEGMENTS_PER_TRANSACTION)


def plan_requests(shape: Shape, defaults: Defaults, generated: bool = False, results: bool = False) -> Requests:
    """The batcher's one short step (batcher.create_batch, planning.plan_batch): source, header, P# rows, messages.

    An object source is looked at once (HeadObject); a generated (`random`) one is not
    read at all; a batch with results writes its running manifest (the bucket's check).
    Then the header, the segment rows (one transaction per SEGMENTS_PER_TRANSACTION, with
    a check on the header), `mark_planned`, and one planning message per segment
    (SendMessageBatch, 10 a call). GetQueueUrl once (the planning queue; aws.queue_url
    is cached per process).
    """
    requests: Requests = Counter()
    if shape.auto_k:
        requests[("dynamodb", "GetItem")] += 1  # the item times its definition's last batch observed (sizing K)
    if not generated:
        requests[("s3", "HeadObject")] += 1
    if results:
        requests[("s3", "PutObject")] += 1
    requests[("dynamodb", "PutItem")] += 1
    requests[("dynamodb", "TransactWriteItems")] += segment_transactions(shape)
    requests[("dynamodb", "UpdateItem")] += 1  # mark_planned
    requests[("sqs", "SendMessageBatch")] += math.ceil(shape.segments / defaults.sqs_batch_entries)
    requests[("sqs", "GetQueueUrl")] += 1
    return requests


def planner_requests(
    shape: Shape,
    defaults: Defaults,
    generated: bool = False,
    planner_processes: int | None = None,
    continuations: int = 0,
) -> Requests:
    """Every planner (plan_segments, one segment per invocation): from its planning message to its transaction.

    Per invocation: the header read, the lease (claim), and for an object one ranged
    GetObject (a generated segment reads nothing). Per group (at most PLAN_GROUP_CHUNKS
    chunks): rows (BatchWriteItem, 25 a call), checkpoint listing the group unsent,
    messages (SendMessageBatch, 10 a call), clear. Per segment: the transaction that
    deletes its P# row and adds its totals to the header. A continuation (the
    invocation ran low on time) releases the segment and re-sends its planning message;
    the next invocation reads, claims and (objects) reads the object again.
    GetQueueUrl once per process (aws.queue_url is cached): the work queue in each
    planner environment (by default one per planner running at once), and the planning
    queue in each one that continued a segment.
    """
    per_send = messages_per_send(shape.message_bytes, defaults)
    invocations = shape.segments + continuations
    if planner_processes is None:
        planner_processes = min(defaults.planner_concurrency, shape.segments)
    requests: Requests = Counter()
    requests[("sqs", "GetQueueUrl")] += planner_processes + min(planner_processes, continuations)
    requests[("dynamodb", "GetItem")] += invocations
    requests[("dynamodb", "UpdateItem")] += invocations + continuations  # claim; release before continuing
    if not generated:
        requests[("s3", "GetObject")] += invocations
    requests[("dynamodb", "UpdateItem")] += 2 * len(shape.groups)  # checkpoint + clear per group
    requests[("dynamodb", "BatchWriteItem")] += sum(math.ceil(g / defaults.batch_write_rows) for g in shape.groups)
    requests[("sqs", "SendMessageBatch")] += sum(_sends(g, per_send) for g in shape.groups) + continuations
    requests[("dynamodb", "TransactWriteItems")] += shape.segments
    return requests


def planning_requests(
    shape: Shape,
    defaults: Defaults,
    planner_processes: int | None = None,
    generated: bool = False,
    continuations: int = 0,
    results: bool = False,
) -> Requests:
    """The batcher's plan and every planner: every request that writes a batch's chunk rows and messages."""
    return plan_requests(shape, defaults, generated, results) + planner_requests(
        shape, defaults, generated, planner_processes, continuations
    )


def processor_requests(shape: Shape, results: bool) -> Requests:
    """Per work message on the happy path: one consistent GetItem, the results object (if on), one DeleteItem."""
    requests: Requests = Counter()
    requests[("dynamodb", "GetItem")] += shape.chunks
    requests[("dynamodb", "DeleteItem")] += shape.chunks
    if results:
        requests[("s3", "PutObject")] += shape.chunks  # created with If-None-Match: *
    return requests


def stats_requests(invocations: float) -> Requests:
    """Each processor invocation ADDs what it saw of a batch to one of the batch's stats rows (chalicelib.itemstats).

    One UpdateItem per batch per invocation (a batch's messages arrive together), of a small
    row: one write unit. It times its items and prices the batch (chalicelib.batchcost).
    """
    requests: Requests = Counter()
    requests[("dynamodb", "UpdateItem")] += invocations
    return requests


def completion_requests(shape: Shape, results: bool) -> Requests:
    """What the finalizer does once per batch: seal, close every shard, complete, (results) manifest, publish, record.

    The seal is the finalizer's, when it sees the last P# row go (planning.seal_when_planned).
    The completion reads the batch's stats rows (one Query) for the item times and cost it
    records (chalicelib.batchcost). With results the manifest step lists the F# rows of
    every shard (one Query each when none failed) and writes failures.jsonl and manifest.json.
    """
    requests: Requests = Counter()
    requests[("dynamodb", "UpdateItem")] += 1  # the seal
    requests[("dynamodb", "UpdateItem")] += shape.open_shards + 2  # close_shard each, complete, mark_notified
    requests[("dynamodb", "Query")] += 1  # the batch's stats rows
    requests[("sns", "Publish")] += 1
    requests[("dynamodb", "PutItem")] += 1  # its item times, kept for its definition's next batch (note_observed)
    if results:
        requests[("dynamodb", "Query")] += shape.shards
        requests[("s3", "PutObject")] += 2
    return requests


def deterministic_requests(
    shape: Shape,
    defaults: Defaults,
    results: bool,
    planner_processes: int | None = None,
    generated: bool = False,
    continuations: int = 0,
) -> Requests:
    """Every request whose count does not depend on timing: the integration test checks each exactly.

    `planner_processes`: the processes planners ran in (their GetQueueUrl lookups);
    `generated`: a `random` source (no S3 reads); `continuations`: segments continued
    in a new planning message (none in a batch whose segments each fit one invocation).
    """
    return (
        planning_requests(shape, defaults, planner_processes, generated, continuations, results)
        + processor_requests(shape, results)
        + completion_requests(shape, results)
    )


def finalizer_stream_requests(stream_batches: int, segment_batches: int, progress_stamps: int) -> Requests:
    """The finalizer's requests that follow its stream batches, besides its Queries (`finalizer_query_bounds`).

    Each stream batch with a chunk REMOVE or the seal of the batch (`stream_batches`)
    reads the header (consistent GetItem), and so does each with a segment REMOVE
    (`segment_batches`). A progress stamp is one UpdateItem, at most
    once a minute.
    """
    requests: Requests = Counter()
    requests[("dynamodb", "GetItem")] += stream_batches + segment_batches
    requests[("dynamodb", "UpdateItem")] += progress_stamps
    return requests


def finalizer_query_bounds(
    open_shards: int, touched_per_batch: Iterable[float], segment_batches: int = 0
) -> tuple[float, float]:
    """Bounds on the finalizer's `Query Limit=1` calls, given the shards each stream batch of REMOVEs touched.

    Every open shard is queried at least once (it is closed only after a Query finds it
    empty, and the seal's own record queries every shard still open); at most, each
    stream batch also queries every open shard it touched. Each stream batch with a
    segment REMOVE while the batch is still being planned adds one `has_segments`
    Query: at least the one that finds none left.
    """
    low = open_shards + (1 if segment_batches else 0)
    return float(low), float(
        open_shards + sum(min(open_shards, touched) for touched in touched_per_batch) + segment_batches
    )


def poller_requests(invocations: float, empty_receives: float) -> Requests:
    """Lambda's own requests on a queue it polls: one ReceiveMessage per invocation, one DeleteMessageBatch per invocation.

    Modelled as a full batch per receive (a deep queue); empty receives are the long
    polls (20 s) that find nothing, counted apart. These are Lambda's requests, billed
    to the account, not the app's: the local stack's pollers make their own.
    """
    requests: Requests = Counter()
    requests[("sqs", "ReceiveMessage")] += invocations + empty_receives
    requests[("sqs", "DeleteMessageBatch")] += invocations
    return requests


# -- the whole estimate ----------------------------------------------------------------------------


@dataclass
class Estimate:
    """Everything `batchdrain cost` prints (see `to_json`)."""

    workload: Workload
    shape: Shape
    requests: dict[str, Requests]  # by role
    units: dict[str, float]
    breakdown: dict[str, dict[str, float]]  # units by operation: WRU, RRU, SQS billed requests
    lambda_usage: dict[str, dict[str, float]]  # by function: invocations, overhead_gb_s, task_gb_s, cold_starts
    usd: dict[str, float]  # by service, task compute apart
    task_compute_usd: float
    time_floor_s: float
    run_s: float
    fill_s: float
    busiest_partition: dict[str, Any]
    planning: dict[str, Any] = field(default_factory=dict)  # the batcher's plan and the planners (see `estimate`)
    warnings: list[str] = field(default_factory=list)

    @property
    def overhead_usd(self) -> float:
        return sum(self.usd.values())

    @property
    def total_usd(self) -> float:
        return self.overhead_usd + self.task_compute_usd

    def requests_by_service(self) -> dict[str, dict[str, float]]:
        merged: dict[str, dict[str, float]] = {}
        for role_requests in self.requests.values():
            for (service, operation), count in role_requests.items():
                merged.setdefault(service, {}).setdefault(operation, 0)
                merged[service][operation] += count
        return {service: dict(sorted(ops.items())) for service, ops in sorted(merged.items())}


def write_units_by_operation(
    shape: Shape, defaults: Defaults, progress_stamps: float, continuations: float = 0
) -> dict[str, float]:
    """DynamoDB write request units per kind of write, from the item sizes of `shape`.

    A chunk row is written once and deleted once, each at its size. Every write to the
    header while the batch is open is a write to the `open-batches` index too (projection
    ALL), so header writes count twice; segment rows carry no index key. Transactions
    (a planner's finish) cost 2 WRU per KB.
    """
    header, sealed, final = (
        write_units(size) for size in (shape.header_bytes, shape.sealed_header_bytes, shape.final_header_bytes)
    )
    groups = len(shape.groups)
    segment = write_units(shape.segment_row_bytes)
    units = {
        "chunk rows written": shape.chunks * shape.row_write_units,
        "chunk rows deleted": shape.chunks * shape.row_write_units,
        "header created": 2 * header,
        "seal": 2 * sealed,
        "progress stamps": 2 * progress_stamps * sealed,
        "shards closed": 2 * shape.open_shards * sealed,
        "completion": 2 * final,
        "alert recorded (mark_notified)": 2 * final,
        "item times kept for the next batch": 1,
    }
    # Segment rows go in transactions (2 WRU per KB), each with a check on the header (counted at the same rate).
    units["segment rows, plan marked"] = 2 * shape.segments * segment + 2 * segment_transactions(shape) * header + 2 * header
    units["segments claimed (and released to continue)"] = (shape.segments + 2 * continuations) * segment
    units[f"segment checkpoints (set and clear, per {defaults.plan_group_chunks} rows)"] = (
        2 * groups * write_units(shape.segment_row_bytes + shape.unsent_bytes)
    )
    units["segments finished (transactions)"] = shape.segments * (2 * (segment + header) + header)
    return units


def read_units_by_operation(shape: Shape, finalizer: Requests, writer: Requests, sweeper: Requests) -> dict[str, float]:
    """DynamoDB read request units: every read is strongly consistent and under 4 KB (1 RRU), chunk rows included.

    A Query that finds nothing is taken to cost the 1 RRU minimum; the sweeper's index
    Query is eventually consistent but counted at 1 as well.
    """
    return {
        "chunk rows read (processor)": shape.chunks * read_units(shape.row_bytes),
        "header reads (finalizer, planners)": finalizer[("dynamodb", "GetItem")] + writer[("dynamodb", "GetItem")],
        "emptiness and listing Queries (finalizer)": finalizer[("dynamodb", "Query")],
        "sweeps while open": sweeper[("dynamodb", "GetItem")] + sweeper[("dynamodb", "Query")],
    }


def sqs_billed_requests(
    shape: Shape,
    defaults: Defaults,
    invocations: int,
    empty_receives: int,
    writer: Requests,
    chunk_bytes: int,
    continuations: int = 0,
) -> dict[str, float]:
    """SQS requests as billed: each 64 KiB of a send's or a receive's payload is one request."""
    per_send = messages_per_send(shape.message_bytes, defaults)
    per_receive = min(defaults.processor_batch_size, max(1, shape.chunks))
    work_sends = sum(_sends(g, per_send) for g in shape.groups)
    billed = {
        "SendMessageBatch (work)": sum(
            _sends(g, per_send) * max(1, math.ceil(min(g, per_send) * shape.message_bytes / chunk_bytes))
            for g in shape.groups
        ),
        "ReceiveMessage (Lambda, with messages)": invocations
        * max(1, math.ceil(per_receive * shape.message_bytes / chunk_bytes)),
        "ReceiveMessage (Lambda, empty long polls)": empty_receives,
        "DeleteMessageBatch (Lambda)": invocations,
        "GetQueueUrl": writer[("sqs", "GetQueueUrl")],
    }
    # One planning message per segment and per continuation: sent, received and deleted by Lambda.
    billed["planning queue (send, receive, delete)"] = (
        writer[("sqs", "SendMessageBatch")] - work_sends + 2 * (shape.segments + continuations)
    )
    return billed


def estimate(workload: Workload, defaults: Defaults, prices: Prices | None = None) -> Estimate:
    """Predict one batch: requests by role, billing units, Lambda GB-s, dollars, time floor, busiest partition."""
    prices = prices or load_prices()
    shape = shape_of(workload, defaults)
    gb = workload.memory_mb / 1024
    scale = cpu_scale(workload.memory_mb)
    batch = defaults.processor_batch_size
    warnings: list[str] = []

    # -- processors: one invocation per full batch of messages (a deep queue).
    invocations = math.ceil(shape.chunks / batch)
    processor = processor_requests(shape, workload.results) + stats_requests(invocations)
    message_ms = request_ms(processor_requests(replace(shape, chunks=1), workload.results), workload.memory_mb)
    message_ms += (MESSAGE_CPU_MS + shape.items_per_chunk * ITEM_CPU_MS) * scale
    task_s = workload.items * workload.task_ms / 1000
    invocation_s = batch * (message_ms + shape.items_per_chunk * workload.task_ms) / 1000
    processing_rate = workload.concurrency * batch / invocation_s  # chunks/s with every environment busy
    needed_s = batch * workload.k * workload.task_ms / 1000
    if needed_s > defaults.processor_timeout_s - 5:  # config.PROCESSOR_SAFETY_MARGIN_SECONDS
        warnings.append(
            f"PROCESSOR_BATCH_SIZE {batch} x K {workload.k:,} x {workload.task_ms:g} ms = {needed_s:,.0f} s per invocation, "
            f"more than PROCESSOR_TIMEOUT_SECONDS {defaults.processor_timeout_s} - 5 s: a definition with this K and task "
            "is rejected at import (lower K or PROCESSOR_BATCH_SIZE, or raise the processor's timeout)"
        )

    # -- the writer: the batcher's plan (one short step), then the planners, in parallel.
    generated = workload.source == "random"
    plan = plan_requests(shape, defaults, generated, workload.results)
    plan_s = request_ms(plan, workload.memory_mb) / 1000
    if plan_s > defaults.function_timeout_s:
        warnings.append(
            f"the batcher writes {shape.segments:,} segment rows, ~{plan_s:,.0f} s at "
            f"{workload.memory_mb} MB, more than its {defaults.function_timeout_s} s timeout: raise SEGMENT_BYTES for fewer, larger segments"
        )
    # The planners' work (every segment's invocations, requests and items' CPU), shared out
    # by chunks. A planner invocation stops planner.MARGIN_MS before its timeout and
    # continues its segment in a new planning message; up to PLANNER_MAX_CONCURRENCY run at once.
    item_cpu_ms = GENERATE_CPU_MS if generated else LINE_CPU_MS
    planners_s = (
        request_ms(planner_requests(shape, defaults, generated, planner_processes=0), workload.memory_mb)
        + workload.items * item_cpu_ms * scale
    ) / 1000
    segment_s = [planners_s * count / max(1, shape.chunks) for count in shape.segment_chunks]
    usable_s = max(1.0, defaults.planner_timeout_s - defaults.planner_margin_s)
    continuations = sum(max(0, math.ceil(seconds / usable_s) - 1) for seconds in segment_s)
    parallel = max(1, min(defaults.planner_concurrency, shape.segments))
    finishes = [0.0] * parallel  # segments in order, each to the planner free first
    for seconds in segment_s:
        heapq.heappush(finishes, heapq.heappop(finishes) + seconds)
    planning_s = max(finishes)
    fill_s = plan_s + planning_s
    planner_invocations = shape.segments + continuations
    planner_environments = parallel
    plan_role = planner_requests(shape, defaults, generated, continuations=continuations)
    fill_rate = shape.chunks / planning_s if planning_s else float("inf")
    planning = {
        "plan_s": plan_s,
        "segments": shape.segments,
        "planners_at_once": parallel,
        "longest_segment_s": max(segment_s, default=0.0),
        "planner_invocation_s": usable_s,
        "continuations": continuations,
        "planning_s": planning_s,
    }

    # -- how long the batch runs, and the stream batches the finalizer sees meanwhile.
    time_floor_s = task_s / workload.concurrency
    run_s = max(fill_s, shape.chunks / processing_rate, time_floor_s)
    stream_shards = max(1, min(shape.open_shards, STREAM_SHARDS))
    window = defaults.finalizer_window_s or STREAM_POLL_S
    per_stream_batch = max(
        1.0, min(float(defaults.finalizer_batch_size), shape.chunks / run_s / stream_shards * window)
    )
    stream_batches = math.ceil(shape.chunks / per_stream_batch) + 1  # the REMOVEs, and the seal's record
    keys = max(1.0, shape.open_shards / stream_shards)  # shard keys whose REMOVEs share a stream shard
    touched = keys * (1 - (1 - 1 / keys) ** per_stream_batch)  # expected distinct shards in one stream batch
    # The planners' transactions stamp progress while they fill; the finalizer after, once a minute.
    progress_stamps = math.ceil(max(0.0, run_s - fill_s) / 60)
    finalizer = finalizer_stream_requests(stream_batches, shape.segments, progress_stamps)
    finalizer[("dynamodb", "Query")] += finalizer_query_bounds(
        shape.open_shards, [touched] * (stream_batches - 1), shape.segments
    )[1]
    finalizer += completion_requests(shape, workload.results)
    finalizer_ms = request_ms(finalizer, workload.memory_mb) + stream_batches * MESSAGE_CPU_MS * scale

    # -- the sweeper's extra reads while the batch is open (its invocations are idle cost).
    sweeps = math.floor(run_s / (defaults.sweep_minutes * 60))
    sweeper: Requests = Counter()
    if sweeps:
        sweeper[("dynamodb", "Query")] += sweeps * (1 + shape.open_shards)  # the open-batches index, each open shard
        sweeper[("dynamodb", "GetItem")] += sweeps * 2

    # -- Lambda's pollers on the queues: Lambda's requests, billed to the account.
    environments = min(workload.concurrency, invocations)
    empty_receives = environments
    pollers = poller_requests(invocations, empty_receives) + poller_requests(planner_invocations, 0)
    writer = plan + plan_role
    requests = {
        "batcher": plan,
        "planners": plan_role,
        "processor": processor,
        "finalizer": finalizer,
        "sweeper": sweeper,
        "lambda pollers": pollers,
    }

    # -- billing units.
    wru = write_units_by_operation(shape, defaults, progress_stamps, continuations)
    wru["batch stats (an ADD per processor invocation)"] = invocations * write_units(itemstats.STATS_ROW_BYTES)
    rru = read_units_by_operation(shape, finalizer, writer, sweeper)
    sqs = sqs_billed_requests(
        shape, defaults, invocations, empty_receives, writer, prices.sqs_chunk_bytes, continuations
    )
    every = sum(requests.values(), Counter())
    lambda_usage = {
        "process_work": {
            "invocations": invocations,
            "cold_starts": environments,
            "overhead_gb_s": (
                shape.chunks * message_ms + invocations * request_ms(stats_requests(1), workload.memory_mb) + environments * INIT_MS
            ) / 1000 * gb,
            "task_gb_s": task_s * gb,
        },
        "batcher": {
            "invocations": 1,
            "cold_starts": 1,
            "overhead_gb_s": (plan_s + INIT_MS / 1000) * gb,
            "task_gb_s": 0.0,
        },
        "plan_segments": {
            "invocations": planner_invocations,
            "cold_starts": planner_environments,
            "overhead_gb_s": (planners_s + planner_environments * INIT_MS / 1000) * gb,
            "task_gb_s": 0.0,
        },
        "finalize": {
            "invocations": stream_batches,
            "cold_starts": stream_shards,
            "overhead_gb_s": (finalizer_ms + stream_shards * INIT_MS) / 1000 * gb,
            "task_gb_s": 0.0,
        },
    }
    lambda_invocations = sum(usage["invocations"] for usage in lambda_usage.values())
    overhead_gb_s = sum(usage["overhead_gb_s"] for usage in lambda_usage.values())
    gb_s_price = prices.lambda_gb_s[workload.arch]
    units = {
        "dynamodb_wru": sum(wru.values()),
        "dynamodb_rru": sum(rru.values()),
        "sqs_billed_requests": sum(sqs.values()),
        "sns_publishes": every[("sns", "Publish")],
        "s3_put_requests": every[("s3", "PutObject")],
        "s3_get_requests": every[("s3", "GetObject")] + every[("s3", "HeadObject")],
        "lambda_invocations": lambda_invocations,
        "lambda_overhead_gb_s": overhead_gb_s,
        "lambda_task_gb_s": task_s * gb,
        "log_gb": lambda_invocations * LOG_BYTES_PER_INVOCATION / 1024**3,
    }
    usd = {
        "sqs": units["sqs_billed_requests"] * prices.sqs_request,
        "dynamodb": units["dynamodb_wru"] * prices.wru + units["dynamodb_rru"] * prices.rru,
        "lambda": lambda_invocations * prices.lambda_request + overhead_gb_s * gb_s_price,
        "sns": units["sns_publishes"] * prices.sns_publish,
        "s3": units["s3_put_requests"] * prices.s3_put + units["s3_get_requests"] * prices.s3_get,
        "logs": units["log_gb"] * prices.logs_gb,
    }

    # -- the busiest partition key, in write units per second (DynamoDB allows 1,000 per partition).
    # Sustained rates while the planners fill; the batcher's plan (its P# rows, one PutItem
    # at a time for ~plan_s) is a short burst, shown apart.
    open_shards = max(1, shape.open_shards)
    segment, header = write_units(shape.segment_row_bytes), write_units(shape.header_bytes)
    segment_writes = (
        (shape.segments + 2 * continuations) * segment  # claims, and releases and claims again to continue
        + 2 * len(shape.groups) * write_units(shape.segment_row_bytes + shape.unsent_bytes)  # checkpoint + clear
        + shape.segments * 2 * (segment + header)  # each finish: the P# delete and the header's totals
    )
    partitions = {
        # While filling, a shard takes its rows' puts and the deletes of those already processed.
        "chunk shard": (fill_rate + min(processing_rate, fill_rate)) * shape.row_write_units / open_shards,
        "batch header (segment claims, checkpoints, finishes)": segment_writes / planning_s if planning_s else 0.0,
        "open-batches index (the header's totals again)": shape.segments * header / planning_s if planning_s else 0.0,
    }
    name, rate = max(partitions.items(), key=lambda pair: pair[1])
    busiest = {
        "partition": name,
        "writes_per_s": rate,
        "limit": PARTITION_WRITE_LIMIT,
        "partitions": partitions,
        "plan_burst": {
            "partition": "batch header (the plan's P# rows and header)",
            "writes_per_s": (shape.segments * segment + 2 * header) / plan_s if plan_s else 0.0,
            "seconds": plan_s,
        },
    }
    if rate > PARTITION_WRITE_LIMIT:
        warnings.append(
            f"the busiest partition ({name}) takes ~{rate:,.0f} write units/s, more than DynamoDB's "
            f"{PARTITION_WRITE_LIMIT:,} per partition: those writes are throttled and retried"
        )
    return Estimate(
        workload=workload,
        shape=shape,
        requests=requests,
        units=units,
        breakdown={"dynamodb_wru": wru, "dynamodb_rru": rru, "sqs_billed_requests": sqs},
        lambda_usage=lambda_usage,
        usd=usd,
        task_compute_usd=task_s * gb * gb_s_price,
        time_floor_s=time_floor_s,
        run_s=run_s,
        fill_s=fill_s,
        busiest_partition=busiest,
        planning=planning,
        warnings=warnings,
    )


def to_json(result: Estimate, prices: Prices | None = None) -> dict[str, Any]:
    """The estimate as `batchdrain cost --json` prints it."""
    prices = prices or load_prices()
    by_service_requests = result.requests_by_service()
    units = result.units
    service_units = {
        "sqs": {"billed_requests": units["sqs_billed_requests"]},
        "dynamodb": {"write_request_units": units["dynamodb_wru"], "read_request_units": units["dynamodb_rru"]},
        "lambda": {"invocations": units["lambda_invocations"], "overhead_gb_s": units["lambda_overhead_gb_s"]},
        "sns": {"publishes": units["sns_publishes"]},
        "s3": {"put_requests": units["s3_put_requests"], "get_requests": units["s3_get_requests"]},
        "logs": {"gb": units["log_gb"]},
    }
    items = result.workload.items
    return {
        "workload": asdict(result.workload),
        "shape": {
            "chunks": result.shape.chunks,
            "shards": result.shape.shards,
            "segments": result.shape.segments,
            "message_bytes": round(result.shape.message_bytes, 1),
            "chunk_row_bytes": round(result.shape.row_bytes, 1),
            "header_bytes": result.shape.header_bytes,
        },
        "total_usd": result.total_usd,
        "usd_per_1m_items": result.total_usd / items * 1e6,
        "overhead_usd": result.overhead_usd,
        "overhead_usd_per_1m_items": result.overhead_usd / items * 1e6,
        "task_compute_usd": result.task_compute_usd,
        "overhead_pct_of_task_compute": 100 * result.overhead_usd / result.task_compute_usd
        if result.task_compute_usd
        else None,
        "by_service": {
            service: {
                "usd": result.usd[service],
                "requests": by_service_requests.get(service, {}),
                **service_units[service],
            }
            for service in SERVICES
        },
        "units_by_operation": result.breakdown,
        "requests_by_role": {
            role: {f"{service}:{operation}": count for (service, operation), count in sorted(counts.items())}
            for role, counts in result.requests.items()
        },
        "lambda": result.lambda_usage,
        "time_floor_s": result.time_floor_s,
        "estimated_run_s": result.run_s,
        "fill_s": result.fill_s,
        "planning": result.planning,
        "busiest_partition_writes_per_s": result.busiest_partition["writes_per_s"],
        "busiest_partition": result.busiest_partition,
        "warnings": result.warnings,
        "prices": {"checked": prices.checked, "sources": list(prices.sources), "region": "us-east-1"},
    }


# -- the alternatives, for README 'What a batch costs' ----------------------------------------------


def origin_design(workload: Workload, defaults: Defaults, prices: Prices | None = None) -> dict[str, Any]:
    """The origin design as bench/baseline builds it: one row and one message per item.

    Per item: a row (BatchWriteItem, 25 a call), a message (SendMessageBatch, 10 a call),
    Lambda's receive and delete (batch size as batchdrain's), the task, a DeleteItem, and
    a consistent Query Limit=1 per REMOVE in the finalizer. Every row shares the batch's
    one partition, so its writes per second are the item rate.
    """
    prices = prices or load_prices()
    n, gb, scale = workload.items, workload.memory_mb / 1024, cpu_scale(workload.memory_mb)
    batch = defaults.processor_batch_size
    invocations = math.ceil(n / batch)
    stream_batches = math.ceil(n / defaults.finalizer_batch_size)
    environments = min(workload.concurrency, invocations)
    delete_ms = request_ms({("dynamodb", "DeleteItem"): 1}, workload.memory_mb) + MESSAGE_CPU_MS * scale
    query_ms = request_ms({("dynamodb", "Query"): 1}, workload.memory_mb)
    overhead_gb_s = (n * (delete_ms + query_ms) + (environments + 2) * INIT_MS) / 1000 * gb
    lambda_invocations = invocations + stream_batches + 1
    usd = {
        "sqs": (math.ceil(n / 10) + 2 * invocations + environments) * prices.sqs_request,
        "dynamodb": 2 * n * prices.wru + n * prices.rru,
        "lambda": lambda_invocations * prices.lambda_request + overhead_gb_s * prices.lambda_gb_s[workload.arch],
        "sns": prices.sns_publish,
        "logs": lambda_invocations * LOG_BYTES_PER_INVOCATION / 1024**3 * prices.logs_gb,
    }
    item_s = (workload.task_ms + delete_ms) / 1000
    task = n * workload.task_ms / 1000 * gb * prices.lambda_gb_s[workload.arch]
    return {
        "overhead_usd": sum(usd.values()),
        "task_compute_usd": task,
        "by_service": usd,
        # Deletes at the processing rate on the one partition (puts come first, at the writer's rate).
        "busiest_partition_writes_per_s": workload.concurrency / item_s if item_s else float("inf"),
    }


def step_functions_distributed_map(
    workload: Workload, prices: Prices | None = None, express: bool = True
) -> dict[str, Any]:
    """A Distributed Map over the same items: children of K items (ItemBatcher), each invoking the task's Lambda once.

    Charged: one state transition per child (the Distributed Map's own charge) and a few
    for the parent; Express children add $1 per million starts and their duration (the
    Lambda call, rounded up to 100 ms, at 64 MB); Standard children add one transition
    for their one Task state. Plus the Lambda request per child. The task's compute is
    the same as under batchdrain; Lambda's duration overhead per child (tens of ms) is
    left out, which favours Step Functions slightly.
    """
    prices = prices or load_prices()
    children = math.ceil(workload.items / workload.k)
    gb = workload.memory_mb / 1024
    child_ms = workload.k * workload.task_ms + REQUEST_MS["sqs"]
    billed_s = math.ceil(child_ms / prices.sfn_express_rounding_ms) * prices.sfn_express_rounding_ms / 1000
    stepfunctions = (children + 4) * prices.sfn_transition
    if express:
        stepfunctions += children * (
            prices.sfn_express_request + billed_s * prices.sfn_express_chunk_mb / 1024 * prices.sfn_express_gb_s
        )
    else:
        stepfunctions += children * prices.sfn_transition
    lambda_usd = children * prices.lambda_request
    task = workload.items * workload.task_ms / 1000 * gb * prices.lambda_gb_s[workload.arch]
    return {
        "overhead_usd": stepfunctions + lambda_usd,
        "task_compute_usd": task,
        "by_service": {"stepfunctions": stepfunctions, "lambda": lambda_usd},
    }


def alternatives(workload: Workload, defaults: Defaults, prices: Prices | None = None) -> dict[str, dict[str, Any]]:
    """The origin design and Step Functions Distributed Map (Express and Standard children) for the same workload."""
    return {
        "origin design (a row and a message per item)": origin_design(workload, defaults, prices),
        f"Step Functions Distributed Map, Express children of {workload.k:,}": step_functions_distributed_map(
            workload, prices
        ),
        f"Step Functions Distributed Map, Standard children of {workload.k:,}": step_functions_distributed_map(
            workload, prices, express=False
        ),
    }
