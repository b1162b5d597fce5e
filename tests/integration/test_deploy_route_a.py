"""Route A (`make deploy` / `make destroy`) against a moto server: every step, offline.

One deployment per module: `python -m batchdrain_deploy deploy` (what `make deploy` runs)
deploys infra/resources.yaml with CloudFormation, records the outputs into a copy of the
project's .chalice/config.json, runs the real `chalice deploy --stage dev` and applies the
event-source settings. The tests then read back, through the AWS APIs, what a real
account would hold. The one moto gap on the way (API Gateway import of Chalice's Swagger
2.0 document) is bridged by tests.deploy_support.moto_accepts_swagger_2; the others
(CloudFormation properties moto ignores) are listed in the README and checked statically
in tests/unit/test_resources_template.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest

from batchdrain_deploy.project import PROJECT_DIR
from batchdrain_local.server import ACCOUNT_ID, CLIENT_ENVIRONMENT, MotoServer
from tests.deploy_support import copy_project, moto_accepts_swagger_2

STAGE = "dev"
# A moto gap listed in the README ("Deploy", moto): its CloudFormation skips the bucket policy.
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse AWS..S3..BucketPolicy:UserWarning")
FUNCTIONS = {
    "batch_nightly": "batchdrain-dev-batch_nightly",
    "process_work": "batchdrain-dev-process_work",
    "plan_segments": "batchdrain-dev-plan_segments",
    "drain_dead_letters": "batchdrain-dev-drain_dead_letters",
    "finalize": "batchdrain-dev-finalize",
    "sweep": "batchdrain-dev-sweep",
    "api_handler": "batchdrain-dev",  # Chalice names the API's function after the app and stage only
}


@dataclass
class Deployment:
    endpoint_url: str
    project: Path
    environment: dict[str, str]
    output: str

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=CLIENT_ENVIRONMENT["AWS_DEFAULT_REGION"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def run(self, *arguments: str) -> subprocess.CompletedProcess:
        """`python -m batchdrain_deploy <arguments>` on the project copy, talking to the moto server."""
        return subprocess.run(
            [sys.executable, "-m", "batchdrain_deploy", "--project-dir", str(self.project), *arguments],
            env=self.environment,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def stage_environment(self) -> dict[str, str]:
        return json.loads((self.project / ".chalice" / "config.json").read_text())["stages"][STAGE]["environment_variables"]

    def mapping(self, function: str) -> dict[str, Any]:
        # Filtered here: moto matches ListEventSourceMappings' FunctionName only against the
        # ARN the mapping was created with (Chalice passes the ARN), AWS also by name.
        mappings = self.client("lambda").list_event_source_mappings()["EventSourceMappings"]
        (mapping,) = [entry for entry in mappings if entry["FunctionArn"].endswith(f":function:{FUNCTIONS[function]}")]
        return mapping

    def outputs(self) -> dict[str, str]:
        stack = self.client("cloudformation").describe_stacks(StackName="batchdrain-dev-resources")["Stacks"][0]
        return {output["OutputKey"]: output["OutputValue"] for output in stack["Outputs"]}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    server = MotoServer()
    with moto_accepts_swagger_2():
        endpoint_url = server.start()
        try:
            environment = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
            environment.update(CLIENT_ENVIRONMENT, AWS_ENDPOINT_URL=endpoint_url, PYTHONPATH=str(PROJECT_DIR))
            deployment = Deployment(endpoint_url, copy_project(tmp_path_factory.mktemp("project")), environment, "")
            result = deployment.run("deploy", "--stage", STAGE, "--table-deletion-protection", "false")
            assert result.returncode == 0, result.stdout + result.stderr
            deployment.output = result.stdout
            yield deployment
        finally:
            server.stop()


def test_deploy_runs_every_step_in_order(deployment):
    steps = [line.split(" ", 1)[0] for line in deployment.output.splitlines() if line[:2] in ("1/", "2/", "3/", "4/")]
    assert steps == ["1/4", "2/4", "3/4", "4/4"]
    assert "Creating Rest API" in deployment.output  # chalice deploy's plan ran to its end


def test_the_stack_outputs_are_recorded_into_the_stage_environment(deployment):
    outputs, recorded = deployment.outputs(), deployment.stage_environment()
    assert recorded["TABLE_STREAM_ARN"] == outputs["TableStreamArn"]
    assert recorded["TABLE_STREAM_ARN"] == deployment.client("dynamodb").describe_table(TableName="batchdrain-dev")[
        "Table"
    ]["LatestStreamArn"]
    assert recorded["ALERT_TOPIC_ARN"] == f"arn:aws:sns:us-east-1:{ACCOUNT_ID}:batchdrain-dev-alerts"
    assert (
        recorded["TABLE_NAME"],
        recorded["WORK_QUEUE_NAME"],
        recorded["DEAD_LETTER_QUEUE_NAME"],
        recorded["PLANNING_QUEUE_NAME"],
    ) == ("batchdrain-dev", "batchdrain-dev-work", "batchdrain-dev-dead-letters", "batchdrain-dev-planning")
    # The checkout's own config keeps its placeholders: the deploy wrote into the copy.
    assert "000000000000" in (PROJECT_DIR / ".chalice" / "config.json").read_text()


def test_every_function_runs_with_the_recorded_environment_and_the_stage_policy(deployment):
    lambda_client, iam = deployment.client("lambda"), deployment.client("iam")
    deployed = {function["FunctionName"]: function for function in lambda_client.list_functions()["Functions"]}
    assert set(FUNCTIONS.values()) <= set(deployed)
    recorded = deployment.stage_environment()
    policy = json.loads((deployment.project / ".chalice" / "policy-dev.json").read_text())
    for name in FUNCTIONS.values():
        function = deployed[name]
        assert {key: function["Environment"]["Variables"][key] for key in recorded} == recorded, name
        # The planner has a whole Lambda lifetime per segment (its lambda_functions entry).
        timeout = 900 if name == FUNCTIONS["plan_segments"] else 120
        assert (function["Timeout"], function["MemorySize"], function["Runtime"]) == (timeout, 256, "python3.11"), name
        role = function["Role"].rsplit("/", 1)[1]
        (policy_name,) = iam.list_role_policies(RoleName=role)["PolicyNames"]
        assert iam.get_role_policy(RoleName=role, PolicyName=policy_name)["PolicyDocument"] == policy


def test_schedules_fire_the_batcher_and_the_sweeper(deployment):
    events = deployment.client("events")
    rules = {rule["Name"]: rule for rule in events.list_rules()["Rules"]}
    expected = {"batch_nightly": "cron(0 0/6 * * ? *)", "sweep": "rate(5 minutes)"}
    for function, schedule in expected.items():
        (rule,) = [rule for name, rule in rules.items() if name.startswith(f"batchdrain-dev-{function}")]
        assert rule["ScheduleExpression"] == schedule and rule["State"] == "ENABLED"
        (target,) = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
        assert target["Arn"].endswith(f":function:{FUNCTIONS[function]}")


def test_the_sqs_mappings_report_partial_batch_failures(deployment):
    outputs = deployment.outputs()
    work = deployment.mapping("process_work")
    assert work["EventSourceArn"] == outputs["WorkQueueArn"]
    assert (work["BatchSize"], work["MaximumBatchingWindowInSeconds"], work["ScalingConfig"]) == (
        2,
        0,
        {"MaximumConcurrency": 50},
    )
    # Without it Lambda ignores batchItemFailures and deletes messages whose items failed.
    assert work["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    planning = deployment.mapping("plan_segments")
    assert planning["EventSourceArn"] == outputs["PlanningQueueArn"]
    assert planning["BatchSize"] == 1 and planning["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    dead_letters = deployment.mapping("drain_dead_letters")
    assert dead_letters["EventSourceArn"] == outputs["DeadLetterQueueArn"]
    assert dead_letters["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_the_stream_mapping_filters_bisects_gives_up_and_keeps_what_it_gave_up_on(deployment):
    outputs = deployment.outputs()
    settings = json.loads((PROJECT_DIR / "infra" / "event-sources.json").read_text())["Resources"]["Finalize"][
        "Properties"
    ]["Events"]["FinalizeDynamodbEventSource"]["Properties"]
    stream = deployment.mapping("finalize")
    assert stream["EventSourceArn"] == outputs["TableStreamArn"]
    assert (stream["StartingPosition"], stream["BatchSize"], stream["MaximumBatchingWindowInSeconds"]) == (
        "TRIM_HORIZON",
        100,
        1,
    )
    assert stream["BisectBatchOnFunctionError"] is True
    assert stream["MaximumRetryAttempts"] == settings["MaximumRetryAttempts"] == 8
    assert stream["MaximumRecordAgeInSeconds"] == 86400
    assert stream["FilterCriteria"] == settings["FilterCriteria"]
    assert stream["DestinationConfig"] == {"OnFailure": {"Destination": outputs["StreamFailuresQueueArn"]}}


def test_the_api_routes_get_batches_to_the_api_handler(deployment):
    apigateway = deployment.client("apigateway")
    (api,) = apigateway.get_rest_apis()["items"]
    assert api["name"] == "batchdrain"
    resources = {resource["path"]: resource for resource in apigateway.get_resources(restApiId=api["id"])["items"]}
    route = resources["/batches/{batch_id}"]
    integration = apigateway.get_integration(restApiId=api["id"], resourceId=route["id"], httpMethod="GET")
    assert integration["type"].upper() == "AWS_PROXY"  # moto keeps the document's spelling, aws_proxy
    assert f":function:{FUNCTIONS['api_handler']}/invocations" in integration["uri"]
    assert "api" in {stage["stageName"] for stage in apigateway.get_stages(restApiId=api["id"])["item"]}


def test_the_queues_have_the_template_settings(deployment):
    sqs, outputs = deployment.client("sqs"), deployment.outputs()
    work = sqs.get_queue_attributes(QueueUrl=outputs["WorkQueueUrl"], AttributeNames=["All"])["Attributes"]
    # 6x the dev stage's 120 s Lambda timeout.
    assert int(work["VisibilityTimeout"]) == 720
    assert json.loads(work["RedrivePolicy"]) == {"deadLetterTargetArn": outputs["DeadLetterQueueArn"], "maxReceiveCount": 5}
    planning = sqs.get_queue_attributes(QueueUrl=outputs["PlanningQueueUrl"], AttributeNames=["All"])["Attributes"]
    # 6x the planner's 900 s Lambda timeout; the same dead-letter queue and receive count as work.
    assert int(planning["VisibilityTimeout"]) == 5400
    assert json.loads(planning["RedrivePolicy"]) == json.loads(work["RedrivePolicy"])
    urls = ("WorkQueueUrl", "PlanningQueueUrl", "DeadLetterQueueUrl", "StreamFailuresQueueUrl")
    for url in (outputs[key] for key in urls):
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert attributes["SqsManagedSseEnabled"] == "true" and attributes["MessageRetentionPeriod"] == "1209600"


def test_deploying_again_changes_nothing_and_keeps_the_settings(deployment):
    functions = ("process_work", "plan_segments", "drain_dead_letters", "finalize")
    before = {function: deployment.mapping(function)["UUID"] for function in functions}
    result = deployment.run("deploy", "--stage", STAGE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "recorded nothing new" in result.stdout
    after = {function: deployment.mapping(function) for function in before}
    assert {function: mapping["UUID"] for function, mapping in after.items()} == before
    assert after["process_work"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert after["plan_segments"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert after["finalize"]["BisectBatchOnFunctionError"] is True
    # An update keeps a parameter that was not given again (here: deletion protection off).
    table = deployment.client("dynamodb").describe_table(TableName="batchdrain-dev")["Table"]
    assert table["DeletionProtectionEnabled"] is False


def test_destroy_removes_the_app_and_the_stack(deployment):
    """Runs last in this module: it tears the shared deployment down."""
    bucket = deployment.outputs()["ResultsBucketName"]
    deployment.client("s3").put_object(Bucket=bucket, Key="results/one.json", Body=b"{}")
    result = deployment.run("destroy", "--stage", STAGE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not set(FUNCTIONS.values()) & {f["FunctionName"] for f in deployment.client("lambda").list_functions()["Functions"]}
    assert deployment.client("lambda").list_event_source_mappings()["EventSourceMappings"] == []
    assert deployment.client("apigateway").get_rest_apis()["items"] == []
    assert not [rule for rule in deployment.client("events").list_rules()["Rules"] if rule["Name"].startswith("batchdrain-dev")]
    assert "batchdrain-dev" not in deployment.client("dynamodb").list_tables()["TableNames"]
    assert bucket not in {entry["Name"] for entry in deployment.client("s3").list_buckets()["Buckets"]}
    stacks = deployment.client("cloudformation").list_stacks()["StackSummaries"]
    assert {stack["StackStatus"] for stack in stacks if stack["StackName"] == "batchdrain-dev-resources"} == {"DELETE_COMPLETE"}
