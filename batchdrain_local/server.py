"""moto in server mode on 127.0.0.1, on a free port, inside this process."""

from __future__ import annotations

import copy
import functools
import logging
import threading
import time
import urllib.request
from typing import Any, Callable

from moto.core.utils import unix_time as _moto_unix_time
from moto.server import ThreadedMotoServer

from batchdrain_local import emulator

# Environment every client of the local stack needs. moto's default account is
# 123456789012; AWS_ACCOUNT_ID_ENDPOINT_MODE=disabled stops current botocore from
# routing DynamoDB (Streams) calls to account-id endpoints moto does not serve.
CLIENT_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
}
ACCOUNT_ID = "123456789012"
# moto's server handles requests on many threads, but its backends are not thread-safe:
# - DynamoDB checks a condition and applies the write without a lock (measured: 1 in 200
#   races of 8 conditional updates had 2 winners). DynamoDB serializes writes to an item,
#   and invariant 4 rests on that.
# - SQS: two ReceiveMessage calls that both move a message to the dead-letter queue fail
#   with a 500 (`list.remove(x): x not in list`) and can dead-letter it twice.
# - DynamoDB's TransactWriteItems deep-copies every table it touches, stream and all, and
#   on a cancelled transaction puts the copy in the table's place: every shard iterator a
#   reader holds then points at a stream no write reaches again (the stream poller goes
#   blind), and each copy costs O(table), so a long run slows quadratically.
# So those calls go through one lock each, and a transaction snapshots only its items.
# - Every moto model instance (each item, stream record, message, and every deep copy of
#   them) is appended to a class-level list for moto's /moto-api/data view, forever:
#   memory grows with every request, quadratically as copies grow with the table. The
#   local stack never reads that view, so it stops the tracking.
# Reads too: a Query iterates the table's dict, which a concurrent write resizes
# (`RuntimeError: dictionary changed size during iteration`, a 500 to the caller).
_DYNAMODB_CALLS = ("put_item", "update_item", "delete_item", "transact_write_items", "get_item", "query", "scan")
_SQS_CALLS = (
    "send_message",
    "send_message_batch",
    "delete_message",
    "delete_message_batch",
    "change_message_visibility",
    "get_queue_attributes",
    "purge_queue",
)
_SQS_COUNTS = (
    "approximate_number_of_messages",
    "approximate_number_of_messages_not_visible",
    "approximate_number_of_messages_delayed",
)
_DYNAMODB_LOCK = threading.RLock()
_SQS_LOCK = threading.RLock()
_counting = threading.local()
_transacting = threading.local()
# A long poll waits outside the lock on the queue's own condition (a send wakes it), at most
# this long before looking again: a message whose visibility timeout ran out wakes no one.
_RECEIVE_RECHECK_SECONDS = 0.25


