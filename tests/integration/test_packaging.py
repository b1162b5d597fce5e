"""Route B: `make check-templates` packages one template (app + resources) and it passes cfn-lint and checkov.

The test runs the Makefile target CI relies on, so `make test` covers `make package`,
cfn-lint and checkov (the first run installs checkov into .venv/checkov). The
assertions then read the packaged template: nothing may point at a placeholder, every
mapping setting Chalice cannot express must be there, and every suppression must carry
its reason.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from batchdrain_deploy.project import OUTPUT_ENVIRONMENT, PROJECT_DIR


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("package") / "dev"
    result = subprocess.run(
        ["make", "--no-print-directory", "check-templates", "STAGE=dev", f"PACKAGE_DIR={out}"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return json.loads((out / "sam.json").read_text()), result.stdout


def resources_of(template: dict[str, Any], resource_type: str) -> dict[str, Any]:
    return {name: resource for name, resource in template["Resources"].items() if resource["Type"] == resource_type}


def event(template: dict[str, Any], function: str, name: str) -> dict[str, Any]:
    return template["Resources"][function]["Properties"]["Events"][name]["Properties"]


def test_both_templates_pass_cfn_lint_and_checkov(packaged):
    _, output = packaged
    lines = [line for line in output.splitlines() if "cfn-lint clean; checkov" in line]
    assert [line.split(":", 1)[0].endswith(("infra/resources.yaml", "sam.json")) for line in lines] == [True, True]
    assert all(", 0 failed," in line for line in lines)


def test_one_template_holds_the_resources_and_the_app(packaged):
    template, _ = packaged
    assert {
        "BatchTable",
        "WorkQueue",
        "PlanningQueue",
        "DeadLetterQueue",
        "StreamFailuresQueue",
        "AlertTopic",
        "ResultsBucket",
    } <= set(template["Resources"])
    assert set(resources_of(template, "AWS::Serverless::Function")) == {
        "BatchNightly",
        "ProcessWork",
        "PlanSegments",
        "DrainDeadLetters",
        "Finalize",
        "Sweep",
        "APIHandler",
    }
    assert set(OUTPUT_ENVIRONMENT) <= set(template["Outputs"])


def test_every_function_reads_the_templates_resources_not_placeholders(packaged):
    template, _ = packaged
    outputs = template["Outputs"]
    for name, function in resources_of(template, "AWS::Serverless::Function").items():
        variables = function["Properties"]["Environment"]["Variables"]
        for key, variable in OUTPUT_ENVIRONMENT.items():
            assert variables[variable] == outputs[key]["Value"], (name, variable)
    assert "000000000000" not in json.dumps(template)


def test_mappings_refer_to_the_templates_queues_and_stream(packaged):
    template, _ = packaged
    # Fn::Sub on ${Resource.Attribute}: CloudFormation creates the queue before its mapping.
    assert event(template, "ProcessWork", "ProcessWorkSqsEventSource")["Queue"] == {"Fn::Sub": "${WorkQueue.Arn}"}
    assert event(template, "PlanSegments", "PlanSegmentsSqsEventSource")["Queue"] == {"Fn::Sub": "${PlanningQueue.Arn}"}
    assert event(template, "DrainDeadLetters", "DrainDeadLettersSqsEventSource")["Queue"] == {
        "Fn::Sub": "${DeadLetterQueue.Arn}"
    }
    assert event(template, "Finalize", "FinalizeDynamodbEventSource")["Stream"] == {"Fn::Sub": "${BatchTable.StreamArn}"}


def test_the_mapping_settings_chalice_cannot_express_are_merged(packaged):
    template, _ = packaged
    work = event(template, "ProcessWork", "ProcessWorkSqsEventSource")
    assert work["BatchSize"] == 2 and work["ScalingConfig"] == {"MaximumConcurrency": 50}
    # Without it AWS ignores batchItemFailures and deletes messages whose items failed.
    assert work["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert event(template, "DrainDeadLetters", "DrainDeadLettersSqsEventSource")["FunctionResponseTypes"] == [
        "ReportBatchItemFailures"
    ]
    planning = event(template, "PlanSegments", "PlanSegmentsSqsEventSource")
    assert planning["BatchSize"] == 1 and planning["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    stream = event(template, "Finalize", "FinalizeDynamodbEventSource")
    assert stream["StartingPosition"] == "TRIM_HORIZON" and stream["BatchSize"] == 100
    assert stream["BisectBatchOnFunctionError"] is True and 0 < stream["MaximumRetryAttempts"] <= 10
    assert len(stream["FilterCriteria"]["Filters"]) == 3  # chunk REMOVEs, segment REMOVEs, the seal
    assert stream["DestinationConfig"] == {"OnFailure": {"Destination": {"Fn::GetAtt": ["StreamFailuresQueue", "Arn"]}}}


def test_the_stage_and_the_visibility_timeout_cannot_be_deployed_wrong(packaged):
    template, _ = packaged
    parameters = template["Parameters"]
    # The policy file names batchdrain-dev-* resources: another Stage value would break it.
    assert parameters["Stage"]["AllowedValues"] == ["dev"]
    # 6x the dev stage's 120 s timeout, enforced by CloudFormation itself.
    assert parameters["WorkQueueVisibilityTimeout"]["MinValue"] == parameters["WorkQueueVisibilityTimeout"]["Default"] == 720
    # 6x the planner's own 900 s (its lambda_functions entry), likewise.
    planning = parameters["PlanningQueueVisibilityTimeout"]
    assert planning["MinValue"] == planning["Default"] == 5400
    timeouts = {name: function["Properties"]["Timeout"] for name, function in resources_of(template, "AWS::Serverless::Function").items()}
    assert timeouts.pop("PlanSegments") == 900 and set(timeouts.values()) == {120}


def test_every_role_carries_the_stage_policy_file(packaged):
    template, _ = packaged
    policy = json.loads((PROJECT_DIR / ".chalice" / "policy-dev.json").read_text())
    roles = resources_of(template, "AWS::IAM::Role")
    assert roles and all(role["Properties"]["Policies"][0]["PolicyDocument"] == policy for role in roles.values())


def test_every_suppression_says_why(packaged):
    template, _ = packaged
    skips = [
        skip
        for resource in template["Resources"].values()
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
    ]
    assert skips
    assert all(skip["id"].startswith("CKV_") and len(skip.get("comment", "")) > 30 for skip in skips)
    assert "cfn-lint" not in json.dumps(template)  # no cfn-lint rule is suppressed at all


def test_every_api_method_requires_iam_sigv4_on_a_deployed_stage(packaged):
    """The dev stage serves the API with AWS_IAM: API Gateway refuses unsigned or wrongly signed calls (403)
    before the app runs. The app's own routes and the template's methods are the same set."""
    template, _ = packaged
    (api,) = resources_of(template, "AWS::Serverless::Api").values()
    swagger = api["Properties"]["DefinitionBody"]
    methods = {(path, method) for path, operations in swagger["paths"].items() for method in operations if method != "options"}

    assert swagger["securityDefinitions"]["sigv4"]["x-amazon-apigateway-authtype"] == "awsSigv4"
    assert {(path, method) for path, method in methods if swagger["paths"][path][method].get("security") != [{"sigv4": []}]} == set()
    assert methods == {
        ("/batches", "get"),
        ("/batches", "post"),
        ("/batches/{batch_id}", "get"),
        ("/batches/{batch_id}/wait", "get"),
        ("/batches/{batch_id}/failures", "get"),
        ("/batches/{batch_id}/redrive", "post"),
        ("/batches/{batch_id}/cancel", "post"),
        ("/batches/{batch_id}/items", "post"),
        ("/batches/{batch_id}/seal", "post"),
    }
