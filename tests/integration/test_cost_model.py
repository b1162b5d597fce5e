"""The cost model cannot drift from the code: small batches on the local stack, every request counted,
and batchdrain_cli/costmodel.py's own functions predicting each count.

Exact: every request whose count does not depend on timing (`deterministic_requests`), and
the finalizer's header reads and progress stamps given the stream batches it was handed
(`finalizer_stream_requests`), and the processors' stats ADDs given their invocations
(`stats_requests`). Bounded: the emptiness Queries, which depend on which shards
each stream batch touched (`finalizer_query_bounds`). Lambda's pollers are the local stack's
own, not the app's: their receives and deletes are counted on the pollers' clients and
checked against `poller_requests` with the invocations observed (a 1 s long poll locally, 20 s
on AWS, so the empty receives differ and are not compared).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from batchdrain_local import LocalStack, StackOptions
from batchdrain_cli import costmodel
from chalicelib import completion, finalizer
from tests.integration.conftest import write_definitions

SLOT = datetime(2026, 11, 23, 6, 0, tzinfo=timezone.utc)
BUCKET, RESULTS_BUCKET = "cost-exports", "cost-results"
KEY = "orders/2026-11-23/orders.jsonl"


@dataclass(frozen=True)
class Case:
    items: int
    k: int
    shard_chunk_target: int
    source: str = "random"
    results: bool = False
    segment_bytes: int | None = None


CASES = {
    # One segment (planner) of 20 chunks over 6 shards, one write group.
    "200 items, K=10": Case(items=200, k=10, shard_chunk_target=4),
    # Four segments of 512 generated items (SEGMENT_BYTES 32 KiB / RANDOM_ITEM_BYTES), 70 chunks over
    # 17 shards, a write group each: planners in parallel, each segment's last chunk partial.
    "2,000 items, K=30": Case(items=2_000, k=30, shard_chunk_target=4, segment_bytes=32 * 1024),
    # Three segments of 256, 256 and 38 chunks: PLAN_GROUP_CHUNKS (250) cuts the first two in two write
    # groups each, so checkpoints, clears and sends are per group within a segment.
    "1,100 items, K=2": Case(items=1_100, k=2, shard_chunk_target=100, segment_bytes=32 * 1024),
    # An s3-jsonl object of 6,300 bytes cut into 4 segments (planners), results and manifest on.
    "300 JSON lines, K=25, results": Case(
        items=300, k=25, shard_chunk_target=1, source="s3-jsonl", results=True, segment_bytes=2048
    ),
}


def line(n: int) -> bytes:
    """A JSON line of fixed length (21 bytes), so every item is 20 bytes as compact JSON."""
    return json.dumps({"id": n, "p": "x" * (6 - len(str(n)))}, separators=(",", ":")).encode() + b"\n"


class Recorder:
    """Counts a poller client's ReceiveMessage calls that returned messages, and its DeleteMessageBatch calls."""

    def __init__(self, client: Any) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        client.meta.events.register("after-call.sqs.ReceiveMessage", self._received)
        client.meta.events.register("after-call.sqs.DeleteMessageBatch", self._deleted)

    def _received(self, parsed: dict[str, Any], **_: Any) -> None:
        with self._lock:
            self.counts["ReceiveMessage with messages" if parsed.get("Messages") else "ReceiveMessage empty"] += 1

    def _deleted(self, **_: Any) -> None:
        with self._lock:
            self.counts["DeleteMessageBatch"] += 1


def start(tmp_path: Path, case: Case) -> tuple[LocalStack, Path]:
    overrides: dict[str, Any] = {
        "count": case.items,
        "items_per_message": case.k,
        "item_seconds": 0.01,
        "task": "count",
        "task_options": {},
    }
    if case.source != "random":
        overrides["source"] = {"type": case.source, "uri": f"s3://{BUCKET}/orders/{{date}}/orders.jsonl"}
    if case.results:
        overrides["results"] = {"bucket": RESULTS_BUCKET, "prefix": "out"}
    definitions = write_definitions(tmp_path, **overrides)
    environment = {"SHARD_CHUNK_TARGET": str(case.shard_chunk_target)}
    if case.segment_bytes:
        environment["SEGMENT_BYTES"] = str(case.segment_bytes)
    stack = LocalStack(StackOptions(definitions_file=definitions, visibility_timeout=5, extra_environment=environment))
    stack.start()
    if case.source != "random":
        s3 = stack.client("s3")
        for bucket in (BUCKET, RESULTS_BUCKET):
            s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=BUCKET, Key=KEY, Body=b"".join(line(n) for n in range(case.items)))
    return stack, definitions


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


