"""How much of a Lambda invocation is left: when to stop starting work, so the function is never killed mid-step.

Shared by the processor (start no item that cannot finish) and the planner (start no
group that cannot be written before the timeout).
"""

from __future__ import annotations

from typing import Any

from chalicelib.config import PROCESSOR_SAFETY_MARGIN_SECONDS

# What Lambda must have left when starting another item: enough for the row update
# and the response, so the function is never killed between a task and its checkpoint.
DEFAULT_SAFETY_MARGIN_MS = PROCESSOR_SAFETY_MARGIN_SECONDS * 1000


class Deadline:
    """How much of the invocation is left, with the margin kept for recording results."""

    def __init__(self, context: Any, margin_ms: int = DEFAULT_SAFETY_MARGIN_MS) -> None:
        self._remaining = getattr(context, "get_remaining_time_in_millis", None)
        self.margin_ms = min(margin_ms, self._remaining() / 4) if self._remaining else 0
        self._started = False

    def seconds_left(self) -> float | None:
        """Seconds an item may still run; None without a context (no limit: tests, scripts)."""
        if self._remaining is None:
            return None
        return max(0.0, (self._remaining() - self.margin_ms) / 1000)

    def allows(self, item_seconds: float) -> bool:
        """Whether an item expected to take `item_seconds` may start now.

        The first item of an invocation starts whenever any time is left: a later
        invocation would have no more, and a message that never starts never ends.
        """
        left = self.seconds_left()
        if left is None:
            return True
        allowed = left > 0 and (left >= item_seconds or not self._started)
        self._started = self._started or allowed
        return allowed

    def expired(self) -> bool:
        """No time left at all (past the margin): not even a row can be read."""
        left = self.seconds_left()
        return left is not None and left <= 0
