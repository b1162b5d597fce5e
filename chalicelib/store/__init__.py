"""The batch table: one store per row kind, over one small base.

Handlers speak the domain (create a header, seal, drain a chunk, close a shard,
complete); the conditions that make each step safe under retries and concurrency live
next to the write they guard, in the module of the row it writes:

- `headers`: batch headers and the open-batches index (phases, attempts, totals, alerts);
- `segments`: segment rows, the planners' work;
- `chunks`: chunk rows, the items still pending;
- `failures`: failed rows (and poison messages);
- `stats`: a batch's item-time counters, observations only (chalicelib.itemstats);
- `base`: the client, item conversion, conditional writes and retries they share.

`BatchStore` is the one object handlers hold: the five together, on one table.
"""

from __future__ import annotations

from chalicelib.chunks import ItemOutcome, Recorded
from chalicelib.store.base import BATCH_WRITE_ROWS, from_item, to_item
from chalicelib.store.chunks import Chunks
from chalicelib.store.failures import MAX_POISON_BODY, Failures
from chalicelib.store.headers import Headers
from chalicelib.store.segments import SEGMENTS_PER_TRANSACTION, Segments
from chalicelib.store.stats import Stats

__all__ = [
    "BATCH_WRITE_ROWS",
    "MAX_POISON_BODY",
    "SEGMENTS_PER_TRANSACTION",
    "BatchStore",
    "ItemOutcome",
    "Recorded",
    "from_item",
    "to_item",
]


class BatchStore(Headers, Segments, Chunks, Failures, Stats):
    """Every read and write batchdrain makes to its DynamoDB table (`table_name` from Settings)."""
