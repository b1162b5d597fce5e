"""What AWS bills, in units: DynamoDB item sizes and their write and read units.

Shared by the app (chalicelib.sizing keeps a chunk row within one write unit) and the
cost model (batchdrain_cli.costmodel), so both size a row the same way.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any, Mapping


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
