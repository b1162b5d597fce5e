"""Structured JSON logs with the batch id on every line that concerns a batch.

The logger is `chalicelib`, not the app's name: Chalice gives the logger named after
the app (`batchdrain`) its own plain-text handler at import, which would take over
these lines and drop their fields. `LOG_LEVEL` (default INFO) sets the level.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from chalicelib.errors import ConfigError

LOGGER_NAME = "chalicelib"
_logger = logging.getLogger(LOGGER_NAME)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"level": record.levelname, "message": record.getMessage()}
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def configure() -> None:
    """Attach the JSON handler once; app.py calls it at import, so a bad LOG_LEVEL fails the deploy."""
    if _logger.handlers:
        return
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    if level not in _LEVELS:
        raise ConfigError(f"environment variable LOG_LEVEL must be one of {', '.join(_LEVELS)}, got {level!r}")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_JsonFormatter())
    _logger.propagate = False
    if _logger.level == logging.NOTSET:
        _logger.setLevel(level)
    _logger.addHandler(handler)


def info(message: str, **fields: Any) -> None:
    configure()
    _logger.info(message, extra={"fields": fields})


def warning(message: str, **fields: Any) -> None:
    configure()
    _logger.warning(message, extra={"fields": fields})


def error(message: str, exc_info: bool = False, **fields: Any) -> None:
    configure()
    _logger.error(message, exc_info=exc_info, extra={"fields": fields})
