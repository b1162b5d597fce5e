"""Route B: one CloudFormation/SAM template holding the app and its resources (`make package`).

`chalice package --merge-template` deep-merges a template into the one it generates.
The merge template is built here from:

- infra/resources.yaml: the resources, parameters and outputs; the Stage parameter is
  pinned to the packaged stage (the policy file names that stage's resources) and each
  queue's visibility timeout may not go below 6x the stage's timeout of its consumers;
- infra/event-sources.json: the event-source settings Chalice cannot express;
- references: every function's TABLE_NAME, TABLE_STREAM_ARN, ... become the expressions
  of the outputs Route A records (so no placeholder ARN survives), and every event
  source's Queue/Stream `{"Fn::Sub": "${WorkQueue.Arn}"}` (so CloudFormation creates the
  queue before its mapping). Fn::Sub because Chalice writes the queue as a Fn::Sub and
  the merge is key by key: a Fn::GetAtt would sit beside it in the same object;
- infra/package-checks.yaml: the checkov findings on Chalice's generated resources that
  are accepted, each with its reason, as Metadata.checkov.skip.

The function list comes from the app itself (loaded with the stage's environment), and
`check_references` fails the package if any generated function was missed.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml
from chalice import Chalice
from chalice.app import DynamoDBEventConfig, SQSEventConfig
from chalice.utils import to_cfn_resource_name

from batchdrain_deploy import DeployError
from batchdrain_deploy.policy import check_policy, definitions_path
from batchdrain_deploy.usercode import stage_user_code
from chalicelib.config import SETTING_NAMES
from chalicelib.errors import ConfigError
from batchdrain_deploy.project import OUTPUT_ENVIRONMENT, Project, resource_names
from batchdrain_local.eventsources import DYNAMODB, SQS, event_name

PACKAGE_CHECKS = Path("infra") / "package-checks.yaml"
# Chalice's fixed name for the function behind the REST API (chalice/package.py).
API_HANDLER = "APIHandler"
API = "RestAPI"


def build_merge_template(project: Project, stage: str, app: Chalice) -> dict[str, Any]:
    """The merge template for `chalice package --stage <stage>`; see the module docstring."""
    resources = project.resources_template()
    merged: dict[str, Any] = {
        key: copy.deepcopy(resources[key]) for key in ("Parameters", "Conditions", "Resources", "Outputs")
    }
    merged["Parameters"]["Stage"].update(Default=stage, AllowedValues=[stage])
    visibility = project.visibility_timeout(stage)
    merged["Parameters"]["WorkQueueVisibilityTimeout"].update(Default=visibility, MinValue=visibility)
    planning_visibility = project.planning_visibility_timeout(stage)
    merged["Parameters"]["PlanningQueueVisibilityTimeout"].update(Default=planning_visibility, MinValue=planning_visibility)
    _deep_merge(merged["Resources"], project.event_sources_template().get("Resources", {}))

    environment = {variable: resources["Outputs"][key]["Value"] for key, variable in OUTPUT_ENVIRONMENT.items()}
    checks = _package_checks(project)
    for function in function_resource_names(app):
        _deep_merge(
            merged["Resources"],
            {function: {"Properties": {"Environment": {"Variables": environment}}, **_skips(checks, "AWS::Serverless::Function")}},
        )
    if app.routes:
        _deep_merge(merged["Resources"], {API: _skips(checks, "AWS::Serverless::Api")})
    _deep_merge(merged["Resources"], _event_source_references(app, resources, project.stage_environment(stage), stage))
    return merged


def function_resource_names(app: Chalice) -> list[str]:
    """The CloudFormation names `chalice package` gives the app's functions."""
    names = [to_cfn_resource_name(source.name) for source in app.event_sources]
    names += [to_cfn_resource_name(function.name) for function in app.pure_lambda_functions]
    if app.routes:
        names.append(API_HANDLER)
    return list(dict.fromkeys(names))


def _event_source_references(
    app: Chalice, resources: Mapping[str, Any], environment: Mapping[str, str], stage: str
) -> dict[str, Any]:
    """Queue/Stream of each mapping as `${<queue>.Arn}` / `${<table>.StreamArn}` of the template's resources."""
    logical_ids = {name: logical_id for logical_id, name in resource_names(resources, stage).items()}
    overrides: dict[str, Any] = {}
    for source in app.event_sources:
        if isinstance(source, SQSEventConfig):
            kind, key, target = SQS, "Queue", f"{_logical_id(logical_ids, source.queue, source.name)}.Arn"
        elif isinstance(source, DynamoDBEventConfig):
            table = _logical_id(logical_ids, environment["TABLE_NAME"], source.name)
            kind, key, target = DYNAMODB, "Stream", f"{table}.StreamArn"
        else:
            continue
        event = {event_name(source.name, kind): {"Properties": {key: {"Fn::Sub": f"${{{target}}}"}}}}
        _deep_merge(overrides, {to_cfn_resource_name(source.name): {"Properties": {"Events": event}}})
    return overrides


