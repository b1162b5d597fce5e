"""Settings and batch definitions.

Everything deployment-specific comes from environment variables (set per stage in
`.chalice/config.json`, or by the local stack), so the same code runs against AWS,
moto's in-process mock and the local stack's moto server. Batch definitions come from
a JSON file shipped with the app and are validated when the app is imported: a bad
file stops the deploy with a message naming the field, instead of failing at 06:00.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import string
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from chalicelib import jsonlines, schedules
from chalicelib.model import MAX_ITEM_SECONDS
from chalicelib.errors import ConfigError, TaskOptionsError, unknown_names

DEFAULT_DEFINITIONS_FILE = Path(__file__).with_name("batches.json")

# SQS bills each 64 KiB of a message as one request; 256 KiB keeps a message well
# inside both the 1 MiB message limit and the 1 MiB SendMessageBatch payload limit.
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024
MIN_MAX_MESSAGE_BYTES = 4096
# Task options travel in every message (and model reserves 1,024 bytes for the rest of
# the envelope): 2 KiB of options still leave 1 KiB for items in the smallest message.
MAX_TASK_OPTIONS_BYTES = 2048
MAX_ITEMS_PER_MESSAGE = 10_000
# The most items a `random` source generates in one batch.
MAX_RANDOM_COUNT = 100_000_000
# An object source is cut into byte ranges of this size, expanded in parallel by planners:
# 64 MiB of lines is written (rows and messages) well inside one planner invocation.
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
DEFAULT_ITEM_SECONDS = 1.0
# Chalice's default lambda_timeout, and so the processor's when no stage sets one.
DEFAULT_PROCESSOR_TIMEOUT_SECONDS = 60
# The processor stops starting items when this little of its timeout is left
# (chalicelib.processor.DEFAULT_SAFETY_MARGIN_MS is this, in milliseconds).
PROCESSOR_SAFETY_MARGIN_SECONDS = 5
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]*$")
# Chalice names a schedule's rule <app_name>-<stage>-batch_<name>-event (and its function
# and role the same without "-event"); EventBridge, Lambda and IAM allow 64 characters.
# The stage is not known at import, so names are sized for stages of up to 12 characters;
# batchdrain_deploy checks the real stage's names before it deploys anything.
APP_NAME = "batchdrain"  # as in app.py and .chalice/config.json
AWS_NAME_LIMIT = 64
MAX_STAGE_NAME_LENGTH = 12
MAX_DEFINITION_NAME_LENGTH = AWS_NAME_LIMIT - len(f"{APP_NAME}--batch_-event") - MAX_STAGE_NAME_LENGTH


# Every environment variable the app reads as a setting (README "Settings"); test_config checks
# that each env()/env_int() call names one of these. Deployed functions get the stage's values
# from .chalice/config.json; the local stack and the command line let the shell's win.
SETTING_NAMES = (
    "TABLE_NAME",
    "TABLE_STREAM_ARN",
    "WORK_QUEUE_NAME",
    "PLANNING_QUEUE_NAME",
    "DEAD_LETTER_QUEUE_NAME",
    "ALERT_TOPIC_ARN",
    "MAX_MESSAGE_BYTES",
    "SHARD_CHUNK_TARGET",
    "ROW_TTL_DAYS",
    "NOTIFY_LEASE_SECONDS",
    "STUCK_CREATING_SECONDS",
    "RESEND_AFTER_SECONDS",
    "ITEM_MAX_ATTEMPTS",
    "SEGMENT_BYTES",
    "SWEEP_MINUTES",
    "PROCESSOR_BATCH_SIZE",
    "PROCESSOR_BATCHING_WINDOW",
    "PROCESSOR_MAX_CONCURRENCY",
    "PROCESSOR_TIMEOUT_SECONDS",
    "FINALIZER_BATCH_SIZE",
    "FINALIZER_BATCHING_WINDOW",
    "PLANNER_MAX_CONCURRENCY",
    "API_AUTH",
    "API_TOKEN",
    "INBOX_URI",
)
API_AUTH_MODES = ("iam", "token")
MIN_API_TOKEN_LENGTH = 16


def env(name: str, default: str | None = None) -> str:
    """Read a setting (required unless `default` is given; "" allows it to be empty); the error names the variable."""
    value = os.environ.get(name) or default
    if value is None or (value == "" and default != ""):
        raise ConfigError(f"environment variable {name} is not set (see README, 'Settings')")
    return value


def max_message_bytes() -> int:
    """MAX_MESSAGE_BYTES: the largest work message body sent (SQS allows 1 MiB)."""
    return env_int("MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES, MIN_MAX_MESSAGE_BYTES, 1024 * 1024)


def env_int(name: str, default: int, low: int, high: int) -> int:
    """An integer setting within [low, high]; the error names the variable and the range."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"environment variable {name} must be between {low:,} and {high:,}, got {value:,}")
    return value