def _patch(owner: type, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Replace owner.name by make(original), once per process (the patches are idempotent)."""
    original = owner.__dict__[name]
    if getattr(original, "_batchdrain_patched", False):
        return
    replacement = make(original)
    replacement._batchdrain_patched = True
    setattr(owner, name, replacement)


def _locked(lock: threading.RLock) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def make(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def locked(*args: Any, **kwargs: Any) -> Any:
            with lock:
                return method(*args, **kwargs)

        return locked

    return make


def _receive_without_holding_the_lock(receive: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(receive)
    def receive_message(self: Any, queue_name: str, count: int, wait_seconds_timeout: int, *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + (wait_seconds_timeout or 0)
        while True:
            with _SQS_LOCK:
                messages = receive(self, queue_name, count, 0, *args, **kwargs)
            remaining = deadline - time.monotonic()
            if messages or remaining <= 0:
                return messages
            self.get_queue(queue_name).wait_for_messages(min(remaining, _RECEIVE_RECHECK_SECONDS))

    return receive_message


def _table_copy(table: Any, memo: dict[int, Any]) -> Any:
    """Table.__deepcopy__: none for a transaction's snapshot (it keeps its own items' copies,
    see below); a whole copy otherwise (CreateBackup)."""
    if getattr(_transacting, "on", False):
        return table
    copied = table.__class__.__new__(table.__class__)
    memo[id(table)] = copied
    for name, value in table.__dict__.items():
        setattr(copied, name, copy.deepcopy(value, memo))
    return copied


def _rolling_back_only_what_it_wrote(transact: Callable[..., Any]) -> Callable[..., Any]:
    """TransactWriteItems whose snapshot is the items it names, not every table it touches.

    moto deep-copies each table before a transaction and, if it is cancelled, puts the
    copy in the table's place. That costs O(table) per transaction, so a long local run
    slows quadratically (profiled: 60% of a 1,000-batch chaos run's time at batch 600),
    and swapping the table leaves stream readers on a shard no write reaches. Here the
    tables stay in place; a cancelled transaction puts back the items it named, as
    they were, and drops its stream records, as DynamoDB leaves none for it.
    """

    @functools.wraps(transact)
    def transact_write_items(self: Any, transact_items: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        named = [(table, *_named_key(self, table, op)) for table, op in _operations(self, transact_items)]
        saved = [(table, hash_key, range_key, copy.deepcopy(table.get_item(hash_key, range_key)))
                 for table, hash_key, range_key in named]
        streams = {id(table): (table, len(table.stream_shard.items)) for table, _, _ in named if table.stream_shard}
        _transacting.on = True
        try:
            return transact(self, transact_items, *args, **kwargs)
        except Exception:
            for table, hash_key, range_key, item in saved:
                _put_back(table, hash_key, range_key, item)
            for table, length in streams.values():
                del table.stream_shard.items[length:]
            raise
        finally:
            _transacting.on = False

    return transact_write_items


def _operations(backend: Any, transact_items: list[dict[str, Any]]) -> list[tuple[Any, dict[str, Any]]]:
    """(table, operation) of each item of a transaction whose table exists (moto rejects the rest)."""
    operations = []
    for entry in transact_items:
        for operation in entry.values():
            if isinstance(operation, dict) and operation.get("TableName") in backend.tables:
                operations.append((backend.tables[operation["TableName"]], operation))
    return operations


def _named_key(backend: Any, table: Any, operation: dict[str, Any]) -> tuple[Any, Any]:
    """The (hash, range) DynamoType key an operation names: its Key, or a Put's item's key."""
    attributes = operation.get("Key") or operation.get("Item") or {}
    names = [table.hash_key_attr] + ([table.range_key_attr] if table.range_key_attr else [])
    return backend.get_keys_value(table, {name: attributes[name] for name in names if name in attributes})


def _put_back(table: Any, hash_key: Any, range_key: Any, item: Any) -> None:
    """Restore one item slot to `item` (None: absent) without a stream record."""
    if range_key is None:
        if item is None:
            table.items.pop(hash_key, None)
        else:
            table.items[hash_key] = item
    elif item is None:
        table.items[hash_key].pop(range_key, None)
    else:
        table.items[hash_key][range_key] = item


def _counting_only_when_asked(count: Any) -> property:
    """A queue's message counts cost a scan of every message; moto computes them on every send.

    Measured (AWS_FACTS.md): a 10-entry SendMessageBatch takes ~320 ms at a depth of 1,000.
    Only GetQueueAttributes reports them, so only it pays for them.
    """

    def counted(queue: Any) -> int:
        return count.fget(queue) if getattr(_counting, "on", False) else 0

    return property(counted)


def _counting_during(method: Callable[..., Any]) -> Callable[..., Any]:
    """GetQueueAttributes counts messages when asked for counts (moto also calls it per received message)."""

    @functools.wraps(method)
    def with_counts(self: Any, queue_name: str, attribute_names: list[str]) -> Any:
        _counting.on = any(name == "All" or name.startswith("ApproximateNumberOf") for name in attribute_names)
        try:
            return method(self, queue_name, attribute_names)
        finally:
            _counting.on = False

    return with_counts


def _epoch_seconds(dt: Any = None) -> float:
    """moto's unix_time without the datetime arithmetic (~10x cheaper; SQS calls it twice per message scanned)."""
    return time.time() if dt is None else _moto_unix_time(dt)


def _epoch_millis(dt: Any = None) -> float:
    return _epoch_seconds(dt) * 1000.0


def _untracked(cls: type, *args: Any, **kwargs: Any) -> Any:
    """BaseModel.__new__ without appending the instance to cls.instances_tracked."""
    return object.__new__(cls)


def patch_moto() -> None:
    """Make moto's DynamoDB and SQS calls atomic, SQS sends O(1) in the queue's depth,
    and its memory bounded by the data it holds; then batchdrain_local/emulator.py's
    fixes, which make each request's cost independent of how much moto holds (unless a
    benchmark measures moto without them)."""
    from moto.core.common_models import BaseModel
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.table import Table
    from moto.sqs import models as sqs_models
    from moto.sqs.models import Queue, SQSBackend

    for name in _DYNAMODB_CALLS:
        rollback = _rolling_back_only_what_it_wrote if name == "transact_write_items" else lambda method: method
        _patch(DynamoDBBackend, name, lambda method, rollback=rollback: _locked(_DYNAMODB_LOCK)(rollback(method)))
    BaseModel.__new__ = _untracked  # type: ignore[assignment]
    Table.__deepcopy__ = _table_copy
    for name in _SQS_CALLS:
        counting = _counting_during if name == "get_queue_attributes" else lambda method: method
        _patch(SQSBackend, name, lambda method, counting=counting: _locked(_SQS_LOCK)(counting(method)))
    _patch(SQSBackend, "receive_message", _receive_without_holding_the_lock)
    sqs_models.unix_time, sqs_models.unix_time_millis = _epoch_seconds, _epoch_millis
    for name in _SQS_COUNTS:
        if not getattr(Queue.__dict__[name].fget, "_batchdrain_patched", False):
            counted = _counting_only_when_asked(Queue.__dict__[name])
            counted.fget._batchdrain_patched = True  # type: ignore[attr-defined]
            setattr(Queue, name, counted)
    if emulator.enabled():
        emulator.install()


class MotoServer:
    """A moto server thread bound to 127.0.0.1 and a free port."""

    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.endpoint_url = ""

    def start(self) -> str:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        patch_moto()
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        self.reset()
        return self.endpoint_url

    def reset(self) -> None:
        """Empty every moto backend: they are per process, so an earlier stack's resources linger."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def stop(self) -> None:
        self._server.stop()
