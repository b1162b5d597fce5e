"""Least privilege: the stage policy grants what the code calls and Lambda needs, and nothing else."""

from __future__ import annotations

import json
import re

import botocore.session
import pytest
from botocore import xform_name

from batchdrain_deploy import DeployError
from batchdrain_deploy.policy import (
    CODE_GRANTS,
    S3_CALLS,
    SERVICE_GRANTS,
    UNRESOLVED,
    actions_for,
    build_policy,
    code_operations,
    key_pattern,
    policy_path,
)
from batchdrain_deploy.project import PROJECT_DIR, Project, resource_names

PROJECT = Project()
# IAM prefix -> the botocore services whose operations it authorizes.
IAM_SERVICES = {"dynamodb": ("dynamodb", "dynamodbstreams"), "sqs": ("sqs",), "sns": ("sns",), "logs": ("logs",)}


# The inbox (INBOX_URI: the stage's results bucket, whose name CloudFormation generates) is the
# one statement from the stage, not the template's names nor the definitions; checked on its own.
INBOX_SID = "InboxObjects"


def statements(policy: dict, inbox: bool = False) -> list[tuple[list[str], list[str]]]:
    """(actions, resources) of each statement, both as lists (the inbox's only if asked for)."""
    listed = lambda value: value if isinstance(value, list) else [value]  # noqa: E731
    return [
        (listed(statement["Action"]), listed(statement["Resource"]))
        for statement in policy["Statement"]
        if inbox or statement.get("Sid") != INBOX_SID
    ]


def test_the_inbox_is_written_and_read_under_inbox_of_this_stages_results_bucket_only():
    """The API writes inline items there (PutObject, If-None-Match), planners and rebuilds read them.

    The bucket's name is generated (`<stack>-resultsbucket-<suffix>`, the stack `batchdrain-dev-resources`
    by route A or `batchdrain-dev` by route B), so this is the one bucket named by a pattern."""
    (inbox,) = [statement for statement in build_policy(PROJECT, "dev")["Statement"] if statement.get("Sid") == INBOX_SID]
    assert inbox == {
        "Sid": INBOX_SID,
        "Effect": "Allow",
        "Action": ["s3:GetObject", "s3:GetObjectVersion", "s3:PutObject"],
        "Resource": "arn:aws:s3:::batchdrain-dev-*resultsbucket-*/inbox/*",
    }
    pattern = re.compile(re.escape(inbox["Resource"]).replace(r"\*", ".*"))
    for route_a in ("batchdrain-dev-resources-resultsbucket-1a2b3c4d5e6f/inbox/x.jsonl", "batchdrain-dev-resultsbucket-0f9e8d/inbox/x.jsonl"):
        assert pattern.fullmatch("arn:aws:s3:::" + route_a)
    for other in ("batchdrain-prod-resultsbucket-1/inbox/x", "batchdrain-dev-resultsbucket-1/out/x", "someone-resultsbucket-1/inbox/x"):
        assert not pattern.fullmatch("arn:aws:s3:::" + other)


def test_policy_grants_nothing_the_code_does_not_call():
    # S3 is granted from the definitions, not per call (test_every_s3_call_is_documented_and_granted).
    called = {operation: kinds for operation, kinds in code_operations(PROJECT_DIR / "chalicelib").items() if operation[0] != "s3"}
    assert set(called) == set(CODE_GRANTS), "document every AWS call in policy.CODE_GRANTS, and only those"
    for operation, item_kinds in called.items():
        assert set(CODE_GRANTS[operation].actions) == actions_for(operation, item_kinds), operation


