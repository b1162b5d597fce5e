"""The task registry: what the processor can run on one item.

A task is a function `(item, options) -> None` registered with `@task("name")`. It
raises to fail the item; the processor keeps the item pending and returns its message
for a retry. Tasks must tolerate running more than once on the same item: SQS delivers
at least once, and batchdrain tracks *completion* exactly, not execution.

    @task("resize")
    def resize(item: dict, options: Mapping[str, Any]) -> None:
        ...

A task may also say which options make sense: `@task("resize", options=validator)`.
The validator gets a definition's `task_options` when the definitions file is loaded
(at import: deploy, package, cold start) and raises TaskOptionsError(key, message)
for a bad one, so a typo fails the deploy instead of every item at 06:00.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

from chalicelib.errors import TaskOptionsError, UnknownTaskError

Task = Callable[[dict, Mapping[str, Any]], None]
OptionsValidator = Callable[[Mapping[str, Any]], None]
_REGISTRY: dict[str, Task] = {}
_VALIDATORS: dict[str, OptionsValidator] = {}


def task(name: str, options: OptionsValidator | None = None) -> Callable[[Task], Task]:
    """Register the decorated function as the task called `name`.

    `options`, if given, validates a definition's task_options (see the module docstring);
    without it any options are accepted.
    """

    def register(function: Task) -> Task:
        if name in _REGISTRY and _REGISTRY[name] is not function:
            raise ValueError(f"task {name!r} is registered twice")
        _REGISTRY[name] = function
        if options is not None:
            _VALIDATORS[name] = options
        return function

    return register


def validate_options(name: str, options: Mapping[str, Any]) -> None:
    """Run the options validator of task `name`, if it has one; TaskOptionsError names the bad option."""
    validator = _VALIDATORS.get(name)
    if validator is not None:
        validator(options)


def allow_only(task_name: str, options: Mapping[str, Any], allowed: set[str]) -> None:
    """For validators: TaskOptionsError naming the first option not in `allowed`."""
    unknown = sorted(set(options) - allowed)
    if unknown:
        takes = f"its options: {', '.join(sorted(allowed))}" if allowed else "it takes none"
        raise TaskOptionsError(unknown[0], f"task {task_name!r} has no option {unknown[0]!r} ({takes})")


def get_task(name: str) -> Task:
    """The task called `name`; UnknownTaskError lists the registered ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownTaskError(f"unknown task {name!r} (registered: {', '.join(sorted(_REGISTRY))})") from None


def registered_tasks() -> list[str]:
    return sorted(_REGISTRY)


def _sleep_options(options: Mapping[str, Any]) -> None:
    allow_only("sleep", options, {"scale"})
    scale = options.get("scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale < 0:
        raise TaskOptionsError("scale", f"must be a number >= 0, got {scale!r}")


@task("sleep", options=_sleep_options)
def sleep(item: dict, options: Mapping[str, Any]) -> None:
    """The origin design's work: sleep `value` ms, times `options['scale']` (default 1)."""
    time.sleep(max(0.0, float(item["value"])) * float(options.get("scale", 1.0)) / 1000.0)


@task("noop", options=lambda options: allow_only("noop", options, set()))
def noop(item: dict, options: Mapping[str, Any]) -> None:
    """Does nothing: measures batchdrain's own overhead in benchmarks."""
