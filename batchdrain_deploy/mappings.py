"""Route A's last step: the event-source settings Chalice cannot express, applied after `chalice deploy`.

infra/event-sources.json is a merge template: for each function's event source it holds
CloudFormation properties (ReportBatchItemFailures, bisect, retry limit, record age,
filters, on-failure destination). Route B merges it into the template; here the same
properties become UpdateEventSourceMapping calls on the mappings `chalice deploy`
recorded in .chalice/deployed/<stage>.json, so both routes deploy identical settings
from one file. The local stack runs the same file (batchdrain_local.eventsources).

A property that refers to a resource (`{"Fn::GetAtt": ["StreamFailuresQueue", "Arn"]}`)
is resolved through the resources stack: the output whose value is that same expression.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from batchdrain_deploy import DeployError
from batchdrain_local.eventsources import DYNAMODB, SQS, load_properties

# CloudFormation properties UpdateEventSourceMapping accepts under the same name and shape.
UPDATABLE = frozenset(
    {
        "FunctionResponseTypes",
        "BisectBatchOnFunctionError",
        "MaximumRetryAttempts",
        "MaximumRecordAgeInSeconds",
        "FilterCriteria",
        "DestinationConfig",
        "BatchSize",
        "MaximumBatchingWindowInSeconds",
        "ScalingConfig",
        "Enabled",
    }
)
# Properties `chalice deploy` already set from the decorator and that cannot be updated.
SET_BY_CHALICE = frozenset({"Queue", "Stream", "StartingPosition"})
# Chalice's deployed-resource types for event source mappings, and their kind in resource names.
MAPPING_KINDS = {"sqs_event": SQS, "dynamodb_event": DYNAMODB}
_SUFFIXES = {SQS: "-sqs-event-source", DYNAMODB: "-dynamodb-event-source"}


@dataclass(frozen=True)
class MappingUpdate:
    """One UpdateEventSourceMapping call: which mapping (by Chalice's record) and what to set."""

    function_name: str
    kind: str
    uuid: str
    settings: dict[str, Any]


def plan_updates(
    deployed: list[dict[str, Any]],
    event_sources: Path,
    resources_template: Mapping[str, Any],
    outputs: Mapping[str, str],
) -> list[MappingUpdate]:
    """The updates that give every deployed mapping the settings of infra/event-sources.json."""
    updates = []
    for resource in deployed:
        kind = MAPPING_KINDS.get(resource.get("resource_type", ""))
        if kind is None:
            continue
        function_name = resource["name"].removesuffix(_SUFFIXES[kind])
        properties = load_properties(function_name, kind, event_sources)
        where = f"infra/event-sources.json: {function_name} ({kind})"
        unknown = sorted(set(properties) - UPDATABLE - SET_BY_CHALICE)
        if unknown:
            raise DeployError(f"{where}: UpdateEventSourceMapping has no {', '.join(unknown)}")
        settings = {
            key: resolve(value, resources_template, outputs, where)
            for key, value in properties.items()
            if key in UPDATABLE
        }
        if settings:
            updates.append(MappingUpdate(function_name, kind, resource["event_uuid"], settings))
    return updates


def resolve(value: Any, template: Mapping[str, Any], outputs: Mapping[str, str], where: str) -> Any:
    """`value` with every Ref/Fn::GetAtt replaced by the stack output that exports the same expression."""
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("Ref", "Fn::GetAtt", "Fn::Sub"):
        for key, output in template.get("Outputs", {}).items():
            if output.get("Value") == value and key in outputs:
                return outputs[key]
        raise DeployError(
            f"{where}: {value} refers to a resource, but the resources stack has no output with that value "
            "(add one to infra/resources.yaml Outputs)"
        )
    if isinstance(value, dict):
        return {key: resolve(member, template, outputs, where) for key, member in value.items()}
    if isinstance(value, list):
        return [resolve(member, template, outputs, where) for member in value]
    return value


def apply_updates(lambda_client: Any, updates: list[MappingUpdate], timeout: float = 300.0) -> None:
    """Apply each update and check that Lambda reports exactly those settings afterwards."""
    for update in updates:
        # A mapping Chalice has just created is still "Creating" on AWS, and Lambda
        # refuses to update a mapping in a transitional state (ResourceInUseException).
        _wait_until_settled(lambda_client, update.uuid, timeout)
        lambda_client.update_event_source_mapping(UUID=update.uuid, **update.settings)
    for update in updates:
        mapping = _wait_until_settled(lambda_client, update.uuid, timeout)
        wrong = {key: _reported(mapping, key) for key, value in update.settings.items() if _reported(mapping, key) != value}
        if wrong:
            raise DeployError(
                f"the {update.kind} mapping of {update.function_name} ({update.uuid}) did not take "
                f"{', '.join(sorted(wrong))}: wanted {({key: update.settings[key] for key in wrong})}, has {wrong}"
            )


def _wait_until_settled(lambda_client: Any, uuid: str, timeout: float) -> dict[str, Any]:
    """The mapping once it leaves Lambda's transitional states (an update is asynchronous on AWS)."""
    deadline = time.monotonic() + timeout
    while True:
        mapping = lambda_client.get_event_source_mapping(UUID=uuid)
        if mapping.get("State") not in ("Creating", "Updating", "Enabling", "Disabling") or time.monotonic() > deadline:
            return mapping
        time.sleep(2)


def _reported(mapping: Mapping[str, Any], key: str) -> Any:
    """A setting as GetEventSourceMapping reports it (Enabled shows as State)."""
    if key == "Enabled":
        return mapping.get("State") == "Enabled"
    return mapping.get(key)