@pytest.mark.parametrize("name", list(CASES))
def test_the_model_predicts_every_request_the_app_makes(tmp_path: Path, name: str) -> None:
    case = CASES[name]
    stack, definitions = start(tmp_path, case)
    try:
        # What the finalizer is handed, stream batch by stream batch (the timing-dependent input).
        stream_batches: list[dict[str, Any]] = []
        stream_poller = stack.pollers["finalize"]
        invoke = stream_poller.invoke
        stream_poller.invoke = lambda name, handler, event: (
            stream_batches.append(event),
            invoke(name, handler, event),
        )[1]
        recorders = {queue: Recorder(stack.pollers[queue].sqs) for queue in ("process_work", "plan_segments")}

        header = stack.fire_schedule("nightly", SLOT)
        batch_id = header["batch_id"]
        stack.wait_for_alert(batch_id, timeout=45)
        wait_for(lambda: "notified_at" in (stack.header(batch_id) or {}), 10, "the alert recorded")
        invocations = stack.invoker.invocations
        wait_for(
            lambda: all(recorders[queue].counts["DeleteMessageBatch"] == invocations[queue] for queue in recorders),
            10,
            "the pollers' deletes",
        )
        time.sleep(0.5)  # anything late would be counted now
        final = stack.header(batch_id)
        counted = Counter(stack.requests.counts)
    finally:
        stack.stop()

    defaults = costmodel.deployed_defaults(
        stage="local",
        environ={
            "SHARD_CHUNK_TARGET": str(case.shard_chunk_target),
            **({"SEGMENT_BYTES": str(case.segment_bytes)} if case.segment_bytes else {}),
        },
        definitions_file=definitions,
    )
    workload = costmodel.workload_from_defaults(
        defaults,
        items=case.items,
        batch_id=batch_id,
        item_bytes=20 if case.source != "random" else None,
        source_uri=f"s3://{BUCKET}/{KEY}",
    )
    shape = costmodel.shape_of(workload, defaults)

    # The cut: segments, chunks and shards as the planners made them.
    assert (shape.chunks, shape.shards, workload.items) == (
        final["total_chunks"],
        final["shards"],
        final["total_items"],
    )
    assert shape.segments == final["segments"]

    # Every request, from the model's own formulas.
    touched = [
        finalizer.batches_touched(event["Records"]).get(batch_id, completion.ALL_SHARDS) for event in stream_batches
    ]
    touching = sum(1 for event in stream_batches if batch_id in finalizer.batches_touched(event["Records"]))
    segment_batches = sum(1 for event in stream_batches if batch_id in finalizer.segments_drained(event["Records"]))
    # The planners' transactions stamped progress just before the seal: the finalizer stamps none in so short a run.
    stamps = 0
    # aws.queue_url is cached per process; the local stack's planners share one, and threads that
    # start together may each look the work queue up once (on AWS: once per planner environment).
    lookups = counted[("sqs", "GetQueueUrl")]
    planner_processes = lookups - 1
    assert 1 <= planner_processes <= min(shape.segments, stack.options.processor_concurrency)
    predicted = costmodel.deterministic_requests(
        shape, defaults, case.results, planner_processes, generated=case.source == "random"
    )
    predicted += costmodel.finalizer_stream_requests(touching, segment_batches, stamps)
    predicted += costmodel.stats_requests(invocations["process_work"])  # each processor invocation's ADD to the stats
    low, high = costmodel.finalizer_query_bounds(
        shape.open_shards, [len(shards) for shards in touched if shards is not completion.ALL_SHARDS], segment_batches
    )
    # The completion reads the batch's stats rows once; the manifest lists every shard's F# rows.
    queries_exact = 1 + (shape.shards if case.results else 0)
    assert low + queries_exact <= counted[("dynamodb", "Query")] <= high + queries_exact
    del counted[("dynamodb", "Query")], predicted[("dynamodb", "Query")]
    assert {f"{s}:{op}": n for (s, op), n in sorted(counted.items())} == {
        f"{s}:{op}": n for (s, op), n in sorted(predicted.items()) if n
    }
    planning_messages = shape.segments
    assert stack.requests.sqs_messages_sent == shape.chunks + planning_messages

    # Lambda's pollers (the local stack's requests): one receive with messages and one delete per invocation.
    for queue, recorder in recorders.items():
        expected = costmodel.poller_requests(invocations[queue], empty_receives=0)
        assert recorder.counts["ReceiveMessage with messages"] == expected[("sqs", "ReceiveMessage")]
        assert recorder.counts["DeleteMessageBatch"] == expected[("sqs", "DeleteMessageBatch")]
    assert invocations["plan_segments"] == shape.segments

    # The header's size, which every header write is billed by: the model's within 15 %.
    modelled = shape.final_header_bytes
    real = costmodel.item_bytes({key: value for key, value in final.items()})
    assert abs(modelled - real) <= 0.15 * real, (modelled, real)
