"""Counts the AWS requests the app makes, by service and operation (never guessed).

Hooks botocore's `before-parameter-build` event (once per API call, with its
parameters) on the app's session (chalicelib.aws.session), so only the app's requests
count, not the local stack's own polling.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any


class RequestCounter:
    """`counts[("sqs", "SendMessageBatch")]`, plus SQS message entries and their bytes."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.sqs_messages_sent = 0
        self.sqs_bytes_sent = 0
        self._lock = threading.Lock()

    def attach(self, session: Any) -> None:
        session.events.register("before-parameter-build", self._count)

    def _count(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        service = model.service_model.service_name
        with self._lock:
            self.counts[(service, model.name)] += 1
            if service == "sqs" and model.name == "SendMessageBatch":
                self.sqs_messages_sent += len(params.get("Entries", []))
                self.sqs_bytes_sent += sum(len(entry["MessageBody"].encode()) for entry in params.get("Entries", []))

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {f"{service}:{operation}": count for (service, operation), count in sorted(self.counts.items())}

    def total(self, service: str | None = None, operation: str | None = None) -> int:
        with self._lock:
            return sum(
                count
                for (counted_service, counted_operation), count in self.counts.items()
                if service in (None, counted_service) and operation in (None, counted_operation)
            )