def test_transactions_are_granted_through_their_item_actions():
    called = code_operations(PROJECT_DIR / "chalicelib")
    # IAM has no TransactWriteItems action: it checks PutItem/UpdateItem/DeleteItem/... per item.
    # record: the chunk row's Update or Delete, the F row's and the header's Update;
    # restore_failed: the header's Update, a chunk row's Put, an F row's Delete;
    # put_segments: a ConditionCheck on the header, segment rows' Puts.
    assert called[("dynamodb", "TransactWriteItems")] == {"Put", "Update", "Delete", "ConditionCheck"}
    granted = {action for actions, _ in statements(build_policy(PROJECT, "dev")) for action in actions}
    assert {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:ConditionCheckItem"} <= granted


def test_the_scan_reads_the_items_each_caller_hands_the_stores_transaction_helper(tmp_path):
    """Every transaction goes through `Table._transact(items)`: the scan reads each caller's items,
    and the helper's own call (whose items are a parameter it cannot read) is not counted."""
    (tmp_path / "store.py").write_text(
        """
class Table:
    def _transact(self, items, *, retry_conflicts=False):
        self.client.transact_write_items(TransactItems=items)


class Segments(Table):
    def put(self, rows):
        transaction = [{"ConditionCheck": {"Key": 0}}]
        for row in rows:
            transaction.append({"Put": {"Item": row}})
        return self._transact(transaction, retry_conflicts=True)
"""
    )

    assert code_operations(tmp_path) == {("dynamodb", "TransactWriteItems"): {"ConditionCheck", "Put"}}


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


# IAM actions with no API operation of their own: a transaction's ConditionCheck is authorized
# as dynamodb:ConditionCheckItem (DynamoDB developer guide, "Using IAM with DynamoDB transactions").
IAM_ONLY_ACTIONS = {"dynamodb:ConditionCheckItem"}


def test_every_granted_action_is_a_real_aws_operation():
    session = botocore.session.get_session()
    for actions, _ in statements(build_policy(PROJECT, "dev")):
        for action in set(actions) - IAM_ONLY_ACTIONS:
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


# -- S3: only what the definitions name --------------------------------------------------


def write_definitions(tmp_path, *entries: dict) -> str:
    """A definitions file of `entries` (source and optional results each), every other field valid."""
    definitions = [
        {
            "name": f"def-{number}",
            "schedule": "cron(0 6 * * ? *)",
            "task": "noop",
            "items_per_message": 10,
            "item_seconds": 0.1,
            **entry,
        }
        for number, entry in enumerate(entries)
    ]
    path = tmp_path / "batches.json"
    path.write_text(json.dumps({"definitions": definitions}))
    return str(path)


def s3_statements(policy: dict) -> dict[str, dict]:
    """The S3 statements by Sid."""
    return {
        statement["Sid"]: statement
        for statement in policy["Statement"]
        if statement.get("Sid") != INBOX_SID and any(action.startswith("s3:") for action in statements({"Statement": [statement]})[0][0])
    }


RANDOM = {"source": {"type": "random", "count": 100}}


def test_random_sources_only_give_no_s3_statement_at_all(tmp_path):
    policy = build_policy(PROJECT, "dev", write_definitions(tmp_path, RANDOM, RANDOM))
    assert s3_statements(policy) == {}
    assert not [action for actions, _ in statements(policy) for action in actions if action.startswith("s3:")]
    assert policy == build_policy(PROJECT, "dev")  # the shipped definitions are random only


@pytest.mark.parametrize("kind", ["s3-jsonl", "s3-csv"])
def test_a_line_source_reads_exactly_its_key_pattern_any_version(tmp_path, kind):
    source = {"type": kind, "uri": "s3://exports-bucket/daily/{date}/part-{hour}{minute}.gz"}
    policy = build_policy(PROJECT, "dev", write_definitions(tmp_path, RANDOM, {"source": source}))
    assert s3_statements(policy) == {
        "SourceObjects": {
            "Sid": "SourceObjects",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:GetObjectVersion"],
            # Adjacent placeholders are one *; no statement names the bucket itself.
            "Resource": "arn:aws:s3:::exports-bucket/daily/*/part-*.gz",
        }
    }


def test_a_prefix_source_lists_only_under_its_prefix_and_reads_what_it_lists(tmp_path):
    source = {"type": "s3-prefix", "uri": "s3://media-bucket/incoming/{date}/"}
    policy = build_policy(PROJECT, "dev", write_definitions(tmp_path, {"source": source}))
    assert s3_statements(policy) == {
        "SourcePrefixObjects": {
            "Sid": "SourcePrefixObjects",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": "arn:aws:s3:::media-bucket/incoming/*/*",
        },
        "SourcePrefixListing1": {
            "Sid": "SourcePrefixListing1",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": "arn:aws:s3:::media-bucket",
            "Condition": {"StringLike": {"s3:prefix": "incoming/*/*"}},
        },
    }


def test_prefix_listings_are_conditioned_per_bucket_and_a_whole_bucket_has_no_condition(tmp_path):
    sources = [
        {"source": {"type": "s3-prefix", "uri": "s3://media-bucket/a/"}},
        {"source": {"type": "s3-prefix", "uri": "s3://media-bucket/b/"}},
        {"source": {"type": "s3-prefix", "uri": "s3://whole-bucket"}},
    ]
    listings = {
        statement["Resource"]: statement.get("Condition")
        for sid, statement in s3_statements(build_policy(PROJECT, "dev", write_definitions(tmp_path, *sources))).items()
        if sid.startswith("SourcePrefixListing")
    }
    # One statement per bucket: a shared one would let each bucket be listed under the other's prefixes.
    assert listings == {
        "arn:aws:s3:::media-bucket": {"StringLike": {"s3:prefix": ["a/*", "b/*"]}},
        "arn:aws:s3:::whole-bucket": None,  # the definition names the whole bucket
    }


def test_an_inventory_source_reads_its_manifest_and_the_inventory_data_files(tmp_path):
    # S3 Inventory: <prefix>/<source bucket>/<config id>/<date>/manifest.json, data under .../<config id>/data/.
    source = {"type": "s3-inventory", "uri": "s3://inventory-bucket/inv/photos/daily/{date}T01-00Z/manifest.json"}
    policy = build_policy(PROJECT, "dev", write_definitions(tmp_path, {"source": source}))
    assert s3_statements(policy) == {
        "SourceInventoryObjects": {
            "Sid": "SourceInventoryObjects",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": [
                "arn:aws:s3:::inventory-bucket/inv/photos/daily/*",
                "arn:aws:s3:::inventory-bucket/inv/photos/daily/*T01-00Z/manifest.json",
            ],
        }
    }


