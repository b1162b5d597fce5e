"""Least privilege: the functions' IAM policy, generated from what the code calls and what Lambda needs.

`autogen_policy` is off in every stage, so Chalice uses .chalice/policy-<stage>.json as
is. That file is generated here (`make policy STAGE=dev`) from two documented lists:

- CODE_GRANTS: every AWS operation chalicelib makes, the IAM action(s) it needs and on
  which resource. `code_operations()` finds the calls in the source, and a test checks
  that the two agree: a new call without a grant, or a grant nothing calls, fails.
- SERVICE_GRANTS: what Lambda itself does with the role: poll the queues and the stream
  (event source mappings), send a stream batch it gave up on to the on-failure queue,
  and write the functions' logs.

Every resource is named (from infra/resources.yaml for the stage); no action is granted
on "*". Region and account are wildcards because the policy file is committed and must
not hold an account id; the names are per stage, so the role reaches only this stage's
resources.

S3 is the exception to "from the template": the buckets are the user's, named only in
the batch definitions, so `object_statements` derives the S3 statements from the loaded
definitions (the stage's definitions file) and nothing else. An object source grants
reading exactly its key pattern (each {placeholder} becomes *), a prefix source also
listing its bucket under that prefix, an inventory source its manifest and the
inventory's data files, and `results` writing and reading under its prefix. Definitions
that name no bucket (random sources only) give no S3 statement at all. S3_CALLS lists the
S3 operations chalicelib may make and the actions they need; a test checks the code
against it, as for CODE_GRANTS.
"""

from __future__ import annotations

import ast
import json
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import botocore.session
from botocore import xform_name

from batchdrain_deploy import DeployError
from batchdrain_deploy.project import Project, resource_names
from chalicelib.config import DEFAULT_DEFINITIONS_FILE, USER_DEFINITIONS_FILE, Definition, load_definitions
from chalicelib.errors import ConfigError

# The services chalicelib calls (the lazy clients of chalicelib/aws.py).
CODE_SERVICES = ("dynamodb", "sqs", "sns", "s3")
# IAM: the inline policies of one role hold at most 10,240 characters, whitespace not counted.
MAX_POLICY_CHARACTERS = 10_240
# In TransactWriteItems, IAM checks the action of each item kind, not the transaction.
TRANSACTION_ITEM_ACTIONS = {
    "Put": "dynamodb:PutItem",
    "Update": "dynamodb:UpdateItem",
    "Delete": "dynamodb:DeleteItem",
    "ConditionCheck": "dynamodb:ConditionCheckItem",
}


@dataclass(frozen=True)
class Grant:
    """Actions on resources (kinds: see `resource_arns`), and why they are needed."""

    actions: tuple[str, ...]
    resources: tuple[str, ...]
    why: str


# (service, operation) -> what it needs. Keep in step with the code: the test
# `test_policy_grants_nothing_the_code_does_not_call` compares this with the source.
CODE_GRANTS: dict[tuple[str, str], Grant] = {
    ("dynamodb", "GetItem"): Grant(("dynamodb:GetItem",), ("table",), "store: header and chunk reads"),
    ("dynamodb", "PutItem"): Grant(("dynamodb:PutItem",), ("table",), "store: create_header, put_poison, note_observed"),
    ("dynamodb", "UpdateItem"): Grant(
        ("dynamodb:UpdateItem",),
        ("table",),
        "store: checkpoint, seal, record, count_dead_letter, close_shard, complete, mark_notified, ...",
    ),
    ("dynamodb", "DeleteItem"): Grant(
        ("dynamodb:DeleteItem",), ("table",), "store: record deletes a drained chunk row"
    ),
    ("dynamodb", "BatchWriteItem"): Grant(
        ("dynamodb:BatchWriteItem",), ("table",), "store: put_chunks, 25 rows a call"
    ),
    ("dynamodb", "Query"): Grant(
        ("dynamodb:Query",), ("table", "index"), "store: emptiness checks (table), open_batches (open-batches index), history (batch-history index)"
    ),
    ("dynamodb", "TransactWriteItems"): Grant(
        ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:ConditionCheckItem"),
        ("table",),
        "store: record (chunk row Update or Delete, F row Update, header failed_items Update), restore_failed "
        "(header Update, chunk row Put, F row Delete), put_segments (header ConditionCheck, segment row Put); "
        "IAM checks each item's action",
    ),
    ("sqs", "GetQueueUrl"): Grant(
        ("sqs:GetQueueUrl",), ("work_queue", "planning_queue"), "aws.queue_url: the work and planning queues' URLs"
    ),
    ("sqs", "SendMessageBatch"): Grant(
        ("sqs:SendMessage",),
        ("work_queue", "planning_queue"),
        "chunk messages (IAM: SendMessage): batcher, redrive, sweeper, planner; processor (items not started "
        "in time) and dead-letter handler (pending items sent again); segment messages to the planning queue: "
        "batcher, sweeper, planner",
    ),
    ("sqs", "ChangeMessageVisibilityBatch"): Grant(
        ("sqs:ChangeMessageVisibility",),
        ("work_queue",),
        "retries: the processor makes a message it returns for a retry visible again after RETRY_DELAY_SECONDS",
    ),
    ("sns", "Publish"): Grant(("sns:Publish",), ("alert_topic",), "alerts: the completion alert"),
}

