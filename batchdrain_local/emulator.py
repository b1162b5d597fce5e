"""moto without the per-request costs that grow with what it holds (AWS has none of them).

`server.patch_moto` installs these on every local stack; `python -m bench.harness
--stock-moto` runs without them (`without_fixes()`). Each keeps moto's observable
behaviour: same responses, same errors, same order (tests/unit/test_emulator.py runs
randomized sequences against stock and fixed moto and compares every response).

- The dispatcher lists moto's package folder (`os.listdir` and ~200 `isdir`) under a
  global lock to route every request: the listing is cached, it cannot change.
- `DeleteMessage(Batch)` looked for the handle in every message of the queue: messages
  are found by receipt handle in an index kept as moto hands handles out (an unknown
  handle falls back to moto's own scan, so its errors are moto's).
- `ReceiveMessage` listed every visible message of the queue before taking the first
  ten: `Queue.messages` is a lazy view, so a receive reads the queue only up to the
  messages it returns (plus those in flight before them). `len()` still counts all.
- `Query` on a table's primary key sorted every item of the table, then the partition,
  for each call: range-keyed partitions keep their keys sorted, and a Query hands moto's
  own loop only the items it can reach (the key condition's window after the
  ExclusiveStartKey, up to where moto's loop stops for Limit or 1 MB). Index queries,
  QueryFilter and unusual keys take moto's path unchanged.
- Shard iterators were kept forever (one per GetRecords): an iterator now carries its
  shard and sequence number in its own id, signed with a key of this process, so the
  backend stores none. Each stays valid as long as moto's did (while the backend lives);
  unknown or altered ones fail as before.
- Responses: moto's serializer walks the service model for every attribute value it
  returns (a GetRecords spent ~1.1 ms a record in it, a GetItem of a chunk row ~0.3 ms).
  A DynamoDB AttributeValue that is a plain {type: value} is written as the serializer
  would write it, in one step; anything else takes the serializer.
- Memory: a stream record held ~3.3 KB of Python objects (its images' dicts and the
  deleted item's values they kept alive), and moto keeps every record. A shard's
  records past its newest 512 are pickled and compressed, 256 to a block (~0.1 KB a
  record), and unpacked when read. Every record stays readable, TRIM_HORIZON still
  starts at the first, and a record reads back equal to what moto held (its images
  were already copies of the item, never updated afterwards).
"""

from __future__ import annotations

import base64
import bisect
import functools
import hashlib
import itertools
import os
import pickle
import re
import threading
import zlib
from collections import defaultdict
from typing import Any, Callable, Iterator

_installed: list[Callable[[], None]] = []  # the uninstall of the installed fixes, if any
_wanted = True  # False while a benchmark measures stock moto (without_fixes)
_MAX_ITEM_BYTES = 405_000  # moto's LimitedSizeDict rejects larger items (Item.size() counts the same)


def enabled() -> bool:
    """Whether the local stack installs the fixes (not while a benchmark measures moto without them)."""
    return _wanted


def installed() -> bool:
    return bool(_installed)


def install() -> Callable[[], None]:
    """Apply every fix (idempotent); returns the function that takes them out again."""
    if not _installed:
        undo = [_cache_module_listing(), _index_receipt_handles(), _lazy_visible_messages(),
                _partition_queries(), _encoded_shard_iterators(), _compact_stream_records(), _direct_attribute_values()]

        def uninstall() -> None:
            for step in reversed(undo):
                step()
            _installed.clear()

        _installed.append(uninstall)
    return _installed[0]


def without_fixes() -> Callable[[], None]:
    """moto as it ships (plus the local stack's correctness patches) until the returned undo is called."""
    global _wanted
    was_installed = bool(_installed)
    if was_installed:
        _installed[0]()
    _wanted = False

    def undo() -> None:
        global _wanted
        _wanted = True
        if was_installed:
            install()

    return undo


def _replace(owner: Any, name: str, value: Any) -> Callable[[], None]:
    """Set owner.name to value; returns the undo."""
    original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
    setattr(owner, name, value)
    return lambda: setattr(owner, name, original)


# -- the dispatcher ---------------------------------------------------------------------


def _cache_module_listing() -> Callable[[], None]:
    from moto import backends

    listing = tuple(backends.list_of_moto_modules())
    return _replace(backends, "list_of_moto_modules", lambda: listing)


