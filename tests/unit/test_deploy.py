"""Route A's steps on moto's in-process mock: bad input fails with a clear error and writes nothing.

The whole route, with the real `chalice deploy`, runs in tests/integration/test_deploy_route_a.py;
these tests stop before or replace the chalice step to pin down the failure cases.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from moto import mock_aws

from batchdrain_deploy import DeployError, route_a
from batchdrain_deploy.mappings import plan_updates
from batchdrain_deploy.package import package
from batchdrain_deploy.policy import build_policy, check_policy, policy_path
from batchdrain_deploy.project import EVENT_SOURCES_TEMPLATE, OUTPUT_ENVIRONMENT, Project
from batchdrain_deploy.stack import StackParameters
from tests.deploy_support import copy_project
from tests.unit.conftest import REGION

# A moto gap listed in the README ("Deploy", moto): its CloudFormation skips the bucket policy.
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse AWS..S3..BucketPolicy:UserWarning")


def never_run_chalice(project: Project, *arguments: str) -> None:
    raise AssertionError(f"chalice {' '.join(arguments)} ran although an earlier step failed")


def clients(service: str) -> Any:
    return boto3.client(service, region_name=REGION)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(copy_project(tmp_path / "project"))


@pytest.mark.parametrize("step", [route_a.deploy, route_a.destroy])
def test_an_unknown_stage_is_an_error_naming_the_known_stages(project, step):
    before = project.config_path.read_bytes()
    with mock_aws(), pytest.raises(DeployError, match=r"unknown stage 'prod'.*stages dev, local"):
        step(project, "prod", clients, chalice=never_run_chalice, log=lambda line: None)
    assert project.config_path.read_bytes() == before


def test_a_missing_stack_output_is_an_error_naming_it_and_nothing_is_recorded(project):
    template = yaml.safe_load((project.root / "infra" / "resources.yaml").read_text())
    del template["Outputs"]["TableStreamArn"]
    (project.root / "infra" / "resources.yaml").write_text(yaml.safe_dump(template))
    before = project.config_path.read_bytes()
    with mock_aws(), pytest.raises(DeployError, match=r"no output TableStreamArn"):
        route_a.deploy(
            project, "dev", clients, table_deletion_protection=False, chalice=never_run_chalice, log=lambda line: None
        )
    assert project.config_path.read_bytes() == before


def test_recording_replaces_only_the_stages_variables_and_keeps_the_file_readable(project):
    config, mode = project.config(), project.config_path.stat().st_mode
    changed = project.record_environment("dev", {"TABLE_STREAM_ARN": "arn:aws:dynamodb:eu-west-1:111122223333:table/batchdrain-dev/stream/x"})
    assert changed == {"TABLE_STREAM_ARN": config["stages"]["dev"]["environment_variables"]["TABLE_STREAM_ARN"]}
    after = project.config()
    assert after["stages"]["local"] == config["stages"]["local"]
    assert after["stages"]["dev"]["environment_variables"]["TABLE_NAME"] == "batchdrain-dev"
    assert project.config_path.stat().st_mode == mode
    assert not list(project.config_path.parent.glob(".config.json.*"))  # no temporary file left behind


def test_the_visibility_timeout_is_six_times_the_longest_queue_consumer_timeout(project):
    assert project.visibility_timeout("dev") == 720
    config = project.config()
    config["stages"]["dev"]["lambda_functions"]["drain_dead_letters"] = {"lambda_timeout": 240}
    project.config_path.write_text(json.dumps(config))
    assert project.visibility_timeout("dev") == 1440


def test_the_planning_queue_waits_six_planner_lifetimes_and_the_work_queue_does_not(project):
    # plan_segments runs up to 900 s per segment (its own lambda_timeout); the processor 120 s.
    assert project.lambda_timeout("dev", "plan_segments") == 900
    assert project.planning_visibility_timeout("dev") == 5400
    assert project.visibility_timeout("dev") == 720
    assert project.resources_template()["Parameters"]["PlanningQueueVisibilityTimeout"]["Default"] == 5400


def test_a_timeout_is_resolved_in_chalices_order(project):
    config = project.config()
    del config["stages"]["dev"]["lambda_functions"]
    config["lambda_functions"] = {"plan_segments": {"lambda_timeout": 600}}
    project.config_path.write_text(json.dumps(config))
    # The stage's lambda_timeout comes before the top level's per-function one, as in chalice.config.
    assert project.lambda_timeout("dev", "plan_segments") == 120
    del config["stages"]["dev"]["lambda_timeout"]
    project.config_path.write_text(json.dumps(config))
    assert project.lambda_timeout("dev", "plan_segments") == 600
    assert project.lambda_timeout("dev", "process_work") == 60  # Chalice's default


def test_an_update_keeps_the_parameters_not_given_again():
    previous = {
        "Stage": "dev",
        "WorkQueueVisibilityTimeout": "360",
        "PlanningQueueVisibilityTimeout": "5400",
        "AlertEmail": "ops@example.com",
        "TableDeletionProtection": "true",
    }
    parameters = StackParameters("dev", 360, 5400).for_cloudformation(previous)
    assert {entry["ParameterKey"]: entry["ParameterValue"] for entry in parameters} == previous
    created = StackParameters("dev", 360, 5400).for_cloudformation()
    assert {entry["ParameterKey"] for entry in created} == {"Stage", "WorkQueueVisibilityTimeout", "PlanningQueueVisibilityTimeout"}


def test_destroy_refuses_while_the_table_is_protected_and_deletes_nothing(project):
    with mock_aws():
        cloudformation = clients("cloudformation")
        cloudformation.create_stack(
            StackName="batchdrain-dev-resources",
            TemplateBody=project.resources_template_body(),
            Parameters=[{"ParameterKey": "TableDeletionProtection", "ParameterValue": "true"}],
        )
        with pytest.raises(DeployError, match=r"deletion protection; nothing was deleted.*TABLE_DELETION_PROTECTION=false"):
            route_a.destroy(project, "dev", clients, chalice=never_run_chalice, log=lambda line: None)
        assert cloudformation.describe_stacks(StackName="batchdrain-dev-resources")["Stacks"][0]["StackStatus"] == "CREATE_COMPLETE"
        assert "batchdrain-dev" in clients("dynamodb").list_tables()["TableNames"]


def test_every_app_variable_comes_from_a_declared_output(project):
    outputs = project.resources_template()["Outputs"]
    assert set(OUTPUT_ENVIRONMENT) <= set(outputs)
    assert set(OUTPUT_ENVIRONMENT.values()) <= set(project.stage_environment("dev"))


DEPLOYED = [
    {"name": "process_work-sqs-event-source", "resource_type": "sqs_event", "event_uuid": "u-1"},
    {"name": "finalize-dynamodb-event-source", "resource_type": "dynamodb_event", "event_uuid": "u-2"},
    {"name": "plan_segments-sqs-event-source", "resource_type": "sqs_event", "event_uuid": "u-3"},
    {"name": "process_work", "resource_type": "lambda_function"},
]


def test_mapping_settings_resolve_resource_references_through_the_stack_outputs(project):
    updates = plan_updates(
        DEPLOYED,
        project.root / EVENT_SOURCES_TEMPLATE,
        project.resources_template(),
        {"StreamFailuresQueueArn": "arn:aws:sqs:us-east-1:123456789012:batchdrain-dev-stream-failures"},
    )
    by_function = {update.function_name: update for update in updates}
    assert by_function["process_work"].uuid == "u-1"
    assert by_function["process_work"].settings == {"FunctionResponseTypes": ["ReportBatchItemFailures"]}
    # The planner's segment message stays in its queue when the planner reports it failed.
    assert by_function["plan_segments"].uuid == "u-3"
    assert by_function["plan_segments"].settings == {"FunctionResponseTypes": ["ReportBatchItemFailures"]}
    finalize = by_function["finalize"].settings
    assert finalize["DestinationConfig"] == {
        "OnFailure": {"Destination": "arn:aws:sqs:us-east-1:123456789012:batchdrain-dev-stream-failures"}
    }
    assert finalize["BisectBatchOnFunctionError"] is True and finalize["MaximumRetryAttempts"] == 8


def test_a_reference_without_a_stack_output_is_an_error_naming_it(project):
    with pytest.raises(DeployError, match=r"StreamFailuresQueue.*no output with that value"):
        plan_updates(DEPLOYED, project.root / EVENT_SOURCES_TEMPLATE, project.resources_template(), {})


def test_a_setting_update_event_source_mapping_lacks_is_an_error_naming_it(project):
    path = project.root / EVENT_SOURCES_TEMPLATE
    document = json.loads(path.read_text())
    document["Resources"]["ProcessWork"]["Properties"]["Events"]["ProcessWorkSqsEventSource"]["Properties"]["Tumbling"] = 5
    path.write_text(json.dumps(document))
    with pytest.raises(DeployError, match=r"process_work \(sqs\): UpdateEventSourceMapping has no Tumbling"):
        plan_updates(DEPLOYED, path, project.resources_template(), {})


def test_a_deploy_or_package_refuses_a_policy_file_the_definitions_have_outgrown(project, tmp_path):
    """A definition naming a new bucket, without `make policy`: stopped before anything is created."""
    definitions = project.root / "chalicelib" / "batches.json"
    document = json.loads(definitions.read_text())
    document["definitions"][0]["source"] = {"type": "s3-jsonl", "uri": "s3://exports-bucket/{date}/items.jsonl"}
    definitions.write_text(json.dumps(document))
    before = project.config_path.read_bytes()
    with mock_aws():
        with pytest.raises(DeployError, match=r"policy-dev.json is not the policy .* run `make policy STAGE=dev`"):
            route_a.deploy(project, "dev", clients, chalice=never_run_chalice, log=lambda line: None)
        assert clients("cloudformation").describe_stacks()["Stacks"] == []
    assert project.config_path.read_bytes() == before
    with pytest.raises(DeployError, match=r"run `make policy STAGE=dev`"):
        package(project, "dev", tmp_path / "out", tmp_path / "no-chalice")
    assert not (tmp_path / "out").exists()

    # The generated policy reads that object pattern; with it the check passes.
    policy = build_policy(project, "dev")
    assert {"Sid": "SourceObjects", "Effect": "Allow", "Action": ["s3:GetObject", "s3:GetObjectVersion"],
            "Resource": "arn:aws:s3:::exports-bucket/*/items.jsonl"} in policy["Statement"]
    policy_path(project, "dev").write_text(json.dumps(policy))
    check_policy(project, "dev")
