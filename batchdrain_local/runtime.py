"""How the local stack invokes a handler the way Lambda does: a context with a deadline."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from typing import Any, Callable

from batchdrain_local.faults import InjectedCrash
from batchdrain_local.server import ACCOUNT_ID


class InvocationCrashed(Exception):
    """The function died mid-invocation (an injected crash). To its event source, a failed invocation."""


class LambdaContext:
    """The attributes of Lambda's context object that handlers use."""

    def __init__(self, function_name: str, timeout_seconds: float, memory_mb: int = 256, region: str = "us-east-1"):
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{function_name}"
        self.memory_limit_in_mb = memory_mb
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = f"local/{self.aws_request_id}"
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class Invoker:
    """Calls handlers with a fresh context and counts invocations and errors per function."""

    def __init__(self, timeout_seconds: float = 60.0) -> None:
        self.timeout_seconds = timeout_seconds
        self.invocations: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.last_events: dict[str, dict] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str, handler: Callable[[dict, Any], Any], event: dict) -> Any:
        with self._lock:
            self.invocations[name] += 1
            self.last_events[name] = event
        try:
            return handler(event, LambdaContext(name, self.timeout_seconds))
        except InjectedCrash as crash:
            with self._lock:
                self.errors[name] += 1
            raise InvocationCrashed(f"{name} crashed: {crash}") from None
        except Exception:
            with self._lock:
                self.errors[name] += 1
            raise