# -- SQS --------------------------------------------------------------------------------


def _index_receipt_handles() -> Callable[[], None]:
    """DeleteMessage by receipt handle without scanning the queue."""
    import weakref

    from moto.sqs import models as sqs

    by_handle: "weakref.WeakValueDictionary[str, Any]" = weakref.WeakValueDictionary()
    mark_received, delete = sqs.Message.mark_received, sqs.Queue.delete_message

    @functools.wraps(mark_received)
    def indexed_mark_received(message: Any, *args: Any, **kwargs: Any) -> Any:
        result = mark_received(message, *args, **kwargs)
        by_handle[message.receipt_handle] = message
        return result

    @functools.wraps(delete)
    def delete_message(queue: Any, receipt_handle: str) -> None:
        if receipt_handle in queue.deleted_messages:
            return  # already deleted: ignored, as moto does
        message = by_handle.get(receipt_handle)
        if message is None or message not in queue._messages:  # an identity scan at C speed
            return delete(queue, receipt_handle)  # not one we handed out here: moto's own answer
        queue._messages.remove(message)
        queue.pending_messages.discard(message)
        queue.deleted_messages.update(message.all_receipt_handles)
        for handle in message.all_receipt_handles:
            by_handle.pop(handle, None)

    undo = [_replace(sqs.Message, "mark_received", indexed_mark_received), _replace(sqs.Queue, "delete_message", delete_message)]
    return lambda: [step() for step in undo]


class _VisibleMessages:
    """Queue.messages (visible, not delayed, in queue order) evaluated as it is iterated.

    ReceiveMessage iterates it and stops at its count; moto built the whole list first.
    The receive loop does not change the queue while it iterates (dead-lettering comes
    after), so the messages it sees are the same.
    """

    __slots__ = ("_queue",)

    def __init__(self, queue: Any) -> None:
        self._queue = queue

    def __iter__(self) -> Iterator[Any]:
        return (message for message in self._queue._messages if message.visible and not message.delayed)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __bool__(self) -> bool:
        return next(iter(self), None) is not None


def _lazy_visible_messages() -> Callable[[], None]:
    from moto.sqs.models import Queue

    return _replace(Queue, "messages", property(_VisibleMessages))


# -- DynamoDB Query ---------------------------------------------------------------------


class _Partition(dict):
    """One hash key's items of a range-keyed table (range key -> Item), its keys kept sorted.

    `_order` is (cast values ascending, range keys in that order), moto's order for a
    partition (DynamoType compares by cast value); None when it must be rebuilt.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._order: tuple[list[Any], list[Any]] | None = None if self else ([], [])

    def order(self) -> tuple[list[Any], list[Any]] | None:
        """The sorted keys; None if they do not sort (mixed types: moto's own path then)."""
        if self._order is None:
            keys = list(self)
            if len({key.type for key in keys}) > 1:
                return None
            try:
                pairs = sorted(((key.cast_value, key) for key in keys), key=lambda pair: pair[0])
            except Exception:
                return None
            self._order = ([cast for cast, _ in pairs], [key for _, key in pairs])
        return self._order

    def __setitem__(self, key: Any, value: Any) -> None:
        order = self._order
        if order is not None and key not in self:
            try:
                cast = key.cast_value
                if order[1] and order[1][0].type != key.type:
                    raise TypeError("mixed key types")
                at = bisect.bisect_left(order[0], cast)
                order[0].insert(at, cast)
                order[1].insert(at, key)
            except Exception:
                self._order = None
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: Any) -> None:
        dict.__delitem__(self, key)
        self._forget(key)

    def pop(self, key: Any, *default: Any) -> Any:
        if key in self:
            value = dict.pop(self, key)
            self._forget(key)
            return value
        return dict.pop(self, key, *default)

    def _forget(self, key: Any) -> None:
        order = self._order
        if order is None:
            return
        try:
            at = bisect.bisect_left(order[0], key.cast_value)
            if at < len(order[1]) and order[1][at] == key:
                del order[0][at], order[1][at]
                return
        except Exception:
            pass
        self._order = None

    def _changed(self, result: Any) -> Any:
        self._order = None
        return result

    def popitem(self) -> tuple[Any, Any]:
        return self._changed(dict.popitem(self))

    def clear(self) -> None:
        self._changed(dict.clear(self))

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._changed(dict.update(self, *args, **kwargs))

    def setdefault(self, key: Any, default: Any = None) -> Any:
        return self._changed(dict.setdefault(self, key, default))

    def __ior__(self, other: Any) -> "_Partition":
        dict.update(self, other)
        return self._changed(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> "_Partition":
        import copy

        copied = _Partition()
        memo[id(self)] = copied
        for key, value in self.items():
            dict.__setitem__(copied, copy.deepcopy(key, memo), copy.deepcopy(value, memo))
        copied._order = None
        return copied

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Partition, (dict(self),))


