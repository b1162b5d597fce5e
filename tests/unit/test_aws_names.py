"""Names over AWS's 64-character limits fail before anything is deployed (issue 9, item 2b).

`chalice deploy` names a stage's functions `<app>-<stage>-<handler>`, their roles the
same, and schedule rules `<app>-<stage>-<handler>-event`; Lambda, IAM and EventBridge
take at most 64 characters. At import the stage is not known, so definition names are
limited for stages of up to MAX_STAGE_NAME_LENGTH characters; the deploy knows the
stage and checks the exact names Chalice would create.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from batchdrain_deploy import DeployError, route_a
from batchdrain_deploy.names import check_names, deployed_names
from batchdrain_deploy.package import load_app
from batchdrain_deploy.project import PROJECT_DIR, Project
from chalicelib.config import APP_NAME, AWS_NAME_LIMIT, MAX_DEFINITION_NAME_LENGTH, MAX_STAGE_NAME_LENGTH
from chalicelib.errors import ConfigError
from tests.deploy_support import copy_project
from tests.unit.conftest import REGION

from .test_config import config_error, definition, parse

LONGEST_NAME = "a" + "b" * (MAX_DEFINITION_NAME_LENGTH - 1)


# -- at import: definition names -------------------------------------------------------------------


def test_the_longest_definition_name_fits_the_longest_stage_name():
    rule = f"{APP_NAME}-{'s' * MAX_STAGE_NAME_LENGTH}-batch_{LONGEST_NAME}-event"

    assert (MAX_STAGE_NAME_LENGTH, MAX_DEFINITION_NAME_LENGTH) == (12, 28)
    assert len(rule) == AWS_NAME_LIMIT
    assert parse(definition(name=LONGEST_NAME))[LONGEST_NAME].handler_name == "batch_" + LONGEST_NAME


def test_a_definition_name_too_long_for_aws_names_the_limit_and_why():
    name = LONGEST_NAME + "c"

    message = config_error(definition(name=name))

    assert f"definitions[0].name: {name!r} is 29 characters, at most 28" in message
    assert "batchdrain-<stage>-batch_<name>-event" in message
    assert "64" in message and "stage names up to 12" in message


def test_the_app_name_is_the_one_chalice_deploys_under():
    assert json.loads((PROJECT_DIR / ".chalice" / "config.json").read_text())["app_name"] == APP_NAME
    assert re.search(r'Chalice\(app_name="([^"]+)"\)', (PROJECT_DIR / "app.py").read_text()).group(1) == APP_NAME


# -- at deploy: the exact names Chalice would create for the stage ---------------------------------------


def with_stage(project: Project, stage: str) -> Project:
    """The project with `stage` added as a copy of dev."""
    config = project.config()
    config["stages"][stage] = json.loads(json.dumps(config["stages"]["dev"]))
    project.config_path.write_text(json.dumps(config))
    return project


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(copy_project(tmp_path / "project"))


@pytest.fixture
def longest_definition(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "batches.json"
    path.write_text(json.dumps({"definitions": [definition(name=LONGEST_NAME, items_per_message=20)]}))
    monkeypatch.setenv("BATCHDRAIN_DEFINITIONS", str(path))


def test_the_names_are_chalices_own(project: Project):
    names = deployed_names(project, "dev", load_app(project, "dev"))

    assert ("function", "batchdrain-dev-batch_nightly") in names
    assert ("role", "batchdrain-dev-drain_dead_letters") in names
    assert ("schedule rule", "batchdrain-dev-batch_nightly-event") in names
    assert ("function", "batchdrain-dev") in names  # the API handler


def test_a_stage_of_up_to_twelve_characters_takes_the_longest_definition_name(project: Project, longest_definition):
    stage = "s" * MAX_STAGE_NAME_LENGTH
    with_stage(project, stage)

    check_names(project, stage, load_app(project, stage))


def test_a_longer_stage_whose_names_overflow_is_an_error_listing_them(project: Project, longest_definition):
    stage = "integration-eu"  # 14 characters: 2 too many for the longest definition name
    with_stage(project, stage)

    with pytest.raises(DeployError) as caught:
        check_names(project, stage, load_app(project, stage))

    message = str(caught.value)
    rule = f"batchdrain-{stage}-batch_{LONGEST_NAME}-event"
    assert f"schedule rule {rule} (66 characters)" in message
    assert f"AWS allows at most 64" in message
    assert f"stage {stage!r}" in message
    assert "batchdrain-integration-eu-process_work" not in message  # only the names that overflow


def clients(service: str) -> Any:
    return boto3.client(service, region_name=REGION)


def never_run_chalice(project: Project, *arguments: str) -> None:
    raise AssertionError(f"chalice {' '.join(arguments)} ran although the names were too long")


def test_deploy_refuses_a_stage_whose_names_overflow_before_creating_anything(project: Project):
    stage = "integration-tests-in-europe-west-1-stage"  # even batchdrain-<stage>-drain_dead_letters overflows
    with_stage(project, stage)
    before = project.config_path.read_bytes()

    with mock_aws():
        with pytest.raises(DeployError, match=r"drain_dead_letters \(\d+ characters\)"):
            route_a.deploy(project, stage, clients, chalice=never_run_chalice, log=lambda line: None)
        assert clients("cloudformation").describe_stacks()["Stacks"] == []
    assert project.config_path.read_bytes() == before


def test_deploy_checks_the_names_of_a_stage_whose_outputs_are_not_recorded_yet(project: Project):
    """A new stage has no TABLE_STREAM_ARN &c. before its first deploy; the check must not need them."""
    stage = "integration-tests-in-europe-west-1-stage"
    config = project.config()
    config["stages"][stage] = {"api_gateway_stage": "api", "lambda_timeout": 120,
                               "environment_variables": {"PROCESSOR_TIMEOUT_SECONDS": "120"}}
    project.config_path.write_text(json.dumps(config))

    with mock_aws(), pytest.raises(DeployError, match=r"AWS allows at most 64"):
        route_a.deploy(project, stage, clients, chalice=never_run_chalice, log=lambda line: None)
