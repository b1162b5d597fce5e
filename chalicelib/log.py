"""Structured JSON logs with the batch id on every line that concerns a batch."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

_logger = logging.getLogger("batchdrain")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"level": record.levelname, "message": record.getMessage()}
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def _configure() -> None:
    if not _logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(_JsonFormatter())
        _logger.addHandler(handler)
        _logger.setLevel(logging.INFO)
        _logger.propagate = False


def info(message: str, **fields: Any) -> None:
    _configure()
    _logger.info(message, extra={"fields": fields})


def warning(message: str, **fields: Any) -> None:
    _configure()
    _logger.warning(message, extra={"fields": fields})


def error(message: str, exc_info: bool = False, **fields: Any) -> None:
    _configure()
    _logger.error(message, exc_info=exc_info, extra={"fields": fields})