_reachable = threading.local()  # (table, items): what Table.all_items returns inside a fixed Query


def _partition_queries() -> Callable[[], None]:
    from moto.dynamodb.models.table import Table

    init, query, all_items = Table.__init__, Table.query, Table.all_items

    @functools.wraps(init)
    def table_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if self.range_key_attr is not None and not self.items:
            self.items = defaultdict(_Partition)

    @functools.wraps(all_items)
    def reachable_items(self: Any) -> list[Any]:
        reachable = getattr(_reachable, "items", None)
        if reachable is not None and reachable[0] is self:
            return reachable[1]
        return all_items(self)

    @functools.wraps(query)
    def partition_query(self: Any, hash_key: Any, range_comparison: Any, range_objs: list[Any], limit: Any,
                        exclusive_start_key: Any, scan_index_forward: Any, projection_expressions: Any,
                        index_name: Any = None, consistent_read: bool = False, filter_expression: Any = None,
                        hash_key_conditions: Any = None, range_key_conditions: Any = None, **filter_kwargs: Any) -> Any:
        reachable = None
        if not index_name and not filter_kwargs and hash_key is not None and (limit is None or limit >= 1):
            reachable = _reachable_items(self, hash_key, range_comparison, range_objs, limit, exclusive_start_key,
                                         scan_index_forward is not False, range_key_conditions)
        if reachable is not None:
            _reachable.items = (self, reachable)
        try:
            return query(self, hash_key, range_comparison, range_objs, limit, exclusive_start_key, scan_index_forward,
                         projection_expressions, index_name, consistent_read, filter_expression,
                         hash_key_conditions=hash_key_conditions, range_key_conditions=range_key_conditions,
                         **filter_kwargs)
        finally:
            _reachable.items = None

    undo = [_replace(Table, "__init__", table_init), _replace(Table, "all_items", reachable_items),
            _replace(Table, "query", partition_query)]
    return lambda: [step() for step in undo]


def _reachable_items(table: Any, hash_key: Any, comparison: str | None, values: list[Any], limit: int | None,
                     start_key: dict[str, Any] | None, forward: bool, range_conditions: Any) -> list[Any] | None:
    """The items of `hash_key`'s partition that moto's Query loop can reach, in key order.

    None: moto's own path (every item of the table). moto's loop, over the partition in
    key order, skips what comes before the ExclusiveStartKey, then for each item stops
    (LastEvaluatedKey: the last result) if it has `limit` results or the item would take
    the results past 1 MB, else adds the item if it meets the key condition. Before the
    first match nothing can stop it (items are at most 405,000 bytes), and after the last
    match it stops at the next item only if it has `limit` results, or at an item too big
    for what is left of the 1 MB. So it reaches the matches up to where it stops, plus that
    item. Without a fixed order (moto's own partition dict, mixed key types, an unusual
    start key or condition) the whole partition goes to moto's loop, which sorts it.
    """
    from moto.dynamodb.models.dynamo_type import DynamoType, Item
    from moto.dynamodb.models.table import RESULT_SIZE_LIMIT

    if table.range_key_attr is None:
        item = table.items.get(hash_key)
        return [item] if isinstance(item, Item) else []
    if range_conditions and (len(range_conditions) > 1 or range_conditions[-1][0] != table.range_key_attr):
        return None
    partition = table.items.get(hash_key)
    if not partition:
        return []
    order = partition.order() if isinstance(partition, _Partition) else None
    if order is None:
        return list(partition.values())
    casts, keys = order
    low, high = 0, len(casts)
    if start_key is not None:
        cut = _after_start_key(table, hash_key, start_key, casts, keys[0].type, forward, DynamoType)
        if cut is None:
            return list(partition.values())
        low, high = (cut, high) if forward else (low, cut)
    window = _key_condition_window(comparison, values, casts, keys[0].type) if comparison else (0, len(casts))
    if window is None:
        return list(partition.values())
    first, last = max(low, window[0]), min(high, window[1])
    if first >= last:
        return []  # nothing matches: moto's loop ends without results or a LastEvaluatedKey
    matches = range(first, last) if forward else range(last - 1, first - 1, -1)
    after = range(last, high) if forward else range(first - 1, low - 1, -1)
    reached: list[Any] = []
    count = size = 0
    for at in matches:
        item = partition[keys[at]]
        reached.append(item)
        if count == limit:
            break
        item_size = item.size()
        if size + item_size > RESULT_SIZE_LIMIT:
            break
        count, size = count + 1, size + item_size
    else:
        if count == limit:
            reached.extend(partition[keys[at]] for at in after[:1])
        elif size + _MAX_ITEM_BYTES > RESULT_SIZE_LIMIT:
            reached.extend(partition[keys[at]] for at in after)  # any of them may stop the loop: moto tries each
    if not forward:
        reached.reverse()
    return reached