SERVICE_GRANTS: tuple[Grant, ...] = (
    Grant(
        ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"),
        ("work_queue", "planning_queue", "dead_letter_queue"),
        "Lambda's SQS event source mappings (process_work, plan_segments, drain_dead_letters) poll with the "
        "function's role",
    ),
    Grant(
        ("dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator", "dynamodb:ListStreams"),
        ("stream",),
        "Lambda's stream event source mapping (finalize) reads the table's stream",
    ),
    Grant(
        ("sqs:SendMessage",),
        ("stream_failures_queue",),
        "the finalize mapping's on-failure destination (infra/event-sources.json DestinationConfig)",
    ),
    Grant(("logs:CreateLogGroup",), ("log_groups",), "Lambda: each function's log group"),
    Grant(("logs:CreateLogStream", "logs:PutLogEvents"), ("log_streams",), "Lambda: the functions' log lines"),
)


def resource_arns(project: Project, stage: str) -> dict[str, tuple[str, ...]]:
    """The ARNs (patterns) of each resource kind the grants name, for one stage."""
    template = project.resources_template()
    names = resource_names(template, stage)
    table = f"arn:aws:dynamodb:*:*:table/{names['BatchTable']}"
    indexes = template["Resources"]["BatchTable"]["Properties"]["GlobalSecondaryIndexes"]
    # Chalice names functions <app>-<stage>-<name>, and the API handler plain <app>-<stage>.
    log_groups = tuple(
        f"arn:aws:logs:*:*:log-group:/aws/lambda/{project.app_name()}-{stage}{suffix}" for suffix in ("", "-*")
    )
    return {
        "table": (table,),
        "index": tuple(f"{table}/index/{index['IndexName']}" for index in indexes),
        "stream": (f"{table}/stream/*",),
        "work_queue": (f"arn:aws:sqs:*:*:{names['WorkQueue']}",),
        "planning_queue": (f"arn:aws:sqs:*:*:{names['PlanningQueue']}",),
        "dead_letter_queue": (f"arn:aws:sqs:*:*:{names['DeadLetterQueue']}",),
        "stream_failures_queue": (f"arn:aws:sqs:*:*:{names['StreamFailuresQueue']}",),
        "alert_topic": (f"arn:aws:sns:*:*:{names['AlertTopic']}",),
        "log_groups": log_groups,
        "log_streams": tuple(f"{group}:*" for group in log_groups),
    }


def all_grants() -> list[Grant]:
    return [*CODE_GRANTS.values(), *SERVICE_GRANTS]


