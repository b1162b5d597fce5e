"""The errors batchdrain raises on purpose; each message says what is wrong and where."""


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
