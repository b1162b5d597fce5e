"""The resources stack of Route A: infra/resources.yaml deployed on its own, its outputs, teardown.

    outputs = deploy_stack(cloudformation, "batchdrain-dev-resources", body, StackParameters("dev", 720, 5400))
    environment_from_outputs(outputs, "batchdrain-dev-resources")   # {"TABLE_NAME": ..., ...}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from botocore.exceptions import ClientError, WaiterError

from batchdrain_deploy import DeployError
from batchdrain_deploy.project import OUTPUT_ENVIRONMENT

# Polling CloudFormation every 5 s for up to 30 min: a table with a new index takes minutes.
_WAIT = {"Delay": 5, "MaxAttempts": 360}
_NO_UPDATES = "No updates are to be performed"


def stack_name(app_name: str, stage: str) -> str:
    """The resources stack of a stage: `batchdrain-dev-resources`."""
    return f"{app_name}-{stage}-resources"


@dataclass(frozen=True)
class StackParameters:
    """The template's parameters for one deploy. None keeps the stack's current value on update."""

    stage: str
    visibility_timeout: int
    planning_visibility_timeout: int
    alert_email: str | None = None
    table_deletion_protection: bool | None = None

    def for_cloudformation(self, previous: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """Parameters for CreateStack/UpdateStack; an unset optional keeps its `previous` value, else the default.

        The previous value is passed as a value rather than UsePreviousValue: the same on
        AWS (no parameter here is NoEcho), and moto 5.2.5 fails UsePreviousValue for a
        parameter that was left at its default when the stack was created.
        """
        previous = previous or {}
        given: dict[str, str | None] = {
            "Stage": self.stage,
            "WorkQueueVisibilityTimeout": str(self.visibility_timeout),
            "PlanningQueueVisibilityTimeout": str(self.planning_visibility_timeout),
            "AlertEmail": self.alert_email,
            "TableDeletionProtection": None
            if self.table_deletion_protection is None
            else str(self.table_deletion_protection).lower(),
        }
        parameters = []
        for key, value in given.items():
            if value is not None:
                parameters.append({"ParameterKey": key, "ParameterValue": value})
            elif key in previous:
                # Without this an update would reset, say, the email subscription to the default (none).
                parameters.append({"ParameterKey": key, "ParameterValue": previous[key]})
        return parameters


def describe_stack(cloudformation: Any, name: str) -> dict[str, Any] | None:
    """The stack, or None when it does not exist."""
    try:
        return cloudformation.describe_stacks(StackName=name)["Stacks"][0]
    except ClientError as error:
        if "does not exist" in str(error):
            return None
        raise


def deploy_stack(cloudformation: Any, name: str, template_body: str, parameters: StackParameters) -> dict[str, str]:
    """Create the stack, or update it in place; wait until it is done; its outputs by key."""
    existing = describe_stack(cloudformation, name)
    if existing is not None and existing["StackStatus"] == "ROLLBACK_COMPLETE":
        raise DeployError(
            f"stack {name} failed to create earlier and can only be deleted: run `make destroy` and deploy again"
        )
    updating = existing is not None
    previous = {parameter["ParameterKey"]: parameter["ParameterValue"] for parameter in (existing or {}).get("Parameters", [])}
    request = {"StackName": name, "TemplateBody": template_body, "Parameters": parameters.for_cloudformation(previous)}
    try:
        if updating:
            cloudformation.update_stack(**request)
            waiter = "stack_update_complete"
        else:
            cloudformation.create_stack(**request)
            waiter = "stack_create_complete"
        cloudformation.get_waiter(waiter).wait(StackName=name, WaiterConfig=_WAIT)
    except ClientError as error:
        if _NO_UPDATES not in str(error):
            raise DeployError(f"stack {name}: {error}") from None
    except WaiterError:
        raise DeployError(f"stack {name} did not deploy: {failure_reason(cloudformation, name)}") from None
    return stack_outputs(cloudformation, name)


def stack_outputs(cloudformation: Any, name: str) -> dict[str, str]:
    stack = describe_stack(cloudformation, name)
    if stack is None:
        raise DeployError(f"stack {name} does not exist (deploy it with `make deploy`)")
    return {output["OutputKey"]: output["OutputValue"] for output in stack.get("Outputs", [])}


def environment_from_outputs(outputs: Mapping[str, str], stack: str) -> dict[str, str]:
    """The app's environment variables from the stack's outputs; a missing output is an error naming it."""
    missing = sorted(key for key in OUTPUT_ENVIRONMENT if not outputs.get(key))
    if missing:
        raise DeployError(
            f"stack {stack} has no output {', '.join(missing)} "
            f"(it has: {', '.join(sorted(outputs)) or 'none'}); infra/resources.yaml must declare it"
        )
    return {variable: outputs[key] for key, variable in OUTPUT_ENVIRONMENT.items()}


def failure_reason(cloudformation: Any, name: str) -> str:
    """The first resource failure of the stack's latest operation, as CloudFormation reported it."""
    try:
        events = cloudformation.describe_stack_events(StackName=name)["StackEvents"]
    except ClientError as error:
        return str(error)
    failures = [event for event in events if event.get("ResourceStatus", "").endswith("FAILED")]
    if not failures:
        stack = describe_stack(cloudformation, name)
        return f"status {stack['StackStatus'] if stack else 'gone'}"
    first = failures[-1]  # events are newest first
    return f"{first['LogicalResourceId']}: {first.get('ResourceStatusReason', first['ResourceStatus'])}"


def delete_stack(cloudformation: Any, name: str) -> None:
    """Delete the stack and wait until it is gone (a stack that does not exist is already deleted)."""
    if describe_stack(cloudformation, name) is None:
        return
    cloudformation.delete_stack(StackName=name)
    try:
        cloudformation.get_waiter("stack_delete_complete").wait(StackName=name, WaiterConfig=_WAIT)
    except WaiterError:
        raise DeployError(f"stack {name} was not deleted: {failure_reason(cloudformation, name)}") from None


def empty_bucket(s3: Any, bucket: str) -> int:
    """Delete every object version and delete marker, so CloudFormation can delete the bucket; how many."""
    deleted = 0
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        keys = [
            {"Key": entry["Key"], "VersionId": entry["VersionId"]}
            for entry in _chain(page.get("Versions", []), page.get("DeleteMarkers", []))
        ]
        # DeleteObjects takes at most 1,000 keys; a page holds at most 1,000 of each kind.
        for start in range(0, len(keys), 1000):
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys[start : start + 1000], "Quiet": True})
        deleted += len(keys)
    return deleted


def _chain(*lists: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for entries in lists:
        yield from entries