def test_results_are_written_and_read_back_under_their_prefix_only(tmp_path):
    entries = [
        {**RANDOM, "results": {"bucket": "results-bucket", "prefix": "batchdrain/out/"}},
        {**RANDOM, "results": {"bucket": "other-results"}},
    ]
    policy = build_policy(PROJECT, "dev", write_definitions(tmp_path, *entries))
    assert s3_statements(policy) == {
        "ResultObjects": {
            "Sid": "ResultObjects",
            "Effect": "Allow",
            # Large results are written in parts; a failed upload is aborted, not left to bill.
            "Action": ["s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject"],
            "Resource": ["arn:aws:s3:::other-results/*", "arn:aws:s3:::results-bucket/batchdrain/out/*"],
        }
    }


def test_s3_statements_name_only_the_definitions_buckets(tmp_path):
    entries = [
        {"source": {"type": "s3-jsonl", "uri": "s3://lines-bucket/x.jsonl"}, "results": {"bucket": "results-bucket"}},
        {"source": {"type": "s3-prefix", "uri": "s3://prefix-bucket/p/"}},
        {"source": {"type": "s3-inventory", "uri": "s3://inventory-bucket/i/s/c/{date}/manifest.json"}},
    ]
    policy = build_policy(PROJECT, "dev", write_definitions(tmp_path, *entries))
    s3 = s3_statements(policy)
    assert set(s3) == {"SourceObjects", "SourcePrefixObjects", "SourcePrefixListing1", "SourceInventoryObjects", "ResultObjects"}
    named = {"lines-bucket", "results-bucket", "prefix-bucket", "inventory-bucket"}
    for actions, resources in statements({"Statement": list(s3.values())}):
        assert not [action for action in actions if "*" in action]
        for resource in resources:
            bucket = resource.removeprefix("arn:aws:s3:::").split("/")[0]
            assert resource.startswith("arn:aws:s3:::") and bucket in named, resource
    # Only ListBucket is on a bucket; every object action is under a key or prefix of it.
    assert {resource for actions, resources in statements({"Statement": list(s3.values())}) for resource in resources if "/" not in resource} == {
        "arn:aws:s3:::prefix-bucket"
    }
    # The rest of the policy is the same with or without S3.
    assert [statement for statement in policy["Statement"] if statement["Sid"] not in s3] == build_policy(PROJECT, "dev")["Statement"]


def test_the_definitions_file_can_come_from_the_environment(tmp_path, monkeypatch):
    path = write_definitions(tmp_path, {"source": {"type": "s3-csv", "uri": "s3://csv-bucket/rows.csv"}})
    monkeypatch.setenv("BATCHDRAIN_DEFINITIONS", path)
    assert s3_statements(build_policy(PROJECT, "dev"))["SourceObjects"]["Resource"] == "arn:aws:s3:::csv-bucket/rows.csv"


@pytest.mark.parametrize(
    "template, pattern",
    [
        ("exports/{date}/items.jsonl", "exports/*/items.jsonl"),
        ("{year}{month}{day}.csv", "*.csv"),
        ("odd*name?$.csv", "odd${*}name${?}${$}.csv"),  # literal, not wildcards or variables, to IAM
        ("braces/{{literal}}/{date}", "braces/{literal}/*"),
    ],
)
def test_key_templates_become_iam_patterns(template, pattern):
    assert key_pattern(template) == pattern


def test_every_s3_call_is_documented_and_granted(tmp_path):
    called = {name for service, name in code_operations(PROJECT_DIR / "chalicelib") if service == "s3"}
    assert called <= set(S3_CALLS), "document every S3 call in policy.S3_CALLS"
    entries = [
        {"source": {"type": "s3-jsonl", "uri": "s3://a-bucket/x"}, "results": {"bucket": "b-bucket"}},
        {"source": {"type": "s3-prefix", "uri": "s3://c-bucket/p/"}},
        {"source": {"type": "s3-inventory", "uri": "s3://d-bucket/i/s/c/{date}/manifest.json"}},
    ]
    policy = build_policy(PROJECT, "dev", write_definitions(tmp_path, *entries))
    grantable = {action for actions, _ in statements(policy) for action in actions if action.startswith("s3:")}
    # Whatever a definition can be granted, some documented call needs, and the reverse.
    assert grantable == {action for actions in S3_CALLS.values() for action in actions}


def test_the_scan_counts_a_paginator_as_its_operation(tmp_path):
    (tmp_path / "sources.py").write_text(
        "def listing(s3):\n    return s3.get_paginator('list_objects_v2').paginate(Bucket='b')\n"
    )
    assert set(code_operations(tmp_path)) == {("s3", "ListObjectsV2")}


def test_a_policy_iam_would_refuse_as_too_large_is_an_error(tmp_path):
    many = [{"source": {"type": "s3-jsonl", "uri": f"s3://bucket-number-{n:04d}/exports/{{date}}/items.jsonl"}} for n in range(300)]
    with pytest.raises(DeployError, match=r"the policy would be [\d,]+ characters, IAM allows 10,240 per role"):
        build_policy(PROJECT, "dev", write_definitions(tmp_path, *many))
