"""The task registry: what the processor can run on one item.

A task is a function `(item, options) -> result` registered with `@task("name")`. Its
result (any JSON value, None included) goes to the definition's `results` objects in
S3, if it names any, and is dropped otherwise. It raises to fail the item; the
processor keeps the item pending and retries it after RETRY_DELAY_SECONDS (doubling),
up to ITEM_MAX_ATTEMPTS attempts of its own. An error no retry can mend fails the item
at once: a `PermanentItemError` (chalicelib.errors), or a type the task declares with
`@task("name", permanent=(KeyError, ValueError))`. Tasks must tolerate running more
than once on the same item: SQS delivers at least once, and batchdrain tracks
*completion* exactly, not execution.

    @task("resize")
    def resize(item: dict, options: Mapping[str, Any]) -> None:
        ...

A task may also say which options make sense: `@task("resize", options=validator)`.
The validator gets a definition's `task_options` when the definitions file is loaded
(at import: deploy, package, cold start) and raises TaskOptionsError(key, message)
for a bad one, so a typo fails the deploy instead of every item at 06:00.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Callable, Iterable, Mapping

from botocore.exceptions import ClientError

from chalicelib import aws
from chalicelib.errors import BatchdrainError, PermanentItemError, TaskOptionsError, UnknownTaskError, unknown_names

Task = Callable[[dict, Mapping[str, Any]], Any]
OptionsValidator = Callable[[Mapping[str, Any]], None]
_REGISTRY: dict[str, Task] = {}
_VALIDATORS: dict[str, OptionsValidator] = {}
_PERMANENT: dict[str, tuple[type[BaseException], ...]] = {}


def task(
    name: str, options: OptionsValidator | None = None, permanent: Iterable[type[BaseException]] = ()
) -> Callable[[Task], Task]:
    """Register the decorated function as the task called `name`.

    `options`, if given, validates a definition's task_options (see the module docstring);
    without it any options are accepted. `permanent`: exception types that mean the item
    can never succeed, so it fails at its first attempt instead of being retried
    (`PermanentItemError` always does):

        @task("upper", permanent=(KeyError,))
        def upper(item, options):
            return item["name"].upper()  # an item without a name fails at once
    """
    declared = tuple(permanent)
    for kind in declared:
        if not (isinstance(kind, type) and issubclass(kind, Exception)):
            raise TypeError(f"task {name!r}: permanent= takes exception classes, got {kind!r}")

    def register(function: Task) -> Task:
        if name in _REGISTRY and _REGISTRY[name] is not function:
            raise ValueError(f"task {name!r} is registered twice")
        _REGISTRY[name] = function
        if options is not None:
            _VALIDATORS[name] = options
        if declared:
            _PERMANENT[name] = declared
        return function

    return register


def is_permanent(name: str, error: BaseException) -> bool:
    """Whether `error`, raised by task `name` on an item, means no retry can make the item succeed."""
    return isinstance(error, (PermanentItemError, *_PERMANENT.get(name, ())))


def validate_options(name: str, options: Mapping[str, Any]) -> None:
    """Run the options validator of task `name`, if it has one; TaskOptionsError names the bad option."""
    validator = _VALIDATORS.get(name)
    if validator is not None:
        validator(options)


def allow_only(task_name: str, options: Mapping[str, Any], allowed: set[str]) -> None:
    """For validators: TaskOptionsError naming the options not in `allowed`."""
    problem = unknown_names(options, allowed, "option")
    if problem:
        raise TaskOptionsError(None, f"task {task_name!r}: {problem}")


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


# Objects are read 1 MiB at a time: a 5 TB object costs the same memory as a 5 KB one.
DIGEST_BLOCK = 1024 * 1024


class ObjectChangedError(BatchdrainError, PermanentItemError):
    """The object an item names is gone or was overwritten after the listing: its digest would be of other data.

    Permanent: retrying reads the same changed object, so the item fails at once.
    """


@task("s3-object-digest", options=lambda options: allow_only("s3-object-digest", options, set()))
def s3_object_digest(item: dict, options: Mapping[str, Any]) -> dict[str, Any]:
    """The SHA-256 of one object listed by an `s3-prefix` source: `{"key", "size", "sha256"}`.

    An example of a real task over objects (checksums for an archive, deduplication,
    verifying a copy). The item is what `s3-prefix` lists: `{bucket, key, size, etag,
    last_modified}`. The body is streamed in DIGEST_BLOCK reads, never held whole, so a
    multi-GB object fits a 256 MB Lambda. The GET is pinned to the listed ETag
    (`If-Match`): an object overwritten or deleted since the listing fails its item with
    ObjectChangedError instead of reporting the digest of data the batch never listed.
    Running it twice on one item gives the same result, as tasks must allow.
    """
    where = f"s3://{item['bucket']}/{item['key']}"
    try:
        body = aws.client("s3").get_object(Bucket=item["bucket"], Key=item["key"], IfMatch=f'"{item["etag"]}"')["Body"]
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("PreconditionFailed", "412"):
            raise ObjectChangedError(f"{where} was overwritten after it was listed (listed ETag {item['etag']})") from None
        if code in ("NoSuchKey", "404"):
            raise ObjectChangedError(f"{where} was deleted after it was listed") from None
        raise
    digest, size = hashlib.sha256(), 0
    try:
        for block in iter(lambda: body.read(DIGEST_BLOCK), b""):
            digest.update(block)
            size += len(block)
    finally:
        body.close()
    return {"key": item["key"], "size": size, "sha256": digest.hexdigest()}
