"""Fault injection for the local stack: seeded, switchable per run, at the points where AWS fails.

Each fault has a probability per opportunity. `FaultInjector.install()` patches the app's
own functions (the app runs in this process) and the pollers ask `chance(name)` at their
own fault points. A crash is `InjectedCrash`, a BaseException: it is not caught by the
handlers' `except Exception`, so it escapes the invocation exactly as a Lambda that dies
mid-way, and the event source mapping redelivers.

| fault | where | what AWS does that it imitates |
|---|---|---|
| sqs_duplicate | SQS poller | a batch of messages delivered twice (at-least-once) |
| sqs_lost_delete | SQS poller | messages processed but not deleted: redelivered after the visibility timeout (also: crash after the row delete, before the message delete) |
| crash_before_row_update | processor | Lambda dies after running the tasks, before the chunk row update |
| finalizer_crash_before_publish | finalizer | Lambda dies after winning completion, before publishing |
| sns_failure | notifier | SNS Publish fails |
| stream_redelivery | stream poller | a whole stream batch delivered again |
| concurrent_finalizers | stream poller | the same stream batch handled by two or three invocations at once |
| batcher_crash_before_send | batcher | the batcher dies after writing a group of rows, before sending their messages |
| batcher_crash_before_seal | batcher | the batcher dies after the last message, before sealing |
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

FAULTS = (
    "sqs_duplicate",
    "sqs_lost_delete",
    "crash_before_row_update",
    "finalizer_crash_before_publish",
    "sns_failure",
    "stream_redelivery",
    "concurrent_finalizers",
    "batcher_crash_before_send",
    "batcher_crash_before_seal",
)

# The mix `make chaos` uses: every fault often enough to hit many batches of a run.
DEFAULT_RATES = {
    "sqs_duplicate": 0.10,
    "sqs_lost_delete": 0.05,
    "crash_before_row_update": 0.03,
    "finalizer_crash_before_publish": 0.05,
    "sns_failure": 0.05,
    "stream_redelivery": 0.10,
    "concurrent_finalizers": 0.10,
    "batcher_crash_before_send": 0.02,
    "batcher_crash_before_seal": 0.05,
}


class InjectedCrash(BaseException):
    """The invocation dies here (not an Exception: nothing in the app may catch it)."""


class InjectedServiceError(Exception):
    """An AWS call failed (an Exception: the app is expected to handle it)."""


@dataclass
class FaultInjector:
    """Seeded fault decisions, and the patches that act on them."""

    seed: int
    rates: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_RATES))
    # How many finalizer invocations handle one stream batch when concurrent_finalizers strikes.
    finalizer_copies: tuple[int, ...] = (2, 3)
    # At most this many injections of a fault in the run (focused tests: "the batcher dies once").
    limits: dict[str, int] = field(default_factory=dict)
    # The first opportunity of every fault with a rate strikes, so a run exercises each one
    # whatever its seed and thread timing (make chaos); then the rates decide.
    ensure_every_fault: bool = False
    injected: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        unknown = (set(self.rates) | set(self.limits)) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))} (known: {', '.join(FAULTS)})")
        self._random = random.Random(self.seed)
        self._lock = threading.Lock()
        self._undo: list[Callable[[], None]] = []

    def chance(self, fault: str) -> bool:
        """Whether `fault` happens at this opportunity (counted when it does)."""
        with self._lock:
            first = self.ensure_every_fault and self.rates.get(fault, 0.0) > 0 and not self.injected[fault]
            happens = first or self._random.random() < self.rates.get(fault, 0.0)
            happens = happens and self.injected[fault] < self.limits.get(fault, float("inf"))
            if happens:
                self.injected[fault] += 1
            return happens

    def copies(self) -> int:
        """How many finalizer invocations handle the next stream batch (1, or one of finalizer_copies)."""
        if not self.chance("concurrent_finalizers"):
            return 1
        with self._lock:
            return self._random.choice(self.finalizer_copies)

    # -- patches on the app's code ---------------------------------------------------

    def install(self) -> None:
        from chalicelib import batcher, finalizer, notifier
        from chalicelib.store import BatchStore

        def crash_before(fault: str, real: Callable[..., Any]) -> Callable[..., Any]:
            def patched(*args: Any, **kwargs: Any) -> Any:
                if self.chance(fault):
                    raise InjectedCrash(fault)
                return real(*args, **kwargs)

            return patched

        def failing_publish(real: Callable[..., Any]) -> Callable[..., Any]:
            def patched(*args: Any, **kwargs: Any) -> Any:
                if self.chance("sns_failure"):
                    raise InjectedServiceError("SNS Publish failed (injected)")
                return real(*args, **kwargs)

            return patched

        self._patch(BatchStore, "drain", crash_before("crash_before_row_update", BatchStore.drain))
        self._patch(BatchStore, "seal", crash_before("batcher_crash_before_seal", BatchStore.seal))
        self._patch(batcher, "send_chunks", crash_before("batcher_crash_before_send", batcher.send_chunks))
        self._patch(finalizer, "notify", crash_before("finalizer_crash_before_publish", finalizer.notify))
        self._patch(notifier, "publish", failing_publish(notifier.publish))

    def _patch(self, owner: Any, name: str, replacement: Any) -> None:
        original = owner.__dict__[name]
        setattr(owner, name, replacement)
        self._undo.append(lambda: setattr(owner, name, original))

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()
