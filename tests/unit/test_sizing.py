"""K chosen for each batch (chalicelib.sizing): the largest every limit allows, and the limit that chose it."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from chalicelib import finalizer, model, processor, sizing, sources
from chalicelib.chunks import new_chunk_row
from chalicelib.config import Definition, Settings, Source
from chalicelib.pricing import item_bytes
from chalicelib.store import BatchStore

from .conftest import MockedAws, create_sealed_batch, sqs_event

SLOT = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
BUDGET = sizing.Budget(batch_size=2, timeout_seconds=120)  # the deployed stages': 115 s for 2 messages


def small(definition: Definition) -> Definition:
    """The cut-down nightly with K left to batchdrain, 1 s declared, and 200 items (40 chunks at the unit tests' K=5)."""
    return dataclasses.replace(
        definition, items_per_message=None, item_seconds=1.0, source=dataclasses.replace(definition.source, count=200)
    )


def auto(item_seconds: float, source: Source | None = None, **changes) -> Definition:
    return Definition(
        name="fast", schedule="rate(1 hour)", source=source or Source(type="random", count=1_000_000), task="noop",
        item_seconds=item_seconds, **changes,
    )


def test_a_pinned_k_is_kept_whatever_the_limits_say():
    choice = sizing.choose_k(auto(5.0, items_per_message=7), None, 262_144)

    assert (choice.k, choice.rule) == (7, sizing.PINNED)
    assert choice.describe() == "K=7 (pinned by items_per_message)"


def test_slow_items_are_limited_by_the_processing_budget():
    choice = sizing.choose_k(auto(1.0), BUDGET, 262_144)

    assert (choice.k, choice.rule) == (57, sizing.LIMIT_BUDGET)  # 2 x 57 x 1 s = 114 s <= 120 - 5 s
    assert 2 * (choice.k + 1) * 1.0 > 115
    assert choice.describe().startswith("K=57 (auto: processing budget; budget 57, row ")


def test_fast_items_fill_one_write_unit_of_chunk_row_and_no_more():
    """The row the planner really writes for the widest indices of the batch stays within 1 KB; one more index would not."""
    definition = auto(0.05)
    choice = sizing.choose_k(definition, BUDGET, 262_144)
    widest = definition.source.count - 1

    def real_row(k: int) -> int:
        batch_id = model.batch_id_for(definition.name, SLOT)
        return item_bytes(new_chunk_row(batch_id, model.MAX_SHARDS - 1, 99_999, range(widest, widest - k, -1), 1))

    assert choice.rule == sizing.LIMIT_ROW
    assert real_row(choice.k) <= sizing.WRITE_UNIT_BYTES
    assert sizing.fresh_row_bytes(definition, choice.k + 1) > sizing.WRITE_UNIT_BYTES


@pytest.mark.parametrize(("count", "digits"), [(100, 2), (10_000, 4), (1_000_000, 6), (100_000_000, 8)])
def test_wider_indices_leave_room_for_fewer_in_a_row(count: int, digits: int):
    definition = auto(0.01, Source(type="random", count=count))

    assert sizing.index_digits(definition) == digits
    wider = sizing.row_k(auto(0.01, Source(type="random", count=count * 100)))
    assert sizing.row_k(definition) >= wider


def test_an_object_source_is_sized_for_its_widest_offsets_and_its_span():
    lines = auto(0.01, Source(type="s3-jsonl", uri="s3://my-input/visits/{date}/visits.jsonl"))
    listing = auto(0.01, Source(type="s3-prefix", uri="s3://my-input/photos/"))

    assert sizing.choose_k(lines, BUDGET, 262_144).rule == sizing.LIMIT_ROW
    assert sizing.fresh_row_bytes(lines, sizing.row_k(lines)) <= sizing.WRITE_UNIT_BYTES
    # Byte offsets of a 5 TB object are wider than a listing's positions.
    assert sizing.row_k(lines) < sizing.row_k(listing)
    assert sizing.message_k(lines, 262_144) is None  # lines are cut by bytes as they are read


def test_small_messages_limit_k_to_the_largest_items_that_fit():
    definition = auto(0.001, Source(type="random", count=1_000, max_value=10**15))
    choice = sizing.choose_k(definition, BUDGET, 4096)
    entry = model.entry_size(sources.largest_item(definition.source))

    assert choice.rule == sizing.LIMIT_MESSAGE
    assert choice.k == model.item_budget(4096, len(model.encode_options({}))) // entry


def test_an_observed_item_time_replaces_the_declared_one():
    declared = sizing.choose_k(auto(1.0), BUDGET, 262_144)
    observed = sizing.choose_k(auto(1.0), BUDGET, 262_144, observed_seconds=2.0, observed_from="fast-2026-11-22T06:00Z")

    assert (declared.k, observed.k) == (57, 28)
    assert observed.describe().endswith("at item_seconds 2 observed (p99 of fast-2026-11-22T06:00Z))")


def test_a_batch_header_keeps_its_k_and_why(aws: MockedAws, settings: Settings, nightly: Definition):
    header = create_sealed_batch(small(nightly), SLOT, settings)

    # The unit tests' processor settings: PROCESSOR_BATCH_SIZE 10 (the code's default), 60 s.
    assert header["items_per_message"] == 5
    assert header["k_rule"].startswith("K=5 (auto: processing budget;")
    assert header["total_chunks"] == 40


def test_the_next_batch_of_a_definition_uses_the_p99_its_last_batch_observed(aws: MockedAws, settings: Settings, nightly: Definition):
    definition = small(nightly)
    BatchStore(settings.table_name).note_observed(
        definition.name, {"batch_id": "nightly-2026-11-22T06:00Z", "count": 1000, "p50": 0.01, "p99": 0.05, "max": 0.2}
    )

    header = create_sealed_batch(definition, SLOT, settings)

    assert header["items_per_message"] == 110  # 10 x 110 x 0.05 s <= 60 - 5 s
    assert "observed (p99 of nightly-2026-11-22T06:00Z)" in header["k_rule"]


def test_too_few_observed_items_leave_the_declared_time_in_charge(aws: MockedAws, settings: Settings, nightly: Definition):
    definition = small(nightly)
    BatchStore(settings.table_name).note_observed(
        definition.name, {"batch_id": "nightly-2026-11-22T06:00Z", "count": 20, "p50": 0.01, "p99": 0.05, "max": 0.2}
    )

    assert create_sealed_batch(definition, SLOT, settings)["items_per_message"] == 5


def test_a_completed_batch_sizes_the_next_one_of_its_definition(aws: MockedAws, settings: Settings, nightly: Definition):
    """Declared 1 s, observed under a millisecond (noop-fast sleeps): the first batch is budget-bound, the next fills a row."""
    definition = small(nightly)
    first = create_sealed_batch(definition, SLOT, settings)
    processor.handle_sqs_event(sqs_event(aws.work_messages()), settings)
    finalizer.handle_stream_event({"Records": aws.stream_records()}, settings, {definition.name: definition})

    completed = BatchStore(settings.table_name).get_header(first["batch_id"])
    assert completed["status"] == model.COMPLETED and completed["item_seconds_observed"]["count"] == 200
    kept = BatchStore(settings.table_name).last_observed(definition.name)
    assert (kept["batch_id"], float(kept["p99"])) == (first["batch_id"], float(completed["item_seconds_observed"]["p99"]))

    second = create_sealed_batch(definition, datetime(2026, 11, 23, 12, 0, tzinfo=UTC), settings)
    assert first["items_per_message"] == 5
    assert second["items_per_message"] == sizing.row_k(definition) > 5
    assert f"observed (p99 of {first['batch_id']})" in second["k_rule"]
