"""`chalice package --stage dev` works offline and its template passes cfn-lint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from batchdrain_local.stack import PROJECT_DIR

BIN = Path(sys.executable).parent


def test_packaged_template_passes_cfn_lint_with_every_role_wired(tmp_path):
    """Chalice cannot express ReportBatchItemFailures, bisect, retries or filters: infra/event-sources.json merges them."""
    out = tmp_path / "package"
    environment = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1"}
    subprocess.run(
        [str(BIN / "chalice"), "package", "--stage", "dev", "--merge-template", "infra/event-sources.json", str(out)],
        cwd=PROJECT_DIR, env=environment, check=True, capture_output=True, timeout=300,
    )
    lint = subprocess.run([str(BIN / "cfn-lint"), str(out / "sam.json")], capture_output=True, text=True, timeout=300)
    assert lint.returncode == 0, lint.stdout + lint.stderr

    resources = json.loads((out / "sam.json").read_text())["Resources"]
    events = {
        name: event
        for resource in resources.values()
        if resource["Type"] == "AWS::Serverless::Function"
        for name, event in resource["Properties"].get("Events", {}).items()
    }
    assert events["BatchNightlyEvent"] == {"Type": "Schedule", "Properties": {"Schedule": "cron(0 0/6 * * ? *)"}}
    sqs = events["ProcessWorkSqsEventSource"]["Properties"]
    assert sqs["Queue"] == {"Fn::Sub": "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:batchdrain-dev-work"}
    assert sqs["BatchSize"] == 10 and sqs["ScalingConfig"] == {"MaximumConcurrency": 50}
    # Without it AWS ignores batchItemFailures and deletes messages whose items failed.
    assert sqs["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    stream = events["FinalizeDynamodbEventSource"]["Properties"]
    assert stream["StartingPosition"] == "TRIM_HORIZON" and stream["BatchSize"] == 100
    assert stream["BisectBatchOnFunctionError"] is True and 0 < stream["MaximumRetryAttempts"] <= 10
    assert len(stream["FilterCriteria"]["Filters"]) == 2
    policies = [
        resource["Properties"]["Policies"][0]["PolicyDocument"]
        for resource in resources.values()
        if resource["Type"] == "AWS::IAM::Role"
    ]
    assert policies and all(policy == policies[0] for policy in policies)
    granted = {action for statement in policies[0]["Statement"] for action in [statement["Action"]] for action in ([action] if isinstance(action, str) else action)}
    assert "*" not in granted and not any(action.endswith(":*") for action in granted)
