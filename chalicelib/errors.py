"""The errors batchdrain raises on purpose; each message says what is wrong and where."""

from __future__ import annotations

from typing import Collection, Iterable


def unknown_names(given: Iterable[str], allowed: Collection[str], noun: str = "field") -> str | None:
    """What an error says of names that are not allowed ('unknown field(s) a, b (allowed: x, y)'), or None if all are."""
    unknown = sorted(set(given) - set(allowed))
    if not unknown:
        return None
    return f"unknown {noun}(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed)) or 'none'})"


class BatchdrainError(Exception):
    """Base class: anything batchdrain rejects deliberately."""


class ConfigError(BatchdrainError):
    """A setting or the definitions file is invalid; the message names the field."""


class UnknownTaskError(BatchdrainError):
    """A batch names a task that is not registered in chalicelib/tasks.py."""


class BadMessageError(BatchdrainError):
    """A work-queue message is not a chunk this app can process (bad JSON, missing fields)."""


class BadRequestError(BatchdrainError):
    """A batch request (items, chunking) cannot be turned into chunks."""


class TaskOptionsError(BatchdrainError):
    """A task's options validator rejects a definition's task_options.

    `key` names the offending option (None: the options as a whole); the definitions
    loader turns this into a ConfigError naming `definitions[i].task_options.<key>`.
    """

    def __init__(self, key: str | None, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


class PermanentItemError(Exception):
    """Raised by a task: this item can never succeed, so it fails at once (one attempt, no retry).

    For errors no retry can mend (the item names something that does not exist, its data
    is malformed). The item goes to the failed items with this error's message; the rest
    of its message carries on. A task may also declare other exception types permanent:
    `@task("name", permanent=(KeyError, ValueError))`.
    """