def _after_start_key(table: Any, hash_key: Any, start_key: Any, casts: list[Any], key_type: str, forward: bool,
                     dynamo_type: Any) -> int | None:
    """Where the partition resumes after an ExclusiveStartKey of the same partition (None: another kind of key)."""
    try:
        if not isinstance(start_key, dict) or dynamo_type(start_key[table.hash_key_attr]) != hash_key:
            return None
        start = dynamo_type(start_key[table.range_key_attr])
        if start.type != key_type:
            return None
        cast = start.cast_value
        return bisect.bisect_right(casts, cast) if forward else bisect.bisect_left(casts, cast)
    except Exception:
        return None


def _key_condition_window(comparison: str, values: list[Any], casts: list[Any], key_type: str) -> tuple[int, int] | None:
    """[first, last) of the sorted partition meeting the range key condition; None if not known exactly."""
    from moto.dynamodb.comparisons import COMPARISON_FUNCS

    function = COMPARISON_FUNCS.get(comparison)
    if function is None or not values or any(value.type != key_type for value in values):
        return None
    try:
        bounds = [value.cast_value for value in values]
        left, right = (functools.partial(bisect_, casts) for bisect_ in (bisect.bisect_left, bisect.bisect_right))
        if function is COMPARISON_FUNCS["="]:
            return left(bounds[0]), right(bounds[0])
        if function is COMPARISON_FUNCS["<"]:
            return 0, left(bounds[0])
        if function is COMPARISON_FUNCS["<="]:
            return 0, right(bounds[0])
        if function is COMPARISON_FUNCS[">"]:
            return right(bounds[0]), len(casts)
        if function is COMPARISON_FUNCS[">="]:
            return left(bounds[0]), len(casts)
        if function is COMPARISON_FUNCS["BETWEEN"] and len(bounds) == 2:
            return left(bounds[0]), right(bounds[1])
        if function is COMPARISON_FUNCS["BEGINS_WITH"] and key_type == "S":
            prefix = bounds[0]
            if not prefix:
                return 0, len(casts)
            if ord(prefix[-1]) == 0x10FFFF:
                return None
            # s starts with p exactly when p <= s < p with its last character the next one
            return left(prefix), left(prefix[:-1] + chr(ord(prefix[-1]) + 1))
    except Exception:
        return None
    return None


# -- DynamoDB Streams -------------------------------------------------------------------

_ITERATOR_ID = re.compile(r"bd(\d+)\.(\d+)\.\d+\.([0-9a-f]{32})")
_shard_numbers = itertools.count(1)
_iterator_numbers = itertools.count(1)
_ITERATOR_KEY = os.urandom(32)  # signs the iterators this process hands out: others stay unknown, as in moto


def _signature(text: str) -> str:
    return hashlib.blake2b(text.encode(), key=_ITERATOR_KEY, digest_size=16).hexdigest()