@dataclass(frozen=True)
class Settings:
    """Deployment settings, read once per process from the environment."""

    table_name: str
    work_queue_name: str
    alert_topic_arn: str
    max_message_bytes: int
    shard_chunk_target: int
    row_ttl_days: int
    notify_lease_seconds: int
    stuck_creating_seconds: int
    resend_after_seconds: int
    item_max_attempts: int
    planning_queue_name: str = ""
    segment_bytes: int = DEFAULT_SEGMENT_BYTES
    # The local stack's API token (API_AUTH=token); unused where API Gateway checks SigV4.
    api_token: str = ""
    # Where POST /batches writes inline items (s3://bucket/prefix/); "" refuses them.
    inbox_uri: str = ""

    @classmethod
    def from_env(cls) -> "Settings":
        return cls(
            table_name=env("TABLE_NAME"),
            work_queue_name=env("WORK_QUEUE_NAME"),
            alert_topic_arn=env("ALERT_TOPIC_ARN"),
            # An SQS message holds at most 1 MiB.
            max_message_bytes=max_message_bytes(),
            shard_chunk_target=env_int("SHARD_CHUNK_TARGET", 10_000, 1, 1_000_000),
            # Longer than SQS's 14-day maximum retention, so no row expires while its message may live.
            row_ttl_days=env_int("ROW_TTL_DAYS", 30, 15, 3650),
            # How long the finalizer that completed a batch owns its alert before the sweeper may publish it.
            notify_lease_seconds=env_int("NOTIFY_LEASE_SECONDS", 120, 1, 3600),
            # A batcher runs at most 15 minutes (Lambda's limit): CREATING for longer means it died.
            stuck_creating_seconds=env_int("STUCK_CREATING_SECONDS", 960, 1, 86_400),
            # A sealed batch with rows but an idle queue for this long has lost messages.
            resend_after_seconds=env_int("RESEND_AFTER_SECONDS", 900, 1, 86_400),
            # An item fails for good after this many attempts of its own (invariant 9);
            # a message also dead-letters at most this many times before its items fail.
            item_max_attempts=env_int("ITEM_MAX_ATTEMPTS", 3, 1, 100),
            # Where object sources are cut into segments that planners expand in parallel.
            planning_queue_name=env("PLANNING_QUEUE_NAME"),
            segment_bytes=env_int("SEGMENT_BYTES", DEFAULT_SEGMENT_BYTES, 1024, 1024**3),
            api_token=env("API_TOKEN", ""),
            inbox_uri=inbox_uri(env("INBOX_URI", "")),
        )


def inbox_uri(value: str) -> str:
    """INBOX_URI checked: empty (inline items refused) or s3://bucket/prefix/ (the prefix may be empty)."""
    if not value:
        return ""
    bucket, _, prefix = value[len("s3://"):].partition("/") if value.startswith("s3://") else ("", "", "")
    if not value.startswith("s3://") or not _BUCKET_NAME.match(bucket) or ".." in bucket or not value.endswith("/") or "{" in prefix or "}" in prefix:
        raise ConfigError(f"environment variable INBOX_URI must be s3://bucket/prefix/ (ending in '/'), got {value!r}")
    return value


