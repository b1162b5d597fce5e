"""Least privilege: the stage policy grants what the code calls and Lambda needs, and nothing else."""

from __future__ import annotations

import json
import re

import botocore.session
import pytest
from botocore import xform_name

from batchdrain_deploy.policy import (
    CODE_GRANTS,
    SERVICE_GRANTS,
    UNRESOLVED,
    actions_for,
    build_policy,
    code_operations,
    policy_path,
)
from batchdrain_deploy.project import PROJECT_DIR, Project, resource_names

PROJECT = Project()
# IAM prefix -> the botocore services whose operations it authorizes.
IAM_SERVICES = {"dynamodb": ("dynamodb", "dynamodbstreams"), "sqs": ("sqs",), "sns": ("sns",), "logs": ("logs",)}


def statements(policy: dict) -> list[tuple[list[str], list[str]]]:
    """(actions, resources) of each statement, both as lists."""
    listed = lambda value: value if isinstance(value, list) else [value]  # noqa: E731
    return [(listed(statement["Action"]), listed(statement["Resource"])) for statement in policy["Statement"]]


def test_policy_grants_nothing_the_code_does_not_call():
    called = code_operations(PROJECT_DIR / "chalicelib")
    assert set(called) == set(CODE_GRANTS), "document every AWS call in policy.CODE_GRANTS, and only those"
    for operation, item_kinds in called.items():
        assert set(CODE_GRANTS[operation].actions) == actions_for(operation, item_kinds), operation


def test_transactions_are_granted_through_their_item_actions():
    called = code_operations(PROJECT_DIR / "chalicelib")
    # IAM has no TransactWriteItems action: it checks PutItem/UpdateItem/DeleteItem/... per item.
    # record: the chunk row's Update or Delete, the F row's and the header's Update;
    # restore_failed: the header's Update, a chunk row's Put, an F row's Delete.
    assert called[("dynamodb", "TransactWriteItems")] == {"Put", "Update", "Delete"}
    granted = {action for actions, _ in statements(build_policy(PROJECT, "dev")) for action in actions}
    assert {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"} <= granted
    assert "dynamodb:ConditionCheckItem" not in granted


def test_the_scan_follows_transaction_items_built_before_the_call(tmp_path):
    """Items kept in names, appended, or chosen between two dicts all count; nothing is hidden by style."""
    (tmp_path / "store.py").write_text(
        """
def record(client, done):
    if done:
        row_write = {"Delete": {"Key": 1}}
    else:
        row_write = {"Update": {"Key": 1}}
    transaction = [row_write, {"Update": {"Key": 2}}]
    client.transact_write_items(TransactItems=transaction)


def restore(client, rows):
    transaction: list = [{"ConditionCheck": {"Key": 0}}]
    for row in rows:
        transaction.append({"Put": {"Item": row}})
    client.transact_write_items(TransactItems=transaction)
"""
    )

    called = code_operations(tmp_path)

    assert called == {("dynamodb", "TransactWriteItems"): {"Delete", "Update", "ConditionCheck", "Put"}}
    assert actions_for(("dynamodb", "TransactWriteItems"), called[("dynamodb", "TransactWriteItems")]) == {
        "dynamodb:DeleteItem",
        "dynamodb:UpdateItem",
        "dynamodb:ConditionCheckItem",
        "dynamodb:PutItem",
    }


@pytest.mark.parametrize(
    "items",
    ["make_items()", "[make_item()]", "[{**base}]", "items", "[item for item in rows]"],
)
def test_a_transaction_item_the_scan_cannot_read_matches_no_grant(tmp_path, items):
    """Rather than pass with a grant too small, the comparison with CODE_GRANTS fails until the code is plain."""
    source = f"def write(client, rows, base):\n    client.transact_write_items(TransactItems={items})\n"
    (tmp_path / "store.py").write_text(source)

    (kinds,) = code_operations(tmp_path).values()

    assert UNRESOLVED in kinds
    needed = actions_for(("dynamodb", "TransactWriteItems"), kinds)
    assert not needed <= set(CODE_GRANTS[("dynamodb", "TransactWriteItems")].actions)


def test_the_committed_policy_is_the_generated_one():
    committed = json.loads(policy_path(PROJECT, "dev").read_text())
    assert committed == build_policy(PROJECT, "dev"), "run `make policy STAGE=dev` and commit the result"


def test_no_statement_grants_a_wildcard_action_or_resource():
    for actions, resources in statements(build_policy(PROJECT, "dev")):
        assert not [action for action in actions if "*" in action]
        assert "*" not in resources
        # Only region and account (and, for streams and log streams, the id) may be wildcards.
        assert all(re.fullmatch(r"arn:aws:[a-z]+:\*:\*:[^*]+(-\*)?(/stream/\*|:\*)?", resource) for resource in resources), resources


def test_every_granted_action_is_a_real_aws_operation():
    session = botocore.session.get_session()
    for actions, _ in statements(build_policy(PROJECT, "dev")):
        for action in actions:
            prefix, name = action.split(":")
            operations = {
                operation
                for service in IAM_SERVICES[prefix]
                for operation in session.get_service_model(service).operation_names
            }
            assert name in operations, action


def test_the_policy_reaches_only_this_stages_resources():
    names = resource_names(PROJECT.resources_template(), "dev")
    for _, resources in statements(build_policy(PROJECT, "dev")):
        for resource in resources:
            assert "batchdrain-dev" in resource
            if ":logs:" not in resource:
                assert any(re.search(rf"[:/]{re.escape(name)}(/|$)", resource) for name in names.values()), resource


def test_every_grant_says_why():
    assert all(len(grant.why) > 10 for grant in [*CODE_GRANTS.values(), *SERVICE_GRANTS])


@pytest.mark.parametrize("variable", ["TABLE_NAME", "WORK_QUEUE_NAME", "DEAD_LETTER_QUEUE_NAME"])
def test_the_stage_config_names_the_templates_resources(variable):
    names = set(resource_names(PROJECT.resources_template(), "dev").values())
    assert PROJECT.stage_environment("dev")[variable] in names


def test_the_committed_config_holds_no_real_account_id():
    """Route A records real ARNs into .chalice/config.json; they must never be committed."""
    text = (PROJECT_DIR / ".chalice" / "config.json").read_text()
    accounts = set(re.findall(r"arn:aws:[a-z0-9-]+:[a-z0-9-]*:(\d{12}):", text))
    assert accounts <= {"000000000000"}, "restore the placeholders: git checkout .chalice/config.json"
    assert xform_name("TransactWriteItems") == "transact_write_items"  # the scan relies on botocore's naming


# -- the planning queue ------------------------------------------------------------------


def granted(policy: dict, action: str) -> set[str]:
    """Every resource `action` is allowed on."""
    return {resource for actions, resources in statements(policy) if action in actions for resource in resources}


def test_the_planning_queue_is_sent_to_looked_up_and_polled_by_its_mapping():
    policy = build_policy(PROJECT, "dev")
    planning = "arn:aws:sqs:*:*:batchdrain-dev-planning"
    work = "arn:aws:sqs:*:*:batchdrain-dev-work"
    # Segments are sent by the batcher, the sweeper and the planner; chunks by the planner too.
    assert {planning, work} <= granted(policy, "sqs:SendMessage")
    assert granted(policy, "sqs:GetQueueUrl") == {planning, work}
    # plan_segments' event source mapping polls with the role.
    for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"):
        assert granted(policy, action) == {planning, work, "arn:aws:sqs:*:*:batchdrain-dev-dead-letters"}, action

