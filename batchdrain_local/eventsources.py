"""The event-source settings Chalice cannot express, read from infra/event-sources.json.

`chalice package --merge-template infra/event-sources.json` deep-merges that file into
the SAM template, so on AWS the work queue's mapping reports partial batch failures and
the stream's mapping filters, bisects and gives up after N retries. The local stack
reads the same file (the single source of truth) so that it runs the handlers with
exactly those settings: a setting changed or dropped there changes the local stack too.

Chalice names a function's CloudFormation resource by CamelCasing its name and the
event source after its own resource name: `process_work` -> `ProcessWork`, event
`ProcessWorkSqsEventSource`; `finalize` -> `Finalize`, `FinalizeDynamodbEventSource`.
A function absent from the file gets Lambda's defaults, exactly as deployed.

    settings = load_mapping_settings("finalize", "dynamodb")
    settings.maximum_retry_attempts   # 8
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from chalice.utils import to_cfn_resource_name

from batchdrain_local.filters import EventFilter, FilterPatternError

EVENT_SOURCES_FILE = Path(__file__).resolve().parent.parent / "infra" / "event-sources.json"

# Event source kinds as Chalice spells them in resource names (chalice/deploy/appgraph.py).
SQS = "sqs"
DYNAMODB = "dynamodb"

# Properties the local pollers act on.
EMULATED = frozenset(
    {
        "FunctionResponseTypes",
        "FilterCriteria",
        "BisectBatchOnFunctionError",
        "MaximumRetryAttempts",
        # Chalice generates these from the decorator; the merge template may override them.
        "BatchSize",
        "MaximumBatchingWindowInSeconds",
        "StartingPosition",
        "Enabled",
    }
)
# Properties accepted but not acted on, and why that keeps local behaviour faithful.
IGNORED = {
    "MaximumRecordAgeInSeconds": "local records are never older than a test run (the stack keeps no stream for a day)",
    "DestinationConfig": "the stack always sends stream on-failure records to its <table>-stream-failures queue",
    "ScalingConfig": "local SQS concurrency is StackOptions.processor_concurrency",
    "Queue": "the stack wires the queue the decorator names",
    "Stream": "the stack wires the stream the decorator names",
}


class EventSourceSettingsError(ValueError):
    """infra/event-sources.json (or an override) holds something the local stack cannot run as AWS would."""


def resource_name(function_name: str) -> str:
    """The CloudFormation name Chalice gives a function: `process_work` -> `ProcessWork`."""
    return to_cfn_resource_name(function_name)


def event_name(function_name: str, kind: str) -> str:
    """The name Chalice gives a function's event source: (`finalize`, "dynamodb") -> `FinalizeDynamodbEventSource`."""
    return to_cfn_resource_name(f"{function_name}-{kind}-event-source")


def load_properties(function_name: str, kind: str, path: Path = EVENT_SOURCES_FILE) -> dict[str, Any]:
    """The properties the merge template adds to one function's event source ({} when it has none)."""
    document = _read(path)
    resource = (document.get("Resources") or {}).get(resource_name(function_name)) or {}
    event = ((resource.get("Properties") or {}).get("Events") or {}).get(event_name(function_name, kind)) or {}
    properties = event.get("Properties") or {}
    if not isinstance(properties, dict):
        raise EventSourceSettingsError(f"{path.name}: {event_name(function_name, kind)}.Properties must be an object")
    return dict(properties)


def merge_overrides(properties: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """`properties` with `overrides` applied key by key; an override of None removes the key.

    Lets a test run a mapping as it would be without one setting, e.g.
    `{"FunctionResponseTypes": None}` to show what ReportBatchItemFailures prevents.
    """
    merged = dict(properties)
    for key, value in (overrides or {}).items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


@dataclass(frozen=True)
class MappingSettings:
    """One event source mapping's settings beyond what the Chalice decorator gives.

    Defaults are Lambda's: no partial batch response, no filter, no bisection, retry
    until the record expires (-1), enabled. None for batch size, window and starting
    position means "as the decorator says".
    """

    report_batch_item_failures: bool = False
    event_filter: EventFilter | None = None
    bisect_batch_on_function_error: bool = False
    maximum_retry_attempts: int = -1
    batch_size: int | None = None
    batching_window: float | None = None
    starting_position: str | None = None
    enabled: bool = True

    @classmethod
    def from_properties(cls, properties: Mapping[str, Any], where: str = "event source") -> "MappingSettings":
        """Validate merged properties; raise for any the local stack does not know, naming it."""
        unknown = sorted(set(properties) - EMULATED - set(IGNORED))
        if unknown:
            raise EventSourceSettingsError(
                f"{where}: the local stack does not emulate {', '.join(unknown)}; "
                "emulate it in batchdrain_local or list it in eventsources.IGNORED with the reason"
            )
        response_types = properties.get("FunctionResponseTypes", [])
        if not isinstance(response_types, list) or not set(response_types) <= {"ReportBatchItemFailures"}:
            raise EventSourceSettingsError(f"{where}.FunctionResponseTypes: must be [] or [\"ReportBatchItemFailures\"], got {response_types!r}")
        retries = properties.get("MaximumRetryAttempts", -1)
        if isinstance(retries, bool) or not isinstance(retries, int) or not -1 <= retries <= 10_000:
            raise EventSourceSettingsError(f"{where}.MaximumRetryAttempts: must be -1 (infinite) to 10,000, got {retries!r}")
        bisect = properties.get("BisectBatchOnFunctionError", False)
        if not isinstance(bisect, bool):
            raise EventSourceSettingsError(f"{where}.BisectBatchOnFunctionError: must be true or false, got {bisect!r}")
        enabled = properties.get("Enabled", True)
        if not isinstance(enabled, bool):
            raise EventSourceSettingsError(f"{where}.Enabled: must be true or false, got {enabled!r}")
        event_filter = None
        if "FilterCriteria" in properties:
            try:
                event_filter = EventFilter.from_criteria(properties["FilterCriteria"])
            except FilterPatternError as error:
                raise EventSourceSettingsError(f"{where}.{error}") from None
        return cls(
            report_batch_item_failures="ReportBatchItemFailures" in response_types,
            event_filter=event_filter,
            bisect_batch_on_function_error=bisect,
            maximum_retry_attempts=retries,
            batch_size=properties.get("BatchSize"),
            batching_window=properties.get("MaximumBatchingWindowInSeconds"),
            starting_position=properties.get("StartingPosition"),
            enabled=enabled,
        )


def load_mapping_settings(
    function_name: str, kind: str, overrides: Mapping[str, Any] | None = None, path: Path = EVENT_SOURCES_FILE
) -> MappingSettings:
    """The settings the deployed mapping of `function_name` has, with test `overrides` applied."""
    properties = merge_overrides(load_properties(function_name, kind, path), overrides)
    return MappingSettings.from_properties(properties, where=f"{path.name}: {event_name(function_name, kind)}")


def _read(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise EventSourceSettingsError(f"{path}: cannot read the merge template ({error})") from None
    if not isinstance(document, dict):
        raise EventSourceSettingsError(f"{path}: must hold a JSON object")
    return document