@dataclass(frozen=True)
class EventSourceSettings:
    """What the decorators in app.py need at import time (deploy, package, local stack)."""

    work_queue_name: str
    dead_letter_queue_name: str
    table_stream_arn: str
    planning_queue_name: str
    sweep_minutes: int
    processor_batch_size: int
    processor_batching_window: int
    processor_max_concurrency: int | None
    finalizer_batch_size: int
    finalizer_batching_window: int
    # Must equal the processor's lambda_timeout in .chalice/config.json (a unit test checks every stage).
    processor_timeout_seconds: int = DEFAULT_PROCESSOR_TIMEOUT_SECONDS
    # Planners at once: each writes ~1,500 chunk rows/s spread over the shards, and
    # checkpoints on the header's partition (see planner.PLAN_GROUP_CHUNKS).
    planner_max_concurrency: int = 10
    # How the HTTP API's callers prove who they are: "iam" (SigV4, checked by API Gateway: every
    # deployed stage) or "token" (`Authorization: Bearer <API_TOKEN>`, checked by the app: the local stack).
    api_auth: str = "iam"

    @classmethod
    def from_env(cls) -> "EventSourceSettings":
        # Lambda's limits: SQS batches 1-10,000 (a window is needed above 10), maximum
        # concurrency 2-1,000 (0 here: no limit), stream batches 1-10,000, windows <= 300 s.
        concurrency = env_int("PROCESSOR_MAX_CONCURRENCY", 0, 0, 1000)
        if concurrency == 1:
            raise ConfigError("environment variable PROCESSOR_MAX_CONCURRENCY must be 0 (no limit) or 2 to 1,000, got 1")
        settings = cls(
            work_queue_name=env("WORK_QUEUE_NAME"),
            dead_letter_queue_name=env("DEAD_LETTER_QUEUE_NAME"),
            planning_queue_name=env("PLANNING_QUEUE_NAME"),
            table_stream_arn=env("TABLE_STREAM_ARN"),
            sweep_minutes=env_int("SWEEP_MINUTES", 5, 1, 1440),
            processor_batch_size=env_int("PROCESSOR_BATCH_SIZE", 10, 1, 10_000),
            processor_batching_window=env_int("PROCESSOR_BATCHING_WINDOW", 0, 0, 300),
            processor_max_concurrency=concurrency or None,
            finalizer_batch_size=env_int("FINALIZER_BATCH_SIZE", 100, 1, 10_000),
            finalizer_batching_window=env_int("FINALIZER_BATCHING_WINDOW", 1, 0, 300),
            # Lambda's timeout is 1-900 s; below 3 s nothing is left after the processor's margin.
            processor_timeout_seconds=env_int(
                "PROCESSOR_TIMEOUT_SECONDS", DEFAULT_PROCESSOR_TIMEOUT_SECONDS, 3, MAX_ITEM_SECONDS
            ),
            planner_max_concurrency=env_int("PLANNER_MAX_CONCURRENCY", 10, 2, 1000),
            api_auth=env("API_AUTH", "iam"),
        )
        if settings.api_auth not in API_AUTH_MODES:
            raise ConfigError(f"environment variable API_AUTH must be one of {', '.join(API_AUTH_MODES)}, got {settings.api_auth!r}")
        if settings.api_auth == "token" and len(os.environ.get("API_TOKEN", "")) < MIN_API_TOKEN_LENGTH:
            raise ConfigError(f"API_AUTH=token needs API_TOKEN, at least {MIN_API_TOKEN_LENGTH} characters")
        if settings.processor_batch_size > 10 and settings.processor_batching_window < 1:
            raise ConfigError("PROCESSOR_BATCH_SIZE above 10 needs PROCESSOR_BATCHING_WINDOW of at least 1 s")
        return settings


RANDOM = "random"
OBJECT_SOURCE_TYPES = ("s3-jsonl", "s3-csv", "s3-prefix", "s3-inventory")
LINE_SOURCE_TYPES = ("s3-jsonl", "s3-csv")
COMPRESSIONS = ("auto", "none", "gzip")
# Filled from the scheduled time (UTC), so each cron run reads its own object.
URI_PLACEHOLDERS = ("date", "year", "month", "day", "hour", "minute")


@dataclass(frozen=True)
class Source:
    """Where a batch's items come from.

    `random`: `count` generated items {id, value 0..max_value} (demos, benchmarks).
    `s3-jsonl` / `s3-csv`: one item per line of the object at `uri` (gzip if `compression`
    says so, or if `auto` and the key ends in .gz). `s3-prefix`: one item per object under
    the `uri` prefix. `s3-inventory`: the objects listed by an S3 Inventory manifest.json.
    """

    type: str
    count: int = 0
    max_value: int = 1000
    uri: str = ""  # s3://bucket/key, with {date}-style placeholders
    compression: str = "auto"

    @property
    def bucket(self) -> str:
        return self.uri[len("s3://"):].partition("/")[0]

    @property
    def key_template(self) -> str:
        return self.uri[len("s3://"):].partition("/")[2]


@dataclass(frozen=True)
class Results:
    """Where a definition's task results go: one JSON Lines object per chunk, and a manifest."""

    bucket: str
    prefix: str