class _Iterators(dict):
    """A streams backend's shard_iterators: moto's own iterators are stored, signed ones are read from their id."""

    def __init__(self, backend: Any, stored: dict[str, Any]) -> None:
        super().__init__(stored)
        self.backend = backend
        self.shards: dict[int, Any] = {}  # shard number -> shard, for as long as the backend lives (moto kept its iterators)
        self.numbers: dict[int, int] = {}  # id(shard) -> its number (the shard is held above, so its id stays its own)

    def encode(self, iterator: Any) -> None:
        shard = iterator.stream_shard
        number = self.numbers.get(id(shard))
        if number is None:
            number = self.numbers[id(shard)] = next(_shard_numbers)
            self.shards[number] = shard
        iterator.id = ""
        prefix = iterator.arn  # the ARN up to the id, as moto would have stored it
        identifier = f"bd{number}.{iterator.sequence_number}.{next(_iterator_numbers)}"
        iterator.id = f"{identifier}.{_signature(prefix + identifier)}"
        iterator._batchdrain_encoded = True

    def __setitem__(self, key: str, iterator: Any) -> None:
        if not getattr(iterator, "_batchdrain_encoded", False):
            dict.__setitem__(self, key, iterator)

    def __missing__(self, key: str) -> Any:
        from moto.dynamodbstreams.models import ShardIterator

        prefix, _, identifier = key.rpartition("|") if isinstance(key, str) else ("", "", "")
        match = _ITERATOR_ID.fullmatch(identifier)
        shard = self.shards.get(int(match.group(1))) if match else None
        if shard is None or _signature(f"{prefix}|{identifier.rpartition('.')[0]}") != match.group(3):
            raise KeyError(key)
        iterator = ShardIterator.__new__(ShardIterator)
        iterator.id, iterator.streams_backend, iterator.stream_shard = identifier, self.backend, shard
        iterator.shard_iterator_type, iterator.sequence_number = "AT_SEQUENCE_NUMBER", int(match.group(2))
        iterator._batchdrain_encoded = True
        return iterator


def _encoded_shard_iterators() -> Callable[[], None]:
    from moto.dynamodbstreams.models import ShardIterator

    init = ShardIterator.__init__

    @functools.wraps(init)
    def iterator_init(self: Any, streams_backend: Any, stream_shard: Any, shard_iterator_type: str,
                      sequence_number: int | None = None) -> None:
        init(self, streams_backend, stream_shard, shard_iterator_type, sequence_number)
        if not isinstance(getattr(self, "sequence_number", None), int):
            return  # moto fails on it later, as before
        if not isinstance(streams_backend.shard_iterators, _Iterators):
            streams_backend.shard_iterators = _Iterators(streams_backend, streams_backend.shard_iterators)
        streams_backend.shard_iterators.encode(self)

    return _replace(ShardIterator, "__init__", iterator_init)


class _Record:
    """A stream record read back from a block: what moto's StreamRecord gives (to_json, record)."""

    __slots__ = ("record",)

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def to_json(self) -> dict[str, Any]:
        return self.record


class _StreamRecords:
    """StreamShard.items: a list of records whose older part is pickled and compressed in blocks.

    moto appends (a write), takes len() (sequence numbers, LATEST), slices (GetRecords)
    and iterates; the local stack's transaction rollback deletes a tail. Records are
    read under a lock: GetRecords is not serialized with writes, and a block forms
    from the newest records as writes append.
    """

    BLOCK = 256

    def __init__(self, records: Any = ()) -> None:
        self._blocks: list[bytes] = []
        self._recent: list[Any] = list(records)
        self._lock = threading.Lock()
        self._cached: tuple[int, list[_Record]] | None = None

    @property
    def compressed_bytes(self) -> int:
        return sum(len(block) for block in self._blocks)

    def __len__(self) -> int:
        return len(self._blocks) * self.BLOCK + len(self._recent)

    def append(self, record: Any) -> None:
        with self._lock:
            self._recent.append(record)
            if len(self._recent) >= 2 * self.BLOCK:
                oldest = [record.to_json() for record in self._recent[: self.BLOCK]]
                self._blocks.append(zlib.compress(pickle.dumps(oldest, protocol=pickle.HIGHEST_PROTOCOL), 1))
                del self._recent[: self.BLOCK]

    def __getitem__(self, index: Any) -> Any:
        with self._lock:
            if isinstance(index, slice):
                start, stop, step = index.indices(len(self))
                records = self._range(start, max(start, stop)) if step > 0 else self._range(0, len(self))
                return records if step == 1 else (records[::step] if step > 0 else records[index])
            at = index + len(self) if index < 0 else index
            if not 0 <= at < len(self):
                raise IndexError("list index out of range")
            return self._range(at, at + 1)[0]

    def _range(self, start: int, stop: int) -> list[Any]:
        records: list[Any] = []
        packed = len(self._blocks) * self.BLOCK
        while start < min(stop, packed):
            number, offset = divmod(start, self.BLOCK)
            taken = self._block(number)[offset : offset + min(stop, packed) - start]
            records.extend(taken)
            start += len(taken)
        return records + self._recent[max(0, start - packed) : max(0, stop - packed)]

    def _block(self, number: int) -> list[_Record]:
        if self._cached is None or self._cached[0] != number:
            self._cached = (number, [_Record(record) for record in pickle.loads(zlib.decompress(self._blocks[number]))])
        return self._cached[1]

    def __iter__(self) -> Iterator[Any]:
        for start in range(0, len(self), self.BLOCK):
            yield from self[start : start + self.BLOCK]

    def __delitem__(self, index: Any) -> None:
        with self._lock:
            packed = len(self._blocks) * self.BLOCK
            if isinstance(index, slice) and index.step is None and index.stop is None and (index.start or 0) >= packed:
                del self._recent[index.start - packed if index.start else 0 :]
                return
            records = self._range(0, len(self))
            del records[index]
            self._blocks, self._recent, self._cached = [], [], None
        for record in records:
            self.append(record)

    def __deepcopy__(self, memo: dict[int, Any]) -> "_StreamRecords":
        import copy

        with self._lock:
            copied = _StreamRecords(copy.deepcopy(self._recent, memo))
            copied._blocks = list(self._blocks)
        return copied

    def __reduce__(self) -> tuple[Any, ...]:
        return (_StreamRecords, (list(self),))  # pickled as the records (a lock does not pickle)


