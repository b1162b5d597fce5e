"""What AWS bills and at what price: the price table, DynamoDB item sizes and units, and Lambda time assumptions.

One place for each, shared by the app and the command line:

- `load_prices`: the us-east-1 list prices in `chalicelib/prices.json` (each with its source
  and the date it was checked), read by the cost model (batchdrain_cli.costmodel) and by
  each batch's own cost (chalicelib.batchcost), so the deployed app carries the table;
- `item_bytes`, `write_units`, `read_units`: an item's size and its units as DynamoDB
  bills them (chalicelib.sizing keeps a chunk row within one write unit with them);
- REQUEST_MS, CLIENT_CPU_MS and the CPU figures: how long a function spends on a request
  or an item, for the Lambda time neither side can measure per batch (`request_ms`).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Mapping

PRICES_PATH = Path(__file__).with_name("prices.json")


@dataclass(frozen=True)
class Prices:
    """The price table (chalicelib/prices.json), in dollars per single unit."""

    sqs_request: float
    sqs_chunk_bytes: int
    wru: float
    rru: float
    lambda_request: float
    lambda_gb_s: Mapping[str, float]
    sns_publish: float
    s3_put: float
    s3_get: float
    logs_gb: float
    sfn_transition: float
    sfn_express_request: float
    sfn_express_gb_s: float
    sfn_express_chunk_mb: int
    sfn_express_rounding_ms: int
    checked: str
    sources: tuple[str, ...]


def load_prices(path: Path = PRICES_PATH) -> Prices:
    """Read the price table; every price batchdrain uses comes from here.

    >>> load_prices().wru
    6.25e-07
    """
    return _load_prices(str(path))


@functools.lru_cache(maxsize=4)
def _load_prices(path: str) -> Prices:
    table = json.loads(Path(path).read_text())
    sfn = table["stepfunctions"]
    sources = tuple(
        dict.fromkeys(s for section in table.values() if isinstance(section, dict) for s in section.get("sources", ()))
    )
    return Prices(
        sqs_request=table["sqs"]["standard_requests_per_million"] / 1e6,
        sqs_chunk_bytes=table["sqs"]["billing_chunk_bytes"],
        wru=table["dynamodb"]["on_demand_write_request_units_per_million"] / 1e6,
        rru=table["dynamodb"]["on_demand_read_request_units_per_million"] / 1e6,
        lambda_request=table["lambda"]["requests_per_million"] / 1e6,
        lambda_gb_s=dict(table["lambda"]["gb_second"]),
        sns_publish=table["sns"]["publish_per_million"] / 1e6,
        s3_put=table["s3"]["standard_put_copy_post_list_per_1000"] / 1e3,
        s3_get=table["s3"]["standard_get_select_per_1000"] / 1e3,
        logs_gb=table["cloudwatch_logs"]["ingestion_per_gb"],
        sfn_transition=sfn["standard_state_transitions_per_million"] / 1e6,
        sfn_express_request=sfn["express_requests_per_million"] / 1e6,
        sfn_express_gb_s=sfn["express_gb_second"],
        sfn_express_chunk_mb=sfn["express_memory_chunk_mb"],
        sfn_express_rounding_ms=sfn["express_duration_rounding_ms"],
        checked=table["checked"],
        sources=sources,
    )


# -- Lambda time: assumed and measured figures (batchdrain_cli.costmodel's docstring says which) ----------

# Assumed wall time of one request from a Lambda function to the service in the same
# region, in ms (DynamoDB documents single-digit milliseconds; SNS and S3 PUTs are slower).
REQUEST_MS = {"dynamodb": 6.0, "sqs": 8.0, "sns": 20.0, "s3": 20.0}
# Measured here (one full core): botocore's own CPU per request (build, sign, parse),
# about half of a moto in-process GetItem round trip of 0.8 ms.
CLIENT_CPU_MS = 0.4
# Measured here (one full core) with a no-op task: the processor's own CPU per message
# (parse, row plan, serialisation) and per item (the worker-thread handoff).
MESSAGE_CPU_MS = 0.05
ITEM_CPU_MS = 0.02
# Measured here (one full core): a planner over a `random` segment, per item: generate
# (sources.read_segment), cut (model.cut_entries), build the row (to_item(new_chunk_row))
# and the body (Chunk.body). 0.0057 ms at K=100, 0.0065 ms at K=20.
GENERATE_CPU_MS = 0.006
# Assumed: reading and parsing one JSON line in a planner, per item (one full core).
LINE_CPU_MS = 0.01
# Lambda gives a function one vCPU at 1,769 MB, proportionally less below.
FULL_CPU_MB = 1769
# Assumed: a new on-demand table's partitions (4,000 WRU/s initially = 4 x 1,000), one
# stream shard each: stream batches form per stream shard.
STREAM_SHARDS = 4
# Lambda polls each stream shard about 4 times a second: with no batching window a
# stream batch holds what arrived in a quarter second.
STREAM_POLL_S = 0.25


def cpu_scale(memory_mb: int) -> float:
    """How much slower single-threaded CPU work runs at `memory_mb` than on a full core."""
    return max(1.0, FULL_CPU_MB / memory_mb)


def request_ms(requests: Mapping[tuple[str, str], float], memory_mb: int) -> float:
    """Wall time of these requests ((service, operation) -> calls) made one after the other inside a function of `memory_mb`."""
    scale = cpu_scale(memory_mb)
    return sum(count * (REQUEST_MS.get(service, 10.0) + CLIENT_CPU_MS * scale) for (service, _), count in requests.items())


def item_bytes(item: Mapping[str, Any]) -> int:
    """An item's size as DynamoDB bills it, from AWS's documented rules (DynamoDB item sizes and formats).

    Strings: UTF-8 bytes; numbers: 1 byte per two significant digits + 1; booleans and
    null: 1; lists and maps: 3 bytes + 1 per element; plus every attribute and map key name.
    Sets are taken as the sum of their members (AWS does not document their overhead).

    >>> item_bytes({"pk": "B#x#0", "sk": "C#00000001", "pending": {1, 2}})
    30
    """
    return sum(len(name.encode()) + _value_bytes(value) for name, value in item.items())


def _value_bytes(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode())
    if value is None or isinstance(value, bool):
        return 1
    if isinstance(value, (int, float, Decimal)):
        digits = Decimal(str(value)).normalize().as_tuple().digits
        significant = len("".join(map(str, digits)).strip("0")) or 1
        return (significant + 1) // 2 + 1
    if isinstance(value, (set, frozenset)):
        return sum(_value_bytes(member) for member in value)
    if isinstance(value, (list, tuple)):
        return 3 + sum(1 + _value_bytes(member) for member in value)
    if isinstance(value, Mapping):
        return 3 + sum(1 + len(str(name).encode()) + _value_bytes(member) for name, member in value.items())
    raise TypeError(f"no DynamoDB size for {type(value).__name__}")


def write_units(size: float) -> int:
    """WRU of one standard write of an item of `size` bytes (1 KB each, rounded up)."""
    return max(1, math.ceil(size / 1024))


def read_units(size: float) -> int:
    """RRU of one strongly consistent read of `size` bytes (4 KB each, rounded up; at least one)."""
    return max(1, math.ceil(size / 4096))
