"""A task that counts runs, for proving no item runs twice."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any, Mapping

from chalicelib.tasks import task

# How many times the `count` task ran each item id (cleared for each test).
RUNS: Counter[int] = Counter()
_RUNS_LOCK = threading.Lock()


@task("count")
def count(item: dict, options: Mapping[str, Any]) -> None:
    """Test task: records each run of each item, to prove items are not run twice."""
    with _RUNS_LOCK:
        RUNS[item["id"]] += 1


# Attempts per item id of the `flaky` task (cleared for each test).
ATTEMPTS: Counter[int] = Counter()


@task("flaky")
def flaky(item: dict, options: Mapping[str, Any]) -> None:
    """Test task: fails every 7th item on its first attempt; counts successful runs in RUNS."""
    with _RUNS_LOCK:
        ATTEMPTS[item["id"]] += 1
        first_attempt = ATTEMPTS[item["id"]] == 1
    if first_attempt and item["id"] % 7 == 0:
        raise RuntimeError(f"item {item['id']} fails its first attempt")
    with _RUNS_LOCK:
        RUNS[item["id"]] += 1


@task("poison")
def poison(item: dict, options: Mapping[str, Any]) -> None:
    """Test task: every 100th item always fails; counts its attempts in ATTEMPTS, successful runs in RUNS."""
    if item["id"] % 100 == 0:
        with _RUNS_LOCK:
            ATTEMPTS[item["id"]] += 1
        raise ValueError(f"item {item['id']} is poison")
    with _RUNS_LOCK:
        RUNS[item["id"]] += 1


def stream_records(stack) -> list[dict]:
    """Every record of the table's stream, read from the start (a client of its own)."""
    streams = stack.client("dynamodbstreams")
    records: list[dict] = []
    for shard in streams.describe_stream(StreamArn=stack.resources.table_stream_arn)["StreamDescription"]["Shards"]:
        iterator = streams.get_shard_iterator(
            StreamArn=stack.resources.table_stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            page = streams.get_records(ShardIterator=iterator, Limit=1000)
            records += page["Records"]
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")
    return records
