"""The project on disk: Chalice stage config, the resources template, the merge template.

Everything a deploy step reads from the project goes through `Project`, so tests can
point it at a copy (a deploy writes .chalice/config.json and .chalice/deployed/).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from batchdrain_deploy import DeployError

PROJECT_DIR = Path(__file__).resolve().parent.parent
RESOURCES_TEMPLATE = Path("infra") / "resources.yaml"
EVENT_SOURCES_TEMPLATE = Path("infra") / "event-sources.json"
# Chalice's default when neither the stage nor the top level sets lambda_timeout.
CHALICE_DEFAULT_TIMEOUT = 60
# AWS: an SQS queue's visibility timeout should be at least 6x its consumer's timeout,
# or a message reappears while its first delivery is still being processed.
VISIBILITY_FACTOR = 6
# The functions that consume a queue; their timeouts set the queues' visibility timeout.
QUEUE_CONSUMERS = ("process_work", "drain_dead_letters")
# The planning queue's consumer, apart: it may run a whole Lambda lifetime (900 s) per message,
# and the work queue need not wait 6x that for a crashed processor's message.
PLANNING_QUEUE_CONSUMERS = ("plan_segments",)
# Stack output -> the environment variable the app reads it from (README, "Settings").
# Route A records the outputs' values; Route B puts the outputs' expressions in their place.
OUTPUT_ENVIRONMENT = {
    "TableName": "TABLE_NAME",
    "TableStreamArn": "TABLE_STREAM_ARN",
    "WorkQueueName": "WORK_QUEUE_NAME",
    "DeadLetterQueueName": "DEAD_LETTER_QUEUE_NAME",
    "PlanningQueueName": "PLANNING_QUEUE_NAME",
    "AlertTopicArn": "ALERT_TOPIC_ARN",
    "InboxUri": "INBOX_URI",
}
_SUB_VARIABLE = re.compile(r"\$\{([A-Za-z0-9:]+)\}")


@dataclass(frozen=True)
class Project:
    """A batchdrain checkout (the real one, or a copy in a test)."""

    root: Path = PROJECT_DIR

    @property
    def config_path(self) -> Path:
        return self.root / ".chalice" / "config.json"

    def config(self) -> dict[str, Any]:
        """.chalice/config.json, parsed."""
        return _parse(self.config_path, json.loads)

    def stage(self, stage: str) -> dict[str, Any]:
        """One stage's section of config.json; an unknown stage is an error naming the known ones."""
        stages = self.config().get("stages", {})
        if stage not in stages:
            raise DeployError(
                f"unknown stage {stage!r}: .chalice/config.json has stages {', '.join(sorted(stages)) or '(none)'}"
            )
        return stages[stage]

    def app_name(self) -> str:
        return self.config()["app_name"]

    def stage_environment(self, stage: str) -> dict[str, str]:
        """The environment Chalice gives the stage's functions (top level, then the stage's own)."""
        section = self.stage(stage)
        return {**self.config().get("environment_variables", {}), **section.get("environment_variables", {})}

    def lambda_timeout(self, stage: str, function: str) -> int:
        """A function's timeout as Chalice resolves it (chalice.config.Config._chain_lookup):
        the stage's lambda_functions entry, the stage, the top-level lambda_functions entry,
        the top level, then Chalice's default."""
        config, section = self.config(), self.stage(stage)
        scopes = (
            section.get("lambda_functions", {}).get(function, {}),
            section,
            config.get("lambda_functions", {}).get(function, {}),
            config,
        )
        for scope in scopes:
            if scope.get("lambda_timeout") is not None:
                return int(scope["lambda_timeout"])
        return CHALICE_DEFAULT_TIMEOUT

    def visibility_timeout(self, stage: str) -> int:
        """The work and dead-letter queues' visibility timeout for a stage: 6x the longest consumer timeout."""
        return VISIBILITY_FACTOR * max(self.lambda_timeout(stage, name) for name in QUEUE_CONSUMERS)

    def planning_visibility_timeout(self, stage: str) -> int:
        """The planning queue's visibility timeout for a stage: 6x the planner's timeout."""
        return VISIBILITY_FACTOR * max(self.lambda_timeout(stage, name) for name in PLANNING_QUEUE_CONSUMERS)

    def record_environment(self, stage: str, values: Mapping[str, str]) -> dict[str, str]:
        """Write `values` into the stage's environment_variables; returns what changed (old values).

        Written atomically (a temporary file renamed over config.json), so an interrupted
        deploy leaves either the old file or the new one, never half of one.
        """
        config = self.config()
        if stage not in config.get("stages", {}):
            self.stage(stage)  # raises, naming the known stages
        environment = config["stages"][stage].setdefault("environment_variables", {})
        changed = {name: environment.get(name, "") for name, value in values.items() if environment.get(name) != value}
        environment.update(values)
        _write_atomically(self.config_path, json.dumps(config, indent=2) + "\n")
        return changed

    def resources_template(self) -> dict[str, Any]:
        """infra/resources.yaml, parsed (long-form intrinsics only, so plain YAML reads it)."""
        return _parse(self.root / RESOURCES_TEMPLATE, yaml.safe_load)

    def resources_template_body(self) -> str:
        return (self.root / RESOURCES_TEMPLATE).read_text()

    def event_sources_template(self) -> dict[str, Any]:
        return _parse(self.root / EVENT_SOURCES_TEMPLATE, json.loads)

    def deployed_resources(self, stage: str) -> list[dict[str, Any]]:
        """What `chalice deploy` recorded for the stage (.chalice/deployed/<stage>.json)."""
        path = self.root / ".chalice" / "deployed" / f"{stage}.json"
        try:
            return json.loads(path.read_text())["resources"]
        except FileNotFoundError:
            raise DeployError(f"{path} is missing: `chalice deploy --stage {stage}` has not completed") from None
        except (OSError, json.JSONDecodeError, KeyError) as error:
            raise DeployError(f"{path}: cannot be read ({error})") from None


def resource_names(template: Mapping[str, Any], stage: str) -> dict[str, str]:
    """Logical id -> physical name of every resource the template names (`batchdrain-<stage>-...`)."""
    name_properties = {
        "AWS::DynamoDB::Table": "TableName",
        "AWS::SQS::Queue": "QueueName",
        "AWS::SNS::Topic": "TopicName",
    }
    names = {}
    for logical_id, resource in template["Resources"].items():
        key = name_properties.get(resource["Type"])
        if key and key in resource.get("Properties", {}):
            names[logical_id] = substitute(resource["Properties"][key], {"Stage": stage})
    return names


def substitute(value: Any, parameters: Mapping[str, str]) -> str:
    """Resolve a plain string or an `Fn::Sub` over template parameters (no resource attributes)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and set(value) == {"Fn::Sub"} and isinstance(value["Fn::Sub"], str):

        def lookup(match: re.Match[str]) -> str:
            if match.group(1) not in parameters:
                raise DeployError(f"cannot resolve ${{{match.group(1)}}} in {value['Fn::Sub']!r} without deploying")
            return parameters[match.group(1)]

        return _SUB_VARIABLE.sub(lookup, value["Fn::Sub"])
    raise DeployError(f"expected a name or Fn::Sub, got {value!r}")


def _parse(path: Path, parse: Callable[[str], Any]) -> Any:
    """A project file, parsed; an error naming the file when it is missing or malformed."""
    try:
        return parse(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise DeployError(f"{path}: cannot be read ({error})") from None


def _write_atomically(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        if path.exists():
            os.chmod(temporary, path.stat().st_mode & 0o777)  # mkstemp makes it 0600
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
