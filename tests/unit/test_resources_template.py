"""infra/resources.yaml declares what the app needs, and the local stack builds the same resources.

moto's CloudFormation ignores some properties (README, "Deploy": TTL, point-in-time
recovery, the bucket's public access block, versioning, lifecycle and policy), so those
are checked here on the template itself; everything moto does apply is compared live.
"""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from moto import mock_aws

from batchdrain_deploy.project import Project
from batchdrain_local import StackOptions
from batchdrain_local import resources as local_resources
from tests.unit.conftest import REGION

pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse AWS..S3..BucketPolicy:UserWarning")
TEMPLATE = Project().resources_template()
RESOURCES = TEMPLATE["Resources"]


def properties(logical_id: str) -> dict[str, Any]:
    return RESOURCES[logical_id]["Properties"]


def test_the_table_is_on_demand_with_a_full_image_stream_ttl_and_point_in_time_recovery():
    table = properties("BatchTable")
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["StreamSpecification"] == {"StreamViewType": "NEW_AND_OLD_IMAGES"}
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["DeletionProtectionEnabled"] == {"Fn::If": ["ProtectTable", True, False]}
    assert TEMPLATE["Parameters"]["TableDeletionProtection"]["Default"] == "true"


def test_the_work_queue_outlasts_six_processor_timeouts_and_redrives_to_the_dead_letter_queue():
    work = properties("WorkQueue")
    assert work["VisibilityTimeout"] == {"Ref": "WorkQueueVisibilityTimeout"}
    assert TEMPLATE["Parameters"]["WorkQueueVisibilityTimeout"]["Default"] >= 6 * Project().lambda_timeout("dev", "process_work")
    assert work["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}


def test_the_planning_queue_outlasts_six_planner_lifetimes_and_redrives_like_the_work_queue():
    planning = properties("PlanningQueue")
    assert planning["QueueName"] == {"Fn::Sub": "batchdrain-${Stage}-planning"}
    assert planning["VisibilityTimeout"] == {"Ref": "PlanningQueueVisibilityTimeout"}
    # A planner may use a whole Lambda lifetime (900 s) on one segment.
    assert Project().lambda_timeout("dev", "plan_segments") == 900
    assert TEMPLATE["Parameters"]["PlanningQueueVisibilityTimeout"]["Default"] >= 6 * 900
    assert planning["RedrivePolicy"] == properties("WorkQueue")["RedrivePolicy"]
    assert planning["RedrivePolicy"]["maxReceiveCount"] == {"Ref": "MaxReceiveCount"}
    outputs = TEMPLATE["Outputs"]
    assert outputs["PlanningQueueName"]["Value"] == {"Fn::GetAtt": ["PlanningQueue", "QueueName"]}
    assert outputs["PlanningQueueArn"]["Value"] == {"Fn::GetAtt": ["PlanningQueue", "Arn"]}
    assert outputs["PlanningQueueUrl"]["Value"] == {"Ref": "PlanningQueue"}


def test_everything_that_holds_data_is_encrypted():
    for queue in ("WorkQueue", "PlanningQueue", "DeadLetterQueue", "StreamFailuresQueue"):
        assert properties(queue)["SqsManagedSseEnabled"] is True
    assert properties("AlertTopic")["KmsMasterKeyId"] == "alias/aws/sns"
    (rule,) = properties("ResultsBucket")["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"


def test_the_bucket_is_private_versioned_and_expires_what_it_holds():
    bucket = properties("ResultsBucket")
    assert set(bucket["PublicAccessBlockConfiguration"].values()) == {True} and len(bucket["PublicAccessBlockConfiguration"]) == 4
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    rules = {rule["Id"]: rule for rule in bucket["LifecycleConfiguration"]["Rules"]}
    assert set(rules) == {"expire-results", "expire-inbox"}
    rule = rules["expire-results"]
    assert rule["ExpirationInDays"] == {"Ref": "ResultsRetentionDays"}
    assert rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    # Inline items (INBOX_URI = the InboxUri output) are kept 30 days, whatever the results' retention.
    assert (rules["expire-inbox"]["Prefix"], rules["expire-inbox"]["ExpirationInDays"]) == ("inbox/", 30)
    assert TEMPLATE["Outputs"]["InboxUri"]["Value"] == {"Fn::Sub": "s3://${ResultsBucket}/inbox/"}


def create_both(email: str = "") -> dict[str, Any]:
    """The template's stack (stage `tmpl`) and the local stack's resources, side by side in moto."""
    clients = {service: boto3.client(service, region_name=REGION) for service in ("cloudformation", "dynamodb", "sqs", "sns")}
    clients["cloudformation"].create_stack(
        StackName="batchdrain-tmpl-resources",
        TemplateBody=Project().resources_template_body(),
        Parameters=[{"ParameterKey": "Stage", "ParameterValue": "tmpl"}, {"ParameterKey": "AlertEmail", "ParameterValue": email}],
    )
    options = StackOptions()
    local_resources.create_resources(
        clients.__getitem__,
        "batchdrain-local",
        "batchdrain-local-work",
        dead_letter_queue_name="batchdrain-local-dead-letters",
        planning_queue_name="batchdrain-local-planning",
        visibility_timeout=options.visibility_timeout,
        max_receive_count=options.max_receive_count,
    )
    return clients


def comparable_table(description: dict[str, Any]) -> dict[str, Any]:
    return {
        "KeySchema": description["KeySchema"],
        "AttributeDefinitions": sorted(description["AttributeDefinitions"], key=lambda entry: entry["AttributeName"]),
        "Indexes": [
            (index["IndexName"], index["KeySchema"], index["Projection"]) for index in description["GlobalSecondaryIndexes"]
        ],
        "Stream": description["StreamSpecification"],
        "Billing": description["BillingModeSummary"]["BillingMode"],
    }


def test_the_local_stack_table_matches_the_template():
    with mock_aws():
        dynamodb = create_both()["dynamodb"]
        deployed = dynamodb.describe_table(TableName="batchdrain-tmpl")["Table"]
        local = dynamodb.describe_table(TableName="batchdrain-local")["Table"]
        assert comparable_table(local) == comparable_table(deployed)
        ttl = dynamodb.describe_time_to_live(TableName="batchdrain-local")["TimeToLiveDescription"]
        assert ttl["AttributeName"] == properties("BatchTable")["TimeToLiveSpecification"]["AttributeName"]


def test_the_local_stack_queues_and_topic_follow_the_templates_names_and_redrive():
    with mock_aws():
        sqs = create_both()["sqs"]
        for stage, table in (("tmpl", "batchdrain-tmpl"), ("local", "batchdrain-local")):
            # The local stack sends stream on-failure records to <table>-stream-failures, as deployed.
            sqs.get_queue_url(QueueName=f"{table}-stream-failures")
            for queue in ("work", "planning"):
                url = sqs.get_queue_url(QueueName=f"batchdrain-{stage}-{queue}")["QueueUrl"]
                redrive = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])["Attributes"]["RedrivePolicy"]
                assert f":batchdrain-{stage}-dead-letters" in redrive, queue
                assert '"maxReceiveCount": 5' in redrive.replace("'", '"'), queue
        topics = {topic["TopicArn"].rsplit(":", 1)[1] for topic in boto3.client("sns", region_name=REGION).list_topics()["Topics"]}
        assert {"batchdrain-tmpl-alerts", "batchdrain-local-alerts"} <= topics


def test_an_alert_email_parameter_subscribes_the_address():
    with mock_aws():
        sns = create_both(email="ops@example.com")["sns"]
        subscriptions = sns.list_subscriptions()["Subscriptions"]
        assert [(entry["Protocol"], entry["Endpoint"]) for entry in subscriptions if "batchdrain-tmpl-alerts" in entry["TopicArn"]] == [
            ("email", "ops@example.com")
        ]