def build_policy(project: Project, stage: str, definitions: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The stage's policy document: one statement per set of resources, actions sorted, then the S3 statements.

    `definitions` is the definitions file whose buckets the S3 statements name (default:
    `definitions_path`). A policy IAM would refuse as too large is an error.
    """
    arns = resource_arns(project, stage)
    by_action: dict[str, set[str]] = {}
    for grant in all_grants():
        for action in grant.actions:
            by_action.setdefault(action, set()).update(arn for kind in grant.resources for arn in arns[kind])
    by_resources: dict[tuple[str, ...], list[str]] = {}
    for action, resources in by_action.items():
        by_resources.setdefault(tuple(sorted(resources)), []).append(action)
    statements = [
        {
            "Sid": _sid(resources, arns),
            "Effect": "Allow",
            "Action": sorted(actions),
            "Resource": list(resources) if len(resources) > 1 else resources[0],
        }
        for resources, actions in sorted(by_resources.items())
    ]
    statements += object_statements(load_stage_definitions(project, stage, definitions).values())
    statements.append(inbox_statement(project.app_name(), stage))
    policy = {"Version": "2012-10-17", "Statement": statements}
    size = len(json.dumps(policy, separators=(",", ":")))
    if size > MAX_POLICY_CHARACTERS:
        raise DeployError(
            f"stage {stage!r}: the policy would be {size:,} characters, IAM allows {MAX_POLICY_CHARACTERS:,} per role; "
            "let definitions share buckets and key prefixes, so their S3 statements are fewer"
        )
    return policy


def check_policy(project: Project, stage: str) -> None:
    """The stage's committed policy file is the one `make policy` generates now, or an error saying to run it.

    Run before a deploy or a package: a definition naming a new bucket must not reach
    AWS with a policy that cannot read it (AccessDenied at its first scheduled run).
    """
    path = policy_path(project, stage)
    try:
        committed = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DeployError(f"{path}: cannot be read ({error}); run `make policy STAGE={stage}`") from None
    if committed != build_policy(project, stage):
        raise DeployError(
            f"{path} is not the policy this stage's code and definitions need; run `make policy STAGE={stage}`, "
            "review the change and commit it"
        )


# -- S3: from the definitions -------------------------------------------------------

# S3 operation chalicelib may call -> the IAM actions it needs. Their resources come from
# the definitions (`object_statements`), not from the template. A test checks the calls.
S3_CALLS: dict[str, tuple[str, ...]] = {
    # With VersionId (a planner pins the version it measured, so every segment reads the
    # same object), IAM checks GetObjectVersion instead of GetObject.
    "GetObject": ("s3:GetObject", "s3:GetObjectVersion"),
    "HeadObject": ("s3:GetObject", "s3:GetObjectVersion"),
    "ListObjectsV2": ("s3:ListBucket",),
    "PutObject": ("s3:PutObject",),
    # Results written in parts (chalicelib.results): IAM checks PutObject for every step but the abort.
    "CreateMultipartUpload": ("s3:PutObject",),
    "UploadPart": ("s3:PutObject",),
    "CompleteMultipartUpload": ("s3:PutObject",),
    "AbortMultipartUpload": ("s3:AbortMultipartUpload",),
}
S3_ARN = "arn:aws:s3:::"


def definitions_path(project: Project, stage: str) -> Path:
    """The definitions file a deploy of the stage packages (batchdrain_deploy.usercode), as the app finds it.

    BATCHDRAIN_DEFINITIONS from this process's environment (the Makefile's DEFINITIONS=),
    else the project's batchdrain_definitions.json, else the shipped examples: the order
    of chalicelib.config.definitions_file, for this project's directory.
    """
    if os.environ.get("BATCHDRAIN_DEFINITIONS"):
        return Path(os.environ["BATCHDRAIN_DEFINITIONS"]).resolve()
    own = project.root / USER_DEFINITIONS_FILE
    return own if own.exists() else project.root / "chalicelib" / DEFAULT_DEFINITIONS_FILE.name


def load_stage_definitions(
    project: Project, stage: str, path: str | os.PathLike[str] | None = None
) -> dict[str, Definition]:
    """The validated definitions of `path` (default: `definitions_path`); a bad file is a DeployError."""
    try:
        return load_definitions(path or definitions_path(project, stage))
    except ConfigError as error:
        raise DeployError(str(error)) from None


def object_statements(definitions: Iterable[Definition]) -> list[dict[str, Any]]:
    """The S3 statements the definitions need, and no others (none when no definition names a bucket).

    Per source type, as the README's "Least privilege" shows:
    - s3-jsonl, s3-csv: GetObject and GetObjectVersion on bucket/<key pattern>;
    - s3-prefix: ListBucket on the bucket where s3:prefix is StringLike "<prefix>*", and
      GetObject on bucket/<prefix>* (tasks read the listed objects);
    - s3-inventory: GetObject on the manifest's key pattern and on everything under the
      inventory configuration's directory, two levels above manifest.json (S3 Inventory
      writes <prefix>/<source bucket>/<config id>/<date>/manifest.json and the data files
      under <prefix>/<source bucket>/<config id>/data/);
    - results: PutObject and GetObject on bucket/<prefix>/*, and AbortMultipartUpload there
      (a large object written in parts is aborted on failure rather than left to bill).
    """
    keys: set[str] = set()
    prefixes: set[str] = set()
    listings: dict[str, set[str]] = {}
    inventories: set[str] = set()
    results: set[str] = set()
    for definition in definitions:
        source = definition.source
        if source.type in ("s3-jsonl", "s3-csv"):
            keys.add(_object_arn(source.bucket, key_pattern(source.key_template)))
        elif source.type == "s3-prefix":
            prefix = _then_anything(key_pattern(source.key_template))
            prefixes.add(_object_arn(source.bucket, prefix))
            listings.setdefault(source.bucket, set()).add(prefix)
        elif source.type == "s3-inventory":
            directory = source.key_template.split("/")[:-2]
            inventories.add(_object_arn(source.bucket, key_pattern(source.key_template)))
            inventories.add(_object_arn(source.bucket, _then_anything(key_pattern("/".join(directory + [""])))))
        if definition.results is not None:
            prefix = _iam_literal(definition.results.prefix)
            results.add(_object_arn(definition.results.bucket, f"{prefix}/*" if prefix else "*"))
    statements = []
    if keys:
        statements.append(_statement("SourceObjects", ("s3:GetObject", "s3:GetObjectVersion"), keys))
    if prefixes:
        statements.append(_statement("SourcePrefixObjects", ("s3:GetObject",), prefixes))
    for number, (bucket, listed) in enumerate(sorted(listings.items()), start=1):
        statement = _statement(f"SourcePrefixListing{number}", ("s3:ListBucket",), {S3_ARN + bucket})
        # Without a prefix the definition names the whole bucket; an absent s3:prefix key
        # would match no StringLike condition at all.
        if "*" not in listed:
            values = sorted(listed)
            statement["Condition"] = {"StringLike": {"s3:prefix": values if len(values) > 1 else values[0]}}
        statements.append(statement)
    if inventories:
        statements.append(_statement("SourceInventoryObjects", ("s3:GetObject",), inventories))
    if results:
        statements.append(_statement("ResultObjects", ("s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"), results))
    return statements


def inbox_statement(app_name: str, stage: str) -> dict[str, Any]:
    """The inbox (INBOX_URI, the stage's results bucket under inbox/): the API writes inline items, planners read them.

    The results bucket's name is generated by CloudFormation, `<stack>-resultsbucket-<suffix>`,
    and the stack is `<app>-<stage>-resources` (route A) or `<app>-<stage>` (route B), so
    the pattern names both and only the inbox/ prefix: PutObject (the API, If-None-Match)
    and GetObject/GetObjectVersion (HeadObject on a retry, planners, rebuilds).
    """
    bucket = f"{app_name}-{stage}-*resultsbucket-*"
    return _statement("InboxObjects", ("s3:GetObject", "s3:GetObjectVersion", "s3:PutObject"), {_object_arn(bucket, "inbox/*")})


def key_pattern(template: str) -> str:
    """An S3 key template as an IAM resource pattern: each {placeholder} becomes *.

    Literal characters IAM would read as wildcards or variables (*, ?, $) are written as
    the policy variables ${*}, ${?}, ${$}; {{ and }} are the literal braces they are in
    the template. `key_pattern("exports/{date}/items.jsonl")` is "exports/*/items.jsonl".
    """
    pattern = ""
    for literal, field, _, _ in string.Formatter().parse(template):
        pattern += _iam_literal(literal)
        if field is not None:
            pattern = _then_anything(pattern)
    return pattern


def _iam_literal(text: str) -> str:
    return "".join("${" + character + "}" if character in "*?$" else character for character in text)


def _then_anything(pattern: str) -> str:
    """`pattern` followed by *, without doubling a trailing * (adjacent placeholders, a placeholder at the end)."""
    return pattern if pattern.endswith("*") and not pattern.endswith("${*}") else pattern + "*"


def _object_arn(bucket: str, key: str) -> str:
    return f"{S3_ARN}{bucket}/{key}"


def _statement(sid: str, actions: Iterable[str], resources: set[str]) -> dict[str, Any]:
    listed = sorted(resources)
    return {"Sid": sid, "Effect": "Allow", "Action": sorted(actions), "Resource": listed if len(listed) > 1 else listed[0]}


def _sid(resources: tuple[str, ...], arns: Mapping[str, tuple[str, ...]]) -> str:
    kinds = [kind for kind, patterns in arns.items() if set(patterns) <= set(resources)]
    return "".join(part.capitalize() for kind in kinds for part in kind.split("_"))


def policy_path(project: Project, stage: str) -> Path:
    """Where the stage's policy lives: its iam_policy_file (autogen_policy must be off)."""
    section = project.stage(stage)
    if section.get("autogen_policy", project.config().get("autogen_policy", True)):
        raise DeployError(f"stage {stage!r}: set \"autogen_policy\": false so Chalice uses the generated policy")
    name = section.get("iam_policy_file") or project.config().get("iam_policy_file")
    if name != f"policy-{stage}.json":
        raise DeployError(f"stage {stage!r}: set \"iam_policy_file\": \"policy-{stage}.json\" (it is {name!r})")
    return project.root / ".chalice" / name


