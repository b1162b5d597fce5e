"""A batch's item times and its own cost: counted cheaply, read back whole, never in the way.

- The histogram: 8 log-scale buckets per doubling from 1 ms; p50, p99 and max read back as
  the upper bound of the bucket that holds them, so a figure is at most ~9 % above the truth.
- Stats rows are ADDed to, never read first: concurrent processors and retries just add up.
- They are observations: the finalizer, the segment and emptiness Queries never see them.
- The completion puts the item times and the cost on the header once; a replay changes nothing.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from datetime import UTC, datetime

import pytest

from chalicelib import batchcost, completion, finalizer, itemstats, log, model, planner, pricing
from chalicelib.config import Definition, Settings
from chalicelib.store import BATCH_WRITE_ROWS, BatchStore, from_item, to_item

from .conftest import MockedAws, create_sealed_batch
from .test_finalizer import chunk_removed, event, stream_record

SLOT = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
BATCH_ID = "nightly-2026-11-23T06:00Z"
RESOLUTION = 2 ** (1 / itemstats.BUCKETS_PER_DOUBLING)  # one bucket's width: ~1.09


# -- the histogram -------------------------------------------------------------------------------------


def test_buckets_are_eight_per_doubling_from_1_ms_and_the_last_reaches_900_s():
    assert itemstats.bucket_of(0.0005) == 0 and itemstats.upper_bound(0) == 0.001
    assert itemstats.bucket_of(0.001) == 1 and itemstats.upper_bound(1) == pytest.approx(0.001 * RESOLUTION)
    assert itemstats.bucket_of(0.002) == 1 + itemstats.BUCKETS_PER_DOUBLING  # one doubling: 8 buckets on
    assert itemstats.bucket_of(900) == itemstats.LAST_BUCKET == 159 and itemstats.upper_bound(159) >= 900
    assert itemstats.bucket_of(10_000) == itemstats.LAST_BUCKET  # longer than a Lambda lives: the last bucket
    assert itemstats.histogram([0.0004, 0.2, 0.2]) == {"h000": 1, itemstats.bucket_name(itemstats.bucket_of(0.2)): 2}


@pytest.mark.parametrize("seconds", [0.0012, 0.05, 0.2, 1.0, 3.7, 42.0, 600.0])
def test_every_duration_is_read_back_as_its_buckets_upper_bound_at_most_9_percent_above(seconds: float):
    upper = itemstats.upper_bound(itemstats.bucket_of(seconds))
    assert seconds <= upper < seconds * RESOLUTION


def test_p50_p99_and_max_of_known_durations_are_each_within_one_bucket_above():
    """1,000 items of 1 ms to 1 s, evenly spread: the 500th, the 990th and the longest."""
    durations = [0.001 * (1 + n * 0.999) for n in range(1000)]
    truth = {"p50": sorted(durations)[499], "p99": sorted(durations)[989], "max": max(durations)}

    stats = itemstats.observe(dict(enumerate(durations)))
    summary = itemstats.summary(stats)

    assert summary["count"] == 1000 and stats["items_run"] == 1000
    assert stats["task_ms"] == round(1000 * sum(durations))
    for name, value in truth.items():
        assert value <= summary[name] <= value * RESOLUTION * 1.001, name  # * 1.001: four significant digits


def test_no_timed_item_has_no_percentiles():
    assert itemstats.summary({}) == {"count": 0, "p50": None, "p99": None, "max": None}
    assert itemstats.summary({"deliveries": 3}) == {"count": 0, "p50": None, "p99": None, "max": None}


def test_rows_sum_counters_and_buckets_and_leave_keys_and_ttl_out():
    rows = [
        {"pk": "B#x", "sk": "T#0000", "deliveries": 2, "h010": 3, "expires_at": 1_900_000_000},
        {"pk": "B#x", "sk": "T#0003", "deliveries": 1, "h010": 1, "h020": 2, "busy_ms": 40},
    ]
    assert itemstats.summed(rows) == {"deliveries": 3, "h010": 4, "h020": 2, "busy_ms": 40}


# -- stats rows in the table ---------------------------------------------------------------------------


def test_concurrent_adds_to_one_row_all_count(aws: MockedAws, settings: Settings, serialized_aws: None):
    """Eight processors at once, fifty ADDs each, to the same row and a second one: nothing lost, nothing read."""
    store = BatchStore(settings.table_name)
    calls: list[str] = []
    real = store.client.update_item
    store._client = type("Counting", (), {})()
    store._client.update_item = lambda **kwargs: calls.append("UpdateItem") or real(**kwargs)
    store._client.query = lambda **kwargs: calls.append("Query") or aws.dynamodb.query(**kwargs)
    adds = {"deliveries": 2, "busy_ms": 7, "h040": 1}

    def processor(slot: int) -> None:
        for _ in range(50):
            store.add_stats(BATCH_ID, slot % 2, adds, expires_at=1_900_000_000)

    threads = [threading.Thread(target=processor, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert calls == ["UpdateItem"] * 400  # one write per add, no read
    assert store.batch_stats(BATCH_ID) == {"deliveries": 800, "busy_ms": 2800, "h040": 400}
    rows = [row for row in aws.rows() if row["sk"].startswith(model.STATS_PREFIX)]
    assert sorted(row["sk"] for row in rows) == ["T#0000", "T#0001"]
    assert all(row["expires_at"] == 1_900_000_000 for row in rows)  # expire like the other TTL'd rows


def test_a_failed_stats_write_is_a_warning_never_the_callers(aws: MockedAws, settings: Settings, monkeypatch: pytest.MonkeyPatch):
    store = BatchStore(settings.table_name)
    store._client = type("Down", (), {"update_item": lambda self, **kwargs: (_ for _ in ()).throw(RuntimeError("throttled"))})()
    warnings: list[str] = []
    monkeypatch.setattr(log, "warning", lambda message, **fields: warnings.append(f"{message} {fields}"))

    assert store.note_stats(BATCH_ID, 0, {"deliveries": 1}, settings.row_ttl_days) is False
    assert len(warnings) == 1 and "batch stats not written" in warnings[0] and "throttled" in warnings[0]


def test_stats_rows_are_no_row_the_finalizer_or_a_deciding_query_sees(
    aws: MockedAws, nightly: Definition, settings: Settings
):
    header = create_sealed_batch(nightly, SLOT, settings)
    store = BatchStore(settings.table_name)
    store.add_stats(BATCH_ID, 0, {"deliveries": 1})
    key = model.stats_key(BATCH_ID, 0)

    assert key == {"pk": f"B#{BATCH_ID}", "sk": "T#0000"}  # in the header's partition, beside the P# and K# rows
    assert model.parse_key(key["pk"], key["sk"]) is None
    written = stream_record("INSERT", key, new={"deliveries": 1})
    expired = stream_record("REMOVE", key, old={"deliveries": 1}, user_identity={"type": "Service", "principalId": "dynamodb.amazonaws.com"})
    assert finalizer.batches_touched([written, expired]) == {} and finalizer.segments_drained([written, expired]) == {}
    # The seal's drain check and the planners' segment list read P# keys only; emptiness reads the shards' partitions.
    assert store.has_segments(BATCH_ID) is False and list(store.segment_rows(BATCH_ID)) == []
    for chunk_no in range(header["total_chunks"]):
        aws.delete_chunk_row(BATCH_ID, 0, chunk_no)
    assert store.shard_has_chunks(BATCH_ID, 0) is False
    # So the batch completes with its stats row still there, and the stream batch that ended it says so.
    assert finalizer.handle_stream_event(event([written, chunk_removed(BATCH_ID, 0, 9)]), settings, {}) == [BATCH_ID]


# -- the completion's figures ----------------------------------------------------------------------------


def test_the_completion_records_item_times_and_cost_once_and_a_replay_keeps_them(
    aws: MockedAws, nightly: Definition, settings: Settings
):
    header = create_sealed_batch(nightly, SLOT, settings)
    store = BatchStore(settings.table_name)
    durations = {index: 0.010 + index / 100_000 for index in range(1000)}  # 10 to 20 ms
    store.add_stats(BATCH_ID, 0, {**itemstats.observe(durations), "deliveries": 10, "invocations": 5, "busy_ms": 16_000,
                                  "body_bytes": 10 * 3_000})
    for chunk_no in range(header["total_chunks"]):
        aws.delete_chunk_row(BATCH_ID, 0, chunk_no)
    records = [chunk_removed(BATCH_ID, 0, chunk_no) for chunk_no in range(10)]

    assert finalizer.handle_stream_event(event(records), settings, {}) == [BATCH_ID]
    ended = aws.header(BATCH_ID)
    alert = aws.alerts()[0]["Message"]

    observed = ended["item_seconds_observed"]
    assert observed["count"] == 1000
    for name, truth in (("p50", 0.015), ("p99", 0.0199), ("max", 0.01999)):
        assert truth <= observed[name] <= truth * RESOLUTION, name
    cost = ended["cost"]
    assert set(cost) == {"infrastructure_usd", "task_compute_usd", "by_service"}
    assert set(cost["by_service"]) == set(batchcost.SERVICES)
    assert cost["infrastructure_usd"] == pytest.approx(sum(cost["by_service"].values()), rel=1e-3)
    # The task's compute apart: 1,000 items of ~15 ms at 256 MB, x86.
    task_gb_s = sum(durations.values()) * 256 / 1024
    assert cost["task_compute_usd"] == pytest.approx(task_gb_s * pricing.load_prices().lambda_gb_s["x86_64"], rel=1e-3)
    assert '"cost"' in alert and '"item_seconds_observed"' in alert  # the alert carries them as recorded

    # A replayed stream batch, or the completion tried again on the header as it was read, changes nothing.
    assert finalizer.handle_stream_event(event(records), settings, {}) == []
    assert completion.complete(store, header, settings) is None
    assert aws.header(BATCH_ID) == ended
    assert aws.alerts() == []


def test_the_deployed_app_carries_its_price_table():
    """Chalice packages every file of chalicelib/ (its own packager's walk): the completion prices batches on AWS."""
    from chalice.deploy.packager import LambdaDeploymentPackager
    from chalice.utils import OSUtils

    packager = LambdaDeploymentPackager(OSUtils(), dependency_builder=None, ui=None)
    packaged = {zip_path for _, zip_path in packager._iter_chalice_lib_if_needed(str(Path(pricing.__file__).parents[1]))}
    assert "chalicelib/prices.json" in packaged and pricing.PRICES_PATH.name == "prices.json"
    assert pricing.load_prices().lambda_gb_s["x86_64"] > 0


def test_a_planners_write_group_is_ten_batch_writes():
    """What the cost counts a planner's checkpoints by (model.PLAN_GROUP_CHUNKS, which the planner uses)."""
    assert model.PLAN_GROUP_CHUNKS == 10 * BATCH_WRITE_ROWS == planner.PLAN_GROUP_CHUNKS


def test_the_cost_is_decimal_safe_for_the_table_and_plain_numbers_after():
    figures = {"infrastructure_usd": 7.1e-05, "by_service": {"sqs": 1e-05, "sns": 0.0}, "p50": None, "count": 3}
    item = to_item(figures)  # boto3's serializer refuses floats: the store writes them as Decimals
    assert from_item(item) == figures  # and reads them back as the plain numbers they were


def test_the_cost_grows_with_what_the_batch_did_and_keeps_the_task_apart():
    header = {
        "batch_id": BATCH_ID, "status": model.COMPLETED, "attempt": 1, "created_at": "2026-11-23T06:00:01.000Z",
        "sealed_at": "2026-11-23T06:00:03.000Z", "completed_at": "2026-11-23T06:01:01.000Z", "total_items": 10_000,
        "total_chunks": 500, "shards": 1, "segments": 1, "items_per_message": 20, "source": {"type": "random"},
    }
    prices = pricing.load_prices()
    clean = {"deliveries": 500, "invocations": 250, "busy_ms": 260_000, "task_ms": 250_000, "body_bytes": 500 * 700}
    retried = {**clean, "deliveries": 600, "returned": 100, "invocations": 300, "busy_ms": 320_000}

    first, second = (batchcost.batch_cost(header, stats, prices) for stats in (clean, retried))

    assert second["infrastructure_usd"] > first["infrastructure_usd"]
    assert second["task_compute_usd"] == first["task_compute_usd"]  # the same items' own time
    assert first["task_compute_usd"] == pytest.approx(250 * 0.25 * prices.lambda_gb_s["x86_64"], rel=1e-3)
    # Each row is written and deleted: at least 2 WRU and 1 RRU per chunk, whatever else.
    assert first["by_service"]["dynamodb"] >= 500 * (2 * prices.wru + prices.rru)
    assert not math.isclose(first["by_service"]["lambda_time"], 0)
