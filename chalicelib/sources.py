"""Item sources: where a batch's items come from.

Every item is a pure function of (source, batch id, index): any chunk can be rebuilt
from the indices its row still holds. That is what lets the sweeper re-send a message
that vanished, a crashed batcher resume, and a redrive re-run failed items, without
storing payloads in the table (rows hold indices only; see README 'Data model').
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Iterator, Mapping

from chalicelib.config import Source


def source_record(source: Source) -> dict[str, Any]:
    """The source as stored on the batch header, so its items can be rebuilt later."""
    return {"type": source.type, "count": source.count, "max_value": source.max_value}


def source_from_record(record: Mapping[str, Any]) -> Source:
    return Source(type=record["type"], count=int(record["count"]), max_value=int(record["max_value"]))


def item_at(source: Source, batch_id: str, index: int) -> dict[str, Any]:
    """Item `index` of the batch; the same value every time it is asked for."""
    if source.type == "random":
        digest = hashlib.blake2b(f"{batch_id}/{index}".encode(), digest_size=8).digest()
        return {"id": index, "value": int.from_bytes(digest, "big") % (source.max_value + 1)}
    raise ValueError(f"unknown source type {source.type!r}")  # config validation prevents this


def items_from(source: Source, batch_id: str) -> Iterator[dict[str, Any]]:
    """The items of `source` for `batch_id`, in index order."""
    for index in range(source.count):
        yield item_at(source, batch_id, index)


def items_at(source: Source, batch_id: str, indices: Iterable[int]) -> list[tuple[int, dict[str, Any]]]:
    """(index, item) pairs for the given indices, in index order (rebuilding a chunk)."""
    return [(index, item_at(source, batch_id, index)) for index in sorted(indices)]