def _compact_stream_records() -> Callable[[], None]:
    from moto.dynamodb.models.table import StreamShard

    init = StreamShard.__init__

    @functools.wraps(init)
    def shard_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.items = _StreamRecords(self.items)

    return _replace(StreamShard, "__init__", shard_init)


# -- DynamoDB responses -----------------------------------------------------------------

_SCALAR_TYPES = frozenset({"S", "N"})
_ATTRIBUTE_TYPES = frozenset({"S", "N", "B", "SS", "NS", "BS", "M", "L", "NULL", "BOOL"})


class _NotPlain(Exception):
    """An attribute value the serializer must write itself."""


def _blob(value: Any) -> str:
    """The serializer's _base64: text is encoded as UTF-8 first."""
    if type(value) is str:
        value = value.encode("utf-8")
    elif type(value) is not bytes:
        raise _NotPlain
    return base64.b64encode(value).strip().decode("utf-8")


def _attribute_value(value: Any) -> dict[str, Any]:
    """The JSON the serializer writes for an AttributeValue given as {type: value}; _NotPlain if not that plain."""
    if type(value) is not dict or len(value) != 1:
        raise _NotPlain
    ((kind, content),) = value.items()
    content_type = type(content)
    if kind in _SCALAR_TYPES and content_type is str:
        return {kind: content}
    if (kind == "BOOL" or kind == "NULL") and content_type is bool:
        return {kind: content}
    if (kind == "SS" or kind == "NS") and content_type is list and all(type(element) is str for element in content):
        return {kind: list(content)}
    if kind == "B":
        return {kind: _blob(content)}
    if kind == "BS" and content_type is list:
        return {kind: [_blob(element) for element in content]}
    if kind == "M" and content_type is dict and all(type(name) is str for name in content):
        return {kind: {name: _attribute_value(element) for name, element in content.items()}}
    if kind == "L" and content_type is list:
        return {kind: [_attribute_value(element) for element in content]}
    raise _NotPlain


def _direct_attribute_values() -> Callable[[], None]:
    from moto.core.serialize import BaseJSONSerializer

    structure = BaseJSONSerializer._serialize_type_structure

    @functools.wraps(structure)
    def serialize_structure(self: Any, serialized: Any, value: Any, shape: Any, key: str) -> None:
        if key and shape.name == "AttributeValue" and set(shape.members) == _ATTRIBUTE_TYPES:
            try:
                serialized[shape.serialization.get("name", key)] = _attribute_value(value)
                return
            except _NotPlain:
                pass
        structure(self, serialized, value, shape, key)

    return _replace(BaseJSONSerializer, "_serialize_type_structure", serialize_structure)