def _logical_id(logical_ids: Mapping[str, str], name: str, function: str) -> str:
    if name not in logical_ids:
        raise DeployError(f"{function} reads {name!r}, which infra/resources.yaml does not create")
    return logical_ids[name]


def _package_checks(project: Project) -> dict[str, list[dict[str, str]]]:
    path = project.root / PACKAGE_CHECKS
    checks = yaml.safe_load(path.read_text()) or {}
    for resource_type, skips in checks.items():
        for skip in skips:
            if not skip.get("comment"):
                raise DeployError(f"{path}: {resource_type} {skip.get('id')}: every suppression needs its reason")
    return checks


def _skips(checks: Mapping[str, list[dict[str, str]]], resource_type: str) -> dict[str, Any]:
    skips = checks.get(resource_type)
    return {"Metadata": {"checkov": {"skip": copy.deepcopy(skips)}}} if skips else {}


def _deep_merge(target: dict[str, Any], addition: Mapping[str, Any]) -> None:
    """Chalice's merge rule: mappings merge key by key, anything else replaces."""
    for key, value in addition.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _deep_merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def load_app(project: Project, stage: str, defaults: Mapping[str, str] | None = None) -> Chalice:
    """app.py imported afresh with the stage's environment (its decorators read it at import), and with
    the definitions file a deploy of the stage packages (`definitions_path`).

    `defaults` fill variables the stage does not set yet (e.g. outputs before a first deploy).
    A definitions file with problems is a DeployError listing them, a line each.
    """
    with deployed_environment({**(defaults or {}), **project.stage_environment(stage), **definitions_environment(project, stage)}):
        if str(project.root) not in sys.path:
            sys.path.insert(0, str(project.root))
        spec = importlib.util.spec_from_file_location(f"batchdrain_package_{stage}", project.root / "app.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except ConfigError as error:
            raise DeployError(str(error)) from None
    return module.app


def definitions_environment(project: Project, stage: str) -> dict[str, str]:
    """BATCHDRAIN_DEFINITIONS for what imports the app here (this process, chalice): the file a deploy packages."""
    return {"BATCHDRAIN_DEFINITIONS": str(definitions_path(project, stage))}


@contextmanager
def deployed_environment(values: Mapping[str, str]) -> Iterator[None]:
    """This process's environment as a deployed function's: `values` (the stage's), and none of this shell's
    settings (the shell does not reach Lambda, so it must not hide a stage value that would fail there)."""
    saved = dict(os.environ)
    for name in SETTING_NAMES:
        os.environ.pop(name, None)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def package(project: Project, stage: str, out: Path, chalice: Path) -> Path:
    """Run `chalice package --merge-template` into `out`; the path of the one template (sam.json)."""
    check_policy(project, stage)  # the roles carry the policy file as it is
    app = load_app(project, stage)
    stage_user_code(project, stage, definitions_path(project, stage))
    merge_template = build_merge_template(project, stage, app)
    if out.exists():
        shutil.rmtree(out)
    with tempfile.TemporaryDirectory() as scratch:
        merge_path = Path(scratch) / "merge-template.json"
        merge_path.write_text(json.dumps(merge_template, indent=2) + "\n")
        result = subprocess.run(
            [str(chalice), "package", "--stage", stage, "--merge-template", str(merge_path), str(out)],
            cwd=project.root,
            # Chalice wants a region to start; the template itself says ${AWS::Region}.
            env={"AWS_DEFAULT_REGION": "us-east-1", **os.environ, **definitions_environment(project, stage)},
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise DeployError(f"chalice package failed:\n{result.stdout}{result.stderr}")
        shutil.copy(merge_path, out / "merge-template.json")  # kept for reading: what was merged
    template_path = out / "sam.json"
    check_references(json.loads(template_path.read_text()))
    return template_path


def check_references(template: Mapping[str, Any]) -> None:
    """Every function reads the stack's resources and every mapping refers to them, or an error listing what does not."""
    problems = []
    for name, resource in template["Resources"].items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        variables = resource["Properties"].get("Environment", {}).get("Variables", {})
        literal = sorted(variable for variable in OUTPUT_ENVIRONMENT.values() if not isinstance(variables.get(variable), dict))
        if literal:
            problems.append(f"{name}: {', '.join(literal)} not taken from the template's resources")
        for event_key, event in resource["Properties"].get("Events", {}).items():
            reference = next((event["Properties"][key] for key in ("Queue", "Stream") if key in event["Properties"]), None)
            if reference is not None and not _is_attribute_reference(reference, template["Resources"]):
                problems.append(f"{name}.{event_key}: {reference} is not an attribute of the template's resources")
    if problems:
        raise DeployError("the packaged template still has placeholders:\n  " + "\n  ".join(problems))


def _is_attribute_reference(value: Any, resources: Mapping[str, Any]) -> bool:
    """`{"Fn::Sub": "${Logical.Attribute}"}` naming a resource of the template."""
    if not (isinstance(value, dict) and set(value) == {"Fn::Sub"} and isinstance(value["Fn::Sub"], str)):
        return False
    match = re.fullmatch(r"\$\{(\w+)\.\w+\}", value["Fn::Sub"])
    return bool(match) and match.group(1) in resources
