"""One batch on the local stack: fire it, follow it to its alert, show what it produced.

Both demos (batchdrain_local.demo) use this: `run_batch` fires a definition's schedule
through its real handler and waits for the alert, printing a line whenever the batch's
state changes; `show` prints the alert, manifest.json, the first lines of one results
object and of failures.jsonl, and the run's figures: wall time from cron event to
alert, segments, chunks, and invocations of each function.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterator

from batchdrain_local.data import SampleData
from batchdrain_local.progressbar import Progress
from batchdrain_local.stack import LocalStack
from chalicelib import api, model, sources
from chalicelib.config import DEFAULT_SEGMENT_BYTES
from chalicelib.store import BatchStore

SHOWN_LINES = 3

Out = Callable[[str], None]


# -- one batch ---------------------------------------------------------------------------


@dataclass
class BatchRun:
    """One fired definition: its alert, the header at the end, time from cron event to alert, invocations."""

    definition: str
    batch_id: str
    alert: dict[str, Any]
    header: dict[str, Any]
    seconds: float
    invocations: dict[str, int]


def run_batch(stack: LocalStack, name: str, slot: datetime, timeout: float, out: Out = print) -> BatchRun:
    """Fire `name`'s schedule for `slot` through its real handler and wait for the batch's alert."""
    before = Counter(stack.invoker.invocations)
    fired = time.monotonic()
    header = stack.fire_schedule(name, slot)
    batch_id = header["batch_id"]
    alert = _wait_showing_progress(stack, batch_id, fired, timeout, out)
    seconds = time.monotonic() - fired
    invocations = Counter(stack.invoker.invocations)
    invocations.subtract(before)
    return BatchRun(
        definition=name,
        batch_id=batch_id,
        alert=alert,
        header=stack.header(batch_id) or header,
        seconds=seconds,
        invocations={function: invocations[function] for function in sorted(invocations, key=_pipeline_order) if invocations[function] > 0},
    )


def _pipeline_order(function: str) -> int:
    """Functions in the order a batch meets them: its schedule handler first, the finalizer last."""
    return {"plan_segments": 1, "process_work": 2, "drain_dead_letters": 3, "finalize": 4, "sweep": 5}.get(function, 0)


def _wait_showing_progress(stack: LocalStack, batch_id: str, fired: float, timeout: float, out: Out) -> dict[str, Any]:
    """Wait for the alert, drawing the batch's progress as `batchdrain wait` does (the API's figures, every 2 s)."""
    assert stack.resources is not None
    store = BatchStore(stack.resources.table_name, stack.client("dynamodb"))
    show = Progress(terminal=sys.stdout.isatty(), out=out)
    while True:
        try:
            alert = stack.wait_for_alert(batch_id, timeout=2.0)
            show.finish()
            return alert
        except TimeoutError:
            pass
        if time.monotonic() - fired > timeout:
            raise SystemExit(f"error: no completion alert after {timeout:.0f} s; header: {stack.header(batch_id)}")
        header = store.get_header(batch_id)
        if header is not None:
            show.update({**model.batch_view(header), "progress": api.progress(store, header)})


# -- reading the results -----------------------------------------------------------------


def read_object(s3: Any, uri: str) -> bytes:
    bucket, key = sources.split_uri(uri)
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def result_keys(s3: Any, prefix_uri: str) -> Iterator[str]:
    """The results objects (one per chunk) under a manifest's results prefix, as URIs."""
    bucket, prefix = sources.split_uri(prefix_uri)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            name = obj["Key"][len(prefix) :]
            if name.endswith(".jsonl") and "/" in name:  # <shard>/<chunk>.jsonl, not failures.jsonl
                yield f"s3://{bucket}/{obj['Key']}"


def result_lines(s3: Any, prefix_uri: str) -> Iterator[dict[str, Any]]:
    """Every result line of a batch: {"index", "result"}."""
    for uri in result_keys(s3, prefix_uri):
        for line in read_object(s3, uri).splitlines():
            yield json.loads(line)


def show(stack: LocalStack, run: BatchRun, sample: SampleData, out: Out = print) -> None:
    """The alert, manifest.json, the first lines of a results object and of failures.jsonl, the figures."""
    s3 = stack.client("s3")
    message = run.alert["message"]
    out("")
    out("completion alert received through SNS:")
    out(f"  subject:    {run.alert['subject']}")
    out(f"  attributes: {json.dumps(run.alert['attributes'], sort_keys=True)}")
    out("  message:    " + json.dumps(message, indent=2).replace("\n", "\n              "))
    manifest_uri = message.get("manifest")
    if manifest_uri:
        manifest = json.loads(read_object(s3, manifest_uri))
        out(f"{manifest_uri}:")
        out("  " + json.dumps(manifest, indent=2).replace("\n", "\n  "))
        first = next(result_keys(s3, manifest["results"]["prefix"]), None)
        if first:
            out(f"{first} (first lines):")
            for line in read_object(s3, first).splitlines()[:SHOWN_LINES]:
                out("  " + line.decode())
        failures = read_object(s3, manifest["failures"]["uri"]).splitlines()
        if failures:
            out(f"{manifest['failures']['uri']} (first {min(SHOWN_LINES, len(failures))} of {len(failures):,} lines):")
        else:
            out(f"{manifest['failures']['uri']}: empty, no item failed")
        for line in failures[:SHOWN_LINES]:
            out("  " + line.decode())
        if run.header.get("task") == "s3-object-digest":
            results = [line["result"] for line in result_lines(s3, manifest["results"]["prefix"])]
            bucket = sources.split_uri(run.header["source_pin"]["uri"])[0]
            matching = sum(1 for r in results if sample.digests.get(f"s3://{bucket}/{r['key']}") == r["sha256"])
            out(f"digests checked against the uploaded bytes: {matching:,} of {len(sample.digests):,} match")
    header = run.header
    items = (message.get("totals") or {}).get("items")
    out(
        f"batch {run.batch_id}: {f'{items:,} items' if items is not None else message.get('status')} in {run.seconds:.1f} s "
        f"(wall time from cron event to alert); alerts for this batch: {len(stack.alerts_for(run.batch_id))}"
    )
    segment_bytes = int(os.environ.get("SEGMENT_BYTES") or DEFAULT_SEGMENT_BYTES)
    out(
        f"  segments {header.get('segments', 0):,} (SEGMENT_BYTES {segment_bytes / 2**20:g} MiB), "
        f"chunks {header.get('total_chunks', 0):,} (K {header.get('items_per_message')}), shards {header.get('shards')}"
    )
    if header.get("k_rule"):
        out(f"  {header['k_rule']}")
    out(f"  invocations: {run.invocations}")


def peak_rss_mb() -> float:
    """This process's peak resident set (Linux reports KiB): the moto server, pollers and handlers all live here."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
