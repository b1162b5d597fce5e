"""The task registry: what the processor can run on one item.

A task is a function `(item, options) -> None` registered with `@task("name")`. It
raises to fail the item; the processor keeps the item pending and returns its message
for a retry. Tasks must tolerate running more than once on the same item: SQS delivers
at least once, and batchdrain tracks *completion* exactly, not execution.

    @task("resize")
    def resize(item: dict, options: Mapping[str, Any]) -> None:
        ...
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

from chalicelib.errors import UnknownTaskError

Task = Callable[[dict, Mapping[str, Any]], None]
_REGISTRY: dict[str, Task] = {}


def task(name: str) -> Callable[[Task], Task]:
    """Register the decorated function as the task called `name`."""

    def register(function: Task) -> Task:
        if name in _REGISTRY and _REGISTRY[name] is not function:
            raise ValueError(f"task {name!r} is registered twice")
        _REGISTRY[name] = function
        return function

    return register


def get_task(name: str) -> Task:
    """The task called `name`; UnknownTaskError lists the registered ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownTaskError(f"unknown task {name!r} (registered: {', '.join(sorted(_REGISTRY))})") from None


def registered_tasks() -> list[str]:
    return sorted(_REGISTRY)


@task("sleep")
def sleep(item: dict, options: Mapping[str, Any]) -> None:
    """The origin design's work: sleep `value` ms, times `options['scale']` (default 1)."""
    time.sleep(max(0.0, float(item["value"])) * float(options.get("scale", 1.0)) / 1000.0)


@task("noop")
def noop(item: dict, options: Mapping[str, Any]) -> None:
    """Does nothing: measures batchdrain's own overhead in benchmarks."""