# -- what the code calls ----------------------------------------------------------


# An item of a transaction the scan cannot read (built by a call, a comprehension...):
# `actions_for` has no action for it, so the policy test fails until the code is plain.
UNRESOLVED = "<unresolved>"
# The store's one place that calls TransactWriteItems (chalicelib/store/base.py): the scan reads the
# items each caller hands it, as it reads a direct call's TransactItems.
TRANSACTION_HELPER = "_transact"


def code_operations(package_dir: Path) -> dict[tuple[str, str], set[str]]:
    """Every (service, operation) called as `<anything>.<operation>(...)` in package_dir's modules,
    or paginated as `<anything>.get_paginator("<operation>")`.

    The value is, for TransactWriteItems, the item kinds its TransactItems use ("Put",
    "Update", "Delete", ...); empty otherwise. TransactItems may be a list literal or a
    name; a name is followed through its assignments and `.append`/`.extend`/`+=` in the
    calling function, and so are names inside the list (an item built before the
    transaction, e.g. `row_write = {"Update": ...}` or `{"Delete": ...}`: both count). An
    item it cannot read counts as UNRESOLVED. Conservative: a method that shares an
    operation's name counts as a call (it can only add a grant to review, never hide one).
    """
    operations = _operation_names(CODE_SERVICES)
    found: dict[tuple[str, str], set[str]] = {}
    for path in sorted(package_dir.rglob("*.py")):
        module = ast.parse(path.read_text(), filename=str(path))
        for node, scope in _calls_with_scope(module):
            if not isinstance(node.func, ast.Attribute):
                continue
            name = node.func.attr
            # A paginator makes its operation's calls: get_paginator("list_objects_v2").
            if name == "get_paginator" and node.args and isinstance(node.args[0], ast.Constant):
                name = str(node.args[0].value)
            # The store's transaction helper: its callers' items are read; its own call passes them on.
            if name == TRANSACTION_HELPER:
                name = "transact_write_items"
            elif name == "transact_write_items" and getattr(scope, "name", None) == TRANSACTION_HELPER:
                continue
            for operation in operations.get(name, ()):
                kinds = found.setdefault(operation, set())
                if operation == ("dynamodb", "TransactWriteItems"):
                    kinds.update(_transaction_item_kinds(node, scope))
    return found


