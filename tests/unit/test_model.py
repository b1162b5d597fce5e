"""The data model: batch ids, keys, cutting chunks, and parsing work messages (no I/O)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from chalicelib import model
from chalicelib.errors import BadMessageError, BadRequestError

from .conftest import cut_generated


def cut(items, *, k=100, max_bytes=256 * 1024, shards=1, options=None):
    return cut_generated(
        items,
        batch_id="nightly-2026-11-23T06:00Z",
        task="sleep",
        options=options if options is not None else {"scale": 0},
        items_per_message=k,
        max_message_bytes=max_bytes,
        shards=shards,
    )


def valid_body(**changes):
    body = {
        "v": 1,
        "batch_id": "nightly-2026-11-23T06:00Z",
        "shard": 0,
        "chunk": 3,
        "task": "sleep",
        "options": {"scale": 0},
        "items": [[300, {"id": 300, "value": 5}], [301, {"id": 301, "value": 6}]],
    }
    for key, value in changes.items():
        if value is ...:
            body.pop(key)
        else:
            body[key] = value
    return json.dumps(body)


# -- batch ids and timestamps ----------------------------------------------------------


def test_batch_id_is_the_definition_and_the_schedule_slot_to_the_minute():
    assert model.batch_id_for("nightly", datetime(2026, 11, 23, 6, 0, 7, tzinfo=UTC)) == "nightly-2026-11-23T06:00Z"


def test_batch_id_is_deterministic_for_a_duplicate_delivery_of_the_same_slot():
    first = model.batch_id_for("nightly", model.parse_iso("2026-11-23T06:00:00Z"))
    again = model.batch_id_for("nightly", model.parse_iso("2026-11-23T06:00:00Z"))

    assert first == again


def test_batch_id_is_in_utc_whatever_the_time_zone_of_the_slot():
    berlin = timezone(timedelta(hours=1))

    assert model.batch_id_for("nightly", datetime(2026, 11, 23, 7, 0, tzinfo=berlin)) == "nightly-2026-11-23T06:00Z"


def test_batch_id_differs_between_slots_and_definitions():
    slot = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)

    assert model.batch_id_for("nightly", slot) != model.batch_id_for("nightly", slot + timedelta(hours=6))
    assert model.batch_id_for("nightly", slot) != model.batch_id_for("weekly", slot)


def test_iso_timestamps_are_utc_with_milliseconds():
    moment = datetime(2026, 11, 23, 7, 0, 1, 234_567, tzinfo=timezone(timedelta(hours=1)))

    assert model.iso(moment) == "2026-11-23T06:00:01.234Z"
    assert model.parse_iso(model.iso(moment)) == moment.replace(microsecond=234_000)


# -- keys ------------------------------------------------------------------------------------


def test_parse_key_reads_a_header_key():
    key = model.header_key("nightly-2026-11-23T06:00Z")

    assert model.parse_key(key["pk"], key["sk"]) == model.RowRef("nightly-2026-11-23T06:00Z")
    assert model.parse_key(key["pk"], key["sk"]).is_header


def test_parse_key_reads_a_chunk_key():
    key = model.chunk_key("nightly-2026-11-23T06:00Z", 7, 1234)

    assert key == {"pk": "B#nightly-2026-11-23T06:00Z#7", "sk": "C#00001234"}
    ref = model.parse_key(key["pk"], key["sk"])
    assert ref == model.RowRef("nightly-2026-11-23T06:00Z", shard=7, chunk_no=1234)
    assert not ref.is_header


@pytest.mark.parametrize(
    ("pk", "sk"),
    [
        ("X#nightly", "META"),  # another application's row
        ("B#nightly-2026-11-23T06:00Z#0", "F#00000001"),  # a failed row
        ("B#nightly-2026-11-23T06:00Z#0", "C#abc"),  # a chunk sk that is not a number
        ("B#nightly-2026-11-23T06:00Z#x", "C#00000001"),  # a shard that is not a number
        ("B#", "C#00000001"),  # no batch id
        ("", ""),
    ],
)
def test_parse_key_ignores_rows_that_are_not_headers_or_chunks(pk: str, sk: str):
    assert model.parse_key(pk, sk) is None


# -- shards and chunks ----------------------------------------------------------------------


def test_small_batches_use_one_shard_and_large_ones_at_most_one_hundred():
    assert model.shard_count(1, 10_000) == 1
    assert model.shard_count(10_000, 10_000) == 1
    assert model.shard_count(10_001, 10_000) == 2
    assert model.shard_count(1_000_000, 10_000) == 100
    assert model.shard_count(5_000_000, 10_000) == model.MAX_SHARDS


def test_cutting_holds_at_most_k_items_and_keeps_every_item_once_in_order():
    items = [{"id": n} for n in range(1050)]

    chunks = cut(items, k=100)

    assert [len(chunk.items) for chunk in chunks] == [100] * 10 + [50]
    assert [chunk.chunk_no for chunk in chunks] == list(range(11))
    assert [index for chunk in chunks for index in chunk.indices] == list(range(1050))
    assert [item for chunk in chunks for _, item in chunk.items] == items


def test_cutting_with_k_of_one_gives_one_chunk_per_item():
    assert [chunk.indices for chunk in cut(range(3), k=1)] == [[0], [1], [2]]


def test_cutting_cuts_by_size_before_k_and_every_body_fits_the_limit():
    items = [{"id": n, "payload": "x" * 200} for n in range(100)]
    max_bytes = 4096

    chunks = cut(items, k=100, max_bytes=max_bytes)

    assert len(chunks) > 1  # 100 items of ~230 bytes do not fit one 4 KiB message
    assert all(len(chunk.body().encode()) <= max_bytes for chunk in chunks)
    assert [index for chunk in chunks for index in chunk.indices] == list(range(100))


def test_cutting_spreads_chunks_round_robin_over_shards():
    chunks = cut(range(1000), k=100, shards=4)

    assert [chunk.shard for chunk in chunks] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]


def test_item_too_large_for_a_message_raises_naming_the_item_index():
    items = [{"id": 0}, {"id": 1}, {"id": 2, "payload": "x" * 5000}, {"id": 3}]

    with pytest.raises(BadRequestError, match=r"^item 2 is [\d,]+ bytes"):
        cut(items, max_bytes=4096)


def test_chunk_body_round_trips_through_parse_message():
    chunk = cut([{"id": n, "value": n * 2} for n in range(250)], shards=2)[1]

    message = model.parse_message(chunk.body())

    assert message == model.WorkMessage(
        batch_id=chunk.batch_id,
        shard=1,
        chunk_no=1,
        task="sleep",
        options={"scale": 0},
        items=chunk.items,
    )


# -- parsing work messages ---------------------------------------------------------------------


def test_valid_message_parses():
    message = model.parse_message(valid_body())

    assert message.batch_id == "nightly-2026-11-23T06:00Z"
    assert (message.shard, message.chunk_no, message.task) == (0, 3, "sleep")
    assert message.items == ((300, {"id": 300, "value": 5}), (301, {"id": 301, "value": 6}))


@pytest.mark.parametrize("body", ["not json", "{", "", None])
def test_message_that_is_not_json_is_rejected(body):
    with pytest.raises(BadMessageError, match="not JSON"):
        model.parse_message(body)


def test_message_that_is_not_an_object_is_rejected():
    with pytest.raises(BadMessageError, match="must be a JSON object"):
        model.parse_message("[1, 2]")


@pytest.mark.parametrize("version", [2, 0, "1", ...])
def test_message_of_another_version_is_rejected(version):
    with pytest.raises(BadMessageError, match="message version"):
        model.parse_message(valid_body(v=version))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"batch_id": ...}, "batch_id"),
        ({"batch_id": 7}, "batch_id"),
        ({"shard": True}, "shard"),
        ({"shard": "0"}, "shard"),
        ({"chunk": ...}, "chunk"),
        ({"chunk": False}, "chunk"),
        ({"task": None}, "task"),
        ({"items": {"0": 1}}, "items"),
    ],
)
def test_message_field_of_the_wrong_type_is_named(changes, field):
    with pytest.raises(BadMessageError, match=f"message field '{field}' must be"):
        model.parse_message(valid_body(**changes))


def test_message_options_must_be_an_object():
    with pytest.raises(BadMessageError, match="message field 'options' must be an object"):
        model.parse_message(valid_body(options=[1]))


@pytest.mark.parametrize("pair", [[1], [1, 2, 3], ["1", {}], {"index": 1}, 5])
def test_message_items_that_are_not_index_item_pairs_are_named(pair):
    items = [[0, {"id": 0}], pair]

    with pytest.raises(BadMessageError, match=r"message items\[1\] must be \[index, item\]"):
        model.parse_message(valid_body(items=items))


@pytest.mark.parametrize("index", [True, False, -1, 1.0, "1"])
def test_message_item_index_must_be_a_whole_number_not_below_zero(index):
    # A bool would pass as an int: [true, item] would drain index 1 without running item 1.
    with pytest.raises(BadMessageError, match=r"message items\[0\] must be \[index, item\]"):
        model.parse_message(valid_body(items=[[index, {"id": 1}]]))