@dataclass(frozen=True)
class Alert:
    """How the completion alert looks: a subject prefix and how many sample errors it carries."""

    subject_prefix: str = ""
    sample_errors: int = 5


@dataclass(frozen=True)
class Definition:
    """One configured batch: what to create, when, and how to process it."""

    name: str
    schedule: str
    source: Source
    task: str
    # Items per message and chunk row: None ("auto", or absent) lets chalicelib.sizing choose for each batch.
    items_per_message: int | None = None
    task_options: Mapping[str, Any] = field(default_factory=dict)
    alert: Alert = field(default_factory=Alert)
    description: str = ""
    # The most one item is expected to take; sizes the processor's work (check_processing_budget).
    item_seconds: float = DEFAULT_ITEM_SECONDS
    results: Results | None = None

    @property
    def handler_name(self) -> str:
        """The Python/Lambda-safe name of this definition's schedule handler."""
        return "batch_" + self.name.replace("-", "_")


def _require(obj: Mapping[str, Any], key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if key not in obj:
        raise ConfigError(f"{where}.{key}: missing")
    value = obj[key]
    # bool is an int in Python; a definition saying `"count": true` is a typo, not 1.
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ConfigError(f"{where}.{key}: must be {names}, got {value!r}")
    return value


def _int_in(obj: Mapping[str, Any], key: str, where: str, low: int, high: int, default: int | None = None) -> int:
    if key not in obj and default is not None:
        return default
    value = _require(obj, key, where, int)
    if not low <= value <= high:
        raise ConfigError(f"{where}.{key}: must be between {low:,} and {high:,}, got {value:,}")
    return value


def _seconds(obj: Mapping[str, Any], key: str, where: str, high: float, default: float) -> float:
    """A number of seconds above 0 and at most `high` (an int or a float, never a bool)."""
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= high:
        raise ConfigError(f"{where}.{key}: must be a number above 0 and at most {high:,}, got {value!r}")
    return float(value)


def _reject_unknown(obj: Mapping[str, Any], allowed: set[str], where: str) -> None:
    problem = unknown_names(obj, allowed)
    if problem:
        raise ConfigError(f"{where}: {problem}")


def _parse_source(raw: Any, where: str) -> Source:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be an object, got {raw!r}")
    kind = _require(raw, "type", where, str)
    if kind == RANDOM:
        _reject_unknown(raw, {"type", "count", "max_value"}, where)
        return Source(
            type=kind,
            count=_int_in(raw, "count", where, 1, MAX_RANDOM_COUNT),
            max_value=_int_in(raw, "max_value", where, 0, 2**53, default=1000),  # JSON-safe integers
        )
    if kind not in OBJECT_SOURCE_TYPES:
        known = ", ".join((RANDOM, *OBJECT_SOURCE_TYPES))
        raise ConfigError(f"{where}.type: unknown source type {kind!r} (known: {known})")
    allowed = {"type", "uri", "compression"} if kind in LINE_SOURCE_TYPES else {"type", "uri"}
    _reject_unknown(raw, allowed, where)
    uri = _parse_s3_uri(_require(raw, "uri", where, str), f"{where}.uri", prefix=kind == "s3-prefix")
    compression = raw.get("compression", "auto")
    if compression not in COMPRESSIONS:
        raise ConfigError(f"{where}.compression: must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    return Source(type=kind, uri=uri, compression=compression)


# S3 bucket names: 3-63 of a-z, 0-9, '.', '-', starting and ending with a letter or digit.
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _parse_bucket(bucket: Any, where: str) -> str:
    if not isinstance(bucket, str) or not _BUCKET_NAME.match(bucket) or ".." in bucket:
        raise ConfigError(f"{where}: {bucket!r} is not an S3 bucket name (3-63 characters: a-z, 0-9, '.', '-')")
    return bucket


def _parse_s3_uri(uri: str, where: str, prefix: bool) -> str:
    """s3://bucket/key (a prefix may be empty or end in '/'), placeholders checked."""
    if not uri.startswith("s3://"):
        raise ConfigError(f"{where}: {uri!r} must start with s3://")
    bucket, _, key = uri[len("s3://"):].partition("/")
    _parse_bucket(bucket, where)
    if not key and not prefix:
        raise ConfigError(f"{where}: {uri!r} names a bucket but no object key")
    try:
        fields = [name for _, name, spec, conversion in string.Formatter().parse(key) if name is not None]
    except ValueError as error:
        raise ConfigError(f"{where}: {uri!r}: {error} (write {{{{ and }}}} for literal braces)") from None
    for name in fields:
        if name not in URI_PLACEHOLDERS:
            raise ConfigError(
                f"{where}: {uri!r}: unknown placeholder {{{name}}} (known: "
                + ", ".join(f"{{{known}}}" for known in URI_PLACEHOLDERS) + ")"
            )
    if len(key.encode()) > 1024:
        raise ConfigError(f"{where}: {uri!r}: an S3 key is at most 1,024 bytes")
    return uri


def _parse_results(raw: Any, where: str) -> Results | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be an object, got {raw!r}")
    _reject_unknown(raw, {"bucket", "prefix"}, where)
    bucket = _parse_bucket(_require(raw, "bucket", where, str), f"{where}.bucket")
    prefix = raw.get("prefix", "")
    if not isinstance(prefix, str) or len(prefix.encode()) > 512 or prefix.startswith("/"):
        raise ConfigError(f"{where}.prefix: must be a key prefix of at most 512 bytes, not starting with '/', got {prefix!r}")
    return Results(bucket=bucket, prefix=prefix.strip("/"))


def _parse_alert(raw: Any, where: str) -> Alert:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be an object, got {raw!r}")
    _reject_unknown(raw, {"subject_prefix", "sample_errors"}, where)
    prefix = raw.get("subject_prefix", "")
    # SNS subjects are printable ASCII without line breaks.
    if not isinstance(prefix, str) or len(prefix) > 20 or not (prefix.isascii() and prefix.isprintable()):
        raise ConfigError(
            f"{where}.subject_prefix: must be at most 20 printable ASCII characters, got {prefix!r}"
        )
    return Alert(subject_prefix=prefix, sample_errors=_int_in(raw, "sample_errors", where, 0, 20, default=5))


def _parse_task_options(task: str, options: Any, where: str) -> dict[str, Any]:
    """Options that are strict JSON, small enough for every message, and accepted by the task's validator."""
    from chalicelib.tasks import validate_options

    if not isinstance(options, dict):
        raise ConfigError(f"{where}: must be an object, got {options!r}")
    try:
        # Options travel in every message and on the header as strict JSON (the form model.Chunk sends).
        size = len(json.dumps(options, separators=(",", ":"), allow_nan=False))
    except ValueError:
        raise ConfigError(f"{where}: NaN and Infinity are not JSON numbers, got {options!r}") from None
    if size > MAX_TASK_OPTIONS_BYTES:
        raise ConfigError(
            f"{where}: {size:,} bytes as JSON, at most {MAX_TASK_OPTIONS_BYTES:,} (they travel in every message; "
            "put large data in the items, or in S3 and pass its key)"
        )
    try:
        validate_options(task, options)
    except TaskOptionsError as error:
        field_name = f"{where}.{error.key}" if error.key else where
        raise ConfigError(f"{field_name}: {error.message}") from None
    return options


def parse_definition(raw: Any, where: str, known_tasks: set[str]) -> Definition:
    """Validate one definition; ConfigError names each offending field, a line each."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be an object, got {raw!r}")
    problems: list[str] = []

    def checked(parse: Any) -> Any:
        """One field's value, or None with its problem kept: every field is checked, not only the first bad one."""
        try:
            return parse()
        except ConfigError as error:
            problems.extend(str(error).splitlines())
            return None

    checked(lambda: _reject_unknown(raw, DEFINITION_FIELDS, where))
    name = checked(lambda: _parse_name(raw, where))
    schedule = checked(lambda: _parse_schedule(raw, where))
    task = checked(lambda: _parse_task(raw, where, known_tasks))
    options = checked(lambda: _parse_task_options(task, raw.get("task_options", {}), f"{where}.task_options")) if task else None
    description = checked(lambda: _parse_description(raw, where))
    fields = {
        "source": checked(lambda: _parse_source(raw.get("source"), f"{where}.source")),
        "items_per_message": checked(lambda: _items_per_message(raw, where)),
        "item_seconds": checked(lambda: _seconds(raw, "item_seconds", where, MAX_ITEM_SECONDS, DEFAULT_ITEM_SECONDS)),
        "alert": checked(lambda: _parse_alert(raw.get("alert", {}), f"{where}.alert")),
        "results": checked(lambda: _parse_results(raw.get("results"), f"{where}.results")),
    }
    if problems:
        raise ConfigError("\n".join(problems))
    return Definition(name=name, description=description, schedule=schedule, task=task, task_options=options, **fields)


# What a submission (POST /batches) may change of the definition it names.
SUBMISSION_FIELDS = ("definition", "task", "source", "items", "open", "items_per_message", "item_seconds", "task_options")
# `items_per_message` left to batchdrain (chalicelib.sizing); leaving the field out means the same.
AUTO = "auto"


def _items_per_message(raw: Mapping[str, Any], where: str) -> int | None:
    """A pinned K (1 to MAX_ITEMS_PER_MESSAGE), or None when absent or "auto" (chalicelib.sizing chooses)."""
    if raw.get("items_per_message", AUTO) == AUTO:
        return None
    if isinstance(raw["items_per_message"], str):
        raise ConfigError(f"{where}.items_per_message: must be \"auto\" or a whole number, got {raw['items_per_message']!r}")
    return _int_in(raw, "items_per_message", where, 1, MAX_ITEMS_PER_MESSAGE)


def task_definition(task: str, raw: Mapping[str, Any], where: str) -> Definition:
    """The definition a submission naming a task (not a definition) runs: its own `item_seconds` (default 1 s),
    and K chosen for the batch (chalicelib.sizing) unless the submission pins one (with_overrides).

    Its source comes from the submission (`items`, `source` or an open batch's inbox); no results are kept.
    ConfigError names the bad field.
    """
    return Definition(
        name=task,
        schedule="",
        source=Source(type="random", count=1),  # replaced by the submission's own
        task=task,
        item_seconds=_seconds(raw, "item_seconds", where, MAX_ITEM_SECONDS, DEFAULT_ITEM_SECONDS),
    )


def readable_buckets(definitions: Mapping[str, Definition]) -> set[str]:
    """The buckets the definitions name: the deployed functions may read those and no others (least privilege)."""
    return {definition.source.bucket for definition in definitions.values() if definition.source.type != "random"}


def with_overrides(definition: Definition, raw: Mapping[str, Any], where: str, buckets: set[str]) -> Definition:
    """`definition` with a submission's `source`, `items_per_message` and `task_options`, each checked as in a file.

    An S3 source must be in a bucket the definitions name (`buckets`): the generated IAM
    policy grants those only, so any other would fail later, after the batch was written.
    ConfigError names every bad field, a line each.
    """
    problems: list[str] = []
    changes: dict[str, Any] = {}

    def checked(field_name: str, parse: Any) -> None:
        try:
            changes[field_name] = parse()
        except ConfigError as error:
            problems.extend(str(error).splitlines())

    if "source" in raw:
        checked("source", lambda: _parse_source(raw["source"], f"{where}.source"))
        source = changes.get("source")
        if source is not None and source.type != "random" and source.bucket not in buckets:
            problems.append(f"{where}.source.uri: the bucket is not one the definitions file names (the deployed functions may read only those)")
    if "items_per_message" in raw:
        checked("items_per_message", lambda: _items_per_message(raw, where))
    if "task_options" in raw:
        checked("task_options", lambda: _parse_task_options(definition.task, raw["task_options"], f"{where}.task_options"))
    if problems:
        raise ConfigError("\n".join(problems))
    return replace(definition, **changes)


def submission_budget_problem(definition: Definition, event_sources: EventSourceSettings) -> str | None:
    """Why a submitted batch's messages would not fit one processor invocation (as budget_problems), or None."""
    return budget_problems({definition.name: definition}, event_sources).get(definition.name)


DEFINITION_FIELDS = {
    "name", "description", "schedule", "source", "task", "task_options", "items_per_message", "item_seconds", "alert", "results",
}


def _parse_name(raw: Mapping[str, Any], where: str) -> str:
    name = _require(raw, "name", where, str)
    if not NAME_PATTERN.match(name):
        raise ConfigError(f"{where}.name: {name!r} must be a-z, 0-9 and '-', starting with a letter")
    if len(name) > MAX_DEFINITION_NAME_LENGTH:
        raise ConfigError(
            f"{where}.name: {name!r} is {len(name)} characters, at most {MAX_DEFINITION_NAME_LENGTH}: Chalice names "
            f"the schedule rule {APP_NAME}-<stage>-batch_<name>-event, AWS allows {AWS_NAME_LIMIT} characters, "
            f"and batchdrain allows for stage names up to {MAX_STAGE_NAME_LENGTH}"
        )
    return name


def _parse_schedule(raw: Mapping[str, Any], where: str) -> str:
    schedule = _require(raw, "schedule", where, str)
    problem = schedules.problem(schedule)
    if problem:
        raise ConfigError(f"{where}.schedule: {problem}")
    return schedule


def _parse_task(raw: Mapping[str, Any], where: str, known_tasks: set[str]) -> str:
    task = _require(raw, "task", where, str)
    if task not in known_tasks:
        raise ConfigError(f"{where}.task: unknown task {task!r} (registered: {', '.join(sorted(known_tasks))})")
    return task


def _parse_description(raw: Mapping[str, Any], where: str) -> str:
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{where}.description: must be a string, got {description!r}")
    return description


# The user's own definitions, next to app.py (and at the root of the deployed package, where
# both deploy routes put the definitions file they were given: see README "Your own job").
PROJECT_DIR = Path(__file__).resolve().parent.parent
USER_DEFINITIONS_FILE = "batchdrain_definitions.json"
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# An error that starts with a field path: `definitions[0].source.uri: ...`.
_FIELD_PATH = re.compile(r"^((?:definitions|modules)(?:\[\d+\]|\.[A-Za-z_]+)*): (.*)$", re.S)


def definitions_file(path: str | os.PathLike[str] | None = None) -> Path:
    """Which definitions file the app reads: `path`, else BATCHDRAIN_DEFINITIONS, else the project's
    batchdrain_definitions.json, else the shipped examples (chalicelib/batches.json)."""
    if path:
        return Path(path)
    if os.environ.get("BATCHDRAIN_DEFINITIONS"):
        return Path(os.environ["BATCHDRAIN_DEFINITIONS"])
    own = PROJECT_DIR / USER_DEFINITIONS_FILE
    return own if own.exists() else DEFAULT_DEFINITIONS_FILE


def parse_definitions(document: Any, origin: str, known_tasks: set[str]) -> dict[str, Definition]:
    """Validate a whole definitions document, keyed by definition name; ConfigError lists every problem."""
    definitions, problems = _parse_document(document, known_tasks)
    if problems:
        raise ConfigError("\n".join(f"{origin}: {problem}" for problem in problems))
    return definitions


def _parse_document(document: Any, known_tasks: set[str]) -> tuple[dict[str, Definition], list[str]]:
    """Each definition checked on its own: the definitions that are valid, and one problem per invalid one."""
    if not isinstance(document, dict) or not isinstance(document.get("definitions"), list):
        return {}, ["must be an object with a 'definitions' list"]
    problem = unknown_names(document, {"definitions", "modules"})
    if problem:
        return {}, [problem]
    definitions: dict[str, Definition] = {}
    problems: list[str] = []
    for position, raw in enumerate(document["definitions"]):
        try:
            definition = parse_definition(raw, f"definitions[{position}]", known_tasks)
        except ConfigError as error:
            problems.extend(str(error).splitlines())
            continue
        if definition.name in definitions:
            problems.append(f"definitions[{position}].name: {definition.name!r} is defined twice")
        definitions[definition.name] = definition
    return definitions, problems


def import_modules(document: Any) -> list[str]:
    """Import the user's task modules the document lists (`"modules": [...]`); one problem per module that fails.

    They register their tasks (`@task`) when imported, so they come before the definitions
    that name those tasks are checked.
    """
    if not isinstance(document, dict) or "modules" not in document:
        return []
    modules = document["modules"]
    if not isinstance(modules, list):
        return [f"modules: must be a list of Python module names, got {modules!r}"]
    problems = []
    for position, name in enumerate(modules):
        if not isinstance(name, str) or not _MODULE_NAME.match(name):
            problems.append(f"modules[{position}]: must be a Python module name like 'tasks.people', got {name!r}")
            continue
        try:
            importlib.import_module(name)
        except Exception as error:  # any error the user's module raises while importing
            problems.append(f"modules[{position}]: cannot import {name!r}: {type(error).__name__}: {error}")
    return problems


def definition_problems(
    path: str | os.PathLike[str] | None = None, event_sources: EventSourceSettings | None = None
) -> tuple[dict[str, Definition], list[str]]:
    """Read, import and check a definitions file as the app does at import; the valid definitions and every problem.

    Each problem is one line, `file:line: field: what is wrong`: the same lines for
    `batchdrain validate`, the deploy and the app's own import.
    """
    from chalicelib.tasks import registered_tasks

    source = definitions_file(path)
    shown = shown_path(source)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as error:
        return {}, [f"{shown}: cannot be read ({error.strerror})"]
    except UnicodeDecodeError as error:
        return {}, [f"{shown}: not UTF-8 text (byte {error.start})"]
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        line, what = jsonlines.syntax_error_line(text, error)
        return {}, [f"{shown}:{line}: {what}"]
    problems = import_modules(document)
    definitions, found = _parse_document(document, set(registered_tasks()))
    problems += found
    if event_sources is not None:
        positions = {raw.get("name"): n for n, raw in enumerate(document["definitions"]) if isinstance(raw, dict)}
        problems += [
            f"definitions[{positions.get(name, 0)}].items_per_message: {problem}"
            for name, problem in budget_problems(definitions, event_sources).items()
        ]
    lines = jsonlines.field_lines(text)
    return definitions, [_located(shown, lines, problem) for problem in problems]


def _located(shown: str, lines: dict[str, int], problem: str) -> str:
    match = _FIELD_PATH.match(problem)
    if not match:
        return f"{shown}:1: {problem}"
    return f"{shown}:{jsonlines.line_of(lines, match.group(1))}: {problem}"


def shown_path(path: Path) -> str:
    """A file as the user would name it: relative to the current directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def load_definitions(
    path: str | os.PathLike[str] | None = None, event_sources: EventSourceSettings | None = None
) -> dict[str, Definition]:
    """Load and validate the definitions file (see `definitions_file`); ConfigError lists every problem, a line each."""
    definitions, problems = definition_problems(path, event_sources)
    if problems:
        raise ConfigError("\n".join(problems))
    return definitions


def items_within_budget(item_seconds: float, batch_size: int, timeout_seconds: int) -> int:
    """The most items of `item_seconds` a message may hold so one invocation's `batch_size` messages
    finish PROCESSOR_SAFETY_MARGIN_SECONDS before its timeout (0: not even one)."""
    return int((timeout_seconds - PROCESSOR_SAFETY_MARGIN_SECONDS) / (batch_size * item_seconds) + 1e-9)


def check_processing_budget(definitions: Mapping[str, Definition], event_sources: EventSourceSettings) -> None:
    """Every definition's messages fit one processor invocation, or a ConfigError with the arithmetic (see budget_problems)."""
    problems = budget_problems(definitions, event_sources)
    if problems:
        raise ConfigError("\n".join(f"definition {name!r}: {problem}" for name, problem in problems.items()))


def budget_problems(definitions: Mapping[str, Definition], event_sources: EventSourceSettings) -> dict[str, str]:
    """Definition name -> why its messages do not fit one processor invocation (none if all fit).

    One invocation gets up to PROCESSOR_BATCH_SIZE messages of up to K items that take
    up to item_seconds each, and must finish them PROCESSOR_SAFETY_MARGIN_SECONDS
    before its timeout. Work that does not fit is returned untouched and redelivered
    after the visibility timeout: a batch that never fits only ever finishes its
    first messages' first items, so it is rejected at import (deploy, package, cold
    start), rather than at the first run.
    """
    batch_size, timeout = event_sources.processor_batch_size, event_sources.processor_timeout_seconds
    available = timeout - PROCESSOR_SAFETY_MARGIN_SECONDS
    problems = {}
    for definition in definitions.values():
        k = definition.items_per_message or 1  # auto: the smallest K it could choose
        needed = batch_size * k * definition.item_seconds
        if k > items_within_budget(definition.item_seconds, batch_size, timeout):
            what = f"items_per_message {k:,}" if definition.items_per_message else "items_per_message auto (even K=1)"
            advice = "lower items_per_message or PROCESSOR_BATCH_SIZE" if definition.items_per_message else "lower PROCESSOR_BATCH_SIZE"
            problems[definition.name] = (
                f"one processor invocation may take PROCESSOR_BATCH_SIZE "
                f"{batch_size:,} x {what} x item_seconds "
                f"{definition.item_seconds:g} = {needed:,.6g} s, more than PROCESSOR_TIMEOUT_SECONDS {timeout:,} - "
                f"{PROCESSOR_SAFETY_MARGIN_SECONDS} s safety margin = {available:,} s; {advice}, "
                "or raise the processor's lambda_timeout in .chalice/config.json together "
                f"with PROCESSOR_TIMEOUT_SECONDS (at most {MAX_ITEM_SECONDS})"
            )
    return problems