def _calls_with_scope(module: ast.Module) -> Iterable[tuple[ast.Call, ast.AST]]:
    """Every call in the module, with the innermost function (or the module) it is made in."""

    def visit(node: ast.AST, scope: ast.AST) -> Iterable[tuple[ast.Call, ast.AST]]:
        for child in ast.iter_child_nodes(node):
            inner = child if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) else scope
            if isinstance(child, ast.Call):
                yield child, scope
            yield from visit(child, inner)

    return visit(module, module)


def actions_for(operation: tuple[str, str], item_kinds: Iterable[str]) -> set[str]:
    """The IAM actions a call needs: its own, or for a transaction those of its item kinds."""
    if operation == ("dynamodb", "TransactWriteItems"):
        # A kind IAM has no item action for (UNRESOLVED) shows as itself, so no grant can match it.
        return {TRANSACTION_ITEM_ACTIONS.get(kind, f"dynamodb:{kind}") for kind in item_kinds}
    service, name = operation
    # The batch forms of SQS calls are authorized as their single forms.
    return {f"{service}:{name.removesuffix('Batch') if service == 'sqs' else name}"}


def _operation_names(services: Iterable[str]) -> dict[str, list[tuple[str, str]]]:
    session = botocore.session.get_session()
    names: dict[str, list[tuple[str, str]]] = {}
    for service in services:
        for operation in session.get_service_model(service).operation_names:
            names.setdefault(xform_name(operation), []).append((service, operation))
    return names


