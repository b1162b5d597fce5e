"""Two fixes to moto's costs that AWS does not have, applied by the benchmark to both systems.

Found by profiling a 1M-item run with py-spy (README "Benchmarks"): moto spent its time
on work whose cost grows with the emulator, not with the request.

- Every request asks moto's dispatcher which backend serves it, and the dispatcher lists
  moto's package folder (`os.listdir` plus an `os.path.isdir` for each of ~200
  entries) to answer, holding its global lock: 12 % of all samples.
- `DeleteMessage(Batch)` looks for the receipt handle in every message of the queue, building
  a list of each message's handles as it goes, then copies the queue without the message:
  O(queue depth) per delete under the SQS lock. With the batcher 50,000 messages ahead
  of the processors, that was 18 % of all samples and the run slowed as it went.

`install()` caches the folder listing (it cannot change while the process runs) and
finds a message by its receipt handle in an index kept as moto hands handles out.
Semantics are moto's own: an unknown handle still raises ReceiptHandleIsInvalid, a
handle of a deleted message is still ignored. `python -m bench.harness --stock-moto`
runs without them.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any, Callable


def install() -> Callable[[], None]:
    """Apply both fixes; returns the function that takes them out again (moto as it was)."""
    from moto import backends
    from moto.sqs import models as sqs
    from moto.sqs.exceptions import ReceiptHandleIsInvalid

    list_modules, delete = backends.list_of_moto_modules, sqs.Queue.delete_message
    listing = tuple(list_modules())
    backends.list_of_moto_modules = lambda: listing  # type: ignore[assignment]

    by_handle: "weakref.WeakValueDictionary[str, Any]" = weakref.WeakValueDictionary()
    mark_received = sqs.Message.mark_received

    @functools.wraps(mark_received)
    def indexed_mark_received(message: Any, *args: Any, **kwargs: Any) -> Any:
        result = mark_received(message, *args, **kwargs)
        by_handle[message.receipt_handle] = message
        return result

    def delete_message(queue: Any, receipt_handle: str) -> None:
        if receipt_handle in queue.deleted_messages:
            return  # already deleted: ignored, as moto does
        message = by_handle.get(receipt_handle)
        if message is None or message not in queue._messages:  # C-speed identity scan, not a handle-list per message
            raise ReceiptHandleIsInvalid()
        queue._messages.remove(message)
        queue.pending_messages.discard(message)
        queue.deleted_messages.update(message.all_receipt_handles)
        for handle in message.all_receipt_handles:
            by_handle.pop(handle, None)

    sqs.Message.mark_received = indexed_mark_received  # type: ignore[method-assign]
    sqs.Queue.delete_message = delete_message  # type: ignore[method-assign]

    def uninstall() -> None:
        backends.list_of_moto_modules = list_modules  # type: ignore[assignment]
        sqs.Message.mark_received = mark_received  # type: ignore[method-assign]
        sqs.Queue.delete_message = delete  # type: ignore[method-assign]

    return uninstall