def _transaction_item_kinds(call: ast.Call, scope: ast.AST) -> set[str]:
    """The item kinds of a transaction's items: transact_write_items' TransactItems, or the helper's first argument."""
    kinds: set[str] = set()
    for keyword in call.keywords:
        if keyword.arg == "TransactItems":
            kinds |= _list_item_kinds(keyword.value, scope, set())
    if isinstance(call.func, ast.Attribute) and call.func.attr == TRANSACTION_HELPER and call.args:
        kinds |= _list_item_kinds(call.args[0], scope, set())
    return kinds or {UNRESOLVED}


def _list_item_kinds(node: ast.AST, scope: ast.AST, seen: set[str]) -> set[str]:
    """Kinds of the items of a list expression: a literal, a name built up in `scope`, or `a + b`."""
    if isinstance(node, ast.List):
        return set().union(*(_item_kinds(element, scope, seen) for element in node.elts))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _list_item_kinds(node.left, scope, seen) | _list_item_kinds(node.right, scope, seen)
    if isinstance(node, ast.Name):
        return _name_kinds(node.id, scope, seen, as_list=True)
    return {UNRESOLVED}


def _item_kinds(node: ast.AST, scope: ast.AST, seen: set[str]) -> set[str]:
    """Kinds of one transaction item: the constant keys of a dict literal, or of what a name is bound to."""
    if isinstance(node, ast.Dict):
        keys = {key.value for key in node.keys if isinstance(key, ast.Constant)}
        return keys if keys and len(keys) == len(node.keys) else {UNRESOLVED}
    if isinstance(node, ast.Name):
        return _name_kinds(node.id, scope, seen, as_list=False)
    return {UNRESOLVED}


def _name_kinds(name: str, scope: ast.AST, seen: set[str], as_list: bool) -> set[str]:
    """Every value `name` is given in `scope` (assignments; for a list also append/extend/+=)."""
    if name in seen:
        return set()
    seen = seen | {name}
    read = _list_item_kinds if as_list else _item_kinds
    kinds: set[str] = set()
    bound = False
    for node in ast.walk(scope):
        value = None
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            value = node.value
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
            value = node.value if node.target.id == name else None
        if value is not None:
            bound = True
            kinds |= read(value, scope, seen)
        elif as_list and isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value
            if isinstance(target, ast.Name) and target.id == name and node.func.attr in ("append", "extend"):
                reader = _item_kinds if node.func.attr == "append" else _list_item_kinds
                kinds |= set().union(*(reader(arg, scope, seen) for arg in node.args))
    return kinds if bound else {UNRESOLVED}
